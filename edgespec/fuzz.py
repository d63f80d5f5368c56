"""`edgespec fuzz`: hostile input on a verifier's uplink topics while well-behaved devices generate.

Attackers are ordinary MQTT clients with device ids of their own: provisioned development
identities (they can seal messages, so the verifier's checks behind decryption are reached)
and one stranger that no registry knows. Together they send `--count` hostile payloads: random
bytes, truncated and bit-flipped msgpack, wrong versions and types, every field of every uplink
message replaced by a wrong type or an out-of-range value, oversize arrays, strings and
payloads, token ids outside the vocabulary, features of the wrong dtype, shape or size and with
NaN, sealed messages with bad tags, flipped bits, wrong keys, wrong sequence numbers and wrong
topics (associated data), replays (of their own traffic and of well-behaved devices' traffic
captured by a recorder), session ids of other devices, drafts for unknown sessions, plaintext
for encrypted sessions and unsafe topics.

Every payload carries the outcome the wire contract (schemas/README.md) prescribes for it; the
payloads whose outcome only the decoder can tell (random bytes, mutations) get it from
`schemas.decode` itself. Replies come back on each attacker's own downlink, one per payload
and in order (Mosquitto keeps one publisher's order; the verifier handles messages one at a
time), so every reply is matched with the payload that caused it.

Checks (the report's last lines and the JSON's `checks`):

  alive            the verifier process never exited and still answers after the attack
  rss_bounded      its VmRSS grew by at most --rss-growth-mb from before the attack to the
                   largest sample during and after it
  counted          its `rejected` counters grew by exactly the rejections the attack caused,
                   reason by reason, and none was `internal`
  errors_readable  every payload from a valid device id was answered, with an ERROR the sender
                   could decode where it was rejected, and every outcome is the contract's
  exact            every well-behaved session finished with exactly the target-alone greedy
                   output (HF `generate`), none failed and none started after the attack failed

Threat models (`--broker-mode`, for the broker this command starts itself):

  acl   Mosquitto with password authentication and the production ACL (security/
        mosquitto_files.render_acl): each client may publish only on its own uplink topics,
        so the broker itself drops unsafe topics and another device's topics. The recorder
        is a wiretap with the verifier's read rights.
  open  the development broker (anonymous, no ACL); the recorder subscribes to `#`. With
        `--spoof` attackers also publish on the well-behaved devices' own topics, which only
        a broker without ACL allows.

`--broker URL --verifier-id ID` fuzzes a verifier already running on a development broker;
give `--verifier-pid` to watch its memory and `--home` for its fleet registry.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import math
import os
import random
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack

from schemas import (
    Close, DraftMsg, ErrorCode, ErrorMsg, Features, Opened, Resync, Sealed, SealedOpen, SessionOpen,
    SparseQWire, Topics, VerdictMsg, WireError, decode, encode,
)
from schemas.messages import DEFAULT_LIMITS, MAX_TOKEN_ID, PROTOCOL_VERSION

REPO = Path(__file__).resolve().parent.parent
STATS_INTERVAL_S = 5.0  # verifier_node.service publishes stats this often

# Outcomes that are not rejections (a rejection's outcome is its ErrorCode name, e.g. "malformed").
RESYNC, OPENED, VERDICT = "resync", "opened", "verdict"
NO_REPLY = "no_reply"  # handled, answered to nobody (a CLOSE; a bad topic, counted)
DROPPED = "dropped"  # never reached the verifier (the broker's ACL, or no subscription matches)
SPOOFED = "spoofed"  # published on a victim's topic: the answer goes to the victim
NON_REJECTIONS = {RESYNC, OPENED, VERDICT, NO_REPLY, DROPPED, SPOOFED}
R = {code: code.name.lower() for code in ErrorCode}  # ErrorCode -> counter key

# Kinds whose contract outcome the verifier does not give today (see the report's findings).
KNOWN_BUG_KINDS: tuple[str, ...] = ()  # all found so far are fixed (tests/test_fuzz.py pins them)


def reason(code: ErrorCode) -> str:
    return R[code]


# ====================================================================== attacks


@dataclass
class Attack:
    """One payload on one topic, and the outcomes the contract allows for it."""

    kind: str
    topic: str
    payload: bytes
    expect: frozenset[str]
    reply: bool = True  # the verifier answers on the sender's downlink
    counted: str | None = None  # counted by the verifier without a reply to the sender
    cipher: Any = None  # the sender's cipher for a sealed answer
    scaffold: bool = False  # a well-formed message a stateful attacker needs (not hostile)
    note: str = ""
    new_session: bool = False  # if the verifier accepts it, it opened a session to give back


def _exp(*outcomes: str) -> frozenset[str]:
    return frozenset(outcomes)


@dataclass
class Captured:
    """A sealed uplink message a recorder saw."""

    device_id: str
    topic: str
    session_id: bytes
    payload: bytes
    is_open: bool


@dataclass
class FuzzContext:
    """What attackers know: the layout, the target's public facts and the traffic they saw."""

    topics: Topics
    verifier_id: str
    vocab: int
    fingerprint: bytes
    feature_shape: tuple[int, ...] | None
    max_positions: int
    verifier_pub: Any
    verifier_key_id: str
    acl: bool
    victims: tuple[str, ...] = ()
    captured: deque = field(default_factory=lambda: deque(maxlen=512))
    limits: Any = DEFAULT_LIMITS

    def subscriptions(self) -> tuple[str, ...]:
        p = self.topics.prefix
        return (f"{p}/dev/+/up/open", f"{p}/dev/+/up/v/{self.verifier_id}")

    def verifier_receives(self, topic: str) -> bool:
        from paho.mqtt.client import topic_matches_sub

        try:
            return any(topic_matches_sub(s, topic) for s in self.subscriptions())
        except ValueError:
            return False

    def acl_allows(self, device_id: str, topic: str) -> bool:
        """The production ACL's write rule for a device: its own uplink subtree only."""
        from paho.mqtt.client import topic_matches_sub

        return not self.acl or topic_matches_sub(f"{self.topics.prefix}/dev/{device_id}/up/#", topic)

    def foreign(self, me: str, rng: random.Random, victims_only: bool = False) -> Captured | None:
        """Another device's captured message; half the time one of the latest (a live session)."""
        pool = [c for c in self.captured if c.device_id != me and (not victims_only or c.device_id in self.victims)]
        if not pool:
            return None
        return rng.choice(pool[-8:] if rng.random() < 0.5 else pool)


@dataclass
class Identity:
    """An attacker: its device id and, when provisioned, its keys (security.channel.DeviceKeys)."""

    device_id: str
    keys: Any = None  # None: a stranger nobody provisioned (its sealed opens use a random key)

    @property
    def provisioned(self) -> bool:
        return self.keys is not None


# ---------------------------------------------------------------------- prediction


def peek_session_id(payload: bytes) -> bytes | None:
    try:
        items = msgpack.unpackb(payload, raw=False, max_bin_len=1 << 20)
    except Exception:
        return None
    if isinstance(items, list) and len(items) > 2 and isinstance(items[2], bytes) and len(items[2]) == 16:
        return items[2]
    return None


def predict(ctx: FuzzContext, me: Identity, kind: str, topic: str, payload: bytes, note: str = "") -> Attack:
    """The contract's outcome for a payload whose session id nobody holds, from the decoder itself."""
    if not ctx.verifier_receives(topic) or not ctx.acl_allows(me.device_id, topic):
        return Attack(kind, topic, payload, _exp(DROPPED), reply=False, note=note)
    try:
        uplink = ctx.topics.parse_uplink(topic)
    except WireError as err:
        return Attack(kind, topic, payload, _exp(NO_REPLY), reply=False, counted=err.reason, note=note)
    try:
        msg = decode(payload, ctx.limits)
    except WireError as err:
        return Attack(kind, topic, payload, _exp(err.reason), note=note)
    except Exception as exc:  # the decoder itself failed: a bug the verifier will count as internal
        return Attack(kind, topic, payload, _exp(reason(ErrorCode.INTERNAL)), note=f"decoder raised {exc!r}")
    if uplink.kind == "open":
        if isinstance(msg, SealedOpen):
            code = ErrorCode.DECRYPT_FAILED if me.provisioned else ErrorCode.UNKNOWN_DEVICE
        elif isinstance(msg, SessionOpen):
            code = ErrorCode.PLAINTEXT_REFUSED
        else:
            code = ErrorCode.UNKNOWN_TYPE
        return Attack(kind, topic, payload, _exp(reason(code)), note=note)
    if isinstance(msg, Sealed):
        return Attack(kind, topic, payload, _exp(RESYNC), note=note)
    if isinstance(msg, (DraftMsg, Close)):
        return Attack(kind, topic, payload, _exp(reason(ErrorCode.PLAINTEXT_REFUSED)), note=note)
    return Attack(kind, topic, payload, _exp(reason(ErrorCode.UNKNOWN_TYPE)), note=note)


# ---------------------------------------------------------------------- templates


def pack(items: list[Any]) -> bytes:
    return msgpack.packb(items, use_bin_type=True)


def fields_of(msg) -> list[Any]:
    return msgpack.unpackb(encode(msg), raw=False)


def _tokens(ctx: FuzzContext, rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(ctx.vocab) for _ in range(n)]


def valid_open(ctx: FuzzContext, rng: random.Random, sid: bytes | None = None, **over: Any) -> SessionOpen:
    kw: dict[str, Any] = dict(prompt_ids=_tokens(ctx, rng, rng.randint(1, 6)), tokenizer_fp=ctx.fingerprint,
                              gamma=4, q_top=4, max_new_tokens=rng.randint(4, 12))
    kw.update(over)
    return SessionOpen(session_id=sid or rng.randbytes(16), **kw)


def templates(ctx: FuzzContext, rng: random.Random) -> dict[str, tuple[list[Any], str]]:
    """One valid message of each type as a field list, with the topic kind it travels on."""
    sid = rng.randbytes(16)
    k = rng.randint(1, 4)
    ids = [[rng.randrange(ctx.vocab), rng.randrange(ctx.vocab)] for _ in range(k)]
    q = SparseQWire(2, struct.pack(f"<{2 * k}I", *sum(ids, [])), struct.pack(f"<{2 * k}H", *([3, 1] * k)))
    features = None
    if ctx.feature_shape is not None:
        features = Features("float16", ctx.feature_shape, bytes(2 * math.prod(ctx.feature_shape)))
    return {
        "OPEN": (fields_of(valid_open(ctx, rng, sid, features=features)), "open"),
        "DRAFT": (fields_of(DraftMsg(sid, rng.randrange(100), rng.randint(1, 40), [i[0] for i in ids], q)), "up"),
        "CLOSE": (fields_of(Close(sid, "done")), "up"),
        "SEALED_OPEN": (fields_of(SealedOpen(sid, ctx.verifier_key_id, rng.randbytes(32), rng.randbytes(48))), "open"),
        "SEALED": (fields_of(Sealed(sid, rng.randrange(100), rng.randbytes(40))), "up"),
        "OPENED": (fields_of(Opened(sid, ctx.verifier_id, 5)), "up"),
        "VERDICT": (fields_of(VerdictMsg(sid, 1, [True, False], 1, 7, 9, False)), "up"),
        "RESYNC": (fields_of(Resync(sid, "x")), "up"),
        "ERROR": (fields_of(ErrorMsg(sid, 1, 5, "x")), "up"),
    }


UPLINK_TYPES = ("OPEN", "DRAFT", "CLOSE", "SEALED_OPEN", "SEALED")
WRONG_TYPES: list[Any] = ["text", b"\x01\x02\x03", [], [1, "a"], 1.5, -7, 2**64 - 1, True, False, None,
                          {"k": 1}, [[[]]], b"\x00" * 16, "x" * 16]
OUT_OF_RANGE: list[Any] = [-1, 0, 1, 2**31, 2**32, 2**63, 2**64 - 1, -(2**63), 1e308, -1e-9, float("nan"),
                           float("inf"), float("-inf"), 100.5, 33, 65, 4097, 2049, -0.0]


def _topic(ctx: FuzzContext, me: Identity, where: str) -> str:
    return ctx.topics.open(me.device_id) if where == "open" else ctx.topics.session_up(me.device_id, ctx.verifier_id)


def _other(where: str) -> str:
    return "up" if where == "open" else "open"


# ---------------------------------------------------------------------- stateless generators
# Each returns one Attack for `me`, or None when it has nothing to send yet (no captured traffic).

Gen = Callable[[FuzzContext, Identity, random.Random], "Attack | None"]


def gen_random_bytes(ctx, me, rng):
    n = rng.choice([0, 1, 2, 3, 8, 17, 64, 300, 2048])
    payload = rng.randbytes(n) if rng.random() < 0.7 else bytes([rng.choice([0x90 + rng.randint(2, 15), 0xdc, 0xdd])]) \
        + rng.randbytes(n)
    return predict(ctx, me, "random_bytes", _topic(ctx, me, rng.choice(["open", "up"])), payload)


def gen_truncated(ctx, me, rng):
    items, where = templates(ctx, rng)[rng.choice(UPLINK_TYPES)]
    data = pack(items)
    return predict(ctx, me, "truncated", _topic(ctx, me, where), data[:rng.randrange(len(data))])


def gen_bitflip_plain(ctx, me, rng):
    items, where = templates(ctx, rng)[rng.choice(UPLINK_TYPES)]
    data = bytearray(pack(items))
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return predict(ctx, me, "bitflip_plain", _topic(ctx, me, where), bytes(data))


def gen_bad_version(ctx, me, rng):
    items, where = templates(ctx, rng)[rng.choice(UPLINK_TYPES)]
    items[0] = rng.choice([0, 2, 3, 255, -1, 2**64 - 1, "1", None, True, 1.5, [1], b"\x01"])
    return predict(ctx, me, "bad_version", _topic(ctx, me, where), pack(items))


def gen_bad_type(ctx, me, rng):
    tpl = templates(ctx, rng)
    name = rng.choice(list(tpl))
    items, where = tpl[name]
    if name in UPLINK_TYPES and rng.random() < 0.6:
        items[1] = rng.choice([0, 10, 99, -1, 2**64 - 1, "OPEN", None, True, 1.5, [3]])
    else:
        where = rng.choice(["open", "up"]) if name not in UPLINK_TYPES else _other(where)
    return predict(ctx, me, "bad_type", _topic(ctx, me, where), pack(items), note=name)


def gen_field_type(ctx, me, rng):
    name = rng.choice(UPLINK_TYPES)
    items, where = templates(ctx, rng)[name]
    index = rng.randrange(2, len(items))
    items[index] = rng.choice(WRONG_TYPES)
    return predict(ctx, me, "field_type", _topic(ctx, me, where), pack(items), note=f"{name}[{index}]")


def gen_field_range(ctx, me, rng):
    name = rng.choice(UPLINK_TYPES)
    items, where = templates(ctx, rng)[name]
    index = rng.randrange(2, len(items))
    value = rng.choice(OUT_OF_RANGE)
    if isinstance(items[index], list) and items[index] and all(isinstance(t, int) for t in items[index]):
        items[index] = [*items[index][:-1], value]  # one entry of a token list
    else:
        items[index] = value
    return predict(ctx, me, "field_range", _topic(ctx, me, where), pack(items), note=f"{name}[{index}]")


def gen_oversize(ctx, me, rng):
    lim = ctx.limits
    tpl = templates(ctx, rng)
    choice = rng.randrange(9)
    if choice == 0:
        items, where = tpl["OPEN"]
        items[3] = [5] * (lim.max_prompt_tokens + 1)
    elif choice == 1:
        items, where = tpl["DRAFT"]
        items[5], items[6] = [5] * (lim.max_gamma + 1), None
    elif choice == 2:
        items, where = tpl["OPEN"]
        items[12] = [5] * (lim.max_stop_tokens + 1)
    elif choice == 3:
        items, where = tpl["OPEN"]
        items[14] = [5] * (lim.max_new_tokens + 1)
    elif choice == 4:
        items, where = tpl["CLOSE"]
        items[3] = "x" * rng.choice([lim.max_text_chars + 1, 4 * lim.max_text_chars + 1])
    elif choice == 5:
        items, where = tpl[rng.choice(UPLINK_TYPES)]
        items += [None] * (lim.max_fields + 1 - len(items))
    elif choice == 6:
        items, where = tpl["OPEN"]
        items[3] = [5] * (max(lim.max_prompt_tokens, lim.max_new_tokens) + 1)
    elif choice == 7:
        items, where = tpl["SEALED"]
        items[4] = bytes(lim.max_payload_bytes + 1)
    else:
        items, where = tpl["OPEN"]
        n = lim.max_feature_bytes // 2 + 8
        items[4] = ["float16", [n], bytes(2 * n)]
    return predict(ctx, me, "oversize", _topic(ctx, me, where), pack(items), note=str(choice))


def gen_token_vocab(ctx, me, rng):
    bad = rng.choice([ctx.vocab, ctx.vocab + 1, 2**16, MAX_TOKEN_ID, MAX_TOKEN_ID + 1, 2**32])
    tpl = templates(ctx, rng)
    if rng.random() < 0.5:
        items, where = tpl["OPEN"]
        items[rng.choice([3, 12, 14])] = [bad]
    else:
        items, where = tpl["DRAFT"]
        items[5], items[6] = [bad], None
    return predict(ctx, me, "token_vocab", _topic(ctx, me, where), pack(items), note=str(bad))


def gen_features_plain(ctx, me, rng):
    items, where = templates(ctx, rng)["OPEN"]
    shape = list(ctx.feature_shape or (4, 8))
    n = math.prod(shape)
    nan = struct.pack("<e", float("nan")) * n
    items[4] = rng.choice([
        ["float64", shape, bytes(8 * n)], ["int8", shape, bytes(n)], ["bfloat16", shape, bytes(2 * n)],
        [5, shape, bytes(2 * n)], ["float16", [], b""], ["float16", [1, 1, 1, n], bytes(2 * n)],
        ["float16", [0, n], b""], ["float16", [-1, n], bytes(2 * n)], ["float16", [True, n], bytes(2 * n)],
        ["float16", shape, bytes(2 * n - 1)], ["float16", shape, nan], ["float32", shape, struct.pack("<f", math.inf) * n],
        ["float16", shape, "text"], ["float16", shape], "features", ["float16", [n + 1], bytes(2 * n + 2)],
    ])
    return predict(ctx, me, "features_plain", _topic(ctx, me, where), pack(items))


def gen_features_overflow(ctx, me, rng):
    """A shape whose element count overflows int64 to 0, with empty data (schemas/messages.py)."""
    items, where = templates(ctx, rng)["OPEN"]
    items[4] = ["float16", rng.choice([[2**32, 2**32], [2**62, 4], [2**33, 2**31]]), b""]
    return Attack("features_overflow", _topic(ctx, me, where), pack(items), _exp(reason(ErrorCode.BAD_FEATURES)))


def gen_bad_topic(ctx, me, rng):
    p, vid = ctx.topics.prefix, ctx.verifier_id
    bad_id = rng.choice(["-x", "_lead", ".", ".dev", "", "a" * 65, "é", "a b", "x$", "x@y", "%u", "ü" * 3])
    topic = rng.choice([
        f"{p}/dev/{bad_id}/up/open", f"{p}/dev/{bad_id}/up/v/{vid}",
        f"{p}/dev/{me.device_id}/up", f"{p}/dev/{me.device_id}/up/open/x", f"{p}/dev/{me.device_id}/up/v",
        f"{p}/dev/{me.device_id}/up/v/{vid}/x", f"{p}/dev/{me.device_id}/up/v/other-verifier",
        f"{p}/devices/{me.device_id}/up/open",
    ])
    items, _ = templates(ctx, rng)[rng.choice(UPLINK_TYPES)]
    return predict(ctx, me, "bad_topic", topic, pack(items), note=topic)


def _seal_open(ctx: FuzzContext, me: Identity, open_msg: SessionOpen, *, topic: str | None = None,
               inner: bytes | None = None, device_key: Any = None, verifier_pub: Any = None):
    from security.channel import device_open
    from security.keys import generate_keypair

    key = device_key or (me.keys.device_key if me.keys is not None else generate_keypair())
    return device_open(key, verifier_pub or ctx.verifier_pub, ctx.verifier_key_id, me.device_id,
                       open_msg.session_id, topic or ctx.topics.open(me.device_id),
                       encode(open_msg) if inner is None else inner)


def gen_sealed_open_tamper(ctx, me, rng):
    """Sealed OPENs that must not authenticate."""
    from security.keys import generate_keypair

    msg = valid_open(ctx, rng)
    topic = ctx.topics.open(me.device_id)
    how = rng.choice(["flip", "truncate", "unknown_kid", "zero_ephemeral", "random_ephemeral", "wrong_topic",
                      "wrong_device_key", "wrong_verifier_key", "relabel_sid", "empty"])
    cipher, so = _seal_open(ctx, me, msg, topic=ctx.topics.session_up(me.device_id, ctx.verifier_id)
                            if how == "wrong_topic" else None,
                            device_key=generate_keypair() if how == "wrong_device_key" else None,
                            verifier_pub=generate_keypair().public_bytes if how == "wrong_verifier_key" else None)
    ct, kid, eph, sid = so.ciphertext, so.verifier_key_id, so.ephemeral_pub, so.session_id
    if how == "flip":
        b = bytearray(ct)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        ct = bytes(b)
    elif how == "truncate":
        ct = ct[:rng.randrange(16)]
    elif how == "empty":
        ct = b""
    elif how == "unknown_kid":
        kid = "k" + rng.randbytes(6).hex()
    elif how == "zero_ephemeral":
        eph = bytes(32)
    elif how == "random_ephemeral":
        eph = rng.randbytes(32)
    elif how == "relabel_sid":
        sid = rng.randbytes(16)
    code = ErrorCode.DECRYPT_FAILED if me.provisioned else ErrorCode.UNKNOWN_DEVICE
    return Attack("sealed_open_tamper", topic, encode(SealedOpen(sid, kid, eph, ct)), _exp(reason(code)), note=how)


def gen_sealed_open_semantic(ctx, me, rng):
    """Well-sealed OPENs whose content breaks a rule the verifier checks after decryption."""
    sid = rng.randbytes(16)
    o = valid_open(ctx, rng, sid)
    oor, bf = reason(ErrorCode.OUT_OF_RANGE), reason(ErrorCode.BAD_FEATURES)
    how = rng.choice(["not_open", "sid_mismatch", "garbage", "tokenizer", "prompt_vocab", "generated_vocab",
                      "stop_vocab", "empty_prompt", "too_long", "max_new_too_big", "features_shape",
                      "features_rank"])
    inner: bytes | None = None
    expect = _exp(oor)
    if how == "not_open":
        inner, expect = encode(DraftMsg(sid, 0, 1, [1])), _exp(reason(ErrorCode.MALFORMED))
    elif how == "sid_mismatch":
        inner, expect = encode(valid_open(ctx, rng)), _exp(reason(ErrorCode.MALFORMED))
    elif how == "garbage":
        inner = rng.randbytes(rng.randint(1, 40))
        try:
            decode(inner)
            expect = _exp(reason(ErrorCode.MALFORMED), reason(ErrorCode.UNKNOWN_TYPE))
        except WireError as err:
            expect = _exp(err.reason)
    elif how == "tokenizer":
        o = valid_open(ctx, rng, sid, tokenizer_fp=rng.randbytes(16))
        expect = _exp(reason(ErrorCode.TOKENIZER_MISMATCH))
    elif how == "prompt_vocab":
        o = valid_open(ctx, rng, sid, prompt_ids=[1, ctx.vocab + rng.randrange(1000)])
    elif how == "generated_vocab":
        o = valid_open(ctx, rng, sid, generated_ids=[ctx.vocab])
    elif how == "stop_vocab":
        o = valid_open(ctx, rng, sid, stop_token_ids=[MAX_TOKEN_ID])
    elif how == "empty_prompt":
        o = valid_open(ctx, rng, sid, prompt_ids=[])
    elif how == "too_long":
        o = valid_open(ctx, rng, sid, prompt_ids=[1] * min(ctx.max_positions, ctx.limits.max_prompt_tokens))
    elif how == "max_new_too_big":
        o = valid_open(ctx, rng, sid, max_new_tokens=min(ctx.max_positions, ctx.limits.max_new_tokens))
    else:
        shape = (ctx.feature_shape or (4, 8))
        shape = (shape[0] + 1, *shape[1:]) if how == "features_shape" else (2, *shape)
        o = valid_open(ctx, rng, sid, features=Features("float16", tuple(shape), bytes(2 * math.prod(shape))))
        expect = _exp(bf)
    if not me.provisioned:
        expect = _exp(reason(ErrorCode.UNKNOWN_DEVICE))
    cipher, so = _seal_open(ctx, me, o, inner=inner)
    return Attack("sealed_open_semantic", ctx.topics.open(me.device_id), encode(so), expect, cipher=cipher, note=how,
                  new_session=True)


def gen_resume_overflow(ctx, me, rng):
    """A resume whose generated_ids exceed max_new_tokens: the position bound must still hold."""
    if not me.provisioned:
        return None
    sid = rng.randbytes(16)
    n = min(ctx.limits.max_new_tokens, max(4 * ctx.max_positions, 64))
    o = valid_open(ctx, rng, sid, max_new_tokens=4, generated_ids=[1] * n)
    cipher, so = _seal_open(ctx, me, o)
    return Attack("resume_overflow", ctx.topics.open(me.device_id), encode(so),
                  _exp(reason(ErrorCode.OUT_OF_RANGE)), cipher=cipher, note=f"{n} generated ids", new_session=True)


def gen_replay_captured(ctx, me, rng):
    """Another device's captured sealed message replayed on the attacker's own topic."""
    cap = ctx.foreign(me.device_id, rng)
    if cap is None:
        return None
    if cap.is_open:
        # Its session held: fails to authenticate as this device's (or this device is unknown);
        # its session over: a verifier that remembers sealed OPENs calls it a replay first.
        code = ErrorCode.DECRYPT_FAILED if me.provisioned else ErrorCode.UNKNOWN_DEVICE
        return Attack("replay_captured", ctx.topics.open(me.device_id), cap.payload,
                      _exp(reason(code), reason(ErrorCode.REPLAY)), note="open")
    # Held by its device: wrong device; finished: resync; squatted by this attacker: decrypt failed.
    return Attack("replay_captured", ctx.topics.session_up(me.device_id, ctx.verifier_id), cap.payload,
                  _exp(reason(ErrorCode.WRONG_DEVICE), RESYNC, reason(ErrorCode.DECRYPT_FAILED)), note="sealed")


def gen_foreign_session(ctx, me, rng):
    """Another device's session id (from captured traffic) on the attacker's own topics."""
    cap = ctx.foreign(me.device_id, rng)
    if cap is None:
        return None
    sid, up, op = cap.session_id, ctx.topics.session_up(me.device_id, ctx.verifier_id), ctx.topics.open(me.device_id)
    how = rng.choice(["sealed", "plain_draft", "plain_close", "plain_open", "squat"])
    if how == "sealed":
        return Attack("foreign_session", up, encode(Sealed(sid, rng.randrange(1, 50), rng.randbytes(40))),
                      _exp(reason(ErrorCode.WRONG_DEVICE), RESYNC, reason(ErrorCode.DECRYPT_FAILED)), note=how)
    if how == "plain_draft":
        return Attack("foreign_session", up, encode(DraftMsg(sid, rng.randrange(50), 5, [1, 2])),
                      _exp(reason(ErrorCode.PLAINTEXT_REFUSED)), note=how)
    if how == "plain_close":
        return Attack("foreign_session", up, encode(Close(sid, "bye")), _exp(reason(ErrorCode.PLAINTEXT_REFUSED)),
                      note=how)
    if how == "plain_open" or not me.provisioned:
        payload = encode(valid_open(ctx, rng, sid)) if how == "plain_open" else encode(
            _seal_open(ctx, me, valid_open(ctx, rng, sid))[1])
        code = ErrorCode.PLAINTEXT_REFUSED if how == "plain_open" else ErrorCode.UNKNOWN_DEVICE
        return Attack("foreign_session", op, payload, _exp(reason(code)), note=how)
    # A well-sealed OPEN of the attacker's own with the other device's session id: refused while
    # that device holds it; once it finished, the id is free and the attacker gets a session.
    cipher, so = _seal_open(ctx, me, valid_open(ctx, rng, sid))
    return Attack("foreign_session", op, encode(so), _exp(reason(ErrorCode.WRONG_DEVICE), OPENED), cipher=cipher,
                  note=how, new_session=True)


def gen_unknown_session(ctx, me, rng):
    sid, up = rng.randbytes(16), ctx.topics.session_up(me.device_id, ctx.verifier_id)
    how = rng.choice(["sealed", "plain_draft", "plain_close"])
    if how == "sealed":
        return Attack("unknown_session", up, encode(Sealed(sid, rng.randrange(2**20), rng.randbytes(60))),
                      _exp(RESYNC), note=how)
    msg = DraftMsg(sid, rng.randrange(50), 3, [1]) if how == "plain_draft" else Close(sid)
    return Attack("unknown_session", up, encode(msg), _exp(reason(ErrorCode.PLAINTEXT_REFUSED)), note=how)


def gen_spoof(ctx, me, rng):
    """Only with --spoof on an open broker: payloads on a well-behaved device's own topics."""
    cap = ctx.foreign(me.device_id, rng, victims_only=True)
    if cap is None:
        return None
    dev = cap.device_id
    up, op = ctx.topics.session_up(dev, ctx.verifier_id), ctx.topics.open(dev)
    how = rng.choice(["replay", "garbage_sealed", "plain_draft", "plain_close"])
    if how == "replay":
        topic, payload = (op if cap.is_open else up), cap.payload
    elif how == "garbage_sealed":
        topic, payload = up, encode(Sealed(cap.session_id, rng.randrange(1, 60), rng.randbytes(40)))
    elif how == "plain_draft":
        topic, payload = up, encode(DraftMsg(cap.session_id, rng.randrange(12), 5, [1]))
    else:
        topic, payload = up, encode(Close(cap.session_id))
    return Attack("spoof", topic, payload, _exp(SPOOFED), reply=False, counted="spoof", note=how)


STATELESS: dict[str, tuple[Gen, float]] = {
    "random_bytes": (gen_random_bytes, 8),
    "truncated": (gen_truncated, 8),
    "bitflip_plain": (gen_bitflip_plain, 6),
    "bad_version": (gen_bad_version, 4),
    "bad_type": (gen_bad_type, 5),
    "field_type": (gen_field_type, 12),
    "field_range": (gen_field_range, 10),
    "oversize": (gen_oversize, 4),
    "token_vocab": (gen_token_vocab, 4),
    "features_plain": (gen_features_plain, 5),
    "features_overflow": (gen_features_overflow, 0.5),
    "bad_topic": (gen_bad_topic, 4),
    "sealed_open_tamper": (gen_sealed_open_tamper, 7),
    "sealed_open_semantic": (gen_sealed_open_semantic, 8),
    "resume_overflow": (gen_resume_overflow, 0.3),
    "replay_captured": (gen_replay_captured, 5),
    "foreign_session": (gen_foreign_session, 5),
    "unknown_session": (gen_unknown_session, 3),
    "spoof": (gen_spoof, 6),
}
STATEFUL_KINDS = ("session_tamper", "session_replay", "session_inner", "session_plaintext",
                  "replay_open_after_close")
CAPS = {"resume_overflow": 5}  # each costs the verifier a long prefill today: enough to show it


# ====================================================================== the attacker's client


class Budget:
    """A shared count of hostile payloads left to send."""

    def __init__(self, n: int):
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class Tally:
    """What every attacker sent and saw."""

    sent: Counter = field(default_factory=Counter)  # kind -> payloads
    outcomes: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome -> n
    observed: Counter = field(default_factory=Counter)  # rejection reason -> n, from the replies
    counted_silently: Counter = field(default_factory=Counter)  # bad topics (no reply to anyone)
    scaffold: Counter = field(default_factory=Counter)
    violations: list[dict] = field(default_factory=list)
    violation_count: Counter = field(default_factory=Counter)
    unsolicited: int = 0
    undecodable: int = 0
    missing: int = 0
    spoofed: int = 0

    def record(self, attack: Attack, outcome: str, detail: str = "") -> None:
        self.outcomes.setdefault(attack.kind, Counter())[outcome] += 1
        if outcome not in NON_REJECTIONS and outcome != "undecodable":
            self.observed[outcome] += 1
        if outcome not in attack.expect:
            self.violation_count[attack.kind] += 1
            if len(self.violations) < 50:
                self.violations.append({"kind": attack.kind, "note": attack.note, "topic": attack.topic,
                                        "expected": sorted(attack.expect), "got": outcome, "detail": detail[:200],
                                        "payload_head": attack.payload[:48].hex()})


class Attacker:
    """One attacker device: publishes attacks, matches each reply on its downlink to its attack."""

    def __init__(self, ident: Identity, ctx: FuzzContext, transport: "Transport", tally: Tally, window: int):
        self.ident = ident
        self.ctx = ctx
        self.transport = transport
        self.tally = tally
        self.down = ctx.topics.down(ident.device_id)
        self.pending: deque[tuple[Attack, asyncio.Future]] = deque()
        self.slots = asyncio.Semaphore(window)
        self.ciphers: dict[bytes, Any] = {}
        self.cleanups: set[asyncio.Task] = set()

    async def send(self, attack: Attack) -> asyncio.Future | None:
        """Publish; returns a future of (outcome, decoded reply) when a reply is due."""
        (self.tally.scaffold if attack.scaffold else self.tally.sent)[attack.kind] += 1
        if attack.counted == "spoof":
            self.tally.spoofed += 1
        if attack.cipher is not None:
            sid = peek_session_id(attack.payload)
            if sid is not None:
                self.ciphers[sid] = attack.cipher
        future: asyncio.Future | None = None
        if attack.reply:
            await asyncio.wait_for(self.slots.acquire(), 30)
            future = asyncio.get_running_loop().create_future()
            self.pending.append((attack, future))
        else:
            outcome = DROPPED if DROPPED in attack.expect else SPOOFED if attack.counted == "spoof" else NO_REPLY
            self.tally.record(attack, outcome)
            if attack.counted and attack.counted != "spoof":
                self.tally.counted_silently[attack.counted] += 1
        await self.transport.publish(attack.topic, attack.payload)
        return future

    async def request(self, attack: Attack) -> tuple[str, Any]:
        future = await self.send(attack)
        if future is None:
            return NO_REPLY, None
        return await asyncio.wait_for(future, 30)

    def on_message(self, payload: bytes) -> None:
        if not self.pending:
            self.tally.unsolicited += 1
            return
        attack, future = self.pending.popleft()
        self.slots.release()
        outcome, msg, detail = self.classify(attack, payload)
        if outcome == "undecodable":
            self.tally.undecodable += 1
        sid = peek_session_id(attack.payload)
        got_sid = getattr(msg, "session_id", None)
        if sid is not None and got_sid is not None and got_sid != sid and attack.kind != "session_inner":
            detail = f"reply for session {got_sid.hex()} (misaligned?) " + detail
        self.tally.record(attack, outcome, detail)
        if outcome == OPENED and attack.new_session:
            task = asyncio.get_running_loop().create_task(self._close_intruding_session(attack, msg))
            self.cleanups.add(task)
            task.add_done_callback(self.cleanups.discard)
        if not future.done():
            future.set_result((outcome, msg))

    def classify(self, attack: Attack, payload: bytes) -> tuple[str, Any, str]:
        try:
            msg = decode(payload)
        except WireError as err:
            return "undecodable", None, str(err)
        if isinstance(msg, Sealed):
            cipher = attack.cipher or self.ciphers.get(msg.session_id)
            if cipher is None or cipher.session_id != msg.session_id:
                cipher = self.ciphers.get(msg.session_id)
            if cipher is None:
                return "undecodable", None, "sealed reply for a session this sender holds no key for"
            try:
                inner, _ = cipher.open(self.down, msg)
                msg = decode(inner)
            except WireError as err:
                return "undecodable", None, f"sealed reply: {err}"
        if isinstance(msg, ErrorMsg):
            try:
                return reason(ErrorCode(msg.code)), msg, msg.message
            except ValueError:
                return f"code_{msg.code}", msg, msg.message
        if isinstance(msg, Resync):
            return RESYNC, msg, msg.reason
        if isinstance(msg, Opened):
            return OPENED, msg, ""
        if isinstance(msg, VerdictMsg):
            return VERDICT, msg, ""
        return f"unexpected_{msg.type.name.lower()}", msg, ""

    async def _close_intruding_session(self, attack: Attack, opened: Opened) -> None:
        """A hostile payload won a session (a squat, or a bug): give it back with a sealed CLOSE."""
        cipher = attack.cipher
        if cipher is None or opened is None:
            return
        up = self.ctx.topics.session_up(self.ident.device_id, self.ctx.verifier_id)
        sealed = cipher.seal(up, encode(Close(opened.session_id, "fuzz cleanup")))
        await self.send(Attack("cleanup_close", up, encode(sealed), _exp(NO_REPLY), reply=False, scaffold=True))

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until every reply due so far is in. MQTT keeps order only within one topic, so
        an attacker switching topics waits here first, to keep replies matched to payloads."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (self.pending or self.cleanups) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        while self.pending:
            attack, future = self.pending.popleft()
            self.tally.missing += 1
            self.tally.record(attack, "missing")
            if not future.done():
                future.set_result(("missing", None))


# ---------------------------------------------------------------------- transports


class Transport:
    async def publish(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError


class MqttTransport(Transport):
    """One aiomqtt client; its downlink messages go to `on_message`."""

    def __init__(self, url: str, client_id: str, auth: Any, subscribe: list[str], on_message: Callable):
        from edgespec.mqtt import make_client

        self.client = make_client(url, client_id=client_id, auth=auth)
        self.subscribe_to = subscribe
        self.on_message = on_message
        self.errors: list[str] = []
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> "MqttTransport":
        await self.client.__aenter__()
        for topic in self.subscribe_to:
            await self.client.subscribe(topic, qos=1)
        self._reader = asyncio.create_task(self._read(), name="fuzz-reader")
        return self

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                self.on_message(str(message.topic), payload)
            except Exception as exc:  # one bad message must not stop this reader (cf. EdgeLink._read)
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.client.__aexit__(None, None, None)


class LocalBus(Transport):
    """A verifier core in this process as the only subscriber: for tests without a broker."""

    def __init__(self, core: Any, ctx: FuzzContext):
        self.core = core
        self.ctx = ctx
        self.listeners: dict[str, Callable[[bytes], None]] = {}

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.ctx.verifier_receives(topic):
            for down, reply in self.core.handle(topic, payload):
                if down in self.listeners:
                    asyncio.get_running_loop().call_soon(self.listeners[down], reply)
        await asyncio.sleep(0)


# ====================================================================== stateful attackers


@dataclass
class OwnSession:
    """An attacker's own encrypted session, driven just far enough to reach the checks behind it."""

    sid: bytes
    cipher: Any
    open_payload: bytes
    committed: int
    sampled: bool
    last_seq: int | None = None
    next_seq: int = 0
    done: bool = False
    gone: bool = False  # the verifier dropped it (RESYNC)
    sent: list[tuple[bytes, int]] = field(default_factory=list)  # (sealed payload, inner draft seq)


def _q_for(tokens: list[int], ctx: FuzzContext, rng: random.Random, contains: bool = True) -> SparseQWire:
    """Two entries per drafted token, weights 3:1: the token itself first (or, with `contains`
    False, two other ids, so the token has probability 0)."""
    v = ctx.vocab
    rows = [[t if contains else (t + 1) % v, (t + 2 + rng.randrange(v - 2)) % v] for t in tokens]
    k = len(tokens)
    return SparseQWire(2, struct.pack(f"<{2 * k}I", *sum(rows, [])), struct.pack(f"<{2 * k}H", *([3, 1] * k)))


class SessionAttacker:
    """Opens real sessions with its own keys, then mixes valid drafts with hostile sealed messages."""

    def __init__(self, att: Attacker, ctx: FuzzContext, rng: random.Random, budget: Budget, kinds: set[str]):
        self.att, self.ctx, self.rng, self.budget, self.kinds = att, ctx, rng, budget, kinds
        self.me = att.ident
        self.up = ctx.topics.session_up(self.me.device_id, ctx.verifier_id)
        self.open_topic = ctx.topics.open(self.me.device_id)

    async def run(self, deadline: float) -> None:
        while self.budget.left > 0 and time.monotonic() < deadline:
            s = await self.open_session()
            if s is None:
                break
            await self.drive(s, deadline)
        await self.att.send(Attack("fence", self.up, b"\xc1", _exp(reason(ErrorCode.MALFORMED)), scaffold=True))

    async def open_session(self) -> OwnSession | None:
        sampled = self.rng.random() < 0.4
        o = valid_open(self.ctx, self.rng, temperature=0.8 if sampled else 0.0, max_new_tokens=self.rng.randint(8, 24),
                       seed=self.rng.randrange(2**32))
        cipher, so = _seal_open(self.ctx, self.me, o)
        payload = encode(so)
        out, _ = await self.att.request(Attack("session_open", self.open_topic, payload, _exp(OPENED), cipher=cipher,
                                               scaffold=True))
        if out != OPENED:
            return None
        return OwnSession(o.session_id, cipher, payload, len(o.prompt_ids), sampled,
                          next_seq=self.rng.randrange(1000))

    def _draft(self, s: OwnSession, *, seq: int | None = None, committed: int | None = None,
               tokens: list[int] | None = None, q: Any = ..., sid: bytes | None = None) -> DraftMsg:
        tokens = _tokens(self.ctx, self.rng, self.rng.randint(1, 4)) if tokens is None else tokens
        if q is ...:
            q = _q_for(tokens, self.ctx, self.rng) if s.sampled else None
        seq = (s.next_seq if s.last_seq is None else s.last_seq + 1) if seq is None else seq
        return DraftMsg(sid or s.sid, seq, s.committed if committed is None else committed, tokens, q)

    def _seal(self, s: OwnSession, inner: bytes, topic: str | None = None) -> bytes:
        return encode(s.cipher.seal(topic or self.up, inner))

    async def valid_draft(self, s: OwnSession) -> None:
        draft = self._draft(s)
        payload = self._seal(s, encode(draft))
        expect = _exp(reason(ErrorCode.BAD_SEQUENCE)) if s.done else _exp(VERDICT)
        out, msg = await self.att.request(Attack("session_draft", self.up, payload, expect, cipher=s.cipher,
                                                 scaffold=not s.done))
        if out == VERDICT and isinstance(msg, VerdictMsg):
            s.committed, s.last_seq, s.done = msg.committed_len, draft.seq, msg.done
            s.sent.append((payload, draft.seq))
        self.ctx.captured.append(Captured(self.me.device_id, self.up, s.sid, payload, False))

    async def drive(self, s: OwnSession, deadline: float) -> None:
        actions = [a for a in (self.tamper, self.replay, self.inner, self.plaintext) if self._enabled(a)]
        while self.budget.left > 0 and not s.gone and time.monotonic() < deadline:
            if not s.done and (s.last_seq is None or self.rng.random() < 0.3):
                await self.valid_draft(s)
                continue
            if s.done and self.rng.random() < 0.2 or not actions:
                break
            if not self.budget.take():
                break
            await self.rng.choice(actions)(s)
        if not s.gone:
            close = self._seal(s, encode(Close(s.sid, "done")))
            await self.att.send(Attack("session_close", self.up, close, _exp(NO_REPLY), reply=False, scaffold=True))
            # The CLOSE has no answer: a fence on the same topic tells when it was handled.
            await self.att.request(Attack("fence", self.up, b"\xc1", _exp(reason(ErrorCode.MALFORMED)),
                                          scaffold=True))
        if "replay_open_after_close" in self.kinds and self.budget.take():
            # The recorded sealed OPEN of a finished session, replayed on its own topic: a replay
            # must change nothing (issue 4), so it may not open the session again.
            await self.att.request(Attack("replay_open_after_close", self.open_topic, s.open_payload,
                                          _exp(reason(ErrorCode.REPLAY), reason(ErrorCode.WRONG_DEVICE)),
                                          cipher=s.cipher, new_session=True))

    def _enabled(self, action) -> bool:
        return {"tamper": "session_tamper", "replay": "session_replay", "inner": "session_inner",
                "plaintext": "session_plaintext"}[action.__name__] in self.kinds

    async def tamper(self, s: OwnSession) -> None:
        """A sealed draft that must fail authentication; it changes no state."""
        from security.envelope import Direction, build_aad, seal

        how = self.rng.choice(["flip", "truncate", "wrong_key", "relabel_seq", "wrong_topic", "other_topic",
                               "wrong_direction", "relabel_sid"])
        inner = encode(self._draft(s))
        seq = s.cipher.next_seq
        if how == "wrong_key":
            s.cipher.next_seq += 1
            ct = seal(os.urandom(32), direction=Direction.UPLINK, seq=seq,
                      aad=build_aad(PROTOCOL_VERSION, self.up, self.me.device_id, s.sid, seq), plaintext=inner)
            msg = Sealed(s.sid, seq, ct)
        elif how == "wrong_direction":
            s.cipher.next_seq += 1
            ct = seal(s.cipher.keys.downlink, direction=Direction.DOWNLINK, seq=seq,
                      aad=build_aad(PROTOCOL_VERSION, self.up, self.me.device_id, s.sid, seq), plaintext=inner)
            msg = Sealed(s.sid, seq, ct)
        elif how == "wrong_topic":
            msg = s.cipher.seal(self.open_topic, inner)
        elif how == "other_topic":
            msg = s.cipher.seal(self.ctx.topics.session_up(self.me.device_id, "other-verifier"), inner)
        else:
            msg = s.cipher.seal(self.up, inner)
            ct = bytearray(msg.ciphertext)
            if how == "flip":
                ct[self.rng.randrange(len(ct))] ^= 1 << self.rng.randrange(8)
                msg = Sealed(s.sid, msg.seq, bytes(ct))
            elif how == "truncate":
                msg = Sealed(s.sid, msg.seq, bytes(ct[:self.rng.randrange(len(ct))]))
            elif how == "relabel_seq":
                msg = Sealed(s.sid, msg.seq + self.rng.randint(1, 1000), bytes(ct))
            else:  # the session id of another of this device's sessions? a fresh one: RESYNC
                await self.att.request(Attack("session_tamper", self.up, encode(Sealed(self.rng.randbytes(16),
                                              msg.seq, bytes(ct))), _exp(RESYNC), cipher=s.cipher, note=how))
                return
        await self.att.request(Attack("session_tamper", self.up, encode(msg), _exp(reason(ErrorCode.DECRYPT_FAILED)),
                                      cipher=s.cipher, note=how))

    async def replay(self, s: OwnSession) -> None:
        """Envelopes the verifier has already seen: the last draft again is a QoS-1 duplicate
        (answered from the cache); anything older, or behind the window, is a replay."""
        if not s.sent:
            await self.inner(s)
            return
        how = self.rng.choice(["last", "older", "open", "window_jump"])
        if how == "open":
            await self.att.request(Attack("session_replay", self.open_topic, s.open_payload, _exp(OPENED),
                                          cipher=s.cipher, note="open while held"))
            return
        if how == "window_jump" and not s.done:
            s.cipher.next_seq += 64 + self.rng.randrange(64)  # later envelopes leave the old ones behind
            await self.valid_draft(s)
            how = "older"
        payload, seq = s.sent[-1] if how == "last" else self.rng.choice(s.sent)
        dup = seq == s.last_seq and payload == s.sent[-1][0]
        await self.att.request(Attack("session_replay", self.up, payload,
                                      _exp(VERDICT) if dup else _exp(reason(ErrorCode.REPLAY)), cipher=s.cipher,
                                      note=how))

    async def inner(self, s: OwnSession) -> None:
        """Well-sealed messages whose content breaks a rule."""
        rng, ctx = self.rng, self.ctx
        oor, mal = reason(ErrorCode.OUT_OF_RANGE), reason(ErrorCode.MALFORMED)
        bad_seq = reason(ErrorCode.BAD_SEQUENCE)
        choices = ["vocab", "q_vocab", "q_zero_prob", "q_bad_len", "q_zero_row", "wrong_type", "garbage",
                   "other_sid", "committed"]
        if s.sampled:
            choices.append("missing_q")
        if s.last_seq is not None:
            choices += ["seq_jump", "seq_stale"]
        how = rng.choice(choices)
        expect, tokens = _exp(oor), _tokens(ctx, rng, rng.randint(1, 3))
        if how == "vocab":
            inner = encode(self._draft(s, tokens=[*tokens, ctx.vocab + rng.randrange(100)], q=None))
        elif how == "q_vocab":
            q = _q_for(tokens, ctx, rng)
            ids = list(struct.unpack(f"<{2 * len(tokens)}I", q.ids))
            ids[1] = ctx.vocab + rng.randrange(100)
            inner = encode(self._draft(s, tokens=tokens, q=SparseQWire(2, struct.pack(f"<{len(ids)}I", *ids), q.weights)))
        elif how == "q_zero_prob":
            inner = encode(self._draft(s, tokens=tokens, q=_q_for(tokens, ctx, rng, contains=False)))
        elif how == "q_bad_len":
            q = _q_for(tokens, ctx, rng)
            inner = pack([*fields_of(self._draft(s, tokens=tokens, q=None))[:6], [2, q.ids[:-1], q.weights]])
            expect = _exp(mal)
        elif how == "q_zero_row":
            q = _q_for(tokens, ctx, rng)
            inner = encode(self._draft(s, tokens=tokens, q=SparseQWire(2, q.ids, bytes(len(q.weights)))))
        elif how == "missing_q":
            inner, expect = encode(self._draft(s, tokens=tokens, q=None)), _exp(mal)
        elif how == "wrong_type":
            inner = encode(rng.choice([Opened(s.sid, "v", 3), VerdictMsg(s.sid, 0, [True], 1, 1, 3),
                                       Resync(s.sid, "x"), ErrorMsg(s.sid, 0, 1, "x"), valid_open(ctx, rng, s.sid)]))
            expect = _exp(reason(ErrorCode.UNKNOWN_TYPE))
        elif how == "garbage":
            inner = rng.randbytes(rng.randint(0, 30))
            try:
                decode(inner)
                expect = _exp(mal, reason(ErrorCode.UNKNOWN_TYPE), reason(ErrorCode.PLAINTEXT_REFUSED))
            except WireError as err:
                expect = _exp(err.reason)
        elif how == "other_sid":  # the envelope's session is ours, the inner draft's is unknown
            inner, expect = encode(self._draft(s, sid=rng.randbytes(16))), _exp(RESYNC, mal)
        elif how == "seq_jump":
            inner, expect = encode(self._draft(s, seq=s.last_seq + 2 + rng.randrange(100))), _exp(bad_seq)
        elif how == "seq_stale":  # behind the last verdict (or, after seq 0, ahead of the next)
            assert s.last_seq is not None
            inner = encode(self._draft(s, seq=rng.randrange(s.last_seq) if s.last_seq else 5))
            expect = _exp(bad_seq)
        else:  # committed_len off: the verifier drops the session and asks for a resync
            inner, expect = encode(self._draft(s, committed=s.committed + 1 + rng.randrange(5))), _exp(RESYNC)
        if s.done and how in ("vocab", "q_vocab", "q_zero_prob", "missing_q", "committed", "seq_jump"):
            expect = _exp(bad_seq)
        out, _ = await self.att.request(Attack("session_inner", self.up, self._seal(s, inner), expect, cipher=s.cipher,
                                               note=how))
        if out == RESYNC and how == "committed":
            s.gone = True

    async def plaintext(self, s: OwnSession) -> None:
        """Plaintext for an encrypted session, and sealed envelopes on the open topic."""
        how = self.rng.choice(["draft", "close", "sealed_on_open"])
        if how == "sealed_on_open":
            payload, topic = self._seal(s, encode(self._draft(s)), self.open_topic), self.open_topic
            expect = _exp(reason(ErrorCode.UNKNOWN_TYPE))
        else:
            msg = self._draft(s) if how == "draft" else Close(s.sid)
            payload, topic, expect = encode(msg), self.up, _exp(reason(ErrorCode.PLAINTEXT_REFUSED))
        await self.att.request(Attack("session_plaintext", topic, payload, expect, cipher=s.cipher, note=how))


CHUNK = 32  # payloads generated at a time, then sent topic by topic


async def send_by_topic(att: Attacker, attacks: list[Attack]) -> None:
    """Send `attacks` grouped by topic (in first-seen order), settling between topics."""
    for topic in dict.fromkeys(a.topic for a in attacks):
        for a in attacks:
            if a.topic == topic:
                await att.send(a)
        await att.settle()


async def stateless_attacker(att: Attacker, ctx: FuzzContext, rng: random.Random, budget: Budget,
                             kinds: dict[str, float], caps: Counter, deadline: float) -> None:
    kinds = dict(kinds)
    misses = 0
    chunk: list[Attack] = []
    while budget.left > 0 and time.monotonic() < deadline:
        for capped in [k for k in kinds if k in CAPS and caps[k] >= CAPS[k]]:
            del kinds[capped]
        if not kinds:
            break
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        attack = STATELESS[kind][0](ctx, att.ident, rng)
        if attack is None:
            misses += 1
            if misses > 200:  # nothing captured yet for the kinds that need it
                await asyncio.sleep(0.01)
                misses = 0
            continue
        if not budget.take():
            return
        caps[kind] += 1
        chunk.append(attack)
        if len(chunk) >= CHUNK:
            await send_by_topic(att, chunk)
            chunk = []
    await send_by_topic(att, chunk)
    # A last payload that must be answered: once its ERROR is back, all before it were handled.
    await att.send(Attack("fence", _topic(ctx, att.ident, "up"), b"\xc1", _exp(reason(ErrorCode.MALFORMED)),
                          scaffold=True))


# ====================================================================== the run


@dataclass
class FuzzConfig:
    count: int = 10_000
    devices: int = 3
    seed: int = 0
    target_model: str = "default"
    draft_model: str = "default"
    broker: str | None = None  # None: start a broker and a verifier here
    verifier_id: str = "fuzz-verifier"
    verifier_pid: int | None = None
    home: str | None = None
    broker_mode: str = "acl"
    spoof: bool = False
    stateless_attackers: int = 3
    session_attackers: int = 2
    window: int = 32
    max_new_tokens: int = 24
    gamma: int = 4
    rss_growth_mb: float = 64.0
    time_limit_s: float = 600.0
    device_timeout_s: float = 10.0
    kinds: tuple[str, ...] | None = None  # None: all
    exclude: tuple[str, ...] = ()
    threads: int = 1

    def selected(self) -> set[str]:
        every = set(STATELESS) | set(STATEFUL_KINDS)
        chosen = set(self.kinds) if self.kinds else every
        unknown = (chosen | set(self.exclude)) - every
        if unknown:
            raise ValueError(f"unknown attack kinds {sorted(unknown)}; known: {sorted(every)}")
        chosen -= set(self.exclude)
        if not self.spoof:
            chosen.discard("spoof")
        return chosen


@dataclass
class DeviceRecord:
    sessions: int = 0
    exact: int = 0
    mismatched: int = 0
    failed: int = 0
    failed_after_attack: int = 0
    after_attack_ok: int = 0
    tokens: int = 0
    resyncs: int = 0
    errors: list[str] = field(default_factory=list)


def reference_outputs(target: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The target alone, greedy, through Hugging Face `generate`."""
    import torch

    refs = []
    with torch.inference_mode():
        for ids in prompts:
            out = target.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        do_sample=False, max_new_tokens=n)
            refs.append(out[0, len(ids):].tolist())
    return refs


async def device_loop(index: int, url: str, dev_id: str, keys: Any, auth: Any, draft: Any, prompts: list[list[int]],
                      refs: list[list[int]], cfg: FuzzConfig, attack_over: asyncio.Event, warm: asyncio.Event,
                      rec: DeviceRecord) -> None:
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, run_edge_session

    i = index
    while True:
        try:
            async with EdgeLink(url, dev_id, keys=keys, auth=auth, timeout_s=cfg.device_timeout_s) as link:
                while True:
                    after = attack_over.is_set()
                    k = i % len(prompts)
                    i += 1
                    try:
                        out = await run_edge_session(link, draft, EdgeRequest(prompts[k], None, gamma=cfg.gamma,
                                                                              max_new_tokens=cfg.max_new_tokens))
                    except Exception as exc:  # a lost session is the finding; keep generating
                        rec.failed += 1
                        rec.failed_after_attack += after
                        if len(rec.errors) < 10:
                            rec.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                        if after:
                            return
                        continue
                    rec.sessions += 1
                    rec.tokens += len(out.result.token_ids)
                    rec.resyncs += out.resyncs
                    if out.result.token_ids == refs[k]:
                        rec.exact += 1
                    else:
                        rec.mismatched += 1
                        if len(rec.errors) < 10:
                            rec.errors.append(f"prompt {k}: got {out.result.token_ids} want {refs[k]}")
                    warm.set()
                    if after:
                        rec.after_attack_ok += 1
                        return
        except Exception as exc:  # the link itself broke: count it and reconnect
            rec.failed += 1
            if len(rec.errors) < 10:
                rec.errors.append(f"link: {type(exc).__name__}: {exc}"[:300])
            if attack_over.is_set():
                rec.failed_after_attack += 1
                return
            await asyncio.sleep(0.2)


def read_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssWatch:
    """VmRSS of a process sampled in a thread: before, during and after the attack."""

    def __init__(self, pid: int | None, interval_s: float = 0.1):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []
        self.phase_start: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = read_rss_kb(self.pid) if self.pid else None
            if kb is not None:
                self.samples.append((time.monotonic(), kb))
            self._stop.wait(self.interval_s)

    def start(self) -> "RssWatch":
        if self.pid:
            self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        self.phase_start[phase] = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def summary(self) -> dict:
        if not self.samples:
            return {"measured": False}
        t_attack = self.phase_start.get("attack", self.samples[0][0])
        before = [kb for t, kb in self.samples if t <= t_attack] or [self.samples[0][1]]
        later = [kb for t, kb in self.samples if t > t_attack] or [before[-1]]
        mb = 1 / 1024
        return {"measured": True, "before_mb": before[-1] * mb, "max_mb": max(later) * mb,
                "after_mb": later[-1] * mb, "growth_mb": (max(later) - before[-1]) * mb, "samples": len(self.samples)}


class StatsFeed:
    """The verifier's periodic stats messages."""

    def __init__(self) -> None:
        self.latest: tuple[float, dict] | None = None
        self.arrived = asyncio.Event()

    def on_message(self, _topic: str, payload: bytes) -> None:
        try:
            self.latest = (time.monotonic(), json.loads(payload))
        except ValueError:
            return
        self.arrived.set()

    async def next_after(self, t: float, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.latest is not None and self.latest[0] > t:
                return self.latest[1]
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        return None


# ---------------------------------------------------------------------- the system under test


class SelfStarted:
    """A broker (production ACL, or the development config) and a verifier process, on loopback."""

    def __init__(self, cfg: FuzzConfig, target_dir: Path, names: list[str], home: Path, work: Path):
        self.cfg, self.target_dir, self.names, self.home, self.work = cfg, target_dir, names, home, work
        self.passwords: dict[str, str] = {}
        self.broker: Any = None
        self.proc: subprocess.Popen | None = None
        self.log: deque[str] = deque(maxlen=400)
        self.tracebacks = 0
        self.queue_drops = 0  # aiomqtt dropped incoming messages (its queue was full)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.broker.port}"

    def auth(self, user: str):
        from edgespec.mqtt import ClientAuth

        return ClientAuth(username=user, password=self.passwords[user]) if self.passwords else ClientAuth()

    def start(self) -> None:
        from broker.runner import MosquittoBroker

        if self.cfg.broker_mode == "acl":
            self.broker = MosquittoBroker(port=0, config=self._acl_config())
        else:
            self.broker = MosquittoBroker(port=0)
        self.broker.start()
        vid = self.cfg.verifier_id
        url = self.url
        if self.passwords:
            url = f"mqtt://{vid}:{self.passwords[vid]}@127.0.0.1:{self.broker.port}"
        cmd = [sys.executable, "-m", "edgespec.cli", "verifier", "--broker", url, "--target-model",
               str(self.target_dir), "--verifier-id", vid, "--home", str(self.home)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGESPEC_HOME": str(self.home),
               "EDGESPEC_THREADS": str(self.cfg.threads)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                     env=env)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if "Traceback" in line:
                    self.tracebacks += 1
                if "queue is full" in line:
                    self.queue_drops += 1
                if "ready on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True, name="verifier-log").start()
        if not ready.wait(120) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("the verifier did not start:\n" + "\n".join(self.log))

    def _acl_config(self) -> Path:
        from security.mosquitto_files import AclPolicy, ensure_password_file, render_acl, set_password

        p, vid = Topics().prefix, self.cfg.verifier_id
        pw_file, acl_file = self.work / "passwd", self.work / "acl"
        ensure_password_file(pw_file)
        for name in [vid, "fuzz-recorder", "fuzz-operator", *self.names]:
            self.passwords[name] = secrets.token_urlsafe(18)
            set_password(pw_file, name, self.passwords[name])
        acl = render_acl(AclPolicy(prefix=p, verifiers=(vid,)))
        status = f"topic write {p}/verifier/{vid}/status\n"
        if status not in acl:
            raise RuntimeError("the production ACL has no verifier status line to extend")
        # The template lets no one publish or read verifier stats (see the report); add it here.
        acl = acl.replace(status, status + f"topic write {p}/verifier/{vid}/stats\n")
        acl += (f"\n# edgespec fuzz: a wiretap on the uplinks and an operator reading stats\n"
                f"user fuzz-recorder\ntopic read {p}/dev/+/up/#\n"
                f"user fuzz-operator\ntopic read {p}/verifier/+/stats\n")
        acl_file.write_text(acl)
        conf = self.work / "mosquitto-acl.conf"
        conf.write_text("\n".join([
            "per_listener_settings false", "listener 1883 127.0.0.1", "allow_anonymous false",
            f"password_file {pw_file}", f"acl_file {acl_file}", "set_tcp_nodelay true",
            "max_packet_size 1048576", "max_inflight_messages 64", "max_queued_messages 10000",
            "persistence false", "log_dest stderr", "log_type error", "connection_messages false",
            f"user {getpass.getuser()}", ""]))  # as root, Mosquitto would drop to a user that cannot read them
        return conf

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.broker is not None:
            self.broker.stop()


def _stats_delta(before: dict | None, after: dict | None, key: str) -> Counter:
    if after is None:
        return Counter()
    delta = Counter(after.get(key, {}))
    delta.subtract(Counter((before or {}).get(key, {})))
    return Counter({k: v for k, v in delta.items() if v})


def fuzz_context(target: Any, topics: Topics, verifier_id: str, home: Path | None, acl: bool) -> FuzzContext:
    from security.dev_identity import ensure_verifier_keys

    ring = ensure_verifier_keys(home)
    shape = tuple(target.projector.feature_shape) if target.projector is not None else None
    return FuzzContext(topics=topics, verifier_id=verifier_id, vocab=target.vocab_size, fingerprint=target.fingerprint,
                       feature_shape=shape, max_positions=target.max_positions,
                       verifier_pub=ring.public_keys()[ring.current_key_id], verifier_key_id=ring.current_key_id,
                       acl=acl)


def identities(home: Path | None, n_stateless: int, n_session: int, seed: int) -> tuple[list[Identity], list[Identity]]:
    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity

    def provisioned(name: str) -> Identity:
        return Identity(name, DeviceKeys.from_bundle(ensure_dev_identity(home, name)[0]))

    stateless = [provisioned(f"fuzz-att-{i}") for i in range(max(0, n_stateless - 1))]
    stateless.append(Identity(f"fuzz-stranger-{seed % 1000}"))  # nobody provisioned it
    return stateless, [provisioned(f"fuzz-sess-{i}") for i in range(n_session)]


async def attack(ctx: FuzzContext, cfg: FuzzConfig, attackers: list[Attacker], session_attackers: list[Attacker],
                 tally: Tally, kinds: set[str], deadline: float) -> None:
    """All attackers at once; returns once every reply is in (or missing)."""
    stateless_kinds = {k: STATELESS[k][1] for k in STATELESS if k in kinds}
    stateful = kinds & set(STATEFUL_KINDS)
    share = len(stateful) / max(1, len(stateful) + len(stateless_kinds)) if session_attackers else 0.0
    n_session = int(cfg.count * min(0.35, share * 2)) if stateful and session_attackers else 0
    if not stateless_kinds:
        n_session = cfg.count
    stateless_budget, session_budget = Budget(cfg.count - n_session), Budget(n_session)
    caps: Counter = Counter()
    jobs = []
    for i, att in enumerate(attackers):
        if stateless_kinds:
            jobs.append(stateless_attacker(att, ctx, random.Random(cfg.seed * 1000 + i), stateless_budget,
                                           stateless_kinds, caps, deadline))
    for i, att in enumerate(session_attackers):
        if stateful:
            jobs.append(SessionAttacker(att, ctx, random.Random(cfg.seed * 1000 + 500 + i), session_budget,
                                        stateful).run(deadline))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            tally.violations.append({"kind": "attacker", "got": f"{type(r).__name__}: {r}"[:300]})
            tally.violation_count["attacker_crashed"] += 1
    for att in [*attackers, *session_attackers]:
        await att.drain(30)


async def run_mqtt(cfg: FuzzConfig) -> dict:
    from edgespec.config import resolve_model_dir, set_threads
    from edgespec.mqtt import ClientAuth
    from security.channel import DeviceKeys
    from security.dev_identity import default_home, ensure_dev_identity
    from speculative.models import load_lm

    from .bench import TEXT_PROMPTS

    set_threads(cfg.threads)
    kinds = cfg.selected()
    started = time.monotonic()
    deadline = started + cfg.time_limit_s
    target_dir, draft_dir = resolve_model_dir(cfg.target_model, "target"), resolve_model_dir(cfg.draft_model, "draft")
    target, draft = load_lm(target_dir), load_lm(draft_dir)
    prompts = [draft.encode(p) for p in TEXT_PROMPTS]
    refs = reference_outputs(target, prompts, cfg.max_new_tokens)

    work = Path(tempfile.mkdtemp(prefix="edgespec-fuzz-"))
    own = cfg.broker is None
    home = Path(cfg.home) if cfg.home else (work / "home" if own else default_home())
    acl = own and cfg.broker_mode == "acl"
    if cfg.spoof and acl:
        raise ValueError("--spoof needs a broker without ACL (--broker-mode open): the ACL refuses those topics")
    topics = Topics()
    ctx = fuzz_context(target, topics, cfg.verifier_id, home, acl)
    stateless_ids, session_ids = identities(home, cfg.stateless_attackers, cfg.session_attackers, cfg.seed)
    device_ids = [f"fuzz-dev-{i}" for i in range(cfg.devices)]
    ctx.victims = tuple(device_ids)
    device_keys = {d: DeviceKeys.from_bundle(ensure_dev_identity(home, d)[0]) for d in device_ids}
    system: SelfStarted | None = None
    if own:
        system = SelfStarted(cfg, target_dir, [*device_ids, *(i.device_id for i in stateless_ids + session_ids)],
                             home, work)
        system.start()
        url = system.url
        auth = system.auth
        pid = system.proc.pid if system.proc else None
    else:
        url, pid = cfg.broker, cfg.verifier_pid

        def auth(_user: str) -> ClientAuth:
            return ClientAuth()

    rss = RssWatch(pid).start()
    camera_log = logging.getLogger("edgespec.camera")
    camera_level = camera_log.level
    camera_log.setLevel(logging.ERROR)  # spoofed errors make every device warn; the report counts them
    tally = Tally()
    stats = StatsFeed()
    records = [DeviceRecord() for _ in device_ids]
    attack_over = asyncio.Event()
    warm = [asyncio.Event() for _ in device_ids]
    report: dict[str, Any] = {}
    spoof_seen: Counter = Counter()
    try:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            stats_user, rec_user = ("fuzz-operator", "fuzz-recorder") if acl else (None, None)

            def record_uplink(topic: str, payload: bytes) -> None:
                try:
                    msg = decode(payload)
                    up = topics.parse_uplink(topic)
                except Exception:  # WireError, or the decoder's own failures (the features overflow)
                    return
                if isinstance(msg, (Sealed, SealedOpen)) and up.device_id in device_ids:
                    ctx.captured.append(Captured(up.device_id, topic, msg.session_id, payload,
                                                 isinstance(msg, SealedOpen)))

            def spoof_observer(_topic: str, payload: bytes) -> None:
                try:
                    msg = decode(payload)
                except Exception:
                    return
                if isinstance(msg, ErrorMsg):
                    try:
                        spoof_seen[reason(ErrorCode(msg.code))] += 1
                    except ValueError:
                        spoof_seen[f"code_{msg.code}"] += 1

            suffix = secrets.token_hex(3)
            await stack.enter_async_context(MqttTransport(
                url, f"fuzz-stats-{suffix}", auth(stats_user) if stats_user else ClientAuth(),
                [f"{topics.prefix}/verifier/{cfg.verifier_id}/stats"], stats.on_message))
            await stack.enter_async_context(MqttTransport(
                url, f"fuzz-recorder-{suffix}", auth(rec_user) if rec_user else ClientAuth(),
                [f"{topics.prefix}/dev/+/up/#"], record_uplink))
            if cfg.spoof:
                await stack.enter_async_context(MqttTransport(
                    url, f"fuzz-spoof-observer-{suffix}", ClientAuth(), [topics.down(d) for d in device_ids],
                    spoof_observer))
            attackers, session_attackers = [], []
            for ident in stateless_ids + session_ids:
                box: dict[str, Attacker] = {}
                transport = MqttTransport(url, f"fuzz-{ident.device_id}-{suffix}",
                                          auth(ident.device_id) if acl else ClientAuth(),
                                          [topics.down(ident.device_id)],
                                          lambda _t, p, box=box: box["a"].on_message(p))
                att = Attacker(ident, ctx, transport, tally, cfg.window if ident in stateless_ids else 1)
                box["a"] = att
                await stack.enter_async_context(transport)
                (attackers if ident in stateless_ids else session_attackers).append(att)

            device_tasks = [asyncio.create_task(device_loop(
                i, url, d, device_keys[d], auth(d) if acl else ClientAuth(), draft, prompts, refs, cfg, attack_over,
                warm[i], records[i]), name=f"device-{d}") for i, d in enumerate(device_ids)]
            try:
                await asyncio.wait_for(asyncio.gather(*(w.wait() for w in warm)), 120)
            except asyncio.TimeoutError:
                pass
            baseline = await stats.next_after(time.monotonic(), STATS_INTERVAL_S * 2 + 2)
            rss.mark("attack")
            t0 = time.monotonic()
            await attack(ctx, cfg, attackers, session_attackers, tally, kinds, deadline)
            attack_s = time.monotonic() - t0
            attack_over.set()
            done, pending = await asyncio.wait(device_tasks, timeout=max(30.0, cfg.device_timeout_s * 3))
            for task in pending:
                task.cancel()
            probe_ok = False
            if attackers:  # still answering: a last malformed payload gets its ERROR back
                out, _ = await attackers[0].request(Attack("probe", _topic(ctx, attackers[0].ident, "up"), b"\xc1",
                                                           _exp(reason(ErrorCode.MALFORMED)), scaffold=True))
                probe_ok = out == reason(ErrorCode.MALFORMED)
            final = await stats.next_after(time.monotonic(), STATS_INTERVAL_S * 2 + 2)
            rss.mark("after")
            report = build_report(cfg, kinds, tally, baseline, final, records, rss.summary(),
                                  alive=(system.alive() if system else True) and probe_ok and final is not None,
                                  attack_s=attack_s, spoof_seen=spoof_seen,
                                  verifier_log=(list(system.log)[-20:] if system else []),
                                  tracebacks=system.tracebacks if system else 0,
                                  queue_drops=system.queue_drops if system else None, acl=acl, own=own,
                                  target=str(target_dir), draft=str(draft_dir))
    finally:
        rss.stop()
        camera_log.setLevel(camera_level)
        if system is not None:
            system.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.monotonic() - started
    return report


def build_report(cfg: FuzzConfig, kinds: set[str], tally: Tally, baseline: dict | None, final: dict | None,
                 records: list[DeviceRecord], rss: dict, *, alive: bool, attack_s: float, spoof_seen: Counter,
                 verifier_log: list[str], tracebacks: int, queue_drops: int | None, acl: bool, own: bool, target: str,
                 draft: str) -> dict:
    counted = _stats_delta(baseline, final, "rejected")
    stats = _stats_delta(baseline, final, "stats")
    expected = Counter(tally.observed)
    expected.update(tally.counted_silently)
    expected.update(spoof_seen)
    reasons = sorted(set(expected) | set(counted))
    rows = [{"reason": r, "attack_replies": tally.observed.get(r, 0), "silent": tally.counted_silently.get(r, 0),
             "spoofed": spoof_seen.get(r, 0), "expected": expected.get(r, 0), "verifier": counted.get(r, 0)}
            for r in reasons]
    sent = sum(tally.sent.values())
    exact_ok = all(r.failed == 0 and r.mismatched == 0 and r.after_attack_ok == 1 for r in records) and bool(records)
    checks = {
        "alive": alive,
        "rss_bounded": (not rss.get("measured")) or rss["growth_mb"] <= cfg.rss_growth_mb,
        "counted": final is not None and baseline is not None and counted == expected
        and counted.get("internal", 0) == 0,
        "errors_readable": tally.undecodable == 0 and tally.missing == 0 and not tally.violation_count,
        "exact": exact_ok,
    }
    return {
        "config": {"count": cfg.count, "sent": sent, "devices": cfg.devices, "seed": cfg.seed, "target": target,
                   "draft": draft, "broker": cfg.broker or f"self-started ({cfg.broker_mode})", "acl": acl,
                   "spoof": cfg.spoof, "kinds": sorted(kinds), "verifier_id": cfg.verifier_id,
                   "max_new_tokens": cfg.max_new_tokens, "gamma": cfg.gamma, "rss_growth_mb": cfg.rss_growth_mb},
        "checks": checks,
        "ok": all(checks.values()),
        "attack_seconds": attack_s,
        "payloads_per_s": sent / attack_s if attack_s else None,
        "rejections": rows,
        "rejected_total": {"expected": sum(expected.values()), "verifier": sum(counted.values())},
        "outcomes": {k: dict(v) for k, v in sorted(tally.outcomes.items())},
        "sent_by_kind": dict(sorted(tally.sent.items())),
        "scaffold": dict(tally.scaffold),
        "violations_by_kind": dict(tally.violation_count),
        "violations": tally.violations,
        "unsolicited_replies": tally.unsolicited,
        "undecodable_replies": tally.undecodable,
        "missing_replies": tally.missing,
        "verifier_stats_delta": dict(stats),
        "verifier_sessions_after": (final or {}).get("sessions"),
        "verifier_tracebacks": tracebacks,
        "verifier_incoming_dropped": queue_drops,
        "verifier_log_tail": verifier_log if not all(checks.values()) else [],
        "rss": rss,
        "devices": [r.__dict__ for r in records],
        "lost_sessions": sum(r.failed for r in records),
    }


def print_report(rep: dict) -> None:
    cfg = rep["config"]
    dev = rep["devices"]
    print(f"\nedgespec fuzz: {cfg['sent']} hostile payloads in {rep['attack_seconds']:.1f} s "
          f"({rep['payloads_per_s'] or 0:.0f}/s) against {cfg['verifier_id']} on {cfg['broker']}, while "
          f"{len(dev)} devices ran {sum(d['sessions'] for d in dev)} sessions")
    head = f"{'rejection reason':<22}{'replies':>9}{'silent':>8}{'spoofed':>9}{'expected':>10}{'verifier':>10}"
    print(head)
    print("-" * len(head))
    for r in rep["rejections"]:
        mark = "" if r["expected"] == r["verifier"] else "   <- differs"
        print(f"{r['reason']:<22}{r['attack_replies']:>9}{r['silent']:>8}{r['spoofed']:>9}{r['expected']:>10}"
              f"{r['verifier']:>10}{mark}")
    tot = rep["rejected_total"]
    print(f"{'total':<22}{'':>26}{tot['expected']:>10}{tot['verifier']:>10}")
    other = Counter()
    for outcomes in rep["outcomes"].values():
        for k, v in outcomes.items():
            if k in NON_REJECTIONS:
                other[k] += v
    print("not rejections: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    print(f"\n{'attack kind':<24}{'sent':>7}  outcomes")
    for kind, n in rep["sent_by_kind"].items():
        outs = rep["outcomes"].get(kind, {})
        bad = rep["violations_by_kind"].get(kind, 0)
        text = ", ".join(f"{k} {v}" for k, v in sorted(outs.items(), key=lambda kv: -kv[1]))
        print(f"{kind:<24}{n:>7}  {text}" + (f"   [{bad} not as the contract says]" if bad else ""))
    rss = rep["rss"]
    if rss.get("measured"):
        print(f"\nverifier RSS: {rss['before_mb']:.1f} MB before, {rss['max_mb']:.1f} MB max, "
              f"{rss['after_mb']:.1f} MB after (growth {rss['growth_mb']:.1f} MB, bound {cfg['rss_growth_mb']:.0f})")
    for i, d in enumerate(dev):
        print(f"device {i}: {d['sessions']} sessions, {d['exact']} exact, {d['mismatched']} different, "
              f"{d['failed']} failed, {d['resyncs']} resyncs, after the attack {'ok' if d['after_attack_ok'] else 'FAILED'}"
              + (f"  ({d['errors'][0]})" if d["errors"] else ""))
    for v in rep["violations"][:8]:
        print(f"  contract: {v.get('kind')} {v.get('note', '')}: expected {v.get('expected')}, got {v.get('got')}"
              f" {v.get('detail', '')[:100]}")
    print("\nchecks: " + "  ".join(f"{k} {'ok' if ok else 'FAILED'}" for k, ok in rep["checks"].items()))


# ====================================================================== in-process (tests)


async def run_local(core: Any, ctx: FuzzContext, cfg: FuzzConfig, stateless: list[Identity],
                    sessions: list[Identity]) -> dict:
    """The attack against a `VerifierCore` in this process (no broker, no devices): checks that
    every payload gets the contract's outcome and that the core counts each rejection."""
    bus = LocalBus(core, ctx)
    tally = Tally()
    kinds = cfg.selected()
    before = Counter(core.rejected)
    attackers = [Attacker(i, ctx, bus, tally, cfg.window) for i in stateless]
    session_attackers = [Attacker(i, ctx, bus, tally, 1) for i in sessions]
    for att in attackers + session_attackers:
        bus.listeners[att.down] = att.on_message
    await attack(ctx, cfg, attackers, session_attackers, tally, kinds, time.monotonic() + cfg.time_limit_s)
    counted = Counter(core.rejected)
    counted.subtract(before)
    counted = Counter({k: v for k, v in counted.items() if v})
    expected = Counter(tally.observed)
    expected.update(tally.counted_silently)
    return {"tally": tally, "counted": counted, "expected": expected}


# ====================================================================== command line


def cmd_fuzz(args: argparse.Namespace) -> int:
    cfg = FuzzConfig(
        count=args.count, devices=args.devices, seed=args.seed, target_model=args.target_model,
        draft_model=args.draft_model, broker=args.broker, verifier_id=args.verifier_id or "fuzz-verifier",
        verifier_pid=args.verifier_pid, home=args.home, broker_mode=args.broker_mode, spoof=args.spoof,
        stateless_attackers=args.attackers, session_attackers=args.session_attackers,
        max_new_tokens=args.max_new_tokens, rss_growth_mb=args.rss_growth_mb, time_limit_s=args.time_limit,
        kinds=tuple(args.kinds.split(",")) if args.kinds else None,
        exclude=tuple(args.exclude.split(",")) if args.exclude else (), threads=args.threads,
    )
    if cfg.broker and not args.verifier_id:
        raise ValueError("--broker needs --verifier-id (the verifier to fuzz)")
    report = asyncio.run(run_mqtt(cfg))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0 if report["ok"] else 1


def register(sub) -> None:
    p = sub.add_parser("fuzz", help="hostile payloads on a verifier's uplinks while well-behaved devices generate")
    p.add_argument("--count", type=int, default=10_000, help="hostile payloads to send")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--broker", help="fuzz the verifier on this (development) broker instead of starting one")
    p.add_argument("--verifier-id", help="the verifier to fuzz (with --broker; default fuzz-verifier)")
    p.add_argument("--verifier-pid", type=int, help="its process id, to watch its memory (with --broker)")
    p.add_argument("--home", help="the fleet registry the verifier reads (default: a fresh one, or the dev home)")
    p.add_argument("--broker-mode", choices=("acl", "open"), default="acl",
                   help="the broker started here: production ACL with passwords, or the development config")
    p.add_argument("--spoof", action="store_true", help="also publish on the devices' own topics (open broker only)")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--devices", type=int, default=3, help="well-behaved devices generating meanwhile")
    p.add_argument("--attackers", type=int, default=3, help="stateless attacker clients (one is unprovisioned)")
    p.add_argument("--session-attackers", type=int, default=2, help="attackers that hold sessions of their own")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-growth-mb", type=float, default=64.0, help="allowed growth of the verifier's RSS")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole attack")
    p.add_argument("--kinds", help="comma-separated attack kinds to run (default: all)")
    p.add_argument("--exclude", help="comma-separated attack kinds to leave out, e.g. " + ",".join(KNOWN_BUG_KINDS))
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_fuzz)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgespec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fuzz", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
