"""The project's own certificate authority, made with `cryptography` only.

`create_ca` makes a self-signed EC P-256 CA; `issue_server_cert` a broker certificate for DNS
names and IP addresses; `issue_client_cert` a device certificate whose subject CN is the device
id (Mosquitto's `use_identity_as_username` turns it into the MQTT username, so the ACL applies);
`make_crl` a revocation list for the client-certificate listener. Private keys are written
unencrypted with mode 0600; keep the CA key off the broker host where you can.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.ids import validate_device_id
from security.keys import write_secret_file

CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime common TLS clients accept for a server certificate
CLIENT_DAYS = 825
CRL_DAYS = 30
CLOCK_SKEW = dt.timedelta(minutes=5)  # backdate not-before so a slightly slow clock accepts it
DEFAULT_DNS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1",)
ORGANIZATION = "edgespec"


class CertificateError(ValueError):
    """A certificate or key that cannot be made, loaded or written as asked."""


@dataclass(frozen=True)
class IssuedCert:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, cert_path: str | Path, key_path: str | Path) -> tuple[Path, Path]:
        """Write the certificate (0644) and the private key (0600) as PEM."""
        cert_path, key_path = Path(cert_path), Path(key_path)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(self.cert_pem)
        cert_path.chmod(0o644)
        write_secret_file(key_path, self.key_pem)
        return cert_path, key_path


@dataclass(frozen=True)
class CertificateAuthority(IssuedCert):
    """A CA certificate and key that can sign server and client certificates."""

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write `ca.crt` and `ca.key` into `directory`."""
        directory = Path(directory)
        return self.write(directory / "ca.crt", directory / "ca.key")

    @classmethod
    def load(cls, directory: str | Path) -> CertificateAuthority:
        """Read `ca.crt` and `ca.key` written by `save`."""
        directory = Path(directory)
        cert, key = load_cert_and_key(directory / "ca.crt", directory / "ca.key")
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            raise CertificateError(f"{directory / 'ca.crt'} is not a CA certificate")
        return cls(cert=cert, key=key)


def load_cert_and_key(cert_path: str | Path,
                      key_path: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read a PEM certificate and its EC private key, checking that they belong together."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except ValueError as exc:
        raise CertificateError(f"cannot read {cert_path} / {key_path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an EC private key")
    if key.public_key() != cert.public_key():
        raise CertificateError(f"{key_path} is not the key of {cert_path}")
    return cert, key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca(common_name: str = "edgespec CA", *, days: int = CA_DAYS) -> CertificateAuthority:
    """A self-signed CA (EC P-256, CA:true, path length 0: it signs leaves only)."""
    key = _new_key()
    name = _name(common_name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def _leaf(ca: CertificateAuthority, subject: x509.Name, days: int,
          usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None) -> IssuedCert:
    key = _new_key()
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return IssuedCert(cert=builder.sign(ca.key, hashes.SHA256()), key=key)


def issue_server_cert(ca: CertificateAuthority, dns_names: Iterable[str] = DEFAULT_DNS,
                      ip_addresses: Iterable[str] = DEFAULT_IPS, *,
                      days: int = SERVER_DAYS) -> IssuedCert:
    """The broker's TLS certificate, valid for `dns_names` and `ip_addresses` (SAN)."""
    dns_names, ip_addresses = list(dns_names), list(ip_addresses)
    try:
        ips = [ipaddress.ip_address(ip) for ip in ip_addresses]
    except ValueError as exc:
        raise CertificateError(f"invalid IP address for the server certificate: {exc}") from exc
    if not dns_names and not ips:
        raise CertificateError("a server certificate needs at least one DNS name or IP address")
    san = x509.SubjectAlternativeName([*(x509.DNSName(n) for n in dns_names),
                                       *(x509.IPAddress(ip) for ip in ips)])
    common_name = dns_names[0] if dns_names else str(ips[0])
    return _leaf(ca, _name(common_name, "broker"), days, ExtendedKeyUsageOID.SERVER_AUTH, san)


def issue_client_cert(ca: CertificateAuthority, device_id: str, *,
                      days: int = CLIENT_DAYS) -> IssuedCert:
    """A device's client certificate: subject CN = the (validated) device id."""
    validate_device_id(device_id)
    return _leaf(ca, _name(device_id, "device"), days, ExtendedKeyUsageOID.CLIENT_AUTH, None)


def make_crl(ca: CertificateAuthority, revoked_serials: Iterable[int] = (), *,
             days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    """A CRL signed by `ca` listing `revoked_serials` (an empty one is valid, and needed).

    Mosquitto checks it on the client-certificate listener and re-reads it on SIGHUP; reissue
    it before `days` run out, or the broker refuses every client certificate.
    """
    now = _now()
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now - CLOCK_SKEW).next_update(now + dt.timedelta(days=days))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(ca.key, hashes.SHA256())


def write_crl(path: str | Path, crl: x509.CertificateRevocationList) -> Path:
    """Write a CRL as PEM (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)
    return path


def write_pem_cert(path: str | Path, cert: x509.Certificate) -> Path:
    """Write a certificate as PEM (0644), e.g. the CA certificate for a device's bundle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)
    return path
