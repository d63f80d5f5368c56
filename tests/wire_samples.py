"""Sample messages of every type, and malformed variants of them, for the pinned wire tests
(`tests/test_wire_golden.py`; `tests/data/wire_outcomes.json.gz` holds what decoding each variant gives)."""
import numpy as np
from schemas.messages import (Close, DraftMsg, ErrorMsg, Features, Opened, Resync, Sealed, SealedOpen,
                              SessionOpen, SparseQWire, VerdictMsg)

SID = bytes(range(16))
FP = bytes(range(100, 116))
Q2 = SparseQWire.from_arrays(np.array([[5, 9], [7, 0]]), np.array([[3, 1], [2, 0]]))
FEATS = Features.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "float16")
VERDICT = VerdictMsg(SID, 7, [True, False], 1, 42, 19, False)

SAMPLES = {
    "open_minimal": SessionOpen(SID, [1, 2, 3], sent_at_ms=None),
    "open_full": SessionOpen(SID, [1, 2, 3], FEATS, 0.7, 40, 0.9, 2**63 + 5, 6, 2, 100, [0, 2], FP,
                             [4, 5], [8, 9], Q2, 1_700_000_000_123),
    "open_greedy_block": SessionOpen(SID, [10], temperature=0.0, tokenizer_fp=FP, first_block=[3, 4, 5],
                                     sent_at_ms=1_700_000_000_000),
    "opened": Opened(SID, "verifier-1", 12),
    "opened_verdict": Opened(SID, "verifier-1", 12, VerdictMsg(SID, 0, [True, True], 2, 77, 15, True)),
    "draft": DraftMsg(SID, 2**40, 30, [11, 12], Q2),
    "draft_greedy": DraftMsg(SID, 0, 1, [], None),
    "verdict": VERDICT,
    "verdict_done": VerdictMsg(SID, 8, [], 0, 2**31 - 1, 6000, True),
    "verdict_timed": VerdictMsg(SID, 9, [True], 1, 5, 40, False, verify_ms=140, stream_us=45_250),
    "resync": Resync(SID, "unknown session"),
    "close": Close(SID),
    "close_reason": Close(SID, "cancelled ü"),
    "error": ErrorMsg(SID, 3, 9, "bad_sequence: stale"),
    "error_nil": ErrorMsg(None, None, 14, "busy"),
    "sealed_open": SealedOpen(SID, "vk-2024", bytes(range(32)), b"\x01" * 40),
    "sealed": Sealed(SID, 5, b"ciphertext"),
}


# ---------------------------------------------------------------- malformed variants

_BAD_VALUES = (None, True, False, -1, 0, 1, 2**64 - 1, 1.5, float("nan"), float("inf"), "x", "x" * 600,
               b"x", b"\0" * 16, b"\0" * 32, [], [1], [True], [-1], [2**31], ["a"], [[1]], [1.5])
_NESTED = (
    ["float64", [2], b"\0" * 16], ["float16", [], b""], ["float16", [0], b""], ["float16", [True], b"\0\0"],
    ["float16", [2], "ab"], ["float16", [3], b"\0" * 4], ["float32", [1], b"\x00\x00\xc0\x7f"],
    ["float16", [1, 1, 1, 1], b"\0\0"], ["float16", [2]], [0, b"", b""], [65, b"", b""], [True, b"", b""],
    [2, b"\0" * 16, b"\0" * 8], [2, b"\0" * 16, b"\0" * 7], [1, b"\0" * 8, b"\x01\x00\x00\x00"],
    [2, "ids", b""], [1, b"\0" * 4, b"\0\0"], [[True], 1, 5, 9, True], [[True], 1, 5, 9],
    [[], 0, 5, 9, False], [[1], 0, 5, 9, False], [[True], 2, 5, 9, False], [[True], 1, 5, 0, False],
    [[True], 1, 5, 9, 1], [[True], 1, 5, 9, False, "extra"],
)


def malformed_cases():
    """(name, payload) pairs: every sample truncated, with each field swapped for values of
    other types and sizes, with a field appended, and with a bad version or type."""
    import msgpack

    from schemas.messages import encode

    cases = []
    for name, msg in SAMPLES.items():
        items = msgpack.unpackb(encode(msg), raw=False)
        for n in range(len(items)):
            cases.append((f"{name}/truncated{n}", items[:n]))
        for index in range(2, len(items) + 1):
            for j, value in enumerate(_BAD_VALUES + _NESTED):
                variant = list(items) + [None] * (index + 1 - len(items))
                variant[index] = value
                cases.append((f"{name}/field{index}/value{j}", variant))
        cases.append((f"{name}/appended", items + ["later"]))
        cases.append((f"{name}/version2", [2] + items[1:]))
        cases.append((f"{name}/version_true", [True] + items[1:]))
        cases.append((f"{name}/type_true", items[:1] + [True] + items[2:]))
        cases.append((f"{name}/type99", items[:1] + [99] + items[2:]))
    return [(case, msgpack.packb(items, use_bin_type=True)) for case, items in cases]


def outcome(payload: bytes) -> str:
    """What decoding a payload gives: 'ok <sha256 of the message's repr>' or 'code: detail'."""
    import hashlib

    from schemas.errors import WireError
    from schemas.messages import decode

    try:
        msg = decode(payload)
    except WireError as exc:
        return f"{exc.code.name}: {exc.detail}"
    return "ok " + hashlib.sha256(repr(msg).encode()).hexdigest()[:16]


def write_outcomes(path: str = "data/wire_outcomes.json.gz") -> None:
    """Record `outcome` of every malformed case (only for an intended contract change)."""
    import gzip
    import json

    with gzip.open(path, "wt", compresslevel=9) as handle:
        json.dump({name: outcome(p) for name, p in malformed_cases()}, handle, indent=0, sort_keys=True)
