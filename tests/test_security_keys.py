"""X25519 keys, session key agreement and verifier key rotation (security/keys.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from security.keys import (KEY_ID_LEN, KeyAgreementError, KeyFormatError,
                           UnknownKeyId, VerifierKeyRing, device_session_keys, generate_keypair,
                           key_id, load_private_key, load_public_key, new_session_id,
                           private_key_from_bytes, public_key_from_b64, public_key_to_b64,
                           save_private_key, save_public_key, verifier_session_keys)


def _agree(device=None, verifier=None, session_id=None):
    device = device or generate_keypair()
    verifier = verifier or generate_keypair()
    ephemeral = generate_keypair()
    session_id = new_session_id() if session_id is None else session_id
    on_device = device_session_keys(device, ephemeral, verifier.public_bytes, session_id)
    on_verifier = verifier_session_keys(verifier, device.public_bytes, ephemeral.public_bytes,
                                        session_id)
    return on_device, on_verifier


def test_both_sides_derive_the_same_distinct_keys() -> None:
    on_device, on_verifier = _agree()
    assert on_device == on_verifier
    assert len(on_device.uplink) == len(on_device.downlink) == 32
    assert on_device.uplink != on_device.downlink
    assert "redacted" in repr(on_device) and on_device.uplink.hex() not in repr(on_device)


def test_keys_differ_per_session_and_per_party() -> None:
    device, verifier = generate_keypair(), generate_keypair()
    ephemeral, sid = generate_keypair(), new_session_id()
    base = device_session_keys(device, ephemeral, verifier.public, sid)
    assert device_session_keys(device, ephemeral, verifier.public, new_session_id()) != base
    assert device_session_keys(device, generate_keypair(), verifier.public, sid) != base
    assert device_session_keys(generate_keypair(), ephemeral, verifier.public, sid) != base
    assert device_session_keys(device, ephemeral, generate_keypair().public, sid) != base


def test_verifier_with_the_wrong_device_key_gets_other_keys() -> None:
    """Static-static DH authenticates the device: an impostor's keys never match."""
    device, impostor, verifier = generate_keypair(), generate_keypair(), generate_keypair()
    ephemeral, sid = generate_keypair(), new_session_id()
    real = device_session_keys(device, ephemeral, verifier.public, sid)
    forged = device_session_keys(impostor, ephemeral, verifier.public, sid)
    # The verifier computes keys for the device it believes it talks to.
    expected = verifier_session_keys(verifier, device.public, ephemeral.public, sid)
    assert real == expected and forged != expected


def test_remembered_static_secrets_give_the_keys_computed_afresh() -> None:
    """A KeyPair remembers its static-static secret per peer; a bare private key computes it
    every time. Both give the same session keys, session after session."""
    device, verifier = generate_keypair(), generate_keypair()
    for _ in range(3):
        ephemeral, sid = generate_keypair(), new_session_id()
        fresh = device_session_keys(device.private, ephemeral, verifier.public, sid)
        assert device_session_keys(device, ephemeral, verifier.public, sid) == fresh
        assert verifier_session_keys(verifier, device.public_bytes, ephemeral.public, sid) == fresh
        assert verifier_session_keys(verifier.private, device.public, ephemeral.public, sid) == fresh
    assert list(device.static_secrets) == [verifier.public_bytes]
    assert list(verifier.static_secrets) == [device.public_bytes]


def test_a_refused_static_key_is_not_remembered() -> None:
    device = generate_keypair()
    for _ in range(2):
        with pytest.raises(KeyAgreementError, match="low order"):
            verifier_session_keys(device, bytes(32), generate_keypair().public, new_session_id())
    assert not device.static_secrets


def test_low_order_public_key_is_refused() -> None:
    with pytest.raises(KeyAgreementError, match="low order"):
        device_session_keys(generate_keypair(), generate_keypair(), bytes(32), new_session_id())


@pytest.mark.parametrize("sid", [b"", b"short", bytes(65)])
def test_session_id_length_is_checked(sid: bytes) -> None:
    with pytest.raises(KeyAgreementError, match="session_id"):
        _agree(session_id=sid)


def test_key_id_is_a_short_stable_fingerprint() -> None:
    pair = generate_keypair()
    assert len(pair.key_id) == KEY_ID_LEN and int(pair.key_id, 16) >= 0
    assert key_id(pair.public) == key_id(pair.public_bytes) == pair.key_id
    assert generate_keypair().key_id != pair.key_id
    assert pair.key_id in repr(pair)


@pytest.mark.parametrize("fmt", ["pem", "raw"])
def test_save_and_load_round_trip(tmp_path: Path, fmt: str) -> None:
    pair = generate_keypair()
    path = save_private_key(tmp_path / "dev.key", pair, fmt=fmt)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).public_bytes == pair.public_bytes
    pub_path = save_public_key(tmp_path / "dev.pub", pair.public, fmt=fmt)
    assert key_id(load_public_key(pub_path)) == pair.key_id
    assert key_id(public_key_from_b64(public_key_to_b64(pair.public))) == pair.key_id
    if fmt == "raw":
        assert private_key_from_bytes(path.read_bytes()).key_id == pair.key_id


def test_bad_key_files_raise_key_format_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(KeyFormatError):
        load_private_key(tmp_path / "junk")
    with pytest.raises(KeyFormatError):
        load_public_key(tmp_path / "junk")
    with pytest.raises(KeyFormatError):
        public_key_from_b64("%%%")
    with pytest.raises(KeyFormatError):
        key_id(b"\x01" * 31)


def test_key_ring_rotation_keeps_old_sessions_working() -> None:
    old = generate_keypair()
    ring = VerifierKeyRing(old, max_previous=1)
    device, ephemeral, sid = generate_keypair(), generate_keypair(), new_session_id()
    # A device opened a session for the old key, then the verifier rotated.
    opened = device_session_keys(device, ephemeral, ring.current.public, sid)
    opened_for = ring.current_key_id
    new = ring.rotate()
    assert ring.current is new and ring.key_ids() == [new.key_id, old.key_id]
    assert ring.session_keys(opened_for, device.public, ephemeral.public, sid) == opened

    # New sessions use the new key.
    sid2, eph2 = new_session_id(), generate_keypair()
    fresh = device_session_keys(device, eph2, ring.public_keys()[ring.current_key_id], sid2)
    assert ring.session_keys(new.key_id, device.public, eph2.public, sid2) == fresh

    # A second rotation pushes the oldest key out (max_previous=1).
    ring.rotate()
    assert old.key_id not in ring
    with pytest.raises(UnknownKeyId, match="re-open"):
        ring.session_keys(opened_for, device.public, ephemeral.public, sid)


def test_key_ring_retire_and_persist(tmp_path: Path) -> None:
    ring = VerifierKeyRing(generate_keypair())
    first = ring.current_key_id
    ring.rotate()
    ring.rotate()
    assert len(ring.key_ids()) == 3
    ring.save(tmp_path)
    loaded = VerifierKeyRing.load(tmp_path)
    assert loaded.key_ids() == ring.key_ids()
    assert loaded.public_keys() == ring.public_keys()

    ring.retire(first)
    assert first not in ring
    with pytest.raises(ValueError, match="current"):
        ring.retire(ring.current_key_id)
    with pytest.raises(UnknownKeyId):
        ring.retire(first)
    ring.save(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("verifier-*.pem")) == sorted(
        f"verifier-{kid}.pem" for kid in ring.key_ids())
    with pytest.raises(KeyFormatError, match="current"):
        VerifierKeyRing.load(tmp_path / "missing")
