"""X25519 key pairs, session key agreement and verifier key rotation.

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

import base64
import binascii
import collections
import functools
import hashlib
import os
import secrets
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.topics import PROTOCOL

KEY_LEN = 32  # raw X25519 key and derived AEAD key, bytes
KEY_ID_LEN = 16  # hex characters: the first 8 bytes of SHA-256 over the raw public key
SESSION_ID_MIN_LEN = 8
SESSION_ID_MAX_LEN = 64
SESSION_ID_LEN = 16  # what `new_session_id` makes
UPLINK_LABEL = f"{PROTOCOL} session key uplink".encode()
DOWNLINK_LABEL = f"{PROTOCOL} session key downlink".encode()
DEFAULT_MAX_PREVIOUS = 2


class KeyFormatError(ValueError):
    """A key file or key bytes that are not an X25519 key in a supported encoding."""


class KeyAgreementError(ValueError):
    """X25519 produced no usable secret (a low-order public key) or the inputs are malformed."""


class UnknownKeyId(KeyError):
    """A session names a verifier key id this key ring does not hold (never had, or retired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown key id"


PublicKeyLike = X25519PublicKey | bytes


def _public_bytes(public: PublicKeyLike) -> bytes:
    if isinstance(public, X25519PublicKey):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(public, (bytes, bytearray)) and len(public) == KEY_LEN:
        return bytes(public)
    raise KeyFormatError(f"an X25519 public key is {KEY_LEN} raw bytes or an X25519PublicKey")


def _as_public_key(public: PublicKeyLike) -> X25519PublicKey:
    if isinstance(public, X25519PublicKey):
        return public
    return X25519PublicKey.from_public_bytes(_public_bytes(public))


def key_id(public: PublicKeyLike) -> str:
    """Short fingerprint of a public key: 16 lowercase hex characters (64 bits of SHA-256)."""
    return hashlib.sha256(_public_bytes(public)).hexdigest()[:KEY_ID_LEN]


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
        return _public_bytes(self.public)

    @functools.cached_property
    def key_id(self) -> str:
        return key_id(self.public)

    @functools.cached_property
    def static_secrets(self) -> collections.OrderedDict[bytes, bytes]:
        """X25519 results with peers' static keys (see `_static_exchange`)."""
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
    return _as_public_key(raw)


def public_key_to_b64(public: PublicKeyLike) -> str:
    """Raw public key as standard base64 text (for JSON/TOML config bundles)."""
    return base64.b64encode(_public_bytes(public)).decode("ascii")


def public_key_from_b64(text: str) -> X25519PublicKey:
    """Inverse of `public_key_to_b64`."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError(f"public key {text!r} is not valid base64") from exc
    return _as_public_key(raw)


def write_secret_file(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` with mode 0600, atomically replacing any old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_private_key(path: str | Path, pair: KeyPair, *, fmt: str = "pem") -> Path:
    """Write the private key as unencrypted PKCS#8 PEM (`fmt="pem"`) or 32 raw bytes (`"raw"`).

    The file is created with mode 0600.
    """
    if fmt == "pem":
        data = pair.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    elif fmt == "raw":
        data = pair.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
    else:
        raise ValueError(f"unknown key format {fmt!r}: use 'pem' or 'raw'")
    path = Path(path)
    write_secret_file(path, data)
    return path


def load_private_key(path: str | Path) -> KeyPair:
    """Read a private key written by `save_private_key` (PEM or raw, detected)."""
    data = Path(path).read_bytes()
    if len(data) == KEY_LEN:
        return private_key_from_bytes(data)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"{path}: not a PEM or raw X25519 private key ({exc})") from exc
    if not isinstance(key, X25519PrivateKey):
        raise KeyFormatError(f"{path}: holds a {type(key).__name__}, not an X25519 private key")
    return KeyPair(key)


def save_public_key(path: str | Path, public: PublicKeyLike, *, fmt: str = "pem") -> Path:
    """Write a public key as SubjectPublicKeyInfo PEM or 32 raw bytes (mode 0644)."""
    pub = _as_public_key(public)
    if fmt == "pem":
        data = pub.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    elif fmt == "raw":
        data = _public_bytes(pub)
    else:
        raise ValueError(f"unknown key format {fmt!r}: use 'pem' or 'raw'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def parse_public_key(data: bytes, where: str = "public key") -> X25519PublicKey:
    """An X25519 public key from raw 32 bytes, base64 text or SubjectPublicKeyInfo PEM."""
    if len(data) == KEY_LEN:
        return _as_public_key(data)
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"{where}: not a PEM public key ({exc})") from exc
        if not isinstance(key, X25519PublicKey):
            raise KeyFormatError(f"{where}: holds a {type(key).__name__}, not an X25519 public key")
        return key
    try:
        return public_key_from_b64(text.decode("ascii"))
    except (KeyFormatError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"{where}: not an X25519 public key in raw, base64 or PEM form ({exc})") from exc


def load_public_key(path: str | Path) -> X25519PublicKey:
    """Read a public key written by `save_public_key` (PEM or raw; base64 also accepted)."""
    return parse_public_key(Path(path).read_bytes(), str(path))


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
        return private.exchange(_as_public_key(public))
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
    peer = _public_bytes(public)
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
    return _derive(ikm, session_id, _public_bytes(d.public_key()),
                   _public_bytes(e.public_key()), _public_bytes(verifier_static_pub))


def verifier_session_keys(verifier_static_priv: X25519PrivateKey | KeyPair,
                          device_static_pub: PublicKeyLike,
                          ephemeral_pub: PublicKeyLike,
                          session_id: bytes) -> SessionKeys:
    """Session keys on the verifier; equal to the device's `device_session_keys` result."""
    v = _private(verifier_static_priv)
    ikm = (_static_exchange(verifier_static_priv, device_static_pub, "device's static key")
           + _exchange(v, ephemeral_pub, "device's ephemeral key"))
    return _derive(ikm, session_id, _public_bytes(device_static_pub),
                   _public_bytes(ephemeral_pub), _public_bytes(v.public_key()))


class VerifierKeyRing:
    """The verifier's current static key plus a few previous ones, looked up by key id.

    New sessions are opened for `current` (devices learn its public key and id from their
    config or the verifier's status). After `rotate()`, sessions that a device opened under the
    previous key keep working because the session open names the key id it was made for; the
    oldest previous key is dropped once more than `max_previous` are held, or explicitly with
    `retire()` when no session uses it any more.
    """

    def __init__(self, current: KeyPair, previous: Iterable[KeyPair] = (), *,
                 max_previous: int = DEFAULT_MAX_PREVIOUS) -> None:
        if max_previous < 0:
            raise ValueError("max_previous must be >= 0")
        self.max_previous = max_previous
        self._current = current
        self._previous: OrderedDict[str, KeyPair] = OrderedDict()  # oldest first
        for pair in previous:
            self._add_previous(pair)

    def _add_previous(self, pair: KeyPair) -> None:
        if pair.key_id == self._current.key_id:
            return
        self._previous.pop(pair.key_id, None)
        self._previous[pair.key_id] = pair
        while len(self._previous) > self.max_previous:
            self._previous.popitem(last=False)

    @property
    def current(self) -> KeyPair:
        return self._current

    @property
    def current_key_id(self) -> str:
        return self._current.key_id

    def key_ids(self) -> list[str]:
        """Every key id accepted, current first, then previous ones newest first."""
        return [self._current.key_id, *reversed(self._previous)]

    def public_keys(self) -> dict[str, bytes]:
        """Raw public key by key id, for every key accepted (current first)."""
        return {kid: self.get(kid).public_bytes for kid in self.key_ids()}

    def get(self, kid: str) -> KeyPair:
        """The key pair for `kid`, or `UnknownKeyId` (tell the device to re-open its session)."""
        if kid == self._current.key_id:
            return self._current
        try:
            return self._previous[kid]
        except KeyError:
            raise UnknownKeyId(
                f"verifier key id {kid!r} is not held (current {self.current_key_id!r}, "
                f"previous {list(self._previous)!r}): the device must re-open its session "
                "with the verifier's current public key") from None

    def __contains__(self, kid: object) -> bool:
        return kid == self._current.key_id or kid in self._previous

    def rotate(self, new: KeyPair | None = None) -> KeyPair:
        """Make `new` (or a fresh pair) current; the old current becomes a previous key."""
        new = new if new is not None else generate_keypair()
        if new.key_id == self._current.key_id:
            return new
        old = self._current
        self._previous.pop(new.key_id, None)
        self._current = new
        self._add_previous(old)
        return new

    def retire(self, kid: str) -> None:
        """Forget a previous key; sessions opened under it will get `UnknownKeyId`."""
        if kid == self._current.key_id:
            raise ValueError(f"key {kid!r} is the current key: rotate() before retiring it")
        if self._previous.pop(kid, None) is None:
            raise UnknownKeyId(f"verifier key id {kid!r} is not a previous key of this ring")

    def session_keys(self, kid: str, device_static_pub: PublicKeyLike,
                     ephemeral_pub: PublicKeyLike, session_id: bytes) -> SessionKeys:
        """`verifier_session_keys` with the private key that `kid` names."""
        return verifier_session_keys(self.get(kid), device_static_pub, ephemeral_pub, session_id)

    def save(self, directory: str | Path) -> Path:
        """Write every key (PEM, mode 0600) and a `current` file naming the current key id."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keep = {f"verifier-{kid}.pem" for kid in self.key_ids()}
        for kid in self.key_ids():
            save_private_key(directory / f"verifier-{kid}.pem", self.get(kid))
        order = "\n".join(self.key_ids()) + "\n"
        write_secret_file(directory / "current", order.encode("ascii"))
        for stale in directory.glob("verifier-*.pem"):
            if stale.name not in keep:
                stale.unlink()
        return directory

    @classmethod
    def load(cls, directory: str | Path, *,
             max_previous: int = DEFAULT_MAX_PREVIOUS) -> VerifierKeyRing:
        """Read a ring written by `save` (the `current` file lists ids, current first)."""
        directory = Path(directory)
        try:
            ids = (directory / "current").read_text("ascii").split()
        except FileNotFoundError:
            raise KeyFormatError(f"{directory}: no 'current' file; is this a key ring "
                                 "written by VerifierKeyRing.save?") from None
        if not ids:
            raise KeyFormatError(f"{directory}/current names no key id")
        pairs = [load_private_key(directory / f"verifier-{kid}.pem") for kid in ids]
        for kid, pair in zip(ids, pairs):
            if pair.key_id != kid:
                raise KeyFormatError(f"{directory}: file for key id {kid!r} holds key "
                                     f"{pair.key_id!r}")
        return cls(pairs[0], reversed(pairs[1:]), max_previous=max_previous)
