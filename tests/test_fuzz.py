"""Hostile input: `edgespec fuzz` against the tiny pair.

In process, the fuzzer's model of the contract is checked against `VerifierCore` itself: every
payload gets the outcome the fuzzer predicted and the core counts every rejection. Through a
real Mosquitto with the production ACL, the whole run must pass its checks: the verifier
survives, its memory stays bounded, its counters match what was sent, every sender can read its
ERROR, and well-behaved devices lose no token.

The tests at the end pin verifier bugs the fuzzer found (now fixed), so they stay fixed.
"""

from __future__ import annotations

import asyncio
import os

import msgpack
import pytest

from edgespec import fuzz
from schemas import DraftMsg, ErrorMsg, Sealed, SessionOpen, Topics, WireError, decode, encode
from security.channel import device_open
from security.registry import FleetRegistry
from verifier_node.core import VerifierConfig, VerifierCore, VerifierCrypto

VID = "fuzz-verifier"


@pytest.fixture()
def local(tmp_path, loaded_pair):
    """A crypto-enabled verifier core, its context and attacker identities in a private home."""
    target, _ = loaded_pair
    home = tmp_path / "home"
    ctx = fuzz.fuzz_context(target, Topics(), VID, home, acl=False)
    core = VerifierCore(target, VerifierConfig(verifier_id=VID), Topics(), VerifierCrypto(FleetRegistry(home)))
    stateless, sessions = fuzz.identities(home, 3, 2, seed=0)
    return core, ctx, stateless, sessions


def run_local(local, **cfg):
    core, ctx, stateless, sessions = local
    return asyncio.run(fuzz.run_local(core, ctx, fuzz.FuzzConfig(broker_mode="open", **cfg), stateless, sessions))


def test_every_payload_gets_the_contracts_outcome_and_is_counted(local):
    out = run_local(local, count=1500, seed=3, exclude=fuzz.KNOWN_BUG_KINDS)
    tally = out["tally"]
    assert sum(tally.sent.values()) == 1500
    assert tally.violations == [], tally.violations[:5]
    assert tally.undecodable == 0 and tally.missing == 0 and tally.unsolicited == 0
    assert out["counted"] == out["expected"]
    assert "internal" not in out["counted"]
    # The run reached the checks behind decryption, not only the decoder.
    for reason in ("decrypt_failed", "replay", "wrong_device", "bad_sequence", "out_of_range", "tokenizer_mismatch",
                   "unknown_device", "plaintext_refused", "bad_features", "oversize", "bad_version"):
        assert out["counted"][reason] > 0, reason


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown attack kinds"):
        fuzz.FuzzConfig(kinds=("no_such_attack",)).selected()
    assert "spoof" not in fuzz.FuzzConfig().selected()  # only with --spoof


def test_the_command_is_registered():
    import argparse

    parser = argparse.ArgumentParser()
    fuzz.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fuzz", "--count", "5", "--exclude", ",".join(fuzz.KNOWN_BUG_KINDS)])
    assert args.count == 5 and args.func is fuzz.cmd_fuzz


@pytest.mark.broker
@pytest.mark.slow
def test_fuzz_through_the_production_acl_while_devices_generate(tiny_pair):
    target, draft = tiny_pair
    cfg = fuzz.FuzzConfig(count=2000, devices=2, seed=1, target_model=str(target), draft_model=str(draft),
                          exclude=fuzz.KNOWN_BUG_KINDS, time_limit_s=120)
    report = asyncio.run(fuzz.run_mqtt(cfg))
    checks = report["checks"]
    assert checks["alive"], report["verifier_log_tail"]
    assert checks["rss_bounded"], report["rss"]
    assert checks["counted"], report["rejections"]
    assert checks["errors_readable"], (report["violations"][:5], report["missing_replies"])
    assert checks["exact"], report["devices"]
    assert report["config"]["sent"] == 2000 and report["lost_sessions"] == 0
    assert all(d["sessions"] >= 2 and d["after_attack_ok"] == 1 for d in report["devices"])
    # Under the ACL, unsafe and foreign topics never reach the verifier.
    assert report["outcomes"]["bad_topic"] == {"dropped": report["sent_by_kind"]["bad_topic"]}


# ------------------------------------------------------------------ verifier bugs the fuzzer found (fixed)


def test_feature_shape_overflow_is_a_wire_error():
    payload = msgpack.packb([1, 1, os.urandom(16), [1], ["float16", [2**32, 2**32], b""], 0.0, 0, 1.0, 0, 4, 16, 8,
                             [], bytes(16)], use_bin_type=True)
    with pytest.raises(WireError) as info:
        decode(payload)
    assert info.value.reason == "bad_features"


def test_resume_with_too_many_generated_ids_is_out_of_range(local):
    out = run_local(local, count=3, kinds=("resume_overflow",))
    assert out["tally"].violations == []


def test_replayed_open_after_close_changes_nothing(local):
    out = run_local(local, count=6, kinds=("replay_open_after_close",))
    assert out["tally"].violation_count.get("replay_open_after_close", 0) == 0


def test_unauthenticated_input_on_a_device_topic_is_not_an_error_for_its_session(local, loaded_pair):
    core, _, stateless, _ = local
    target, _ = loaded_pair
    topics, me = Topics(), stateless[0]  # a provisioned device; the forgeries below come from anyone
    sid = os.urandom(16)
    cipher, sealed_open = device_open(me.keys.device_key, me.keys.verifier_pub, me.keys.verifier_key_id, me.device_id,
                                      sid, topics.open(me.device_id),
                                      encode(SessionOpen(sid, [5, 6], tokenizer_fp=target.fingerprint)))
    assert core.handle(topics.open(me.device_id), encode(sealed_open))
    up = topics.session_up(me.device_id, VID)
    forged = [encode(Sealed(sid, 7, os.urandom(40))),  # garbage under the session's id
              encode(Sealed(sid, 0, sealed_open.ciphertext)),  # an envelope moved from another topic
              encode(DraftMsg(sid, 0, 2, [5]))]  # plaintext for the encrypted session
    for payload in forged:
        for _, reply in core.handle(up, payload):
            msg = decode(reply)
            if isinstance(msg, Sealed):
                msg = decode(cipher.open(topics.down(me.device_id), msg)[0])
            assert not (isinstance(msg, ErrorMsg) and msg.session_id == sid), msg
