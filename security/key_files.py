"""Key storage: secret files (mode 0600) and private and public keys in PEM or raw form."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .key_pairs import (KEY_LEN, KeyFormatError, KeyPair, PublicKeyLike, as_public_key, private_key_from_bytes,
                        public_key_from_b64, raw_public_bytes)


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
    pub = as_public_key(public)
    if fmt == "pem":
        data = pub.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    elif fmt == "raw":
        data = raw_public_bytes(pub)
    else:
        raise ValueError(f"unknown key format {fmt!r}: use 'pem' or 'raw'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def parse_public_key(data: bytes, where: str = "public key") -> X25519PublicKey:
    """An X25519 public key from raw 32 bytes, base64 text or SubjectPublicKeyInfo PEM."""
    if len(data) == KEY_LEN:
        return as_public_key(data)
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
