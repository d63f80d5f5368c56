"""Stateless attack generators: valid message templates, their hostile mutations, and the table
of attack kinds with their weights."""

from __future__ import annotations

import math
import random
import struct
from typing import Any
from collections.abc import Callable

import msgpack
import numpy as np

from schemas import (
    Close, DraftMsg, ErrorCode, ErrorMsg, Features, Opened, Resync, Sealed, SealedOpen, SessionOpen,
    SparseQWire, VerdictMsg, WireError, decode, encode,
)
from schemas.messages import MAX_TOKEN_ID

from .contract import (
    OPENED, RESYNC, SPOOFED, Attack, FuzzContext, Identity, _exp, predict, reason,
)


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
    q = SparseQWire.from_arrays(np.array(ids), np.array([[3, 1]] * k))
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
        ["float16", shape, bytes(2 * n - 1)], ["float16", shape, nan],
        ["float32", shape, struct.pack("<f", math.inf) * n],
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
    _, so = _seal_open(ctx, me, msg, topic=ctx.topics.session_up(me.device_id, ctx.verifier_id)
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
    return Attack("sealed_open_tamper", topic, encode(SealedOpen(sid, kid, eph, ct)),
                  _exp(reason(me.sealed_open_refusal)), note=how)


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
        return Attack("replay_captured", ctx.topics.open(me.device_id), cap.payload,
                      _exp(reason(me.sealed_open_refusal), reason(ErrorCode.REPLAY)), note="open")
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
