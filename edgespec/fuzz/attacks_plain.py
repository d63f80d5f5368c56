"""Stateless attacks on the plaintext wire format: broken bytes, fields, sizes, vocabularies,
features and topics. Each returns one Attack for `me`."""

from __future__ import annotations

import math
import struct

from schemas import ErrorCode
from schemas.messages import MAX_TOKEN_ID

from .contract import Attack, _exp, predict, reason
from .templates import OUT_OF_RANGE, UPLINK_TYPES, WRONG_TYPES, _other, _topic, pack, templates


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
