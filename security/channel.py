"""End-to-end encryption of one session's messages, on either side.

The device makes a fresh ephemeral X25519 key per session (and per re-open), agrees uplink
and downlink keys with the verifier's static key (security/keys.py), and sends the OPEN as
a `SealedOpen` with envelope seq 0. Every later message either way is a `Sealed` whose
envelope seq counts up per direction, so a nonce never repeats under a key; the associated
data binds protocol version, topic, device id, session id and seq (security/envelope.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import ErrorCode, Sealed, SealedOpen, WireError
from schemas.messages import PROTOCOL_VERSION

from .envelope import DecryptError, Direction, ReplayReason, ReplayWindow, build_aad, open_sealed, seal
from .keys import (KeyAgreementError, KeyPair, PublicKeyLike, SessionKeys, device_session_keys, generate_keypair,
                   verifier_session_keys)

OPEN_SEQ = 0


@dataclass
class SessionCipher:
    """One side's AEAD state for one session."""

    keys: SessionKeys = field(repr=False)
    sending: Direction
    device_id: str
    session_id: bytes
    next_seq: int = OPEN_SEQ
    window: ReplayWindow = field(default_factory=ReplayWindow)
    open_ciphertext: bytes = b""  # the sealed OPEN, to recognise its QoS-1 duplicates

    @property
    def receiving(self) -> Direction:
        return Direction.DOWNLINK if self.sending == Direction.UPLINK else Direction.UPLINK

    def _key(self, direction: Direction) -> bytes:
        return self.keys.uplink if direction == Direction.UPLINK else self.keys.downlink

    def _aad(self, topic: str, seq: int) -> bytes:
        return build_aad(PROTOCOL_VERSION, topic, self.device_id, self.session_id, seq)

    def seal(self, topic: str, inner: bytes) -> Sealed:
        """Encrypt an encoded inner message for `topic` with the next sequence number."""
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        ct = seal(self._key(self.sending), direction=self.sending, seq=seq, aad=self._aad(topic, seq), plaintext=inner)
        return Sealed(self.session_id, seq, ct)

    def open(self, topic: str, msg: Sealed) -> tuple[bytes, bool]:
        """(inner bytes, is_duplicate). Raises WireError DECRYPT_FAILED or REPLAY.

        A duplicate (same seq again, as QoS 1 may deliver) is returned flagged, so the caller
        can answer it from its cache instead of acting on it twice.
        """
        try:
            inner = open_sealed(self._key(self.receiving), direction=self.receiving, seq=msg.seq,
                                aad=self._aad(topic, msg.seq), ciphertext=msg.ciphertext)
        except DecryptError as exc:
            raise WireError(ErrorCode.DECRYPT_FAILED, str(exc)) from None
        reason = self.window.check(msg.seq)
        if reason == ReplayReason.DUPLICATE:
            return inner, True
        if reason is not None:
            raise WireError(ErrorCode.REPLAY, f"envelope seq {msg.seq} is older than the replay window")
        self.window.accept(msg.seq)
        return inner, False


@dataclass(frozen=True)
class DeviceKeys:
    """What a device needs to encrypt its sessions (from its provisioning bundle)."""

    device_key: KeyPair = field(repr=False)
    verifier_pub: PublicKeyLike = field(repr=False)
    verifier_key_id: str = ""

    @classmethod
    def from_bundle(cls, bundle) -> DeviceKeys:
        """From a `security.bundle.DeviceBundle`: its key and the verifier's current key."""
        return cls(bundle.device_key, bundle.verifier_public_key(), bundle.verifier_key_id)


def device_open(device_key: KeyPair, verifier_pub: PublicKeyLike, verifier_key_id: str, device_id: str,
                session_id: bytes, topic: str, open_inner: bytes) -> tuple[SessionCipher, SealedOpen]:
    """The device's cipher for a new session and its sealed OPEN (a fresh ephemeral key each time)."""
    ephemeral = generate_keypair()
    keys = device_session_keys(device_key, ephemeral, verifier_pub, session_id)
    cipher = SessionCipher(keys, Direction.UPLINK, device_id, session_id)
    sealed = cipher.seal(topic, open_inner)
    return cipher, SealedOpen(session_id, verifier_key_id, ephemeral.public_bytes, sealed.ciphertext)


def verifier_open(verifier_key: KeyPair, device_pub: PublicKeyLike, device_id: str, topic: str,
                  msg: SealedOpen) -> tuple[SessionCipher, bytes]:
    """The verifier's cipher for a sealed OPEN and the OPEN's inner bytes."""
    try:
        keys = verifier_session_keys(verifier_key, device_pub, msg.ephemeral_pub, msg.session_id)
    except KeyAgreementError as exc:
        raise WireError(ErrorCode.DECRYPT_FAILED, str(exc)) from None
    cipher = SessionCipher(keys, Direction.DOWNLINK, device_id, msg.session_id)
    inner, _ = cipher.open(topic, Sealed(msg.session_id, OPEN_SEQ, msg.ciphertext))
    return cipher, inner
