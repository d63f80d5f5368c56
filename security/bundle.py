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
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from schemas.topics import DEFAULT_PREFIX
from security.bundle_checks import (BUNDLE_FORMAT, BUNDLE_VERSION, CA_NAME, CERT_KEY_NAME, CERT_NAME, CONFIG_NAME,
                                    DEVICE_KEY_NAME, DIR_MODE, MAX_CONFIG_BYTES, MAX_PEM_BYTES, TLS_SCHEMES,
                                    BundleError, check_broker_url, check_name, check_tls_material,
                                    check_verifier_keys, device_topics, is_tls_url)
from security.bundle_reader import read_bundle
from security.ids import (InvalidIdentifier, InvalidTopicPrefix, validate_device_id,
                          validate_topic_prefix)
from security.keys import KeyPair, public_key_from_b64, public_key_to_b64, write_secret_file
from transport.urls import ClientAuth

__all__ = [
    "BUNDLE_FORMAT", "BUNDLE_VERSION", "CONFIG_NAME", "DEVICE_KEY_NAME", "CA_NAME", "CERT_NAME", "CERT_KEY_NAME",
    "MAX_CONFIG_BYTES", "MAX_PEM_BYTES", "DIR_MODE", "TLS_SCHEMES", "BundleError", "device_topics", "DeviceBundle",
]



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
        self._check_identity()
        if not isinstance(self.device_key, KeyPair):
            raise BundleError("device_key must be a security.keys.KeyPair")
        check_broker_url(self.broker_url)
        self._set("verifier_keys", dict(self.verifier_keys))
        check_verifier_keys(self.verifier_keys, self.verifier_key_id)
        self._check_files()
        check_tls_material(self)
        self._set_topics()
        if self.directory is not None:
            self._set("directory", Path(self.directory))

    def _check_identity(self) -> None:
        """Device id, topic prefix, username and password."""
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

    def _check_files(self) -> None:
        """The TLS material's pairing and the bundle's file names (defaults filled in)."""
        if (self.cert_pem is None) != (self.cert_key_pem is None):
            raise BundleError("a client certificate needs both cert_pem and cert_key_pem")
        if self.cert_pem is not None and not is_tls_url(self.broker_url):
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
            self._set(name_attr, check_name(default if name is None else name, name_attr))
        check_name(self.device_key_file, "device_key_file")
        names = [n for n in (self.device_key_file, self.ca_file, self.cert_file, self.key_file,
                             CONFIG_NAME) if n is not None]
        if len(set(names)) != len(names):
            raise BundleError(f"bundle file names must differ from each other: {names}")

    def _set_topics(self) -> None:
        """The derived topics, or the given ones after checking they match them."""
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
        return read_bundle(cls, directory, check_permissions=check_permissions)
