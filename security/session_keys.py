"""Session key agreement: the two AEAD keys of one session, from X25519 and HKDF.

Key agreement for one session (all keys X25519):

    device:   static pair (d, D), fresh ephemeral pair (e, E) per session
    verifier: static pair (v, V), published by key id

    ikm      = X25519(d, V) || X25519(e, V)        # static-static || ephemeral-static
    uplink   = HKDF-SHA256(ikm, salt=session_id, info=UPLINK_LABEL   || transcript)
    downlink = HKDF-SHA256(ikm, salt=session_id, info=DOWNLINK_LABEL || transcript)
    transcript = len-prefixed(D) || len-prefixed(E) || len-prefixed(V) || len-prefixed(session_id)

The static-static secret authenticates the device to the verifier (only the holder of d can
compute it for a given D) and the verifier to the device (only the holder of v). The
ephemeral-static secret gives forward secrecy against a later leak of the device's static key:
once the device forgets e, a recorded session cannot be decrypted with d alone. (A leak of the
verifier's static key v still exposes recorded sessions; rotating it with `VerifierKeyRing`
and retiring old keys bounds that window.) Binding the three public keys and the session id
into the HKDF info makes keys for different sessions or parties unrelated.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.topics import PROTOCOL

from .key_pairs import KEY_LEN, KeyAgreementError, KeyPair, PublicKeyLike, as_public_key, raw_public_bytes

SESSION_ID_MIN_LEN = 8
SESSION_ID_MAX_LEN = 64
SESSION_ID_LEN = 16  # what `new_session_id` makes
UPLINK_LABEL = f"{PROTOCOL} session key uplink".encode()
DOWNLINK_LABEL = f"{PROTOCOL} session key downlink".encode()


@dataclass(frozen=True)
class SessionKeys:
    """The two AEAD keys of one session: `uplink` (device to verifier), `downlink` (back)."""

    uplink: bytes = field(repr=False)
    downlink: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "SessionKeys(<redacted>)"


def new_session_id() -> bytes:
    """A random 16-byte session id (the HKDF salt; must never repeat for a device)."""
    return secrets.token_bytes(SESSION_ID_LEN)


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _private(key: X25519PrivateKey | KeyPair) -> X25519PrivateKey:
    return key.private if isinstance(key, KeyPair) else key


def _exchange(private: X25519PrivateKey, public: PublicKeyLike, what: str) -> bytes:
    try:
        return private.exchange(as_public_key(public))
    except ValueError as exc:
        # OpenSSL refuses an all-zero result, which a low-order public key produces.
        raise KeyAgreementError(f"X25519 with the {what} gave no usable secret: "
                                "the public key is invalid or of low order") from exc


STATIC_SECRETS_KEPT = 4096  # per key pair: the peers whose static-static secret is remembered


def _static_exchange(key: X25519PrivateKey | KeyPair, public: PublicKeyLike, what: str) -> bytes:
    """`_exchange` between two static keys. A `KeyPair` remembers the result per peer (the
    same pair gives the same secret on every session open, and an X25519 costs about 35 us);
    the memory goes with the key pair, so a retired key leaves none behind. Errors are not
    remembered."""
    if not isinstance(key, KeyPair):
        return _exchange(key, public, what)
    peer = raw_public_bytes(public)
    kept = key.static_secrets
    secret = kept.get(peer)
    if secret is None:
        secret = _exchange(key.private, peer, what)
        kept[peer] = secret
        while len(kept) > STATIC_SECRETS_KEPT:
            kept.popitem(last=False)
    return secret


def _derive(ikm: bytes, session_id: bytes, device_pub: bytes, ephemeral_pub: bytes,
            verifier_pub: bytes) -> SessionKeys:
    if not isinstance(session_id, (bytes, bytearray)):
        raise KeyAgreementError("session_id must be bytes")
    if not SESSION_ID_MIN_LEN <= len(session_id) <= SESSION_ID_MAX_LEN:
        raise KeyAgreementError(f"session_id must be {SESSION_ID_MIN_LEN}-{SESSION_ID_MAX_LEN} "
                                f"bytes, got {len(session_id)}; use new_session_id()")
    session_id = bytes(session_id)
    transcript = _lp(device_pub) + _lp(ephemeral_pub) + _lp(verifier_pub) + _lp(session_id)

    def expand(label: bytes) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=session_id,
                    info=label + transcript)
        return hkdf.derive(ikm)

    return SessionKeys(uplink=expand(UPLINK_LABEL), downlink=expand(DOWNLINK_LABEL))


def device_session_keys(device_static_priv: X25519PrivateKey | KeyPair,
                        ephemeral_priv: X25519PrivateKey | KeyPair,
                        verifier_static_pub: PublicKeyLike,
                        session_id: bytes) -> SessionKeys:
    """Session keys on the device: its static key, this session's ephemeral key, the verifier's."""
    d = _private(device_static_priv)
    e = _private(ephemeral_priv)
    ikm = (_static_exchange(device_static_priv, verifier_static_pub, "verifier's static key (static-static)")
           + _exchange(e, verifier_static_pub, "verifier's static key (ephemeral-static)"))
    return _derive(ikm, session_id, raw_public_bytes(d.public_key()),
                   raw_public_bytes(e.public_key()), raw_public_bytes(verifier_static_pub))


def verifier_session_keys(verifier_static_priv: X25519PrivateKey | KeyPair,
                          device_static_pub: PublicKeyLike,
                          ephemeral_pub: PublicKeyLike,
                          session_id: bytes) -> SessionKeys:
    """Session keys on the verifier; equal to the device's `device_session_keys` result."""
    v = _private(verifier_static_priv)
    ikm = (_static_exchange(verifier_static_priv, device_static_pub, "device's static key")
           + _exchange(v, ephemeral_pub, "device's ephemeral key"))
    return _derive(ikm, session_id, raw_public_bytes(device_static_pub),
                   raw_public_bytes(ephemeral_pub), raw_public_bytes(v.public_key()))

