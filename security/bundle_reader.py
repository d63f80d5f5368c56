"""Reading a provisioning bundle folder (`DeviceBundle.load`): device.json, keys and PEM files."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from security.bundle_checks import (BUNDLE_FORMAT, BUNDLE_VERSION, CONFIG_NAME, MAX_CONFIG_BYTES, MAX_PEM_BYTES,
                                    BundleError, check_name, optional_name)
from security.keys import KeyFormatError, KeyPair, load_private_key, public_key_to_b64

B = TypeVar("B")


def read_bundle(make: Callable[..., B], directory: str | Path, *, check_permissions: bool) -> B:
    """`make(**fields)` with the fields read from bundle folder `directory` (see `DeviceBundle.load`)."""
    d = Path(directory)
    if not d.is_dir():
        raise BundleError(f"{d} is not a folder: pass the folder `edgespec flash DEVICE_ID "
                          f"--out DIR` wrote", path=d)
    doc, config_path = _read_config(d)
    get = _Fields(doc, config_path)
    password = get.optional_text("password")
    key_name = check_name(get.text("device_key_file"), "device_key_file", config_path)
    ca_name = optional_name(get.optional_text("ca_file"), "ca_file", config_path)
    cert_name = optional_name(get.optional_text("cert_file"), "cert_file", config_path)
    cert_key_name = optional_name(get.optional_text("key_file"), "key_file", config_path)
    if check_permissions:
        secrets_ = [key_name] + ([cert_key_name] if cert_key_name else [])
        secrets_ += [CONFIG_NAME] if password is not None else []
        for name in secrets_:
            _check_private_mode(d / name)
    device_key = _read_device_key(d / key_name, get.optional_text("device_public_key"), config_path)
    verifier = get.obj("verifier")
    keys, topics = _verifier_keys(verifier, config_path), _topics(doc, config_path)

    def pem(name: str | None, what: str) -> bytes | None:
        if name is None:
            return None
        return _read_limited(_existing(d / name, what), MAX_PEM_BYTES,
                             f"{d / name} ({what}) is missing")

    try:
        return make(
            device_id=get.text("device_id"), username=get.optional_text("username"),
            password=password, broker_url=get.text("broker_url"),
            prefix=get.text("prefix"), device_key=device_key,
            verifier_keys=keys,
            verifier_key_id=verifier.get("current"),
            ca_pem=pem(ca_name, "ca_file"), cert_pem=pem(cert_name, "cert_file"),
            cert_key_pem=pem(cert_key_name, "key_file"), ca_file=ca_name,
            cert_file=cert_name, key_file=cert_key_name, device_key_file=key_name,
            topics=topics, directory=d)
    except BundleError as exc:
        raise BundleError(f"{config_path}: {exc}", path=config_path) from None


def _read_config(d: Path) -> tuple[dict[str, Any], Path]:
    """device.json's object, its format and version checked, and its path."""
    config_path = d / CONFIG_NAME
    raw = _read_limited(config_path, MAX_CONFIG_BYTES,
                        f"{d} has no {CONFIG_NAME}: is it a bundle written by "
                        "`edgespec flash`?")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{config_path} is not valid JSON: {exc}", path=config_path) from None
    if not isinstance(doc, dict):
        raise BundleError(f"{config_path} must hold a JSON object", path=config_path)
    if doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{config_path}: 'format' is {doc.get('format')!r}, expected "
                          f"{BUNDLE_FORMAT!r}", path=config_path)
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{config_path}: 'version' must be a positive integer",
                          path=config_path)
    if version > BUNDLE_VERSION:
        raise BundleError(f"{config_path} is bundle version {version}; this edgespec reads "
                          f"up to version {BUNDLE_VERSION}: upgrade edgespec", path=config_path)
    return doc, config_path


def _read_device_key(key_path: Path, stated: str | None, config_path: Path) -> KeyPair:
    """The device's private key, checked against the public key device.json names."""
    try:
        device_key = load_private_key(_existing(key_path, "device_key_file"))
    except KeyFormatError as exc:
        raise BundleError(f"{key_path}: {exc}", path=key_path) from None
    if stated is not None and stated != public_key_to_b64(device_key.public_bytes):
        raise BundleError(f"{key_path} does not hold the key named by "
                          f"'device_public_key' in {config_path}: the files come from "
                          "different flashes; re-flash the device", path=key_path)
    return device_key


def _verifier_keys(verifier: dict[str, Any], config_path: Path) -> dict[str, str]:
    keys = verifier.get("keys")
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in keys.items()):
        raise BundleError(f"{config_path}: 'verifier.keys' must map key ids to base64 "
                          "strings", path=config_path)
    return keys


def _topics(doc: dict[str, Any], config_path: Path) -> dict[str, str]:
    topics = doc.get("topics", {})
    if not isinstance(topics, dict) or not all(isinstance(v, str) for v in topics.values()):
        raise BundleError(f"{config_path}: 'topics' must map names to topic strings",
                          path=config_path)
    return topics


class _Fields:
    """Typed access to device.json's fields with messages that name the file and field."""

    def __init__(self, doc: dict[str, Any], path: Path) -> None:
        self.doc, self.path = doc, path

    def text(self, key: str) -> str:
        value = self.doc.get(key)
        if not isinstance(value, str) or value == "":
            raise BundleError(f"{self.path}: {key!r} must be a non-empty string, got {value!r}",
                              path=self.path)
        return value

    def optional_text(self, key: str) -> str | None:
        return None if self.doc.get(key) is None else self.text(key)

    def obj(self, key: str) -> dict[str, Any]:
        value = self.doc.get(key)
        if not isinstance(value, dict):
            raise BundleError(f"{self.path}: {key!r} must be a JSON object", path=self.path)
        return value



def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise BundleError(f"{path} ({what}) is missing or not a file: copy the whole bundle "
                          "folder that `edgespec flash` wrote", path=path)
    return path


def _read_limited(path: Path, limit: int, missing: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise BundleError(missing, path=path) from None
    except PermissionError:
        raise BundleError(f"{path} is not readable by this user: check its owner and mode",
                          path=path) from None
    if len(data) > limit:
        raise BundleError(f"{path} is larger than {limit} bytes: not a bundle file", path=path)
    return data


def _check_private_mode(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return  # reported as missing by the reader, with its own message
    if mode & 0o077:
        raise BundleError(f"{path} holds a secret but other users may access it (mode "
                          f"{mode:04o}): run `chmod 600 {path}`", path=path)


