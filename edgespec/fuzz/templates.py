"""Valid message templates the attack generators mutate, and the values they mutate them with."""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack
import numpy as np

from schemas import (Close, DraftMsg, ErrorMsg, Features, Opened, Resync, Sealed, SealedOpen, SessionOpen, SparseQWire,
                     VerdictMsg, encode)

from .contract import FuzzContext, Identity


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
