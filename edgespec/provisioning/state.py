"""What the provisioning commands keep in the CA and broker folders: the index of issued device
certificates (`issued-certs.json`) with the CRL made from it, and `broker.json`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from security import ca as ca_mod
from security.mosquitto_files import DEFAULT_HA_PREFIX, AclPolicy, atomic_write_text, locked

from .common import (ADMIN_USER, BROKER_SETTINGS, DEFAULT_LOOPBACK_PORT, DEFAULT_PORTS, ISSUED_INDEX, ProvisioningError,
                     _load_ca, _read_json, _write_json)

# ---------------------------------------------------------------- issued certificates and CRL


@dataclass(frozen=True)
class IssuedRecord:
    """One device certificate the CA issued (serials as hex: they exceed JSON's safe ints)."""

    device_id: str
    serial: int
    not_after: str
    revoked_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "serial": f"{self.serial:x}",
                "not_after": self.not_after, "revoked_at": self.revoked_at}

    @classmethod
    def from_json(cls, item: Any, where: Path) -> IssuedRecord:
        try:
            return cls(device_id=str(item["device_id"]), serial=int(item["serial"], 16),
                       not_after=str(item["not_after"]), revoked_at=item.get("revoked_at"))
        except (KeyError, TypeError, ValueError):
            raise ProvisioningError(f"{where}: malformed certificate record {item!r}") from None


def _load_index(ca_dir: Path) -> list[IssuedRecord]:
    path = ca_dir / ISSUED_INDEX
    doc = _read_json(path, "index of issued device certificates")
    if doc is None:
        return []
    items = doc.get("certificates", [])
    if not isinstance(items, list):
        raise ProvisioningError(f"{path}: 'certificates' must be a list")
    return [IssuedRecord.from_json(item, path) for item in items]


def _save_index(ca_dir: Path, records: list[IssuedRecord]) -> None:
    _write_json(ca_dir / ISSUED_INDEX,
                {"version": 1, "certificates": [r.to_json() for r in records]})


def _write_crl(ca: ca_mod.CertificateAuthority, records: list[IssuedRecord],
               *paths: Path) -> int:
    """Write the CRL listing every revoked serial to each path (atomically); returns the count."""
    serials = [r.serial for r in records if r.revoked_at is not None]
    pem = ca_mod.make_crl(ca, serials).public_bytes(serialization.Encoding.PEM).decode("ascii")
    for path in dict.fromkeys(paths):  # de-duplicated, in order
        atomic_write_text(path, pem, mode=0o644)
    return len(serials)


def _revoke_certs(ca_dir: Path, device_id: str, *, keep_serial: int | None = None,
                  add: IssuedRecord | None = None,
                  crl_paths: tuple[Path, ...] = ()) -> list[int]:
    """Mark `device_id`'s active certificates revoked (except `keep_serial`), record `add`, and
    rewrite the CRL when anything was revoked. Returns the serials revoked now."""
    index = ca_dir / ISSUED_INDEX
    with locked(index):
        records = _load_index(ca_dir)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        revoked: list[int] = []
        updated = []
        for r in records:
            if r.device_id == device_id and r.revoked_at is None and r.serial != keep_serial:
                r = IssuedRecord(r.device_id, r.serial, r.not_after, now)
                revoked.append(r.serial)
            updated.append(r)
        if add is not None:
            updated.append(add)
        if revoked or add is not None:
            _save_index(ca_dir, updated)
        if revoked:
            _write_crl(_load_ca(ca_dir), updated, *(crl_paths or (ca_dir / "ca.crl",)))
        return revoked


def _active_certs(ca_dir: Path, device_id: str) -> list[IssuedRecord]:
    return [r for r in _load_index(ca_dir) if r.device_id == device_id and r.revoked_at is None]


# ---------------------------------------------------------------- broker folder settings


@dataclass(frozen=True)
class BrokerSettings:
    """`broker.json`: the ACL policy and listener settings `broker-files init` used."""

    policy: AclPolicy
    ca_dir: Path
    mqtts_port: int = DEFAULT_PORTS["mqtts_port"]
    client_cert_port: int = DEFAULT_PORTS["client_cert_port"]
    wss_port: int = DEFAULT_PORTS["wss_port"]
    bind: str | None = None
    user: str | None = None
    loopback_port: int = DEFAULT_LOOPBACK_PORT
    websockets: bool = True  # folders made before --websockets had the listener
    admin: str | None = None  # the dynamic-security account `revoke` kicks with (None: none)

    def to_json(self) -> dict[str, Any]:
        p = self.policy
        return {"version": 1, "prefix": p.prefix, "verifiers": list(p.verifiers),
                "dashboards": list(p.dashboards),
                "verifier_writes_results": p.verifier_writes_results, "ha_prefix": p.ha_prefix,
                "home_assistants": list(p.home_assistants),
                "ca_dir": str(self.ca_dir), "mqtts_port": self.mqtts_port,
                "client_cert_port": self.client_cert_port, "wss_port": self.wss_port,
                "bind": self.bind, "user": self.user, "loopback_port": self.loopback_port,
                "websockets": self.websockets, "admin": self.admin}

    @classmethod
    def load(cls, broker_dir: Path) -> BrokerSettings | None:
        path = broker_dir / BROKER_SETTINGS
        doc = _read_json(path, "broker settings")
        if doc is None:
            return None
        try:
            policy = AclPolicy(prefix=doc["prefix"], verifiers=tuple(doc["verifiers"]),
                               dashboards=tuple(doc["dashboards"]),
                               verifier_writes_results=bool(doc.get("verifier_writes_results")),
                               ha_prefix=doc.get("ha_prefix", DEFAULT_HA_PREFIX),
                               home_assistants=tuple(doc.get("home_assistants", ())))
            return cls(policy=policy, ca_dir=Path(doc["ca_dir"]),
                       mqtts_port=int(doc["mqtts_port"]),
                       client_cert_port=int(doc["client_cert_port"]),
                       wss_port=int(doc["wss_port"]), bind=doc.get("bind"), user=doc.get("user"),
                       loopback_port=int(doc.get("loopback_port", DEFAULT_LOOPBACK_PORT)),
                       websockets=bool(doc.get("websockets", True)), admin=doc.get("admin"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProvisioningError(f"{path} is damaged ({exc}): re-run `edgespec broker-files "
                                    f"init --dir {broker_dir}` with the same options") from None


def _broker_settings(broker_dir: Path) -> BrokerSettings:
    settings = BrokerSettings.load(broker_dir)
    if settings is None:
        raise ProvisioningError(f"{broker_dir} is not a broker folder (no {BROKER_SETTINGS}): "
                                f"run `edgespec broker-files init --dir {broker_dir}` first")
    return settings


def _refuse_service_name(device_id: str, settings: BrokerSettings | None) -> None:
    if device_id == ADMIN_USER:
        raise ProvisioningError(f"{device_id!r} is the broker's admin account (dynamic security), not a "
                                "device: choose another id")
    if settings is not None and device_id in settings.policy.service_users:
        role = "verifier" if device_id in settings.policy.verifiers else "dashboard"
        raise ProvisioningError(
            f"{device_id!r} is the broker's {role} account, not a device: device ids and "
            "service names share the broker's usernames (and its ACL), choose another id")
