"""A provisioning bundle's names, its error, and the checks its fields pass (`security.bundle`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from security.keys import KeyFormatError, key_id, public_key_from_b64
from transport.urls import BrokerAddress, BrokerUrlError

if TYPE_CHECKING:
    from security.bundle import DeviceBundle

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



def is_tls_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in TLS_SCHEMES if "://" in url else False


def check_broker_url(url: object) -> None:
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


def check_verifier_keys(keys: Mapping[str, str], current: object) -> None:
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


def check_name(name: object, what: str, config_path: Path | None = None) -> str:
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\0" in name or name.startswith(".")):
        where = f"{config_path}: " if config_path else ""
        raise BundleError(f"{where}{what} {name!r} must be a plain file name inside the bundle "
                          "folder (no '/', no leading '.')", path=config_path)
    return name


def optional_name(name: str | None, what: str, config_path: Path) -> str | None:
    return None if name is None else check_name(name, what, config_path)


def check_tls_material(bundle: DeviceBundle) -> None:
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
