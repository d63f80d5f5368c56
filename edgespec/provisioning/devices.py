"""`edgespec flash` and `edgespec revoke`: provisioning a device and removing it again."""

from __future__ import annotations

import argparse
from pathlib import Path

from security import ca as ca_mod
from security.bundle import CONFIG_NAME, DeviceBundle
from security.ids import validate_device_id, validate_topic_prefix
from security.keys import generate_keypair, public_key_to_b64
from security.mosquitto_files import (DEFAULT_PREFIX, BrokerFiles, generate_password,
                                      read_password_file, remove_user, render_acl, set_password,
                                      write_acl_file)
from security.registry import FleetRegistry

from .common import (CREDENTIALS_DIR, ISSUED_INDEX, ProvisioningError, _command, _home, _load_ca,
                     _read_pid, _reload, _say)
from .state import (BrokerSettings, IssuedRecord, _active_certs, _broker_settings,
                    _refuse_service_name, _revoke_certs)

# ---------------------------------------------------------------- shared setup


def _broker_folder(args: argparse.Namespace,
                   device_id: str) -> tuple[Path | None, BrokerSettings | None]:
    """--broker-dir and its settings; refuses a device id that is one of its service names."""
    broker_dir = Path(args.broker_dir).resolve() if args.broker_dir else None
    settings = _broker_settings(broker_dir) if broker_dir else None
    _refuse_service_name(device_id, settings)
    return broker_dir, settings


def _ca_and_files(args: argparse.Namespace, broker_dir: Path | None,
                  settings: BrokerSettings | None) -> tuple[Path | None, BrokerFiles | None]:
    """The CA folder (--ca-dir, else the broker folder's) and the broker's files."""
    ca_dir = (Path(args.ca_dir).resolve() if args.ca_dir
              else settings.ca_dir if settings else None)
    files = BrokerFiles.in_dir(broker_dir) if broker_dir else None
    return ca_dir, files


def _crl_paths(files: BrokerFiles | None, ca_dir: Path | None) -> tuple[Path, ...]:
    """Where a new CRL goes: the broker's copy, then the CA folder's."""
    return ((files.crlfile,) if files else ()) + ((ca_dir / "ca.crl",) if ca_dir else ())


# ---------------------------------------------------------------- flash


@_command("flash")
def cmd_flash(args: argparse.Namespace) -> int:
    device_id = validate_device_id(args.device_id)
    out = Path(args.out)
    broker_dir, settings = _broker_folder(args, device_id)
    prefix = args.prefix or (settings.policy.prefix if settings else DEFAULT_PREFIX)
    validate_topic_prefix(prefix)
    if settings is not None and prefix != settings.policy.prefix:
        raise ProvisioningError(f"--prefix {prefix!r} differs from the broker's ACL prefix "
                                f"{settings.policy.prefix!r}: the device could not use its topics")
    ca_dir, files = _ca_and_files(args, broker_dir, settings)
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

    crl_paths = _crl_paths(files, ca_dir)
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
    broker_dir, settings = _broker_folder(args, device_id)
    ca_dir, files = _ca_and_files(args, broker_dir, settings)
    registry = FleetRegistry(_home(args))
    pid = _read_pid(args.pid, args.pid_file)

    done = []
    if files is not None and remove_user(files.password_file, device_id):
        done.append("password entry removed")
    if ca_dir is not None and _active_certs(ca_dir, device_id):
        serials = _revoke_certs(ca_dir, device_id, crl_paths=_crl_paths(files, ca_dir))
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
    if broker_dir is not None and settings is not None and settings.admin:
        _say(_kick(broker_dir, settings, device_id))
    else:
        _say("no --broker-dir: only the registry changed (a broker without authentication)")
    return 0


# ---------------------------------------------------------------- cutting live connections

KICK_TIMEOUT_S = 2.0


def _kick(broker_dir: Path, settings: BrokerSettings, username: str) -> str:
    """Cut every live connection of `username` through the dynamic-security plugin: create a
    client of that name and delete it again, which kicks all connections by that username
    (mosquitto_kick_client_by_username), password and client-certificate devices alike. SIGHUP
    drops a password device whose entry is gone, but keeps a client-certificate device connected
    (Mosquitto 2.0.11 re-derives its username from the certificate and never re-checks the CRL
    for an open connection). The files changed before this, so a reconnect is refused."""
    import json
    import threading
    import uuid

    import paho.mqtt.client as mqtt

    assert settings.admin is not None
    cred = broker_dir / CREDENTIALS_DIR / f"{settings.admin}.password"
    try:
        password = cred.read_text().strip()
    except OSError as exc:
        return f"warning: live connections not cut: cannot read {cred} ({exc.strerror})"
    done = threading.Event()
    replies: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgespec-revoke-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5, reconnect_on_failure=False)
    client.username_pw_set(settings.admin, password)
    subscribed = threading.Event()
    failure: list[str] = []

    def on_connect(c, _u, _f, rc, _p):
        if rc != 0:
            failure.append(f"the broker refused {settings.admin} ({rc})")
            done.set()
            return
        c.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)

    def on_subscribe(c, _u, _mid, _rcs, _p):
        subscribed.set()
        commands = [{"command": "createClient", "username": username},
                    {"command": "deleteClient", "username": username}]
        c.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": commands}), qos=1)

    def on_message(_c, _u, msg):
        try:
            replies.extend(json.loads(msg.payload).get("responses", []))
        except (ValueError, AttributeError):
            pass
        done.set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    where = f"127.0.0.1:{settings.loopback_port}"
    try:
        client.connect("127.0.0.1", settings.loopback_port, keepalive=10)
    except OSError as exc:
        return (f"warning: live connections not cut: the broker is not reachable on {where} ({exc}); "
                "they end at the broker's next restart")
    client.loop_start()
    try:
        done.wait(KICK_TIMEOUT_S)
    finally:
        client.disconnect()
        client.loop_stop()
    if failure:
        return f"warning: live connections not cut: {failure[0]}"
    errors = [r.get("error") for r in replies if r.get("command") == "deleteClient" and r.get("error")]
    if not replies or errors:
        return f"warning: live connections not cut: no answer from the dynamic-security plugin on {where}" + (
            f" ({errors[0]})" if errors else "")
    return f"cut {username}'s live connections (dynamic-security kick on {where})"
