"""Session messages as msgpack arrays: `[version, type, field, field, ...]`.

Fields are positional and append-only: a newer minor revision may add fields at the end,
with defaults, and a decoder ignores extra trailing fields. Every field is type- and
size-checked on decode; any violation raises `WireError`. Tensors travel as raw
little-endian bytes with an explicit dtype and shape; pickle is never used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

from .errors import ErrorCode, WireError
from .fields import (MAX_TOKEN_ID, Reader, Wire, blob, boolean, decode_fields, encode_fields, fixed_bytes, integer,
                     nested, number, text, token_ids, wire)
from .topics import PROTOCOL_VERSION

SESSION_ID_BYTES = 16
FINGERPRINT_BYTES = 16
MAX_SEED = 2**64 - 1
MAX_SENT_AT_MS = 2**63 - 1
MAX_ETA_MS = 3_600_000  # a QUEUED's estimate: at most an hour


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
    QUEUED = 10  # verifier -> device: the awaited OPEN or block is queued; wait on (plaintext)


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
    def from_array(cls, array: np.ndarray, dtype: str = "float16") -> Features:
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
    def from_arrays(cls, ids: np.ndarray, weights: np.ndarray) -> SparseQWire:
        _, top = ids.shape
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


# ---------------------------------------------------------------- nested fields

def _features_out(f: Features) -> Any:
    return [f.dtype, list(f.shape), f.data]


def _features_in(f: Reader, index: int, name: str, got: dict[str, Any]) -> Features:
    raw = f.get(index, name)
    if not (isinstance(raw, list) and len(raw) == 3):
        raise f.bad(name, "must be [dtype, shape, bytes] or nil")
    dtype, shape, data = raw
    if dtype not in FEATURE_DTYPES:
        raise f.bad(name, f"dtype must be one of {sorted(FEATURE_DTYPES)}, got {dtype!r}", ErrorCode.BAD_FEATURES)
    if not (isinstance(shape, list) and 1 <= len(shape) <= f.limits.max_feature_rank):
        raise f.bad(name, f"shape must be 1 to {f.limits.max_feature_rank} dimensions", ErrorCode.BAD_FEATURES)
    if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise f.bad(name, "shape must hold positive integers", ErrorCode.BAD_FEATURES)
    if not isinstance(data, bytes):
        raise f.bad(name, "data must be bytes", ErrorCode.BAD_FEATURES)
    if len(data) > f.limits.max_feature_bytes:
        raise f.bad(name, f"data is {len(data)} bytes, limit {f.limits.max_feature_bytes}", ErrorCode.OVERSIZE)
    expected = math.prod(shape) * np.dtype(FEATURE_DTYPES[dtype]).itemsize  # Python ints: no overflow
    if len(data) != expected:
        raise f.bad(name, f"data is {len(data)} bytes but shape {shape} needs {expected}", ErrorCode.BAD_FEATURES)
    array = Features(dtype, tuple(shape), data).to_array()
    if not np.isfinite(array).all():
        raise f.bad(name, "hold NaN or infinite values", ErrorCode.BAD_FEATURES)
    return Features(dtype, tuple(shape), data)


def _q_out(q: SparseQWire) -> Any:
    return [q.top, q.ids, q.weights]


def _q_in(rows: str) -> Any:
    """The check of a q whose row count is the length of the field `rows` (decoded before it)."""

    def check(f: Reader, index: int, name: str, got: dict[str, Any]) -> SparseQWire:
        if got[rows] is None:
            raise f.bad(name, f"needs a {rows}")
        k = len(got[rows])
        raw = f.get(index, name)
        if not (isinstance(raw, list) and len(raw) == 3):
            raise f.bad(name, "must be [top, ids, weights] or nil")
        top, ids, weights = raw
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= f.limits.max_q_top:
            raise f.bad(name, f"top must be in [1, {f.limits.max_q_top}]", ErrorCode.OUT_OF_RANGE)
        if not (isinstance(ids, bytes) and isinstance(weights, bytes)):
            raise f.bad(name, "ids and weights must be bytes")
        if len(ids) != 4 * k * top or len(weights) != 2 * k * top:
            raise f.bad(name, f"needs {4 * k * top} id bytes and {2 * k * top} weight bytes for k={k}, top={top}")
        q = SparseQWire(top, ids, weights)
        _, w = q.arrays(k)
        if k and (w.sum(axis=1) == 0).any():
            raise f.bad(name, "has a row whose weights are all zero", ErrorCode.OUT_OF_RANGE)
        return q

    return check


# Sampled temperatures below this are refused (out_of_range; 0 means greedy): tiny ones
# overflow logits / temperature to inf and the target's warp to NaN, which failed every
# session of the batch. Equal to speculative.sampling.MIN_TEMPERATURE.
MIN_TEMPERATURE = 0.01


def _temperature_in(f: Reader, index: int, name: str, got: dict[str, Any]) -> float:
    value = f.float(index, name, 0.0, 100.0)
    if 0.0 < value < MIN_TEMPERATURE:
        raise f.bad(name, f"must be 0 (greedy) or in [{MIN_TEMPERATURE}, 100], got {value}", ErrorCode.OUT_OF_RANGE)
    return value


def _accept_mask_in(f: Reader, index: int, name: str, got: dict[str, Any]) -> list[bool]:
    mask = f.get(index, name)
    if not (isinstance(mask, list) and len(mask) <= f.limits.max_gamma and all(isinstance(b, bool) for b in mask)):
        raise f.bad(name, f"must be an array of at most {f.limits.max_gamma} booleans")
    return mask


_SESSION_ID = fixed_bytes(SESSION_ID_BYTES)
_SEQ = integer(0, MAX_SEED)
_FEATURES = nested(_features_in, _features_out)
_CONTEXT_LEN = integer(1, lambda lim, got: lim.max_prompt_tokens + lim.max_new_tokens)


# ---------------------------------------------------------------- the messages
#
# Each message's fields, in order, are its wire fields after [version, type]. New fields go at
# the end of a message, with a default (`absent`, or nil-able), and README.md's table names them.

@dataclass(frozen=True)
class SessionOpen:
    session_id: bytes = wire(_SESSION_ID)
    prompt_ids: list[int] = wire(token_ids("max_prompt_tokens"))
    features: Features | None = wire(_FEATURES, None)
    temperature: float = wire(Wire(_temperature_in, float), 0.0)
    top_k: int = wire(integer(0, MAX_TOKEN_ID), 0)
    top_p: float = wire(number(1e-6, 1.0), 1.0)
    seed: int = wire(integer(0, MAX_SEED), 0)
    gamma: int = wire(integer(0, "max_gamma"), 4)
    q_top: int = wire(integer(1, "max_q_top"), 16)
    max_new_tokens: int = wire(integer(1, "max_new_tokens"), 64)
    stop_token_ids: list[int] = wire(token_ids("max_stop_tokens"), default_factory=list)
    tokenizer_fp: bytes = wire(fixed_bytes(FINGERPRINT_BYTES), b"\0" * FINGERPRINT_BYTES)
    # Non-empty when resuming (RESYNC).
    generated_ids: list[int] = wire(token_ids("max_new_tokens", absent=[]), default_factory=list)
    # The session's first drafted block (seq 0), verified in the prefill's forward and answered
    # with an OPENED holding its VERDICT; None: the OPEN carries no block (drafts follow OPENED).
    first_block: list[int] | None = wire(token_ids("max_gamma", nil=True), None)
    first_q: SparseQWire | None = wire(nested(_q_in("first_block"), _q_out), None)
    # When the device sent it (Unix ms): the freshness a verifier checks on a sealed OPEN (it
    # refuses one outside its window, and one it has seen, across restarts). A device sets it
    # on every send (`SessionChannel.send_open`); None: an OPEN from before this field.
    sent_at_ms: int | None = wire(integer(0, MAX_SENT_AT_MS, nil=True), default_factory=now_ms)
    # Cloud-only: the verifier generates the whole continuation itself (the device drafts
    # nothing, gamma 0) and streams it back, one VERDICT per token with seq 0, 1, 2, ... The
    # OPEN carries an empty first block. None (absent): an ordinary session.
    stream: bool | None = wire(Wire(lambda r, i, n, got: r.bool(i, n), absent=None, nil=True, omit_none=True), None)
    type = MsgType.OPEN

    def first_draft(self) -> DraftMsg | None:
        """The first block as the DRAFT it stands for (seq 0, from the whole context)."""
        if self.first_block is None:
            return None
        return DraftMsg(self.session_id, 0, len(self.prompt_ids) + len(self.generated_ids), self.first_block,
                        self.first_q)


@dataclass(frozen=True)
class DraftMsg:
    session_id: bytes = wire(_SESSION_ID)
    seq: int = wire(_SEQ)
    committed_len: int = wire(_CONTEXT_LEN)
    tokens: list[int] = wire(token_ids("max_gamma"))
    q: SparseQWire | None = wire(nested(_q_in("tokens"), _q_out), None)  # None: greedy, q is one-hot
    type = MsgType.DRAFT


@dataclass(frozen=True)
class VerdictMsg:
    session_id: bytes = wire(_SESSION_ID)
    seq: int = wire(_SEQ)
    accept_mask: list[bool] = wire(Wire(_accept_mask_in, list))
    n_accepted: int = wire(integer(0, lambda lim, got: len(got["accept_mask"])))
    next_token: int = wire(integer(0, MAX_TOKEN_ID))
    committed_len: int = wire(integer(1, MAX_SEED))  # after this verdict
    done: bool = wire(boolean(absent=False), False)
    # The verifier's model time for the batch that judged this block (ms; None: not told):
    # the device subtracts it from its wait to measure the network round trip.
    verify_ms: int | None = wire(Wire(lambda r, i, n, got: r.int(i, n, 0, MAX_ETA_MS), absent=None, nil=True,
                                      omit_none=True), None)
    # What a token of a cloud-only session costs on the verifier now (microseconds; None: not
    # told): its one-token forward, more while it is busy (verifier_node/stream_cost.py); the
    # device predicts cloud-only from it.
    stream_us: int | None = wire(Wire(lambda r, i, n, got: r.int(i, n, 0, MAX_ETA_MS * 1000), absent=None,
                                      nil=True, omit_none=True), None)
    type = MsgType.VERDICT


def _first_verdict_out(v: VerdictMsg) -> list[Any]:
    """A VERDICT's fields after session_id and seq (an OPENED's `first_verdict`)."""
    return encode_fields(v)[2:]


def _first_verdict_in(f: Reader, index: int, name: str, got: dict[str, Any]) -> VerdictMsg:
    nested_fields = f.get(index, name)
    if not isinstance(nested_fields, list) or len(nested_fields) < 5:
        raise f.bad(name, "must be nil or [accept_mask, n_accepted, next_token, committed_len, done]")
    # The fields of a VERDICT for this session's seq 0, checked as a VERDICT's are.
    items = [PROTOCOL_VERSION, int(MsgType.VERDICT), got["session_id"], 0, *nested_fields]
    return VerdictMsg(**decode_fields(VerdictMsg, Reader(items, MsgType.VERDICT, f.limits)))


@dataclass(frozen=True)
class Opened:
    session_id: bytes = wire(_SESSION_ID)
    verifier_id: str = wire(text())
    committed_len: int = wire(integer(1, MAX_SEED))
    # The VERDICT (seq 0) of the block the OPEN carried, in the same message; None when the
    # OPEN carried no block (then the field is left out).
    first_verdict: VerdictMsg | None = wire(nested(_first_verdict_in, _first_verdict_out, omit_none=True), None)
    type = MsgType.OPENED


@dataclass(frozen=True)
class Resync:
    session_id: bytes = wire(_SESSION_ID)
    reason: str = wire(text())
    type = MsgType.RESYNC


@dataclass(frozen=True)
class Close:
    session_id: bytes = wire(_SESSION_ID)
    reason: str = wire(text(absent="done"), "done")
    type = MsgType.CLOSE


@dataclass(frozen=True)
class ErrorMsg:
    session_id: bytes | None = wire(fixed_bytes(SESSION_ID_BYTES, nil=True))
    seq: int | None = wire(integer(0, MAX_SEED, nil=True))
    code: int = wire(integer(0, 65535, to_wire=int))
    message: str = wire(text())
    type = MsgType.ERROR


@dataclass(frozen=True)
class SealedOpen:
    """An OPEN encrypted under keys agreed from the device's static key, a fresh ephemeral key
    and the verifier key `verifier_key_id`; envelope seq 0 uplink."""

    session_id: bytes = wire(_SESSION_ID)
    verifier_key_id: str = wire(text())
    ephemeral_pub: bytes = wire(fixed_bytes(32))  # X25519, 32 bytes
    ciphertext: bytes = wire(blob("max_payload_bytes"))
    type = MsgType.SEALED_OPEN


@dataclass(frozen=True)
class Sealed:
    """Any other session message, AEAD-encrypted; `seq` is the envelope's per-direction counter."""

    session_id: bytes = wire(_SESSION_ID)
    seq: int = wire(_SEQ)
    ciphertext: bytes = wire(blob("max_payload_bytes"))
    type = MsgType.SEALED


@dataclass(frozen=True)
class Queued:
    """The verifier holds the session's awaited message (its OPEN, or its latest block) in its
    queue: `ahead` messages before it, answered in about `eta_ms`. The device keeps waiting
    (README.md, "Waiting for a reply"). In the clear: it carries nothing but the wait."""

    session_id: bytes = wire(_SESSION_ID)
    ahead: int = wire(integer(0, MAX_SEED))
    eta_ms: int = wire(integer(0, MAX_ETA_MS))
    type = MsgType.QUEUED


Message = SessionOpen | Opened | DraftMsg | VerdictMsg | Resync | Close | ErrorMsg | SealedOpen | Sealed | Queued
MESSAGES: dict[MsgType, type] = {cls.type: cls for cls in (
    SessionOpen, Opened, DraftMsg, VerdictMsg, Resync, Close, ErrorMsg, SealedOpen, Sealed, Queued)}


# ---------------------------------------------------------------- encoding and decoding

def encode(msg: Message) -> bytes:
    """msgpack bytes of a message: [PROTOCOL_VERSION, type, *fields]."""
    return msgpack.packb([PROTOCOL_VERSION, int(msg.type), *encode_fields(msg)], use_bin_type=True)


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
        raise WireError(ErrorCode.BAD_VERSION,
                        f"protocol version {version!r} not supported (this side speaks {PROTOCOL_VERSION})")
    try:
        kind = MsgType(mtype) if type(mtype) is int else None
    except (ValueError, TypeError):
        kind = None
    if kind is None:
        raise WireError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {mtype!r}")
    cls = MESSAGES[kind]
    return cls(**decode_fields(cls, Reader(items, kind, limits)))
