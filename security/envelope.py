"""AEAD envelopes for session messages and the receiver's replay window.

Each direction of a session has its own key (`keys.SessionKeys`) and its own sender sequence
number. The 12-byte AES-GCM nonce is derived, never sent:

    nonce = direction (1 byte) || 3 zero bytes || seq (8 bytes, big-endian)

so under one key a nonce repeats only if a sender reuses a sequence number, which `seal` makes
impossible to do by accident for a counter that only goes up (it refuses anything outside
0..2**64-1; the sender owns the counter). The direction byte keeps the two directions apart even
if one key were ever used for both.

The associated data binds what the broker and the message header say about the message (see
`build_aad`), so a ciphertext moved to another topic, device, session or sequence number fails
to open. The ciphertext is the plaintext plus a 16-byte tag (`OVERHEAD`).

Receivers use `ReplayWindow`: `check(seq)` before decrypting (cheap rejection, no state
change), `open_sealed`, then `accept(seq)` only after the tag verified, so a forged message can
never move the window.
"""

from __future__ import annotations

import enum
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_LEN = 32  # AES-256
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = TAG_LEN  # bytes a sealed message adds to its plaintext (the nonce is not sent)
SEQ_MAX = 2**64 - 1
AAD_MAGIC = b"ESA1"  # names the AAD layout, so a future layout cannot collide with this one
MAX_FIELD_LEN = 0xFFFF
DEFAULT_WINDOW = 64


class Direction(enum.IntEnum):
    """Who sent a message: the device (uplink) or the verifier (downlink)."""

    UPLINK = 0
    DOWNLINK = 1


class EnvelopeError(ValueError):
    """Base class of the envelope's errors."""


class SequenceError(EnvelopeError):
    """A sequence number outside 0..2**64-1 (or not an int)."""


class DecryptError(EnvelopeError):
    """The message does not authenticate under this key, direction, seq and associated data.

    A normal, countable outcome for hostile or misrouted input: drop the message, count it.
    """


class ReplayReason(str, enum.Enum):
    """Why the replay window refused a sequence number."""

    DUPLICATE = "duplicate"  # already accepted (a QoS-1 redelivery or a replay)
    TOO_OLD = "too_old"  # behind the window; cannot tell whether it was seen


class ReplayError(EnvelopeError):
    """`ReplayWindow.accept` refused a sequence number; `.reason` says why."""

    def __init__(self, seq: int, reason: ReplayReason, highest: int | None) -> None:
        self.seq = seq
        self.reason = reason
        self.highest = highest
        super().__init__(f"sequence number {seq} refused ({reason.value}); highest accepted "
                         f"is {highest}")


def _check_seq(seq: object) -> int:
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise SequenceError(f"sequence number must be an int, not {type(seq).__name__}")
    if not 0 <= seq <= SEQ_MAX:
        raise SequenceError(f"sequence number {seq} is outside 0..2**64-1; a session that has "
                            "sent 2**64 messages must be re-opened with a new key")
    return seq


def _check_key(key: object) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LEN:
        raise EnvelopeError(f"an envelope key is {KEY_LEN} bytes (use keys.SessionKeys)")
    return bytes(key)


def make_nonce(direction: Direction, seq: int) -> bytes:
    """The 12-byte nonce for (direction, seq); distinct for every distinct pair."""
    return struct.pack(">B3xQ", Direction(direction), _check_seq(seq))


def build_aad(version: int, topic: str, device_id: str, session_id: bytes, seq: int) -> bytes:
    """Associated data, unambiguously encoded:

        "ESA1" || version u16 || len u16 || topic utf-8 || len u16 || device_id utf-8
               || len u16 || session_id || seq u64          (all integers big-endian)

    Every variable field carries its length, so no two different inputs give the same bytes.
    """
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 0xFFFF:
        raise EnvelopeError(f"protocol version {version!r} must be an int in 0..65535")
    fields = []
    for name, value in (("topic", topic), ("device_id", device_id)):
        if not isinstance(value, str):
            raise EnvelopeError(f"{name} must be a str, not {type(value).__name__}")
        fields.append(value.encode("utf-8"))
    if not isinstance(session_id, (bytes, bytearray)):
        raise EnvelopeError(f"session_id must be bytes, not {type(session_id).__name__}")
    fields.append(bytes(session_id))
    parts = [AAD_MAGIC, struct.pack(">H", version)]
    for data in fields:
        if len(data) > MAX_FIELD_LEN:
            raise EnvelopeError(f"associated-data field of {len(data)} bytes exceeds "
                                f"{MAX_FIELD_LEN}")
        parts.append(struct.pack(">H", len(data)))
        parts.append(data)
    parts.append(struct.pack(">Q", _check_seq(seq)))
    return b"".join(parts)


def seal(key: bytes, *, direction: Direction, seq: int, aad: bytes, plaintext: bytes) -> bytes:
    """Encrypt and authenticate `plaintext` with AES-256-GCM; returns ciphertext || tag.

    The caller must use each `seq` once per (key, direction): a strictly increasing counter.
    """
    nonce = make_nonce(direction, seq)
    return AESGCM(_check_key(key)).encrypt(nonce, bytes(plaintext), bytes(aad))


def open_sealed(key: bytes, *, direction: Direction, seq: int, aad: bytes,
                ciphertext: bytes) -> bytes:
    """Decrypt a `seal` result; raises `DecryptError` if anything was altered or misrouted."""
    nonce = make_nonce(direction, seq)
    if len(ciphertext) < TAG_LEN:
        raise DecryptError(f"ciphertext of {len(ciphertext)} bytes is shorter than the "
                           f"{TAG_LEN}-byte tag")
    try:
        return AESGCM(_check_key(key)).decrypt(nonce, bytes(ciphertext), bytes(aad))
    except InvalidTag:
        raise DecryptError("message failed authentication (wrong key, direction, seq, "
                           "associated data, or tampered ciphertext)") from None


class ReplayWindow:
    """Sliding-window replay protection over 64-bit sequence numbers (as in IPsec, OSCORE).

    Remembers the highest accepted number and, in a bitmap, which of the `size` numbers at and
    below it were accepted. A number above the highest is fresh; one inside the window is fresh
    unless its bit is set; one below the window is refused as too old (it may have been seen).
    Messages may therefore arrive out of order by up to `size - 1` positions.
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"replay window size must be a positive int, not {size!r}")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest: int | None = None
        self._bitmap = 0  # bit i set: (highest - i) was accepted

    @property
    def highest(self) -> int | None:
        """The highest accepted sequence number, or None before the first."""
        return self._highest

    def check(self, seq: int) -> ReplayReason | None:
        """Why `seq` would be refused, or None if it is fresh. Changes nothing."""
        _check_seq(seq)
        if self._highest is None or seq > self._highest:
            return None
        offset = self._highest - seq
        if offset >= self.size:
            return ReplayReason.TOO_OLD
        if self._bitmap >> offset & 1:
            return ReplayReason.DUPLICATE
        return None

    def accept(self, seq: int) -> None:
        """Record `seq` as received; raises `ReplayError` if `check` would refuse it.

        Call only after the message authenticated (`open_sealed` succeeded).
        """
        reason = self.check(seq)
        if reason is not None:
            raise ReplayError(seq, reason, self._highest)
        if self._highest is None:
            self._highest, self._bitmap = seq, 1
        elif seq > self._highest:
            shift = seq - self._highest
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self._highest = seq
        else:
            self._bitmap |= 1 << (self._highest - seq)

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, highest={self._highest})"
