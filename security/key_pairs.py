"""X25519 key pairs and public keys: generation, key ids and raw/base64 conversions."""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

KEY_LEN = 32  # raw X25519 key and derived AEAD key, bytes
KEY_ID_LEN = 16  # hex characters: the first 8 bytes of SHA-256 over the raw public key


class KeyFormatError(ValueError):
    """A key file or key bytes that are not an X25519 key in a supported encoding."""


class KeyAgreementError(ValueError):
    """X25519 produced no usable secret (a low-order public key) or the inputs are malformed."""


class UnknownKeyId(KeyError):
    """A session names a verifier key id this key ring does not hold (never had, or retired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown key id"


PublicKeyLike = X25519PublicKey | bytes


def raw_public_bytes(public: PublicKeyLike) -> bytes:
    if isinstance(public, X25519PublicKey):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(public, (bytes, bytearray)) and len(public) == KEY_LEN:
        return bytes(public)
    raise KeyFormatError(f"an X25519 public key is {KEY_LEN} raw bytes or an X25519PublicKey")


def as_public_key(public: PublicKeyLike) -> X25519PublicKey:
    if isinstance(public, X25519PublicKey):
        return public
    return X25519PublicKey.from_public_bytes(raw_public_bytes(public))


def key_id(public: PublicKeyLike) -> str:
    """Short fingerprint of a public key: 16 lowercase hex characters (64 bits of SHA-256)."""
    return hashlib.sha256(raw_public_bytes(public)).hexdigest()[:KEY_ID_LEN]


@dataclass(frozen=True)
class KeyPair:
    """An X25519 private key with its public half and key id."""

    private: X25519PrivateKey = field(repr=False)

    # Derived once per key pair (a verifier looks its keys up on every session open).
    @functools.cached_property
    def public(self) -> X25519PublicKey:
        return self.private.public_key()

    @functools.cached_property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key (what goes on the wire and into configs)."""
        return raw_public_bytes(self.public)

    @functools.cached_property
    def key_id(self) -> str:
        return key_id(self.public)

    @functools.cached_property
    def static_secrets(self) -> collections.OrderedDict[bytes, bytes]:
        """X25519 results with peers' static keys (see `security.session_keys`)."""
        return collections.OrderedDict()

    def __repr__(self) -> str:
        return f"KeyPair(key_id={self.key_id!r})"


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the OS's random source."""
    return KeyPair(X25519PrivateKey.generate())


def private_key_from_bytes(raw: bytes) -> KeyPair:
    """Key pair from a raw 32-byte X25519 private key."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_LEN:
        raise KeyFormatError(f"a raw X25519 private key is exactly {KEY_LEN} bytes")
    return KeyPair(X25519PrivateKey.from_private_bytes(bytes(raw)))


def public_key_from_bytes(raw: bytes) -> X25519PublicKey:
    """Public key from its raw 32 bytes."""
    return as_public_key(raw)


def public_key_to_b64(public: PublicKeyLike) -> str:
    """Raw public key as standard base64 text (for JSON/TOML config bundles)."""
    return base64.b64encode(raw_public_bytes(public)).decode("ascii")


def public_key_from_b64(text: str) -> X25519PublicKey:
    """Inverse of `public_key_to_b64`."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"public key {text!r} is not valid base64") from exc
    return as_public_key(raw)
