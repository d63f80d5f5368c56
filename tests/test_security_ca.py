"""The project CA, server and client certificates and the CRL (security/ca.py)."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.ca import (CertificateAuthority, CertificateError, create_ca, issue_client_cert,
                         issue_server_cert, load_cert_and_key, make_crl, write_crl)
from security.ids import InvalidDeviceId


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return create_ca("test CA")


def test_ca_is_a_self_signed_p256_ca(authority: CertificateAuthority) -> None:
    cert = authority.cert
    assert isinstance(authority.key, ec.EllipticCurvePrivateKey)
    assert authority.key.curve.name == "secp256r1"
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_server_cert_names_and_chain(authority: CertificateAuthority) -> None:
    server = issue_server_cert(authority, ["broker.example", "localhost"], ["127.0.0.1", "::1"])
    server.cert.verify_directly_issued_by(authority.cert)
    san = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    with pytest.raises(CertificateError):
        issue_server_cert(authority, [], ["not-an-ip"])
    with pytest.raises(CertificateError):
        issue_server_cert(authority, [], [])


def test_client_cert_carries_the_device_id(authority: CertificateAuthority) -> None:
    device = issue_client_cert(authority, "cam-lobby-1")
    device.cert.verify_directly_issued_by(authority.cert)
    cn = device.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["cam-lobby-1"]
    eku = device.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for bad in ("cam/1", "cam+", "#", ""):
        with pytest.raises(InvalidDeviceId):
            issue_client_cert(authority, bad)


def test_files_permissions_and_reload(tmp_path: Path, authority: CertificateAuthority) -> None:
    authority.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.crt").stat().st_mode) == 0o644
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.cert == authority.cert
    server = issue_server_cert(loaded)
    server.cert.verify_directly_issued_by(authority.cert)  # the reloaded CA signs the same
    cert_path, key_path = server.write(tmp_path / "server.crt", tmp_path / "server.key")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    # Python's ssl (OpenSSL) accepts the pair and the chain.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(tmp_path / "ca.crt")
    with pytest.raises(CertificateError, match="not the key"):
        load_cert_and_key(cert_path, tmp_path / "ca.key")
    server.write(tmp_path / "leaf" / "ca.crt", tmp_path / "leaf" / "ca.key")
    with pytest.raises(CertificateError, match="not a CA"):
        CertificateAuthority.load(tmp_path / "leaf")


def test_crl_lists_revoked_serials(tmp_path: Path, authority: CertificateAuthority) -> None:
    device = issue_client_cert(authority, "cam-1")
    empty = make_crl(authority)
    assert len(empty) == 0 and empty.is_signature_valid(authority.key.public_key())
    crl = make_crl(authority, [device.cert.serial_number, device.cert.serial_number])
    assert len(crl) == 1
    assert crl.get_revoked_certificate_by_serial_number(device.cert.serial_number) is not None
    path = write_crl(tmp_path / "ca.crl", crl)
    assert x509.load_pem_x509_crl(path.read_bytes()) == crl
