"""A device's provisioning bundle: the one folder a camera reads with `--config DIR`.

`edgespec flash DEVICE_ID --out DIR` writes it; `DeviceBundle.load(DIR)` reads and checks it.

    DIR/                     mode 0700
      device.json            mode 0600 (it may hold the broker password); see below
      device.key             the device's static X25519 private key, PKCS#8 PEM, mode 0600
      ca.crt                 the project CA (TLS brokers only), 0644
      client.crt, client.key a client certificate signed by the CA (`flash --cert`), 0644/0600

`device.json` (version 1; unknown keys are ignored, so fields can be appended):

    {"format": "edgespec-device-bundle", "version": 1,
     "device_id": "cam-lobby-01", "username": "cam-lobby-01", "password": "..." | null,
     "broker_url": "mqtts://broker.example.com:8883", "prefix": "edgespec/v1",
     "device_key_file": "device.key", "device_public_key": "<base64 of 32 raw bytes>",
     "ca_file": "ca.crt" | null, "cert_file": "client.crt" | null, "key_file": "client.key" | null,
     "verifier": {"current": "<key id>", "keys": {"<key id>": "<base64 X25519 public key>"}},
     "topics": {"open": ..., "session_up": ..., "down": ..., "result": ..., "status": ...,
                "verifier_status": ...}}

The username must equal the device id: the broker's ACL grants a device the topics of its
username (`%u`), and a client certificate's CN is the device id. File names are plain names
inside DIR, never paths, so a bundle can be copied or mounted anywhere.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.x509.oid import NameOID

from schemas.topics import DEFAULT_PREFIX
from security.ids import (InvalidIdentifier, InvalidTopicPrefix, validate_device_id,
                          validate_topic_prefix)
from security.keys import (KeyFormatError, KeyPair, key_id, load_private_key,
                           public_key_from_b64, public_key_to_b64, write_secret_file)
from transport.urls import BrokerAddress, BrokerUrlError, ClientAuth

BUNDLE_FORMAT = "edgespec-device-bundle"
BUNDLE_VERSION = 1
CONFIG_NAME = "device.json"
DEVICE_KEY_NAME = "device.key"
CA_NAME = "ca.crt"
CERT_NAME = "client.crt"
CERT_KEY_NAME = "client.key"
MAX_CONFIG_BYTES = 64 * 1024  # a bundle is a few KiB; anything larger is not one of ours
MAX_PEM_BYTES = 64 * 1024
DIR_MODE = 0o700
TLS_SCHEMES = ("mqtts", "ssl", "wss")


class BundleError(ValueError):
    """A bundle that cannot be loaded or saved; the message says which file and what to do."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.path = path
        super().__init__(message)


def device_topics(prefix: str, device_id: str) -> dict[str, str]:
    """The device's own topics (schemas/topics.py layout), written into the bundle for reference.

    `session_up` names the verifier that holds the session with a `{verifier_id}` placeholder.
    """
    base = f"{prefix}/dev/{device_id}"
    return {"open": f"{base}/up/open", "session_up": f"{base}/up/v/{{verifier_id}}",
            "down": f"{base}/down", "result": f"{base}/result", "status": f"{base}/status",
            "verifier_status": f"{prefix}/verifier/+/status"}


@dataclass(frozen=True, eq=False)
class DeviceBundle:
    """Everything one device needs to join the fleet: identity, broker, keys, topics.

    The secrets (`device_key`, `password`, `cert_key_pem`) are held in memory and written by
    `save`; `ca_file` / `cert_file` / `key_file` / `device_key_file` are the names they get
    inside the bundle folder. `directory` is where the bundle was loaded from or saved to
    (needed by `client_auth` for the TLS file paths).
    """

    device_id: str
    broker_url: str
    device_key: KeyPair = field(repr=False)
    verifier_keys: Mapping[str, str]  # key id -> base64 raw X25519 public key
    verifier_key_id: str  # the key new sessions are opened for
    prefix: str = DEFAULT_PREFIX
    username: str | None = None  # None: the device id
    password: str | None = field(default=None, repr=False)
    ca_pem: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    cert_key_pem: bytes | None = field(default=None, repr=False)
    ca_file: str | None = None  # None: CA_NAME when ca_pem is set
    cert_file: str | None = None
    key_file: str | None = None
    device_key_file: str = DEVICE_KEY_NAME
    topics: Mapping[str, str] = field(default_factory=dict)  # empty: derived
    directory: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            validate_device_id(self.device_id)
            validate_topic_prefix(self.prefix)
        except (InvalidIdentifier, InvalidTopicPrefix) as exc:
            raise BundleError(str(exc)) from exc
        if self.username is None:
            self._set("username", self.device_id)
        elif self.username != self.device_id:
            raise BundleError(
                f"username {self.username!r} differs from device id {self.device_id!r}: the "
                "broker ACL grants a device the topics of its username, so they must be equal")
        if self.password is not None and (not isinstance(self.password, str)
                                          or self.password == "" or "\0" in self.password):
            raise BundleError("password must be a non-empty string without NUL, or absent")
        if not isinstance(self.device_key, KeyPair):
            raise BundleError("device_key must be a security.keys.KeyPair")
        _check_broker_url(self.broker_url)
        self._set("verifier_keys", dict(self.verifier_keys))
        _check_verifier_keys(self.verifier_keys, self.verifier_key_id)
        if (self.cert_pem is None) != (self.cert_key_pem is None):
            raise BundleError("a client certificate needs both cert_pem and cert_key_pem")
        if self.cert_pem is not None and not _is_tls_url(self.broker_url):
            raise BundleError(f"broker URL {self.broker_url!r} is not TLS, but the device "
                              "authenticates with a client certificate: use mqtts://HOST:PORT "
                              "(the client-certificate listener, 8885 by default)")
        for name_attr, pem_attr, default in (("ca_file", "ca_pem", CA_NAME),
                                             ("cert_file", "cert_pem", CERT_NAME),
                                             ("key_file", "cert_key_pem", CERT_KEY_NAME)):
            pem, name = getattr(self, pem_attr), getattr(self, name_attr)
            if pem is None:
                if name is not None:
                    raise BundleError(f"{name_attr} {name!r} is set but there is no {pem_attr}")
                continue
            self._set(name_attr, _check_name(default if name is None else name, name_attr))
        _check_name(self.device_key_file, "device_key_file")
        names = [n for n in (self.device_key_file, self.ca_file, self.cert_file, self.key_file,
                             CONFIG_NAME) if n is not None]
        if len(set(names)) != len(names):
            raise BundleError(f"bundle file names must differ from each other: {names}")
        _check_tls_material(self)
        derived = device_topics(self.prefix, self.device_id)
        if not self.topics:
            self._set("topics", derived)
        else:
            topics = dict(self.topics)
            wrong = {k: v for k, v in derived.items() if topics.get(k) != v}
            if wrong:
                raise BundleError(f"topics do not match device id {self.device_id!r} and prefix "
                                  f"{self.prefix!r}: expected {wrong}")
            self._set("topics", topics)
        if self.directory is not None:
            self._set("directory", Path(self.directory))

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass's own fields

    def __eq__(self, other: object) -> bool:
        # Private keys do not compare; their public halves (in to_json) identify them.
        if not isinstance(other, DeviceBundle):
            return NotImplemented
        return (self.to_json(), self.ca_pem, self.cert_pem, self.cert_key_pem) == (
            other.to_json(), other.ca_pem, other.cert_pem, other.cert_key_pem)

    __hash__ = None  # type: ignore[assignment]  # holds dicts; equality is by value

    # ------------------------------------------------------------ helpers for the nodes

    @property
    def uses_client_certificate(self) -> bool:
        return self.cert_pem is not None

    def client_auth(self) -> ClientAuth:
        """Broker credentials and TLS file paths for `transport.client.make_client`."""
        needs_files = any(n is not None for n in (self.ca_file, self.cert_file, self.key_file))
        if needs_files and self.directory is None:
            raise BundleError("this bundle's TLS files are not on disk yet: save() it or load() "
                              "it from its folder before asking for client_auth()")

        def path(name: str | None) -> str | None:
            return None if name is None else str(Path(self.directory or ".") / name)

        return ClientAuth(username=self.username, password=self.password,
                          ca_file=path(self.ca_file), cert_file=path(self.cert_file),
                          key_file=path(self.key_file))

    def device_keypair(self) -> KeyPair:
        """The device's static X25519 key pair (for `security.keys.device_session_keys`)."""
        return self.device_key

    def verifier_public_key(self, key_id: str | None = None) -> X25519PublicKey:
        """The verifier's public key `key_id` (default: the current one)."""
        kid = self.verifier_key_id if key_id is None else key_id
        try:
            return public_key_from_b64(self.verifier_keys[kid])
        except KeyError:
            raise BundleError(
                f"bundle for {self.device_id!r} holds no verifier key {kid!r} (it has "
                f"{sorted(self.verifier_keys)}); re-flash the device after a key rotation"
            ) from None

    def with_verifier_keys(self, public_keys: Mapping[str, bytes], current: str) -> DeviceBundle:
        """A copy with the verifier keys replaced (raw bytes by key id), e.g. after rotation."""
        keys = {kid: public_key_to_b64(raw) for kid, raw in public_keys.items()}
        return replace(self, verifier_keys=keys, verifier_key_id=current)

    # ------------------------------------------------------------ files

    def to_json(self) -> dict[str, Any]:
        """The `device.json` object (holds the password, not the private keys)."""
        return {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "device_id": self.device_id, "username": self.username, "password": self.password,
            "broker_url": self.broker_url, "prefix": self.prefix,
            "device_key_file": self.device_key_file,
            "device_public_key": public_key_to_b64(self.device_key.public_bytes),
            "ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file,
            "verifier": {"current": self.verifier_key_id, "keys": dict(self.verifier_keys)},
            "topics": dict(self.topics),
        }

    def save(self, directory: str | Path) -> DeviceBundle:
        """Write the bundle into `directory` (created 0700); returns it with `directory` set.

        `device.json` is written last, so an interrupted save leaves no loadable bundle.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, DIR_MODE)
        write_secret_file(d / self.device_key_file, self.device_key.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        for name, pem, secret in ((self.ca_file, self.ca_pem, False),
                                  (self.cert_file, self.cert_pem, False),
                                  (self.key_file, self.cert_key_pem, True)):
            if name is None or pem is None:
                continue
            path = write_secret_file(d / name, pem)
            if not secret:
                os.chmod(path, 0o644)
        text = json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"
        write_secret_file(d / CONFIG_NAME, text.encode("utf-8"))
        return replace(self, directory=d)

    @classmethod
    def load(cls, directory: str | Path, *, check_permissions: bool = True) -> DeviceBundle:
        """Read and check a bundle folder; `BundleError` says what is wrong and how to fix it.

        With `check_permissions`, secret files (private keys, and `device.json` when it holds a
        password) that other users may read or write are refused, as ssh does.
        """
        d = Path(directory)
        if not d.is_dir():
            raise BundleError(f"{d} is not a folder: pass the folder `edgespec flash DEVICE_ID "
                              f"--out DIR` wrote", path=d)
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
        get = _Fields(doc, config_path)
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

        password = get.optional_text("password")
        key_name = _check_name(get.text("device_key_file"), "device_key_file", config_path)
        ca_name = _opt_name(get.optional_text("ca_file"), "ca_file", config_path)
        cert_name = _opt_name(get.optional_text("cert_file"), "cert_file", config_path)
        cert_key_name = _opt_name(get.optional_text("key_file"), "key_file", config_path)
        if check_permissions:
            secrets_ = [key_name] + ([cert_key_name] if cert_key_name else [])
            secrets_ += [CONFIG_NAME] if password is not None else []
            for name in secrets_:
                _check_private_mode(d / name)
        try:
            device_key = load_private_key(_existing(d / key_name, "device_key_file"))
        except KeyFormatError as exc:
            raise BundleError(f"{d / key_name}: {exc}", path=d / key_name) from None
        stated = get.optional_text("device_public_key")
        if stated is not None and stated != public_key_to_b64(device_key.public_bytes):
            raise BundleError(f"{d / key_name} does not hold the key named by "
                              f"'device_public_key' in {config_path}: the files come from "
                              "different flashes; re-flash the device", path=d / key_name)
        verifier = get.obj("verifier")
        keys = verifier.get("keys")
        if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in keys.items()):
            raise BundleError(f"{config_path}: 'verifier.keys' must map key ids to base64 "
                              "strings", path=config_path)
        topics = doc.get("topics", {})
        if not isinstance(topics, dict) or not all(isinstance(v, str) for v in topics.values()):
            raise BundleError(f"{config_path}: 'topics' must map names to topic strings",
                              path=config_path)

        def pem(name: str | None, what: str) -> bytes | None:
            if name is None:
                return None
            return _read_limited(_existing(d / name, what), MAX_PEM_BYTES,
                                 f"{d / name} ({what}) is missing")

        try:
            return cls(
                device_id=get.text("device_id"), username=get.optional_text("username"),
                password=password, broker_url=get.text("broker_url"),
                prefix=get.text("prefix"), device_key=device_key,
                verifier_keys=keys,
                verifier_key_id=verifier.get("current"),  # type: ignore[arg-type]
                ca_pem=pem(ca_name, "ca_file"), cert_pem=pem(cert_name, "cert_file"),
                cert_key_pem=pem(cert_key_name, "key_file"), ca_file=ca_name,
                cert_file=cert_name, key_file=cert_key_name, device_key_file=key_name,
                topics=topics, directory=d)
        except BundleError as exc:
            raise BundleError(f"{config_path}: {exc}", path=config_path) from None


# ---------------------------------------------------------------- validation helpers


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


def _is_tls_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in TLS_SCHEMES if "://" in url else False


def _check_broker_url(url: object) -> None:
    if not isinstance(url, str) or not url:
        raise BundleError(f"broker_url must be a non-empty string like mqtts://HOST:8883, "
                          f"got {url!r}")
    try:
        addr = BrokerAddress.parse(url)
    except BrokerUrlError as exc:
        raise BundleError(str(exc)) from None
    if addr.password is not None:
        raise BundleError(f"broker URL {url!r} embeds a password: keep credentials in the "
                          "bundle's username/password fields")


def _check_verifier_keys(keys: Mapping[str, str], current: object) -> None:
    if not keys:
        raise BundleError("the bundle holds no verifier public key: flash the device again "
                          "after `edgespec keys init`")
    if not isinstance(current, str) or current not in keys:
        raise BundleError(f"the current verifier key id {current!r} is not among the bundle's "
                          f"verifier keys {sorted(keys)}")
    for kid, b64 in keys.items():
        try:
            public = public_key_from_b64(b64)
        except (KeyFormatError, ValueError, TypeError) as exc:
            raise BundleError(f"verifier key {kid!r}: {exc}") from None
        if key_id(public) != kid:
            raise BundleError(f"verifier key {kid!r} has the fingerprint {key_id(public)!r}: "
                              "the key id and the key do not belong together")


def _check_name(name: object, what: str, config_path: Path | None = None) -> str:
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\0" in name or name.startswith(".")):
        where = f"{config_path}: " if config_path else ""
        raise BundleError(f"{where}{what} {name!r} must be a plain file name inside the bundle "
                          "folder (no '/', no leading '.')", path=config_path)
    return name


def _opt_name(name: str | None, what: str, config_path: Path) -> str | None:
    return None if name is None else _check_name(name, what, config_path)


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


def _check_tls_material(bundle: DeviceBundle) -> None:
    """The CA and client certificate parse, belong together and name this device."""
    ca_cert = None
    if bundle.ca_pem is not None:
        try:
            ca_cert = x509.load_pem_x509_certificate(bundle.ca_pem)
        except ValueError as exc:
            raise BundleError(f"{bundle.ca_file}: not a PEM certificate ({exc})") from None
    if bundle.cert_pem is None or bundle.cert_key_pem is None:
        return
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert_pem)
        key = serialization.load_pem_private_key(bundle.cert_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{bundle.cert_file} / {bundle.key_file}: cannot read the client "
                          f"certificate or its key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise BundleError(f"{bundle.key_file} is not the private key of {bundle.cert_file}")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = names[0].value if names else None
    if cn != bundle.device_id:
        raise BundleError(f"{bundle.cert_file} is issued to {cn!r}, not to device "
                          f"{bundle.device_id!r}: the broker would apply another device's ACL")
    if ca_cert is not None:
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            raise BundleError(f"{bundle.cert_file} is not signed by {bundle.ca_file}: the "
                              "broker would refuse it") from None
