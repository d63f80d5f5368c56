"""Stateless attacks with sealed OPENs: tampered seals, and well-sealed OPENs whose content breaks
a rule the verifier checks after decryption."""

from __future__ import annotations

import math
from typing import Any

from schemas import DraftMsg, ErrorCode, Features, SealedOpen, SessionOpen, WireError, decode, encode
from schemas.messages import MAX_TOKEN_ID

from .contract import Attack, FuzzContext, Identity, _exp, reason
from .templates import valid_open


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
