"""One session's messages to and from wire bytes: plaintext or sealed, chosen once at OPEN.

A side picks the codec when the session opens and from then on only calls it, never asking
again whether the session is encrypted:

- `seal(topic, message)`: the bytes to publish on `topic` (the encoded message, or a `Sealed`
  envelope around it under the next envelope seq);
- `open(topic, envelope)`: the inner bytes of a received `Sealed` and whether it repeats an
  envelope seq already taken (a QoS-1 duplicate, to answer from a cache, never act on twice);
- `refuse_plain()`: raises when a plaintext session message arrives for this session.

`PlainCodec` is the unencrypted session: `seal` is `schemas.encode`, and a `Sealed` envelope
cannot belong to it. `SealedCodec` holds the session's `security.channel.SessionCipher`;
`SealedCodec.for_device` makes a device's codec and its sealed OPEN, `SealedCodec.for_verifier`
the verifier's codec from that sealed OPEN. Errors are `schemas.WireError`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas import ErrorCode, Sealed, SealedOpen, WireError, encode
from schemas.messages import Message

from .channel import DeviceKeys, SessionCipher, device_open, verifier_open
from .keys import KeyPair, PublicKeyLike


class SessionCodec(Protocol):
    """How one session's messages are put on the wire and taken off it."""

    @property
    def sealed(self) -> bool:
        """Whether the session is end-to-end encrypted."""
        ...

    def seal(self, topic: str, message: Message) -> bytes:
        """The payload that carries `message` on `topic`."""
        ...

    def open(self, topic: str, envelope: Sealed) -> tuple[bytes, bool]:
        """(inner bytes, is_duplicate) of an envelope received on `topic`."""
        ...

    def refuse_plain(self) -> None:
        """Raise WireError PLAINTEXT_REFUSED if this session takes no plaintext messages."""
        ...


@dataclass(frozen=True)
class PlainCodec:
    """An unencrypted session: messages go out as they are encoded."""

    @property
    def sealed(self) -> bool:
        return False

    def seal(self, topic: str, message: Message) -> bytes:
        return encode(message)

    def open(self, topic: str, envelope: Sealed) -> tuple[bytes, bool]:
        """Never: whoever seals for a session opened without keys is not its device."""
        raise WireError(ErrorCode.WRONG_DEVICE, "session id belongs to another device")

    def refuse_plain(self) -> None:
        return None


PLAIN = PlainCodec()


@dataclass
class SealedCodec:
    """An encrypted session. `open_ciphertext`: the sealed OPEN that started it (on the
    verifier: to recognise a QoS-1 duplicate of that OPEN)."""

    cipher: SessionCipher = field(repr=False)
    open_ciphertext: bytes = b""

    @classmethod
    def for_device(cls, keys: DeviceKeys, device_id: str, session_id: bytes, topic: str,
                   open_msg: Message) -> tuple[SealedCodec, bytes]:
        """A device's codec for a new session (fresh ephemeral keys) and its sealed OPEN's payload."""
        cipher, sealed_open = device_open(keys.device_key, keys.verifier_pub, keys.verifier_key_id, device_id,
                                          session_id, topic, encode(open_msg))
        return cls(cipher, sealed_open.ciphertext), encode(sealed_open)

    @classmethod
    def for_verifier(cls, verifier_key: KeyPair, device_pub: PublicKeyLike, device_id: str, topic: str,
                     msg: SealedOpen) -> tuple[SealedCodec, bytes]:
        """The verifier's codec for a sealed OPEN and the OPEN's inner bytes. Raises WireError
        DECRYPT_FAILED."""
        cipher, inner = verifier_open(verifier_key, device_pub, device_id, topic, msg)
        return cls(cipher, msg.ciphertext), inner

    @property
    def sealed(self) -> bool:
        return True

    def seal(self, topic: str, message: Message) -> bytes:
        return encode(self.cipher.seal(topic, encode(message)))

    def open(self, topic: str, envelope: Sealed) -> tuple[bytes, bool]:
        """Raises WireError DECRYPT_FAILED or REPLAY (older than the replay window)."""
        return self.cipher.open(topic, envelope)

    def refuse_plain(self) -> None:
        raise WireError(ErrorCode.PLAINTEXT_REFUSED, "this session is encrypted; plaintext refused")
