"""Session messages as msgpack arrays: `[version, type, field, field, ...]`.

Fields are positional and append-only: a newer minor revision may add fields at the end,
with defaults, and a decoder ignores extra trailing fields. Every field is type- and
size-checked on decode; any violation raises `WireError`. Tensors travel as raw
little-endian bytes with an explicit dtype and shape; pickle is never used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable

import msgpack
import numpy as np

from .errors import ErrorCode, WireError

PROTOCOL_VERSION = 1
SESSION_ID_BYTES = 16
FINGERPRINT_BYTES = 16
MAX_TOKEN_ID = 2**31 - 1
MAX_SEED = 2**64 - 1
MAX_SENT_AT_MS = 2**63 - 1


def now_ms() -> int:
    """The wall clock in Unix milliseconds (an OPEN's `sent_at_ms`)."""
    return time.time_ns() // 1_000_000


FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}


class MsgType(IntEnum):
    OPEN = 1  # device -> verifier: start (or resume after RESYNC) a session
    OPENED = 2  # verifier -> device: the session is held by verifier_id
    DRAFT = 3  # device -> verifier: k drafted tokens and their q
    VERDICT = 4  # verifier -> device: accept mask, correction/bonus token
    RESYNC = 5  # verifier -> device: session unknown here, re-open with full context
    CLOSE = 6  # device -> verifier: the session is finished
    ERROR = 7  # verifier -> device: a rejected message
    SEALED_OPEN = 8  # device -> verifier: an encrypted OPEN with the session's key agreement
    SEALED = 9  # either way: any other session message, encrypted


@dataclass(frozen=True)
class Limits:
    """Hard bounds enforced by every decoder (and checked by the verifier before any work)."""

    max_payload_bytes: int = 512 * 1024
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 4096
    max_gamma: int = 32
    max_q_top: int = 64
    max_feature_bytes: int = 256 * 1024
    max_feature_rank: int = 3
    max_stop_tokens: int = 8
    max_text_chars: int = 512
    max_fields: int = 32


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Features:
    """A tensor on the wire: dtype name, shape and raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def from_array(cls, array: np.ndarray, dtype: str = "float16") -> "Features":
        arr = np.ascontiguousarray(array, dtype=np.dtype(FEATURE_DTYPES[dtype]).newbyteorder("<"))
        return cls(dtype, tuple(int(d) for d in arr.shape), arr.tobytes())

    def to_array(self) -> np.ndarray:
        dt = np.dtype(FEATURE_DTYPES[self.dtype]).newbyteorder("<")
        return np.frombuffer(self.data, dtype=dt).reshape(self.shape).astype(np.float32)


@dataclass(frozen=True)
class SparseQWire:
    """Draft distributions for k positions, K entries each, as packed little-endian arrays.

    ids: uint32[k*K]; weights: uint16[k*K] (0 marks padding). Row i is weights/sum(weights).
    """

    top: int
    ids: bytes
    weights: bytes

    @classmethod
    def from_arrays(cls, ids: np.ndarray, weights: np.ndarray) -> "SparseQWire":
        k, top = ids.shape
        return cls(
            int(top),
            np.ascontiguousarray(ids, dtype="<u4").tobytes(),
            np.ascontiguousarray(weights, dtype="<u2").tobytes(),
        )

    def arrays(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids [k, K] int64, weights [k, K] int64)."""
        ids = np.frombuffer(self.ids, dtype="<u4").reshape(k, self.top).astype(np.int64)
        weights = np.frombuffer(self.weights, dtype="<u2").reshape(k, self.top).astype(np.int64)
        return ids, weights


@dataclass(frozen=True)
class SessionOpen:
    session_id: bytes
    prompt_ids: list[int]
    features: Features | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    gamma: int = 4
    q_top: int = 16
    max_new_tokens: int = 64
    stop_token_ids: list[int] = field(default_factory=list)
    tokenizer_fp: bytes = b"\0" * FINGERPRINT_BYTES
    generated_ids: list[int] = field(default_factory=list)  # non-empty when resuming (RESYNC)
    # The session's first drafted block (seq 0), verified in the prefill's forward and answered
    # with an OPENED holding its VERDICT; None: the OPEN carries no block (drafts follow OPENED).
    first_block: list[int] | None = None
    first_q: SparseQWire | None = None
    # When the device sent it (Unix ms): the freshness a verifier checks on a sealed OPEN (it
    # refuses one outside its window, and one it has seen, across restarts). A device sets it
    # on every send (`SessionChannel.send_open`); None: an OPEN from before this field.
    sent_at_ms: int | None = field(default_factory=now_ms)
    type = MsgType.OPEN

    def first_draft(self) -> "DraftMsg | None":
        """The first block as the DRAFT it stands for (seq 0, from the whole context)."""
        if self.first_block is None:
            return None
        return DraftMsg(self.session_id, 0, len(self.prompt_ids) + len(self.generated_ids), self.first_block, self.first_q)


@dataclass(frozen=True)
class Opened:
    session_id: bytes
    verifier_id: str
    committed_len: int
    # The VERDICT (seq 0) of the block the OPEN carried, in the same message; None when the
    # OPEN carried no block.
    first_verdict: "VerdictMsg | None" = None
    type = MsgType.OPENED


@dataclass(frozen=True)
class DraftMsg:
    session_id: bytes
    seq: int
    committed_len: int
    tokens: list[int]
    q: SparseQWire | None = None  # None: greedy, q is one-hot
    type = MsgType.DRAFT


@dataclass(frozen=True)
class VerdictMsg:
    session_id: bytes
    seq: int
    accept_mask: list[bool]
    n_accepted: int
    next_token: int
    committed_len: int  # after this verdict
    done: bool = False
    type = MsgType.VERDICT


@dataclass(frozen=True)
class Resync:
    session_id: bytes
    reason: str
    type = MsgType.RESYNC


@dataclass(frozen=True)
class Close:
    session_id: bytes
    reason: str = "done"
    type = MsgType.CLOSE


@dataclass(frozen=True)
class ErrorMsg:
    session_id: bytes | None
    seq: int | None
    code: int
    message: str
    type = MsgType.ERROR


@dataclass(frozen=True)
class SealedOpen:
    """An OPEN encrypted under keys agreed from the device's static key, a fresh ephemeral key
    and the verifier key `verifier_key_id`; envelope seq 0 uplink."""

    session_id: bytes
    verifier_key_id: str
    ephemeral_pub: bytes  # X25519, 32 bytes
    ciphertext: bytes
    type = MsgType.SEALED_OPEN


@dataclass(frozen=True)
class Sealed:
    """Any other session message, AEAD-encrypted; `seq` is the envelope's per-direction counter."""

    session_id: bytes
    seq: int
    ciphertext: bytes
    type = MsgType.SEALED


Message = SessionOpen | Opened | DraftMsg | VerdictMsg | Resync | Close | ErrorMsg | SealedOpen | Sealed


# ---------------------------------------------------------------- encoding

def _features_out(f: Features | None) -> Any:
    return None if f is None else [f.dtype, list(f.shape), f.data]


def _q_out(q: SparseQWire | None) -> Any:
    return None if q is None else [q.top, q.ids, q.weights]


def _verdict_fields(v: "VerdictMsg") -> list[Any]:
    """A VERDICT's fields after session_id and seq (an OPENED's `first_verdict`)."""
    return [list(v.accept_mask), v.n_accepted, v.next_token, v.committed_len, v.done]


_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    SessionOpen: lambda m: [
        m.session_id, list(m.prompt_ids), _features_out(m.features), float(m.temperature), m.top_k,
        float(m.top_p), m.seed, m.gamma, m.q_top, m.max_new_tokens, list(m.stop_token_ids),
        m.tokenizer_fp, list(m.generated_ids),
        None if m.first_block is None else list(m.first_block), _q_out(m.first_q), m.sent_at_ms,
    ],
    Opened: lambda m: [m.session_id, m.verifier_id, m.committed_len,
                       *([] if m.first_verdict is None else [_verdict_fields(m.first_verdict)])],
    DraftMsg: lambda m: [m.session_id, m.seq, m.committed_len, list(m.tokens), _q_out(m.q)],
    VerdictMsg: lambda m: [
        m.session_id, m.seq, list(m.accept_mask), m.n_accepted, m.next_token, m.committed_len, m.done,
    ],
    Resync: lambda m: [m.session_id, m.reason],
    Close: lambda m: [m.session_id, m.reason],
    ErrorMsg: lambda m: [m.session_id, m.seq, int(m.code), m.message],
    SealedOpen: lambda m: [m.session_id, m.verifier_key_id, m.ephemeral_pub, m.ciphertext],
    Sealed: lambda m: [m.session_id, m.seq, m.ciphertext],
}


def encode(msg: Message) -> bytes:
    """msgpack bytes of a message: [PROTOCOL_VERSION, type, *fields]."""
    return msgpack.packb([PROTOCOL_VERSION, int(msg.type), *_ENCODERS[type(msg)](msg)], use_bin_type=True)


# ---------------------------------------------------------------- decoding

class _Fields:
    """Typed, bounded access to a decoded array's fields, naming each field in errors."""

    def __init__(self, items: list[Any], mtype: MsgType, limits: Limits):
        self.items = items
        self.mtype = mtype
        self.limits = limits

    def _bad(self, name: str, what: str, code: ErrorCode = ErrorCode.MALFORMED) -> WireError:
        return WireError(code, f"{self.mtype.name} field '{name}' {what}")

    def get(self, index: int, name: str, default: Any = ...) -> Any:
        if index < len(self.items):
            return self.items[index]
        if default is ...:
            raise self._bad(name, "is missing")
        return default

    def int(self, index: int, name: str, lo: int, hi: int, default: Any = ...) -> int:
        value = self.get(index, name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, f"must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self._bad(name, f"must be in [{lo}, {hi}], got {value}", ErrorCode.OUT_OF_RANGE)
        return value

    def opt_int(self, index: int, name: str, lo: int, hi: int) -> int | None:
        return None if self.get(index, name, None) is None else self.int(index, name, lo, hi)

    def float(self, index: int, name: str, lo: float, hi: float, default: Any = ...) -> float:
        value = self.get(index, name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(name, f"must be a number, got {type(value).__name__}")
        value = float(value)
        if not (lo <= value <= hi):  # also rejects NaN
            raise self._bad(name, f"must be in [{lo}, {hi}], got {value}", ErrorCode.OUT_OF_RANGE)
        return value

    def bool(self, index: int, name: str, default: Any = ...) -> bool:
        value = self.get(index, name, default)
        if not isinstance(value, bool):
            raise self._bad(name, f"must be a boolean, got {type(value).__name__}")
        return value

    def bytes(self, index: int, name: str, size: int) -> bytes:
        value = self.get(index, name)
        if not isinstance(value, bytes) or len(value) != size:
            raise self._bad(name, f"must be {size} bytes")
        return value

    def blob(self, index: int, name: str, max_len: int) -> bytes:
        value = self.get(index, name)
        if not isinstance(value, bytes):
            raise self._bad(name, f"must be bytes, got {type(value).__name__}")
        if len(value) > max_len:
            raise self._bad(name, f"is {len(value)} bytes, limit {max_len}", ErrorCode.OVERSIZE)
        return value

    def opt_bytes(self, index: int, name: str, size: int) -> bytes | None:
        return None if self.get(index, name, None) is None else self.bytes(index, name, size)

    def str(self, index: int, name: str, default: Any = ...) -> str:
        value = self.get(index, name, default)
        if not isinstance(value, str):
            raise self._bad(name, f"must be a string, got {type(value).__name__}")
        if len(value) > self.limits.max_text_chars:
            raise self._bad(name, f"is longer than {self.limits.max_text_chars} characters", ErrorCode.OVERSIZE)
        return value

    def tokens(self, index: int, name: str, max_len: int, default: Any = ...) -> list[int]:
        value = self.get(index, name, default)
        if not isinstance(value, list):
            raise self._bad(name, f"must be an array of token ids, got {type(value).__name__}")
        if len(value) > max_len:
            raise self._bad(name, f"has {len(value)} entries, limit {max_len}", ErrorCode.OVERSIZE)
        for t in value:
            if isinstance(t, bool) or not isinstance(t, int):
                raise self._bad(name, "must hold only integers")
            if not 0 <= t <= MAX_TOKEN_ID:
                raise self._bad(name, f"holds token id {t} outside [0, {MAX_TOKEN_ID}]", ErrorCode.OUT_OF_RANGE)
        return list(value)


def _features_in(f: _Fields, index: int) -> Features | None:
    raw = f.get(index, "features", None)
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 3):
        raise f._bad("features", "must be [dtype, shape, bytes] or nil")
    dtype, shape, data = raw
    if dtype not in FEATURE_DTYPES:
        raise f._bad("features", f"dtype must be one of {sorted(FEATURE_DTYPES)}, got {dtype!r}", ErrorCode.BAD_FEATURES)
    if not (isinstance(shape, list) and 1 <= len(shape) <= f.limits.max_feature_rank):
        raise f._bad("features", f"shape must be 1 to {f.limits.max_feature_rank} dimensions", ErrorCode.BAD_FEATURES)
    if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise f._bad("features", "shape must hold positive integers", ErrorCode.BAD_FEATURES)
    if not isinstance(data, bytes):
        raise f._bad("features", "data must be bytes", ErrorCode.BAD_FEATURES)
    if len(data) > f.limits.max_feature_bytes:
        raise f._bad("features", f"data is {len(data)} bytes, limit {f.limits.max_feature_bytes}", ErrorCode.OVERSIZE)
    expected = math.prod(shape) * np.dtype(FEATURE_DTYPES[dtype]).itemsize  # Python ints: no overflow
    if len(data) != expected:
        raise f._bad("features", f"data is {len(data)} bytes but shape {shape} needs {expected}", ErrorCode.BAD_FEATURES)
    array = Features(dtype, tuple(shape), data).to_array()
    if not np.isfinite(array).all():
        raise f._bad("features", "hold NaN or infinite values", ErrorCode.BAD_FEATURES)
    return Features(dtype, tuple(shape), data)


def _q_in(f: _Fields, index: int, k: int, name: str = "q") -> SparseQWire | None:
    raw = f.get(index, name, None)
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 3):
        raise f._bad(name, "must be [top, ids, weights] or nil")
    top, ids, weights = raw
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= f.limits.max_q_top:
        raise f._bad(name, f"top must be in [1, {f.limits.max_q_top}]", ErrorCode.OUT_OF_RANGE)
    if not (isinstance(ids, bytes) and isinstance(weights, bytes)):
        raise f._bad(name, "ids and weights must be bytes")
    if len(ids) != 4 * k * top or len(weights) != 2 * k * top:
        raise f._bad(name, f"needs {4 * k * top} id bytes and {2 * k * top} weight bytes for k={k}, top={top}")
    q = SparseQWire(top, ids, weights)
    _, w = q.arrays(k)
    if k and (w.sum(axis=1) == 0).any():
        raise f._bad(name, "has a row whose weights are all zero", ErrorCode.OUT_OF_RANGE)
    return q


# Sampled temperatures below this are refused (out_of_range; 0 means greedy): tiny ones
# overflow logits / temperature to inf and the target's warp to NaN, which failed every
# session of the batch. Equal to speculative.sampling.MIN_TEMPERATURE.
MIN_TEMPERATURE = 0.01


def _temperature_in(f: _Fields, index: int) -> float:
    value = f.float(index, "temperature", 0.0, 100.0)
    if 0.0 < value < MIN_TEMPERATURE:
        raise f._bad("temperature", f"must be 0 (greedy) or in [{MIN_TEMPERATURE}, 100], got {value}",
                     ErrorCode.OUT_OF_RANGE)
    return value


def _decode_open(f: _Fields) -> SessionOpen:
    lim = f.limits
    first = None if f.get(15, "first_block", None) is None else f.tokens(15, "first_block", lim.max_gamma)
    first_q = _q_in(f, 16, len(first), "first_q") if first is not None else None
    if first is None and f.get(16, "first_q", None) is not None:
        raise f._bad("first_q", "needs a first_block")
    return SessionOpen(
        session_id=f.bytes(2, "session_id", SESSION_ID_BYTES),
        prompt_ids=f.tokens(3, "prompt_ids", lim.max_prompt_tokens),
        features=_features_in(f, 4),
        temperature=_temperature_in(f, 5),
        top_k=f.int(6, "top_k", 0, MAX_TOKEN_ID),
        top_p=f.float(7, "top_p", 1e-6, 1.0),
        seed=f.int(8, "seed", 0, MAX_SEED),
        gamma=f.int(9, "gamma", 0, lim.max_gamma),
        q_top=f.int(10, "q_top", 1, lim.max_q_top),
        max_new_tokens=f.int(11, "max_new_tokens", 1, lim.max_new_tokens),
        stop_token_ids=f.tokens(12, "stop_token_ids", lim.max_stop_tokens),
        tokenizer_fp=f.bytes(13, "tokenizer_fp", FINGERPRINT_BYTES),
        generated_ids=f.tokens(14, "generated_ids", lim.max_new_tokens, default=[]),
        first_block=first,
        first_q=first_q,
        sent_at_ms=f.opt_int(17, "sent_at_ms", 0, MAX_SENT_AT_MS),
    )


def _decode_draft(f: _Fields) -> DraftMsg:
    tokens = f.tokens(5, "tokens", f.limits.max_gamma)
    return DraftMsg(
        session_id=f.bytes(2, "session_id", SESSION_ID_BYTES),
        seq=f.int(3, "seq", 0, MAX_SEED),
        committed_len=f.int(4, "committed_len", 1, f.limits.max_prompt_tokens + f.limits.max_new_tokens),
        tokens=tokens,
        q=_q_in(f, 6, len(tokens)),
    )


def _decode_verdict(f: _Fields) -> VerdictMsg:
    mask = f.get(4, "accept_mask")
    if not (isinstance(mask, list) and len(mask) <= f.limits.max_gamma and all(isinstance(b, bool) for b in mask)):
        raise f._bad("accept_mask", f"must be an array of at most {f.limits.max_gamma} booleans")
    return VerdictMsg(
        session_id=f.bytes(2, "session_id", SESSION_ID_BYTES),
        seq=f.int(3, "seq", 0, MAX_SEED),
        accept_mask=mask,
        n_accepted=f.int(5, "n_accepted", 0, len(mask)),
        next_token=f.int(6, "next_token", 0, MAX_TOKEN_ID),
        committed_len=f.int(7, "committed_len", 1, MAX_SEED),
        done=f.bool(8, "done", default=False),
    )


def _decode_opened(f: _Fields) -> Opened:
    session_id = f.bytes(2, "session_id", SESSION_ID_BYTES)
    nested = f.get(5, "first_verdict", None)
    first = None
    if nested is not None:
        if not isinstance(nested, list) or len(nested) < 5:
            raise f._bad("first_verdict", "must be nil or [accept_mask, n_accepted, next_token, committed_len, done]")
        # The fields of a VERDICT for this session's seq 0, checked as a VERDICT's are.
        first = _decode_verdict(_Fields([PROTOCOL_VERSION, int(MsgType.VERDICT), session_id, 0, *nested],
                                        MsgType.VERDICT, f.limits))
    return Opened(session_id, f.str(3, "verifier_id"), f.int(4, "committed_len", 1, MAX_SEED), first)


_DECODERS: dict[MsgType, Callable[[_Fields], Message]] = {
    MsgType.OPEN: _decode_open,
    MsgType.OPENED: _decode_opened,
    MsgType.DRAFT: _decode_draft,
    MsgType.VERDICT: _decode_verdict,
    MsgType.RESYNC: lambda f: Resync(f.bytes(2, "session_id", SESSION_ID_BYTES), f.str(3, "reason")),
    MsgType.CLOSE: lambda f: Close(f.bytes(2, "session_id", SESSION_ID_BYTES), f.str(3, "reason", "done")),
    MsgType.ERROR: lambda f: ErrorMsg(f.opt_bytes(2, "session_id", SESSION_ID_BYTES),
                                      f.opt_int(3, "seq", 0, MAX_SEED), f.int(4, "code", 0, 65535),
                                      f.str(5, "message")),
    MsgType.SEALED_OPEN: lambda f: SealedOpen(f.bytes(2, "session_id", SESSION_ID_BYTES),
                                              f.str(3, "verifier_key_id"), f.bytes(4, "ephemeral_pub", 32),
                                              f.blob(5, "ciphertext", f.limits.max_payload_bytes)),
    MsgType.SEALED: lambda f: Sealed(f.bytes(2, "session_id", SESSION_ID_BYTES), f.int(3, "seq", 0, MAX_SEED),
                                     f.blob(4, "ciphertext", f.limits.max_payload_bytes)),
}


def unpack_array(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """msgpack-decode a payload that must be one array, with size limits on every container."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError(ErrorCode.MALFORMED, f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > limits.max_payload_bytes:
        raise WireError(ErrorCode.OVERSIZE, f"payload is {len(payload)} bytes, limit {limits.max_payload_bytes}")
    if not payload:
        raise WireError(ErrorCode.MALFORMED, "empty payload")
    try:
        items = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limits.max_payload_bytes,
            max_str_len=limits.max_text_chars * 4,
            max_array_len=max(limits.max_prompt_tokens, limits.max_new_tokens),
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError(ErrorCode.MALFORMED, f"not a msgpack message: {exc}") from None
    if not isinstance(items, list) or len(items) < 2:
        raise WireError(ErrorCode.MALFORMED, "a message is an array [version, type, ...]")
    if len(items) > limits.max_fields:
        raise WireError(ErrorCode.OVERSIZE, f"message has {len(items)} fields, limit {limits.max_fields}")
    return items


def decode(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Decode and validate one message; raises `WireError` on anything off-contract."""
    items = unpack_array(payload, limits)
    version, mtype = items[0], items[1]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise WireError(ErrorCode.BAD_VERSION, f"protocol version {version!r} not supported (this side speaks {PROTOCOL_VERSION})")
    try:
        kind = MsgType(mtype) if type(mtype) is int else None
    except (ValueError, TypeError):
        kind = None
    if kind is None:
        raise WireError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {mtype!r}")
    return _DECODERS[kind](_Fields(items, kind, limits))
