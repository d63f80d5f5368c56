"""Fleet provisioning commands: `ca`, `broker-files`, `keys`, `flash`, `revoke`.

    edgespec ca init [--dir DIR] [--dns NAME ...] [--ip IP ...] [--force]
    edgespec ca crl [--dir DIR] [--broker-dir DIR] [reload options]
    edgespec broker-files init [--dir DIR] [--ca-dir DIR] [--verifier NAME ...]
                               [--dashboard NAME ...] [--prefix P] [ports, --bind, --user]
    edgespec keys init|rotate|list [--home DIR]      edgespec keys retire KEY_ID [--home DIR]
    edgespec flash DEVICE_ID --out DIR --broker URL [--broker-dir DIR] [--ca-dir DIR]
                   [--home DIR] [--cert] [--force] [--pid-file FILE | --mosquitto-pid PID]
    edgespec revoke DEVICE_ID [--broker-dir DIR] [--ca-dir DIR] [--home DIR]
                   [--pid PID | --pid-file FILE]

Three places hold state (see broker/README.md, "Provisioning a fleet"):

* the **CA folder** (`ca init`): ca.crt, ca.key, server.crt/.key, ca.crl and
  `issued-certs.json`, the index of device certificates (so `revoke` can put their serials on
  the CRL);
* the **broker folder** (`broker-files init`): what Mosquitto reads (`BrokerFiles.in_dir`:
  passwd, acl, ca.crt, server.crt/.key, ca.crl, data/), the rendered `mosquitto.conf`,
  `broker.json` (the ACL policy and listener settings, so later commands agree with it) and
  `credentials/<service>.password`; by default it is also the CA folder;
* the **fleet home** (`keys init`, `--home`, default `$EDGESPEC_HOME` or ~/.edgespec/dev): the
  verifier's key ring and the `FleetRegistry` of device public keys.

Every command prints what it did in one or two lines and turns expected failures into one
`edgespec <command>: error: ...` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import functools
import getpass
import ipaddress
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from security import ca as ca_mod
from security.bundle import CONFIG_NAME, BundleError, DeviceBundle
from security.dev_identity import DevIdentityError, default_home
from security.ids import (InvalidIdentifier, InvalidTopicPrefix, validate_device_id,
                          validate_topic_prefix)
from security.keys import (KeyFormatError, UnknownKeyId, VerifierKeyRing, generate_keypair,
                           public_key_to_b64, write_secret_file)
from security.mosquitto_files import (DEFAULT_PREFIX, AclPolicy, BrokerFiles, MosquittoFileError,
                                      atomic_write_text, ensure_password_file, generate_password,
                                      read_password_file, remove_user, render_acl, set_password,
                                      write_acl_file, write_prod_config)
from security.registry import FleetRegistry, RegistryError

EXIT_USER_ERROR = 2
DEFAULT_BROKER_DIR = Path("broker-files")
BROKER_SETTINGS = "broker.json"
CREDENTIALS_DIR = "credentials"
ISSUED_INDEX = "issued-certs.json"
CONFIG_FILE = "mosquitto.conf"
DEFAULT_VERIFIERS = ("verifier-1",)  # `edgespec verifier`'s default --verifier-id
DEFAULT_DASHBOARDS = ("dashboard",)
DEFAULT_PORTS = {"mqtts_port": 8883, "client_cert_port": 8885, "wss_port": 8884}


class ProvisioningError(ValueError):
    """A provisioning step that cannot be done as asked; the message says what to do instead."""


# ---------------------------------------------------------------- small file helpers


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProvisioningError(f"{path} ({what}) is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProvisioningError(f"{path} ({what}) must hold a JSON object")
    return doc


def _write_json(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n", mode=mode)


def _load_ca(ca_dir: Path) -> ca_mod.CertificateAuthority:
    if not (ca_dir / "ca.crt").is_file() or not (ca_dir / "ca.key").is_file():
        raise ProvisioningError(f"no CA in {ca_dir} (ca.crt and ca.key): run "
                                f"`edgespec ca init --dir {ca_dir}` first, or pass --ca-dir")
    return ca_mod.CertificateAuthority.load(ca_dir)


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
    def from_json(cls, item: Any, where: Path) -> "IssuedRecord":
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
    with _file_lock(index):
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

    def to_json(self) -> dict[str, Any]:
        p = self.policy
        return {"version": 1, "prefix": p.prefix, "verifiers": list(p.verifiers),
                "dashboards": list(p.dashboards),
                "verifier_writes_results": p.verifier_writes_results,
                "ca_dir": str(self.ca_dir), "mqtts_port": self.mqtts_port,
                "client_cert_port": self.client_cert_port, "wss_port": self.wss_port,
                "bind": self.bind, "user": self.user}

    @classmethod
    def load(cls, broker_dir: Path) -> "BrokerSettings | None":
        path = broker_dir / BROKER_SETTINGS
        doc = _read_json(path, "broker settings")
        if doc is None:
            return None
        try:
            policy = AclPolicy(prefix=doc["prefix"], verifiers=tuple(doc["verifiers"]),
                               dashboards=tuple(doc["dashboards"]),
                               verifier_writes_results=bool(doc.get("verifier_writes_results")))
            return cls(policy=policy, ca_dir=Path(doc["ca_dir"]),
                       mqtts_port=int(doc["mqtts_port"]),
                       client_cert_port=int(doc["client_cert_port"]),
                       wss_port=int(doc["wss_port"]), bind=doc.get("bind"), user=doc.get("user"))
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
    if settings is not None and device_id in settings.policy.service_users:
        role = "verifier" if device_id in settings.policy.verifiers else "dashboard"
        raise ProvisioningError(
            f"{device_id!r} is the broker's {role} account, not a device: device ids and "
            "service names share the broker's usernames (and its ACL), choose another id")


# ---------------------------------------------------------------- reload (SIGHUP)


def _read_pid(pid: int | None, pid_file: str | None) -> int | None:
    if pid_file is not None:
        try:
            text = Path(pid_file).read_text().strip()
            pid = int(text)
        except FileNotFoundError:
            raise ProvisioningError(f"pid file {pid_file} does not exist: is Mosquitto running "
                                    "with `pid_file` set?") from None
        except ValueError:
            raise ProvisioningError(f"pid file {pid_file} does not hold a process id") from None
    if pid is not None and pid <= 1:
        raise ProvisioningError(f"refusing to signal process id {pid}")
    _check_pid(pid)
    return pid


def _check_pid(pid: int | None) -> None:
    """Refuse, before anything changes, a pid that is not a running Mosquitto."""
    if pid is None:
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        raise ProvisioningError(f"no process {pid}: is Mosquitto running? (omit the pid to "
                                "only update the files)") from None
    except OSError:
        return  # no procfs here: os.kill reports a missing process
    if "mosquitto" not in comm:
        raise ProvisioningError(f"process {pid} is {comm!r}, not mosquitto: refusing to send it "
                                "SIGHUP; check --pid / --pid-file")


def _reload(pid: int | None) -> str:
    """SIGHUP Mosquitto (it re-reads passwd, ACL and CRL); a line saying what happened."""
    if pid is None:
        return "send SIGHUP to Mosquitto (`kill -HUP <pid>`) to apply it"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ProvisioningError(f"no process {pid}: the files are updated and apply at "
                                "Mosquitto's next start or SIGHUP") from None
    except PermissionError:
        raise ProvisioningError(f"not allowed to signal process {pid}: the files are updated; "
                                f"run `kill -HUP {pid}` as its owner") from None
    return f"sent SIGHUP to mosquitto (pid {pid})"


def _add_reload_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mosquitto-pid", "--pid", dest="pid", type=int, metavar="PID",
                       help="send SIGHUP to this Mosquitto process afterwards (reload)")
    group.add_argument("--pid-file", metavar="FILE", help="read Mosquitto's pid from FILE")


# ---------------------------------------------------------------- command plumbing


_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ProvisioningError, BundleError, RegistryError, DevIdentityError, InvalidIdentifier,
    InvalidTopicPrefix, KeyFormatError, UnknownKeyId, ca_mod.CertificateError,
    MosquittoFileError, OSError)


def _command(name: str) -> Callable[[Callable[[argparse.Namespace], int]],
                                    Callable[[argparse.Namespace], int]]:
    """Wrap a handler so that expected failures print one line instead of a traceback."""

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except _EXPECTED_ERRORS as exc:
                print(f"edgespec {name}: error: {exc}", file=sys.stderr, flush=True)
                return EXIT_USER_ERROR
        return run

    return wrap


def _say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).expanduser() if args.home else default_home()


# ---------------------------------------------------------------- ca


def _server_sans(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def _server_cert_ok(ca: ca_mod.CertificateAuthority, d: Path, wanted: set[str] | None) -> bool:
    try:
        cert, _key = ca_mod.load_cert_and_key(d / "server.crt", d / "server.key")
        cert.verify_directly_issued_by(ca.cert)
    except (OSError, ca_mod.CertificateError, ValueError, TypeError, InvalidSignature):
        return False
    return wanted is None or _server_sans(cert) == wanted


@_command("ca init")
def cmd_ca_init(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    for ip in args.ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ProvisioningError(f"--ip {ip!r} is not an IP address") from None
    explicit = bool(args.dns or args.ip)
    dns = list(dict.fromkeys([*args.dns, *ca_mod.DEFAULT_DNS]))
    ips = list(dict.fromkeys([*args.ip, *ca_mod.DEFAULT_IPS]))
    exists = (d / "ca.crt").exists() or (d / "ca.key").exists()
    if exists and not args.force and not ((d / "ca.crt").exists() and (d / "ca.key").exists()):
        raise ProvisioningError(f"{d} holds only one of ca.crt and ca.key: restore the other, "
                                "or pass --force to make a new CA")
    if exists and not args.force:
        authority = _load_ca(d)
        made = f"kept the existing CA in {d} (--force makes a new one)"
    else:
        authority = ca_mod.create_ca()
        authority.save(d)
        _save_index(d, [])
        made = (f"new CA in {d}" + (": certificates signed by the old CA no longer verify; "
                                    "re-flash --cert devices" if exists else ""))
    with _file_lock(d / ISSUED_INDEX):
        if not (d / "ca.crl").exists() or not exists or args.force:
            _write_crl(authority, _load_index(d), d / "ca.crl")
    if _server_cert_ok(authority, d, set(dns) | set(ips) if explicit else None):
        server = "server certificate kept"
    else:
        ca_mod.issue_server_cert(authority, dns, ips).write(d / "server.crt", d / "server.key")
        server = f"server certificate for {', '.join(dns + ips)}"
    fingerprint = authority.cert.fingerprint(hashes.SHA256()).hex()[:16]
    _say(f"{made}; CA fingerprint SHA-256 {fingerprint}...; {server}",
         f"next: edgespec broker-files init --dir {d}")
    return 0


@_command("ca crl")
def cmd_ca_crl(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    pid = _read_pid(args.pid, args.pid_file)
    authority = _load_ca(d)
    paths = [d / "ca.crl"]
    if args.broker_dir:
        paths.append(BrokerFiles.in_dir(args.broker_dir).crlfile)
    with _file_lock(d / ISSUED_INDEX):
        count = _write_crl(authority, _load_index(d), *paths)
    _say(f"reissued the CRL ({count} revoked, valid {ca_mod.CRL_DAYS} days) in "
         f"{', '.join(map(str, dict.fromkeys(paths)))}", _reload(pid))
    return 0


# ---------------------------------------------------------------- broker-files


@_command("broker-files init")
def cmd_broker_files_init(args: argparse.Namespace) -> int:
    d = Path(args.dir).resolve()
    pid = _read_pid(args.pid, args.pid_file)
    old = BrokerSettings.load(d)
    ca_dir = Path(args.ca_dir).resolve() if args.ca_dir else (old.ca_dir if old else d)
    authority = _load_ca(ca_dir)
    files = BrokerFiles.in_dir(d)
    d.mkdir(parents=True, exist_ok=True)
    if ca_dir != d:
        shutil.copyfile(ca_dir / "ca.crt", files.cafile)
        shutil.copyfile(ca_dir / "server.crt", files.certfile)
        write_secret_file(files.keyfile, (ca_dir / "server.key").read_bytes())
    if not files.certfile.is_file() or not files.keyfile.is_file():
        raise ProvisioningError(f"no server certificate in {ca_dir}: run `edgespec ca init "
                                f"--dir {ca_dir}`")

    def pick(flag: list[str] | None, previous: tuple[str, ...] | None,
             default: tuple[str, ...]) -> tuple[str, ...]:
        if flag:
            return tuple(dict.fromkeys(flag))
        return previous if previous is not None else default

    policy = AclPolicy(
        prefix=args.prefix or (old.policy.prefix if old else DEFAULT_PREFIX),
        verifiers=pick(args.verifier, old.policy.verifiers if old else None, DEFAULT_VERIFIERS),
        dashboards=pick(args.dashboard, old.policy.dashboards if old else None,
                        DEFAULT_DASHBOARDS),
        verifier_writes_results=(args.verifier_writes_results
                                 or (old.policy.verifier_writes_results if old else False)))
    previous_services = old.policy.service_users if old else frozenset()
    ensure_password_file(files.password_file)
    entries = read_password_file(files.password_file)
    certified = {r.device_id for r in _load_index(ca_dir) if r.revoked_at is None}
    for name in sorted(policy.service_users):
        if name not in previous_services and (name in entries or name in certified):
            raise ProvisioningError(f"{name!r} is already a provisioned device: revoke it first "
                                    "or choose another service name")

    creds = d / CREDENTIALS_DIR
    creds.mkdir(mode=0o700, exist_ok=True)
    created = []
    for name in sorted(policy.service_users):
        cred = creds / f"{name}.password"
        if name in entries and cred.is_file():
            continue  # keep a running service's password
        password = generate_password()
        set_password(files.password_file, name, password)
        write_secret_file(cred, (password + "\n").encode())
        created.append(name)
    removed = sorted(previous_services - policy.service_users)
    for name in removed:
        remove_user(files.password_file, name)
        (creds / f"{name}.password").unlink(missing_ok=True)

    write_acl_file(files.acl_file, policy)
    with _file_lock(ca_dir / ISSUED_INDEX):
        if not files.crlfile.exists():
            _write_crl(authority, _load_index(ca_dir), files.crlfile)
    files.persistence_dir.mkdir(exist_ok=True)
    settings = BrokerSettings(
        policy=policy, ca_dir=ca_dir,
        mqtts_port=args.mqtts_port or (old.mqtts_port if old else DEFAULT_PORTS["mqtts_port"]),
        client_cert_port=args.client_cert_port or (old.client_cert_port if old
                                                   else DEFAULT_PORTS["client_cert_port"]),
        wss_port=args.wss_port or (old.wss_port if old else DEFAULT_PORTS["wss_port"]),
        bind=args.bind if args.bind is not None else (old.bind if old else None),
        user=args.user or (old.user if old else getpass.getuser()))
    write_prod_config(d / CONFIG_FILE, files, mqtts_port=settings.mqtts_port,
                      client_cert_port=settings.client_cert_port, wss_port=settings.wss_port,
                      tls_bind=settings.bind, user=settings.user)
    _write_json(d / BROKER_SETTINGS, settings.to_json())
    new = (f"; new passwords in {creds}/<name>.password (0600) for {', '.join(created)}"
           if created else "")
    gone = f"; removed {', '.join(removed)}" if removed else ""
    _say(f"broker folder {d}: {CONFIG_FILE}, passwd, acl, ca.crl for verifiers "
         f"{list(policy.verifiers)} and dashboards {list(policy.dashboards)}{new}{gone}",
         f"run: mosquitto -c {d / CONFIG_FILE}" if pid is None else _reload(pid))
    return 0


# ---------------------------------------------------------------- keys


def _ring_line(ring: VerifierKeyRing) -> str:
    previous = ring.key_ids()[1:]
    return f"current {ring.current_key_id}, previous {previous if previous else 'none'}"


@_command("keys init")
def cmd_keys_init(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    with registry.locked():
        if registry.has_verifier_keys() and not args.force:
            raise ProvisioningError(
                f"a verifier key ring exists in {registry.verifier_dir} "
                f"({_ring_line(registry.verifier_keys())}): use `edgespec keys rotate`, or "
                "--force to replace it (every device must then be re-flashed)")
        ring = VerifierKeyRing(generate_keypair())
        registry.save_verifier_keys(ring)
    _say(f"verifier key ring in {registry.verifier_dir}: {_ring_line(ring)}")
    return 0


@_command("keys rotate")
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    with registry.locked():
        before = registry.verifier_keys()
        ring = VerifierKeyRing(before.current,
                               [before.get(k) for k in reversed(before.key_ids()[1:])],
                               max_previous=args.max_previous)
        held = set(ring.key_ids())
        ring.rotate()
        registry.save_verifier_keys(ring)
    dropped = sorted(held - set(ring.key_ids()))
    _say(f"rotated the verifier key in {registry.verifier_dir}: {_ring_line(ring)}"
         + (f"; dropped {dropped}" if dropped else ""),
         "running sessions keep their key; restart or reload verifiers, then re-flash devices "
         "(or refresh their bundles) so new sessions use the new key")
    return 0


@_command("keys retire")
def cmd_keys_retire(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    with registry.locked():
        ring = registry.verifier_keys()
        try:
            ring.retire(args.key_id)
        except ValueError as exc:
            raise ProvisioningError(str(exc)) from None
        registry.save_verifier_keys(ring)
    _say(f"retired verifier key {args.key_id}: {_ring_line(ring)}")
    return 0


@_command("keys list")
def cmd_keys_list(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    ring = registry.verifier_keys()
    for kid, raw in ring.public_keys().items():
        role = "current " if kid == ring.current_key_id else "previous"
        _say(f"{role} {kid} {public_key_to_b64(raw)}")
    _say(f"{len(registry.devices())} devices registered in {registry.home}")
    return 0


# ---------------------------------------------------------------- flash


@_command("flash")
def cmd_flash(args: argparse.Namespace) -> int:
    device_id = validate_device_id(args.device_id)
    out = Path(args.out)
    broker_dir = Path(args.broker_dir).resolve() if args.broker_dir else None
    settings = _broker_settings(broker_dir) if broker_dir else None
    _refuse_service_name(device_id, settings)
    prefix = args.prefix or (settings.policy.prefix if settings else DEFAULT_PREFIX)
    validate_topic_prefix(prefix)
    if settings is not None and prefix != settings.policy.prefix:
        raise ProvisioningError(f"--prefix {prefix!r} differs from the broker's ACL prefix "
                                f"{settings.policy.prefix!r}: the device could not use its topics")
    ca_dir = (Path(args.ca_dir).resolve() if args.ca_dir
              else settings.ca_dir if settings else None)
    files = BrokerFiles.in_dir(broker_dir) if broker_dir else None
    registry = FleetRegistry(_home(args))
    ring = registry.verifier_keys()
    pid = _read_pid(args.pid, args.pid_file)

    if not args.force:
        where = []
        if device_id in registry:
            where.append(f"registry {registry.home}")
        if files is not None and device_id in read_password_file(files.password_file):
            where.append(f"password file {files.password_file}")
        if ca_dir is not None and _active_certs(ca_dir, device_id):
            where.append(f"certificate index {ca_dir / ISSUED_INDEX}")
        if where:
            raise ProvisioningError(f"device {device_id!r} is already provisioned "
                                    f"({'; '.join(where)}): --force re-flashes it, which stops "
                                    "its current bundle from working")
        if (out / CONFIG_NAME).exists():
            raise ProvisioningError(f"{out} already holds a bundle: choose another --out or "
                                    "pass --force to overwrite it")

    authority = None
    if args.cert:
        if ca_dir is None:
            raise ProvisioningError("--cert needs the CA: pass --broker-dir (or --ca-dir)")
        authority = _load_ca(ca_dir)
    tls = args.broker.split("://", 1)[0].lower() in ("mqtts", "ssl", "wss")
    ca_pem = None
    if tls:
        candidates = ([files.cafile] if files else []) + ([ca_dir / "ca.crt"] if ca_dir else [])
        for candidate in candidates:
            if candidate.is_file():
                ca_pem = candidate.read_bytes()
                break
    issued = ca_mod.issue_client_cert(authority, device_id) if authority else None
    password = generate_password() if files is not None and issued is None else None
    keypair = generate_keypair()
    DeviceBundle(
        device_id=device_id, broker_url=args.broker, prefix=prefix, device_key=keypair,
        password=password,
        verifier_keys={k: public_key_to_b64(v) for k, v in ring.public_keys().items()},
        verifier_key_id=ring.current_key_id, ca_pem=ca_pem,
        cert_pem=issued.cert_pem if issued else None,
        cert_key_pem=issued.key_pem if issued else None).save(out)
    registry.add(device_id, keypair.public)

    crl_paths = ((files.crlfile,) if files else ()) + ((ca_dir / "ca.crl",) if ca_dir else ())
    revoked: list[int] = []
    if issued is not None:
        assert ca_dir is not None
        record = IssuedRecord(device_id, issued.cert.serial_number,
                              issued.cert.not_valid_after_utc.isoformat())
        revoked = _revoke_certs(ca_dir, device_id, keep_serial=record.serial, add=record,
                                crl_paths=crl_paths)
    elif ca_dir is not None and (ca_dir / ISSUED_INDEX).exists():
        revoked = _revoke_certs(ca_dir, device_id, crl_paths=crl_paths)  # a re-flash
    auth = (f"client certificate {issued.cert.serial_number:x} (CN={device_id})" if issued
            else "password" if password else "no broker credentials")
    _say(f"flashed {device_id}: bundle in {out} ({auth}, device key {keypair.key_id}, verifier "
         f"key {ring.current_key_id}), registered in {registry.home}")
    if files is None or settings is None:
        _say("no --broker-dir: no broker account made (for a broker without authentication)"
             + (f"; {len(revoked)} older certificate(s) revoked" if revoked else ""))
        return 0
    if issued is not None:
        remove_user(files.password_file, device_id)  # a certificate device has no password
        change = f"certificate index {ca_dir / ISSUED_INDEX if ca_dir else ''} updated"
    else:
        assert password is not None
        set_password(files.password_file, device_id, password)
        change = f"password entry in {files.password_file}"
    acl = render_acl(settings.policy)
    try:
        acl_current = files.acl_file.read_text(encoding="utf-8") == acl
    except FileNotFoundError:
        acl_current = False
    if not acl_current:
        write_acl_file(files.acl_file, settings.policy)
    _say(f"broker: {change}; ACL {'unchanged' if acl_current else 'rewritten'}"
         + (f"; {len(revoked)} older certificate(s) on the CRL" if revoked else "")
         + f"; {_reload(pid)}")
    return 0


# ---------------------------------------------------------------- revoke


@_command("revoke")
def cmd_revoke(args: argparse.Namespace) -> int:
    device_id = validate_device_id(args.device_id)
    broker_dir = Path(args.broker_dir).resolve() if args.broker_dir else None
    settings = _broker_settings(broker_dir) if broker_dir else None
    _refuse_service_name(device_id, settings)
    ca_dir = (Path(args.ca_dir).resolve() if args.ca_dir
              else settings.ca_dir if settings else None)
    files = BrokerFiles.in_dir(broker_dir) if broker_dir else None
    registry = FleetRegistry(_home(args))
    pid = _read_pid(args.pid, args.pid_file)

    done = []
    if files is not None and remove_user(files.password_file, device_id):
        done.append("password entry removed")
    if ca_dir is not None and _active_certs(ca_dir, device_id):
        crl_paths = (files.crlfile, ca_dir / "ca.crl") if files else (ca_dir / "ca.crl",)
        serials = _revoke_certs(ca_dir, device_id, crl_paths=crl_paths)
        done.append(f"certificate serial(s) {', '.join(f'{s:x}' for s in serials)} on the CRL")
    if registry.remove(device_id):
        done.append(f"public key removed from {registry.home}")
    if not done:
        places = [f"registry {registry.home}"]
        places += [f"password file {files.password_file}"] if files else []
        places += [f"certificate index {ca_dir / ISSUED_INDEX}"] if ca_dir else []
        raise ProvisioningError(f"device {device_id!r} is not provisioned in {'; '.join(places)}"
                                ": check the id, --home and --broker-dir")
    _say(f"revoked {device_id}: {'; '.join(done)}")
    if files is not None or ca_dir is not None:
        _say(_reload(pid))
    else:
        _say("no --broker-dir: only the registry changed (a broker without authentication)")
    return 0


# ---------------------------------------------------------------- registration


def register(subparsers: Any) -> None:
    """Add `ca`, `broker-files`, `keys`, `flash` and `revoke` to the `edgespec` command line."""
    p = subparsers.add_parser("ca", help="the project's certificate authority")
    ca_sub = p.add_subparsers(dest="ca_command", required=True)
    q = ca_sub.add_parser("init", help="make the CA and the broker's server certificate")
    q.add_argument("--dir", default=str(DEFAULT_BROKER_DIR),
                   help=f"CA folder (default ./{DEFAULT_BROKER_DIR}, also the broker folder)")
    q.add_argument("--dns", action="append", default=[], metavar="NAME",
                   help="a DNS name of the broker (repeatable; localhost is always included)")
    q.add_argument("--ip", action="append", default=[], metavar="IP",
                   help="an IP address of the broker (repeatable; 127.0.0.1 is always included)")
    q.add_argument("--force", action="store_true", help="replace an existing CA")
    q.set_defaults(func=cmd_ca_init)
    q = ca_sub.add_parser("crl", help=f"reissue the CRL (it is valid {ca_mod.CRL_DAYS} days)")
    q.add_argument("--dir", default=str(DEFAULT_BROKER_DIR), help="CA folder")
    q.add_argument("--broker-dir", help="also write it into this broker folder")
    _add_reload_args(q)
    q.set_defaults(func=cmd_ca_crl)

    p = subparsers.add_parser("broker-files", help="a production Mosquitto folder")
    bf_sub = p.add_subparsers(dest="broker_files_command", required=True)
    q = bf_sub.add_parser("init", help="password file, ACL, CRL and mosquitto.conf in one folder")
    q.add_argument("--dir", default=str(DEFAULT_BROKER_DIR), help="the broker folder")
    q.add_argument("--ca-dir", help="where `edgespec ca init` wrote the CA (default: --dir)")
    q.add_argument("--verifier", action="append", metavar="NAME",
                   help=f"a verifier account (repeatable; default {DEFAULT_VERIFIERS[0]})")
    q.add_argument("--dashboard", action="append", metavar="NAME",
                   help=f"a dashboard account (repeatable; default {DEFAULT_DASHBOARDS[0]})")
    q.add_argument("--prefix", help=f"topic prefix (default {DEFAULT_PREFIX})")
    q.add_argument("--verifier-writes-results", action="store_true",
                   help="let verifiers publish on <prefix>/dev/+/result")
    q.add_argument("--mqtts-port", type=int, help="TLS + password listener (default 8883)")
    q.add_argument("--client-cert-port", type=int,
                   help="TLS + client certificate listener (default 8885)")
    q.add_argument("--wss-port", type=int, help="TLS websockets listener (default 8884)")
    q.add_argument("--bind", help="bind the TLS listeners to this address (default: all)")
    q.add_argument("--user", help="account Mosquitto runs as when started as root "
                                  "(default: the current user, who owns the files)")
    _add_reload_args(q)
    q.set_defaults(func=cmd_broker_files_init)

    p = subparsers.add_parser("keys", help="the verifier's key ring (end-to-end encryption)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    for name, func, text in (("init", cmd_keys_init, "make the verifier key ring"),
                             ("rotate", cmd_keys_rotate, "new current key, keep previous ones"),
                             ("list", cmd_keys_list, "key ids and public keys"),
                             ("retire", cmd_keys_retire, "drop a previous key")):
        q = keys_sub.add_parser(name, help=text)
        q.add_argument("--home", help="fleet home (default $EDGESPEC_HOME or ~/.edgespec/dev)")
        if name == "init":
            q.add_argument("--force", action="store_true", help="replace an existing ring")
        if name == "rotate":
            q.add_argument("--max-previous", type=int, default=2,
                           help="previous keys to keep (default 2)")
        if name == "retire":
            q.add_argument("key_id", help="a previous key id (see `keys list`)")
        q.set_defaults(func=func)

    p = subparsers.add_parser("flash", help="provision a device: keys, credentials, bundle")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--out", required=True, help="bundle folder to write (the device's --config)")
    p.add_argument("--broker", required=True,
                   help="broker URL the device uses, e.g. mqtts://broker.example.com:8883")
    p.add_argument("--broker-dir", help="broker folder from `edgespec broker-files init`")
    p.add_argument("--ca-dir", help="CA folder (default: the broker folder's)")
    p.add_argument("--home", help="fleet home (default $EDGESPEC_HOME or ~/.edgespec/dev)")
    p.add_argument("--prefix", help="topic prefix (default: the broker folder's)")
    p.add_argument("--cert", action="store_true",
                   help="authenticate with a client certificate instead of a password")
    p.add_argument("--force", action="store_true", help="re-flash a provisioned device")
    _add_reload_args(p)
    p.set_defaults(func=cmd_flash)

    p = subparsers.add_parser("revoke", help="remove a device: it can no longer connect")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--broker-dir", help="broker folder from `edgespec broker-files init`")
    p.add_argument("--ca-dir", help="CA folder (default: the broker folder's)")
    p.add_argument("--home", help="fleet home (default $EDGESPEC_HOME or ~/.edgespec/dev)")
    _add_reload_args(p)
    p.set_defaults(func=cmd_revoke)


def main(argv: list[str] | None = None) -> int:
    """These commands on their own: `python -m edgespec.provisioning flash ...`."""
    parser = argparse.ArgumentParser(prog="edgespec", description="fleet provisioning")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
