"""`edgespec ca init|crl` and `edgespec broker-files init`: the CA folder and the broker
folder."""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from security import ca as ca_mod
from security.keys import write_secret_file
from security.mosquitto_files import (DEFAULT_HA_PREFIX, DEFAULT_PREFIX, AclPolicy, BrokerFiles,
                                      ensure_password_file, find_dynsec_plugin, generate_password,
                                      locked, read_password_file, remove_user, set_password,
                                      write_acl_file, write_dynsec_config, write_prod_config)

from .common import (ADMIN_USER, BROKER_SETTINGS, CONFIG_FILE, CREDENTIALS_DIR, DEFAULT_DASHBOARDS,
                     DEFAULT_LOOPBACK_PORT, DEFAULT_PORTS, DEFAULT_VERIFIERS, DYNSEC_DIR, ISSUED_INDEX,
                     ProvisioningError, _command, _load_ca, _read_pid, _reload, _say, _write_json,
                     default_ca_dir)
from .state import BrokerSettings, _load_index, _save_index, _write_crl

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
    d = Path(args.dir) if args.dir else default_ca_dir()
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
    with locked(d / ISSUED_INDEX):
        if not (d / "ca.crl").exists() or not exists or args.force:
            _write_crl(authority, _load_index(d), d / "ca.crl")
    if _server_cert_ok(authority, d, set(dns) | set(ips) if explicit else None):
        server = "server certificate kept"
    else:
        ca_mod.issue_server_cert(authority, dns, ips).write(d / "server.crt", d / "server.key")
        server = f"server certificate for {', '.join(dns + ips)}"
    fingerprint = authority.cert.fingerprint(hashes.SHA256()).hex()[:16]
    _say(f"{made}; CA fingerprint SHA-256 {fingerprint}...; {server}",
         f"next: edgespec broker-files init --dir BROKER_DIR --ca-dir {d}")
    return 0


@_command("ca crl")
def cmd_ca_crl(args: argparse.Namespace) -> int:
    d = Path(args.dir) if args.dir else default_ca_dir()
    pid = _read_pid(args.pid, args.pid_file)
    authority = _load_ca(d)
    paths = [d / "ca.crl"]
    if args.broker_dir:
        paths.append(BrokerFiles.in_dir(args.broker_dir).crlfile)
    with locked(d / ISSUED_INDEX):
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
    ca_dir = (Path(args.ca_dir).resolve() if args.ca_dir else old.ca_dir if old
              else default_ca_dir().resolve())
    notes = []
    if (not args.ca_dir and old is None and not (ca_dir / "ca.key").exists()
            and (d / "ca.key").exists()):
        ca_dir = d  # a CA made in the broker folder (the layout before the CA had its own folder)
    authority = _load_ca(ca_dir)
    if (d / "ca.key").exists():
        notes.append(f"note: {d / 'ca.key'} (the CA signing key) is in the broker folder, which the broker "
                     "does not need: move the CA (ca.key, ca.crt, ca.crl, server.*, "
                     f"{ISSUED_INDEX}) to a folder of its own and run this again with --ca-dir "
                     "(broker/README.md, \"Moving the CA out of the broker folder\")")
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
                                 or (old.policy.verifier_writes_results if old else False)),
        ha_prefix=getattr(args, "ha_prefix", None) or (old.policy.ha_prefix if old else DEFAULT_HA_PREFIX),
        home_assistants=pick(getattr(args, "home_assistant", None), old.policy.home_assistants if old else None,
                             ()))
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
    with locked(ca_dir / ISSUED_INDEX):
        if not files.crlfile.exists():
            _write_crl(authority, _load_index(ca_dir), files.crlfile)
    files.persistence_dir.mkdir(exist_ok=True)
    ports = {name: getattr(args, name) or (getattr(old, name) if old else default)
             for name, default in DEFAULT_PORTS.items()}
    websockets = (args.websockets if args.websockets is not None
                  else (old.websockets if old else False))
    user: str = args.user or (old.user if old else None) or _default_user()
    # The admin account of the dynamic-security plugin: `revoke` kicks a revoked device's live
    # connections with it (SIGHUP does not drop a client-certificate device).
    admin = None
    if find_dynsec_plugin() is not None:
        admin = ADMIN_USER
        admin_cred = creds / f"{ADMIN_USER}.password"
        dynsec_file = d / DYNSEC_DIR / "dynamic-security.json"
        if not admin_cred.is_file() or not dynsec_file.is_file():
            password = generate_password()
            (d / DYNSEC_DIR).mkdir(mode=0o700, exist_ok=True)
            write_dynsec_config(dynsec_file, ADMIN_USER, password)
            write_secret_file(admin_cred, (password + "\n").encode())
            created.append(ADMIN_USER)
    settings = BrokerSettings(
        policy=policy, ca_dir=ca_dir, **ports,
        bind=args.bind if args.bind is not None else (old.bind if old else None),
        user=user, loopback_port=args.loopback_port or (old.loopback_port if old else DEFAULT_LOOPBACK_PORT),
        websockets=websockets, admin=admin)
    write_prod_config(d / CONFIG_FILE, files, mqtts_port=settings.mqtts_port,
                      client_cert_port=settings.client_cert_port, wss_port=settings.wss_port,
                      tls_bind=settings.bind, user=settings.user, loopback_port=settings.loopback_port,
                      websockets=settings.websockets,
                      dynsec_file=d / DYNSEC_DIR / "dynamic-security.json" if admin else None)
    owner = _give_to_broker_user(d, files, user)
    if owner:
        notes.append(owner)
    _write_json(d / BROKER_SETTINGS, settings.to_json())
    new = (f"; new passwords in {creds}/<name>.password (0600) for {', '.join(created)}"
           if created else "")
    gone = f"; removed {', '.join(removed)}" if removed else ""
    _say(f"broker folder {d}: {CONFIG_FILE}, passwd, acl, ca.crl for verifiers "
         f"{list(policy.verifiers)} and dashboards {list(policy.dashboards)}{new}{gone}",
         *notes, f"run: mosquitto -c {d / CONFIG_FILE}" if pid is None else _reload(pid))
    return 0


def _default_user() -> str:
    """The account Mosquitto runs as when started as root: root generating the folder gets the
    unprivileged `mosquitto` account where it exists (never root), anyone else themselves."""
    import os
    import pwd

    if os.geteuid() == 0:
        try:
            pwd.getpwnam("mosquitto")
            return "mosquitto"
        except KeyError:
            raise ProvisioningError("running as root and there is no `mosquitto` account: pass --user NAME, an "
                                    "unprivileged account Mosquitto may run as") from None
    return getpass.getuser()


def _give_to_broker_user(d: Path, files: BrokerFiles, user: str) -> str | None:
    """As root, make what Mosquitto reads (and the folders it writes) owned by `user`, so the
    broker reads them after dropping privileges and on every SIGHUP; later rewrites keep the
    owner (security.mosquitto_files.atomic_write_text). A line saying so, or None."""
    import os
    import pwd

    if os.geteuid() != 0 or user == "root":
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ProvisioningError(f"--user {user!r} is not an account on this machine") from None
    paths = [files.password_file, files.acl_file, files.cafile, files.certfile, files.keyfile,
             files.crlfile, files.persistence_dir, d / DYNSEC_DIR, d / DYNSEC_DIR / "dynamic-security.json"]
    for path in paths:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)
    d.chmod(d.stat().st_mode | 0o711)  # the broker's account must reach the files
    return f"files Mosquitto reads are owned by {user!r} (it runs as {user!r} when started as root)"
