"""Session encryption end to end without a network: agreement, sealing, replays, misrouting."""

from __future__ import annotations

import os

import pytest

from schemas import ErrorCode, Sealed, WireError, decode, encode
from security.channel import device_open, verifier_open
from security.keys import generate_keypair

UP = "edgespec/v1/dev/cam-1/up/open"
SESSION_UP = "edgespec/v1/dev/cam-1/up/v/verifier-1"
DOWN = "edgespec/v1/dev/cam-1/down"


@pytest.fixture()
def pair():
    device, verifier = generate_keypair(), generate_keypair()
    sid = os.urandom(16)
    dev_cipher, sealed_open = device_open(device, verifier.public, verifier.key_id, "cam-1", sid, UP, b"open!")
    ver_cipher, inner = verifier_open(verifier, device.public, "cam-1", UP, decode(encode(sealed_open)))
    assert inner == b"open!"
    return dev_cipher, ver_cipher, device, verifier, sealed_open


def test_both_directions(pair):
    dev, ver, *_ = pair
    for i in range(5):
        up = decode(encode(dev.seal(SESSION_UP, b"draft %d" % i)))
        assert ver.open(SESSION_UP, up) == (b"draft %d" % i, False)
        down = decode(encode(ver.seal(DOWN, b"verdict %d" % i)))
        assert dev.open(DOWN, down) == (b"verdict %d" % i, False)


def test_sequence_numbers_never_repeat(pair):
    dev, *_ = pair
    seqs = [dev.seal(SESSION_UP, b"x").seq for _ in range(100)]
    assert len(set(seqs)) == 100 and seqs[0] == 1  # 0 was the OPEN


def test_duplicate_is_flagged_and_old_replay_refused(pair):
    dev, ver, *_ = pair
    first = dev.seal(SESSION_UP, b"a")
    assert ver.open(SESSION_UP, first) == (b"a", False)
    assert ver.open(SESSION_UP, first) == (b"a", True)
    for _ in range(80):
        ver.open(SESSION_UP, dev.seal(SESSION_UP, b"b"))
    with pytest.raises(WireError) as info:
        ver.open(SESSION_UP, first)
    assert info.value.code == ErrorCode.REPLAY


def test_wrong_topic_or_tampering_fails(pair):
    dev, ver, *_ = pair
    msg = dev.seal(SESSION_UP, b"draft")
    with pytest.raises(WireError) as info:
        ver.open("edgespec/v1/dev/cam-2/up/v/verifier-1", msg)
    assert info.value.code == ErrorCode.DECRYPT_FAILED
    bad = Sealed(msg.session_id, msg.seq, bytes([msg.ciphertext[0] ^ 1]) + msg.ciphertext[1:])
    with pytest.raises(WireError):
        ver.open(SESSION_UP, bad)
    with pytest.raises(WireError):
        ver.open(SESSION_UP, Sealed(msg.session_id, msg.seq + 1, msg.ciphertext))
    assert ver.open(SESSION_UP, msg) == (b"draft", False)  # the real one still passes


def test_open_from_another_device_key_fails(pair):
    *_, verifier, sealed_open = pair
    with pytest.raises(WireError) as info:
        verifier_open(verifier, generate_keypair().public, "cam-1", UP, sealed_open)
    assert info.value.code == ErrorCode.DECRYPT_FAILED


def test_reopen_uses_fresh_keys():
    device, verifier = generate_keypair(), generate_keypair()
    sid = os.urandom(16)
    _, oa = device_open(device, verifier.public, verifier.key_id, "cam-1", sid, UP, b"open")
    _, ob = device_open(device, verifier.public, verifier.key_id, "cam-1", sid, UP, b"open")
    assert oa.ephemeral_pub != ob.ephemeral_pub and oa.ciphertext != ob.ciphertext
