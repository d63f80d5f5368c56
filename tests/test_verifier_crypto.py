"""Encrypted sessions at the verifier: key agreement, rotation without a restart, refusals."""

from __future__ import annotations

import os

import pytest

from schemas import (Close, DraftMsg, ErrorCode, ErrorMsg, Opened, Sealed, SessionOpen, Topics, VerdictMsg, decode,
                     encode)
from security.channel import device_open
from security.keys import VerifierKeyRing, generate_keypair
from security.registry import FleetRegistry
from verifier_node.core import VerifierConfig, VerifierCore, VerifierCrypto

T = Topics()
VID = "verifier-1"


@pytest.fixture()
def fleet(tmp_path, loaded_pair):
    registry = FleetRegistry(tmp_path)
    registry.save_verifier_keys(VerifierKeyRing(generate_keypair()))
    device = generate_keypair()
    registry.add("cam-1", device.public_bytes)
    core = VerifierCore(loaded_pair[0], VerifierConfig(verifier_id=VID), T, VerifierCrypto(registry))
    return core, registry, device


def sealed_session(core, registry, device, lm, device_id="cam-1", kid=None, pub=None):
    """Open a sealed session as a device that holds verifier key `kid` (public key `pub`)."""
    ring = registry.verifier_keys()
    kid = kid or ring.current_key_id
    pub = pub or ring.get(kid).public
    sid = os.urandom(16)
    prompt = lm.encode("the scene")
    cipher, sealed = device_open(device, pub, kid, device_id, sid, T.open(device_id),
                                 encode(SessionOpen(sid, prompt, tokenizer_fp=lm.fingerprint, max_new_tokens=8)))
    replies = core.handle(T.open(device_id), encode(sealed))
    return cipher, sid, prompt, replies


def open_reply(cipher, replies, device_id="cam-1"):
    (_, payload), = replies
    msg = decode(payload)
    if isinstance(msg, Sealed):
        inner, _ = cipher.open(T.down(device_id), msg)
        return decode(inner)
    return msg


def draft(core, cipher, sid, seq, committed, tokens, device_id="cam-1"):
    up = T.session_up(device_id, VID)
    return core.handle(up, encode(cipher.seal(up, encode(DraftMsg(sid, seq, committed, tokens, None)))))


def test_sealed_session_round_trip(fleet, loaded_pair):
    core, registry, device = fleet
    cipher, sid, prompt, replies = sealed_session(core, registry, device, loaded_pair[1])
    assert isinstance(open_reply(cipher, replies), Opened)
    v = open_reply(cipher, draft(core, cipher, sid, 0, len(prompt), [4, 5]))
    assert isinstance(v, VerdictMsg) and core.stats["encrypted_sessions"] == 1


def test_rotation_keeps_running_and_old_key_sessions(fleet, loaded_pair):
    core, registry, device = fleet
    old_kid = registry.verifier_keys().current_key_id
    old_pub = registry.verifier_keys().current.public
    cipher, sid, prompt, replies = sealed_session(core, registry, device, loaded_pair[1])
    assert isinstance(open_reply(cipher, replies), Opened)
    ring = registry.verifier_keys()
    ring.rotate()
    registry.save_verifier_keys(ring)
    new_kid = registry.verifier_keys().current_key_id
    assert new_kid != old_kid
    # the running session is untouched
    assert isinstance(open_reply(cipher, draft(core, cipher, sid, 0, len(prompt), [4])), VerdictMsg)
    # a device that still has only the old key can open; one with the new key too
    for kid in (old_kid, new_kid):
        c, _, _, replies = sealed_session(core, registry, device, loaded_pair[1], kid=kid)
        assert isinstance(open_reply(c, replies), Opened)
    # once the old key is retired it is refused with a clear message
    ring = registry.verifier_keys()
    ring.retire(old_kid)
    registry.save_verifier_keys(ring)
    c, _, _, replies = sealed_session(core, registry, device, loaded_pair[1], kid=old_kid, pub=old_pub)
    err = open_reply(c, replies)
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.DECRYPT_FAILED and "retired" in err.message


def test_unknown_device_and_revoked_device(fleet, loaded_pair):
    core, registry, device = fleet
    c, _, _, replies = sealed_session(core, registry, generate_keypair(), loaded_pair[1], device_id="cam-9")
    assert open_reply(c, replies).code == ErrorCode.UNKNOWN_DEVICE
    registry.remove("cam-1")
    c, _, _, replies = sealed_session(core, registry, device, loaded_pair[1])
    assert open_reply(c, replies).code == ErrorCode.UNKNOWN_DEVICE


def test_impostor_key_cannot_open_as_another_device(fleet, loaded_pair):
    core, registry, _ = fleet
    c, _, _, replies = sealed_session(core, registry, generate_keypair(), loaded_pair[1], device_id="cam-1")
    assert open_reply(c, replies).code == ErrorCode.DECRYPT_FAILED


def test_plaintext_refused_and_replay_answered_from_cache(fleet, loaded_pair):
    core, registry, device = fleet
    lm = loaded_pair[1]
    plain = SessionOpen(os.urandom(16), [1, 2], tokenizer_fp=lm.fingerprint)
    (_, payload), = core.handle(T.open("cam-1"), encode(plain))
    assert decode(payload).code == ErrorCode.PLAINTEXT_REFUSED
    cipher, sid, prompt, _ = sealed_session(core, registry, device, lm)
    up = T.session_up("cam-1", VID)
    block = encode(cipher.seal(up, encode(DraftMsg(sid, 0, len(prompt), [4, 5], None))))
    first = core.handle(up, block)
    again = core.handle(up, block)
    assert first == again and core.stats["duplicates"] == 1
    # a captured sealed draft replayed on another device's topic fails authentication
    other = T.session_up("cam-2", VID)
    (_, payload), = core.handle(other, block)
    assert decode(payload).code in (ErrorCode.WRONG_DEVICE, ErrorCode.DECRYPT_FAILED)
    # a plaintext draft into the encrypted session is refused
    (_, payload), = core.handle(up, encode(DraftMsg(sid, 1, len(prompt) + 1, [4], None)))
    assert decode(payload).code == ErrorCode.PLAINTEXT_REFUSED


def test_a_finished_encrypted_session_still_answers_its_redeliveries(fleet, loaded_pair):
    """After the VERDICT that says done the session is no longer held, but what its device may
    still send is authenticated with its keys: the final DRAFT again gets the same VERDICT, its
    OPEN again gets OPENED, a new DRAFT is refused, a CLOSE is accepted, plaintext is refused."""
    core, registry, device = fleet
    lm = loaded_pair[1]
    ring = registry.verifier_keys()
    sid, prompt = os.urandom(16), lm.encode("the scene")
    cipher, sealed_open = device_open(device, ring.current.public, ring.current_key_id, "cam-1", sid, T.open("cam-1"),
                                      encode(SessionOpen(sid, prompt, tokenizer_fp=lm.fingerprint, max_new_tokens=1)))
    opened = core.handle(T.open("cam-1"), encode(sealed_open))
    assert isinstance(open_reply(cipher, opened), Opened)
    up = T.session_up("cam-1", VID)
    block = encode(cipher.seal(up, encode(DraftMsg(sid, 0, len(prompt), [4, 5], None))))
    final = core.handle(up, block)
    v = open_reply(cipher, final)
    assert isinstance(v, VerdictMsg) and v.done  # one new token: the first verdict finishes the session
    assert core.sessions.get(sid) is None and core.stats["finished"] == 1
    assert core.handle(up, block) == final and core.stats["duplicates"] == 1
    assert core.handle(T.open("cam-1"), encode(sealed_open)) == opened
    (_, payload), = core.handle(up, encode(DraftMsg(sid, 1, v.committed_len, [4], None)))
    assert decode(payload).code == ErrorCode.PLAINTEXT_REFUSED
    late = encode(cipher.seal(up, encode(DraftMsg(sid, 1, v.committed_len, [4], None))))
    assert open_reply(cipher, core.handle(up, late)).code == ErrorCode.BAD_SEQUENCE
    assert core.handle(up, encode(cipher.seal(up, encode(Close(sid))))) == []
    assert core.finished.get(sid) is None
