"""Provisioning: device bundles, the fleet registry, the development identity, and the
`ca` / `broker-files` / `keys` / `flash` / `revoke` commands against a real Mosquitto.

The broker tests build the broker folder with the commands themselves (`ca init`,
`broker-files init` on free loopback ports) and start Mosquitto from the rendered production
config, so what is tested is what an operator runs.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
import ssl
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from broker.runner import BrokerError, MosquittoBroker, find_mosquitto, free_port, wait_for_port
from edgespec import provisioning
from transport.client import make_client
from transport.urls import ClientAuth
from security import ca as ca_mod
from security import registry as registry_mod
from security.bundle import BundleError, DeviceBundle
from security.dev_identity import (DevIdentityError, default_home, ensure_dev_identity,
                                   ensure_verifier_keys)
from security.keys import (VerifierKeyRing, generate_keypair, key_id, public_key_to_b64,
                           save_public_key)
from security.mosquitto_files import read_password_file
from security.registry import FleetRegistry, RegistryError

P = "edgespec/v1"
WAIT_S = 5.0
CONNECT_S = 3.0  # a loopback CONNECT takes milliseconds


def run_cmd(*argv: str) -> int:
    """An `edgespec` command line, through the real CLI once it lists this module."""
    from edgespec import cli

    if "edgespec.provisioning" in cli.PLUGIN_COMMANDS:
        return cli.main(list(argv))
    return provisioning.main(list(argv))


def _ring_keys(ring: VerifierKeyRing) -> dict[str, str]:
    return {kid: public_key_to_b64(raw) for kid, raw in ring.public_keys().items()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Mosquitto applies SIGHUP a moment after the signal and tells nobody when it is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# ------------------------------------------------------------------ bundle


@pytest.fixture(scope="module")
def authority() -> ca_mod.CertificateAuthority:
    return ca_mod.create_ca()


def _bundle(ring: VerifierKeyRing, authority: ca_mod.CertificateAuthority | None = None,
            device_id: str = "cam-1", **kw: object) -> DeviceBundle:
    tls = {}
    if authority is not None:
        cert = ca_mod.issue_client_cert(authority, device_id)
        tls = {"ca_pem": authority.cert_pem, "cert_pem": cert.cert_pem,
               "cert_key_pem": cert.key_pem}
    args = dict(device_id=device_id, broker_url="mqtts://127.0.0.1:8885",
                device_key=generate_keypair(), verifier_keys=_ring_keys(ring),
                verifier_key_id=ring.current_key_id, **tls)
    args.update(kw)
    return DeviceBundle(**args)  # type: ignore[arg-type]


def test_bundle_round_trip_with_certificate(tmp_path: Path, authority) -> None:
    ring = VerifierKeyRing(generate_keypair())
    old = ring.current
    ring.rotate()
    bundle = _bundle(ring, authority, password=None)
    saved = bundle.save(tmp_path / "b")
    loaded = DeviceBundle.load(tmp_path / "b")

    assert loaded == saved == bundle
    assert loaded.directory == tmp_path / "b"
    assert loaded.device_keypair().key_id == bundle.device_key.key_id
    assert key_id(loaded.verifier_public_key()) == ring.current_key_id
    assert key_id(loaded.verifier_public_key(old.key_id)) == old.key_id
    with pytest.raises(BundleError, match="no verifier key"):
        loaded.verifier_public_key("0" * 16)
    assert loaded.topics["open"] == f"{P}/dev/cam-1/up/open"
    assert loaded.topics["down"] == f"{P}/dev/cam-1/down"

    auth = loaded.client_auth()
    assert auth.username == "cam-1" and auth.password is None
    for name in (auth.ca_file, auth.cert_file, auth.key_file):
        assert name is not None and Path(name).is_file()
    assert _mode(tmp_path / "b") == 0o700
    for secret in ("device.key", "client.key", "device.json"):
        assert _mode(tmp_path / "b" / secret) == 0o600, secret
    assert _mode(tmp_path / "b" / "client.crt") == 0o644


def test_bundle_round_trip_with_password(tmp_path: Path) -> None:
    ring = VerifierKeyRing(generate_keypair())
    bundle = _bundle(ring, broker_url="mqtt://127.0.0.1:1883", password="s3cret",
                     prefix="site-a/edgespec")
    loaded = DeviceBundle.load(bundle.save(tmp_path / "b").directory)  # type: ignore[arg-type]
    assert loaded == bundle
    assert loaded.client_auth().password == "s3cret"
    assert loaded.client_auth().ca_file is None
    assert loaded.topics["result"] == "site-a/edgespec/dev/cam-1/result"
    assert "s3cret" not in repr(loaded)


def test_bundle_constructor_refuses_inconsistent_values(authority) -> None:
    ring = VerifierKeyRing(generate_keypair())
    with pytest.raises(BundleError, match="invalid device id"):
        _bundle(ring, device_id="a/b")
    with pytest.raises(BundleError, match="username"):
        _bundle(ring, username="cam-2")
    with pytest.raises(BundleError, match="not TLS"):
        _bundle(ring, authority, broker_url="mqtt://127.0.0.1:1883")
    with pytest.raises(BundleError, match="issued to 'cam-1'"):
        cert = ca_mod.issue_client_cert(authority, "cam-1")
        _bundle(ring, device_id="cam-2", cert_pem=cert.cert_pem, cert_key_pem=cert.key_pem)
    with pytest.raises(BundleError, match="not among"):
        _bundle(ring, verifier_key_id="0" * 16)
    with pytest.raises(BundleError, match="holds no verifier public key"):
        _bundle(ring, verifier_keys={})
    with pytest.raises(BundleError, match="embeds a password"):
        _bundle(ring, broker_url="mqtt://cam-1:pw@127.0.0.1:1883")
    with pytest.raises(BundleError, match="not signed by"):
        _bundle(ring, authority, ca_pem=ca_mod.create_ca("other").cert_pem)


def _edit(directory: Path, **changes: object) -> None:
    path = directory / "device.json"
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            doc.pop(key)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


_DROP = object()


@pytest.mark.parametrize("changes, message", [
    ({"format": "something-else"}, "'format'"),
    ({"version": 99}, "upgrade edgespec"),
    ({"version": "1"}, "'version'"),
    ({"device_id": "cam+1"}, "invalid device id"),
    ({"device_id": _DROP}, "'device_id'"),
    ({"username": "cam-2"}, "username"),
    ({"broker_url": "ftp://x"}, "scheme"),
    ({"prefix": "a/+/b"}, "topic prefix"),
    ({"password": 5}, "'password'"),
    ({"device_key_file": "../device.key"}, "plain file name"),
    ({"device_key_file": "missing.key"}, "missing"),
    ({"device_public_key": public_key_to_b64(generate_keypair().public_bytes)},
     "different flashes"),
    ({"verifier": {"current": "x", "keys": {"x": "not base64!"}}}, "verifier key 'x'"),
    ({"verifier": {"current": "ab", "keys": {"ab": public_key_to_b64(b"\x09" * 32)}}},
     "fingerprint"),
    ({"verifier": "nope"}, "'verifier'"),
    ({"topics": {"down": f"{P}/dev/cam-2/down"}}, "topics do not match"),
    ({"ca_file": "ca.crt"}, "missing"),
])
def test_bundle_load_reports_what_is_wrong(tmp_path: Path, changes, message) -> None:
    ring = VerifierKeyRing(generate_keypair())
    d = _bundle(ring, broker_url="mqtt://127.0.0.1:1883").save(tmp_path / "b").directory
    assert d is not None
    _edit(d, **changes)
    with pytest.raises(BundleError, match=message) as info:
        DeviceBundle.load(d)
    assert str(d) in str(info.value)


def test_bundle_load_refuses_missing_unreadable_and_exposed_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a folder"):
        DeviceBundle.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no device\.json"):
        DeviceBundle.load(tmp_path / "empty")
    ring = VerifierKeyRing(generate_keypair())
    d = _bundle(ring, broker_url="mqtt://h", password="pw").save(tmp_path / "b").directory
    assert d is not None
    (d / "device.key").chmod(0o644)
    with pytest.raises(BundleError, match="chmod 600"):
        DeviceBundle.load(d)
    assert DeviceBundle.load(d, check_permissions=False).password == "pw"
    (d / "device.key").chmod(0o600)
    (d / "device.json").write_text("{not json")
    (d / "device.json").chmod(0o600)
    with pytest.raises(BundleError, match="not valid JSON"):
        DeviceBundle.load(d)
    (d / "device.json").write_bytes(b" " * (70 * 1024))
    with pytest.raises(BundleError, match="larger than"):
        DeviceBundle.load(d)


def test_client_auth_needs_the_files_on_disk(authority) -> None:
    ring = VerifierKeyRing(generate_keypair())
    with pytest.raises(BundleError, match="not on disk"):
        _bundle(ring, authority).client_auth()


# ------------------------------------------------------------------ registry


def test_registry_add_remove_and_reload_on_change(tmp_path: Path) -> None:
    reg = FleetRegistry(tmp_path / "home")
    a, b = generate_keypair(), generate_keypair()
    assert reg.public_key("cam-1") is None and reg.devices() == []
    assert reg.add("cam-1", a.public) == a.key_id
    reg.add("cam-2", public_key_to_b64(b.public_bytes))
    assert reg.devices() == ["cam-1", "cam-2"] and "cam-1" in reg
    assert key_id(reg.public_key("cam-1")) == a.key_id

    other = FleetRegistry(tmp_path / "home")  # another process: a flash replaces the key
    other.add("cam-1", b.public_bytes)
    assert key_id(reg.public_key("cam-1")) == b.key_id
    assert other.remove("cam-1") is True
    assert reg.public_key("cam-1") is None  # revoked without restarting the verifier
    assert reg.remove("cam-1") is False
    assert reg.devices() == ["cam-2"]
    for hostile in ("a/b", "+", "#", "../cam-2", ""):
        assert reg.public_key(hostile) is None
    with pytest.raises(ValueError, match="invalid device id"):
        reg.add("a/b", a.public)


def test_registry_caches_by_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = FleetRegistry(tmp_path)
    reg.add("cam-1", generate_keypair().public)
    reads = []
    real = registry_mod.parse_public_key_file
    monkeypatch.setattr(registry_mod, "parse_public_key_file",
                        lambda data, where="": reads.append(where) or real(data, where))
    first = reg.public_key("cam-1")
    for _ in range(100):
        assert reg.public_key("cam-1") is first
    assert len(reads) == 1
    reg.add("cam-1", generate_keypair().public)
    assert reg.public_key("cam-1") is not first and len(reads) == 2


def test_registry_reads_raw_b64_and_pem_and_rejects_garbage(tmp_path: Path) -> None:
    reg = FleetRegistry(tmp_path)
    reg.devices_dir.mkdir(parents=True)
    pair = generate_keypair()
    (reg.devices_dir / "raw.pub").write_bytes(pair.public_bytes)
    save_public_key(reg.devices_dir / "pem.pub", pair.public)
    (reg.devices_dir / "b64.pub").write_text(public_key_to_b64(pair.public_bytes) + "\n")
    for name in ("raw", "pem", "b64"):
        assert key_id(reg.public_key(name)) == pair.key_id
    (reg.devices_dir / "bad.pub").write_text("garbage")
    with pytest.raises(RegistryError, match="re-flash"):
        reg.public_key("bad")


def test_registry_follows_verifier_key_rotation(tmp_path: Path) -> None:
    reg = FleetRegistry(tmp_path)
    with pytest.raises(RegistryError, match="keys init"):
        reg.verifier_keys()
    ring = VerifierKeyRing(generate_keypair())
    reg.save_verifier_keys(ring)
    assert reg.verifier_keys() is reg.verifier_keys()
    assert reg.verifier_keys().current_key_id == ring.current_key_id
    ring.rotate()
    FleetRegistry(tmp_path).save_verifier_keys(ring)
    assert reg.verifier_keys().key_ids() == ring.key_ids()


# ------------------------------------------------------------------ development identity


def test_dev_identity_is_created_once_and_registered(tmp_path: Path) -> None:
    home = tmp_path / "dev"
    bundle, reg = ensure_dev_identity(home, "dev-1")
    again, _ = ensure_dev_identity(home, "dev-1")
    assert again == bundle and again.device_key.key_id == bundle.device_key.key_id
    assert key_id(reg.public_key("dev-1")) == bundle.device_key.key_id
    ring = ensure_verifier_keys(home)
    assert bundle.verifier_key_id == ring.current_key_id
    assert bundle.password is None and bundle.broker_url.startswith("mqtt://127.0.0.1")
    assert _mode(home) == 0o700
    other, _ = ensure_dev_identity(home, "dev-2")
    assert other.device_key.key_id != bundle.device_key.key_id
    assert reg.devices() == ["dev-1", "dev-2"]

    # A rotation reaches the development bundles; the device key stays.
    with reg.locked():
        ring.rotate()
        reg.save_verifier_keys(ring)
    rotated, _ = ensure_dev_identity(home, "dev-1")
    assert rotated.verifier_key_id == ring.current_key_id
    assert rotated.device_key.key_id == bundle.device_key.key_id
    assert DeviceBundle.load(rotated.directory).verifier_key_id == ring.current_key_id


def test_dev_identity_two_threads_racing(tmp_path: Path) -> None:
    home = tmp_path / "race"
    barrier = threading.Barrier(4)
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            bundle, _ = ensure_dev_identity(home, "dev-1")
            results.append((bundle.device_key.key_id, bundle.verifier_key_id))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(results) == 4 and len(set(results)) == 1, results
    assert FleetRegistry(home).devices() == ["dev-1"]
    assert len(list((home / "verifier").glob("verifier-*.pem"))) == 1


def test_dev_identity_home_default_and_foreign_device(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "env-home"))
    assert default_home() == tmp_path / "env-home"
    bundle, reg = ensure_dev_identity()
    assert reg.home == tmp_path / "env-home" and bundle.device_id == "dev-1"
    reg.add("flashed", generate_keypair().public)
    with pytest.raises(DevIdentityError, match="--config"):
        ensure_dev_identity(device_id="flashed")
    monkeypatch.delenv("EDGESPEC_HOME")
    assert default_home() == Path("~/.edgespec/dev").expanduser()


# ------------------------------------------------------------------ commands without a broker


@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, Path]:
    """A CA + broker folder and a fleet home made with the commands (ports unused here)."""
    d = {"broker": tmp_path / "broker", "home": tmp_path / "home", "root": tmp_path}
    assert run_cmd("ca", "init", "--dir", str(d["broker"])) == 0
    assert run_cmd("broker-files", "init", "--dir", str(d["broker"]), "--verifier",
                   "verifier-1", "--dashboard", "dash") == 0
    assert run_cmd("keys", "init", "--home", str(d["home"])) == 0
    return d


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "cam#1", "", "x" * 65])
def test_flash_refuses_unsafe_ids(fleet, bad: str, capsys) -> None:
    out = fleet["root"] / "out"
    rc = run_cmd("flash", bad, "--out", str(out), "--broker", "mqtt://127.0.0.1:1883",
                 "--broker-dir", str(fleet["broker"]), "--home", str(fleet["home"]))
    assert rc == 2
    err = capsys.readouterr().err
    assert "invalid device id" in err and "Traceback" not in err
    assert not out.exists() and FleetRegistry(fleet["home"]).devices() == []


@pytest.mark.parametrize("service", ["verifier-1", "dash"])
def test_flash_refuses_service_names(fleet, service: str, capsys) -> None:
    before = (fleet["broker"] / "passwd").read_text()
    rc = run_cmd("flash", service, "--out", str(fleet["root"] / "out"), "--broker",
                 "mqtt://h", "--broker-dir", str(fleet["broker"]), "--home", str(fleet["home"]))
    assert rc == 2 and "not a device" in capsys.readouterr().err
    assert (fleet["broker"] / "passwd").read_text() == before


def test_flash_and_revoke_update_every_place(fleet, capsys) -> None:
    b, home = fleet["broker"], fleet["home"]
    out = fleet["root"] / "cam-1"
    args = ("flash", "cam-1", "--out", str(out), "--broker", "mqtts://127.0.0.1:8883",
            "--broker-dir", str(b), "--home", str(home))
    assert run_cmd(*args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and printed[0].startswith("flashed cam-1")
    bundle = DeviceBundle.load(out)
    assert bundle.password and bundle.ca_file == "ca.crt"
    assert "cam-1" in read_password_file(b / "passwd")
    assert key_id(FleetRegistry(home).public_key("cam-1")) == bundle.device_key.key_id

    assert run_cmd(*args) == 2  # already provisioned
    assert "--force" in capsys.readouterr().err
    assert run_cmd(*args, "--force", "--cert") == 0  # re-flash with a certificate
    rebundle = DeviceBundle.load(out)
    assert rebundle.uses_client_certificate and rebundle.password is None
    assert "cam-1" not in read_password_file(b / "passwd")
    index = json.loads((b / "issued-certs.json").read_text())["certificates"]
    assert [r["device_id"] for r in index] == ["cam-1"] and index[0]["revoked_at"] is None

    assert run_cmd("revoke", "cam-1", "--broker-dir", str(b), "--home", str(home)) == 0
    index = json.loads((b / "issued-certs.json").read_text())["certificates"]
    assert index[0]["revoked_at"] is not None
    from cryptography import x509
    crl = x509.load_pem_x509_crl((b / "ca.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(index[0]["serial"], 16)) is not None
    assert FleetRegistry(home).devices() == []
    capsys.readouterr()
    assert run_cmd("revoke", "cam-1", "--broker-dir", str(b), "--home", str(home)) == 2
    assert "not provisioned" in capsys.readouterr().err


def test_flash_refuses_a_pid_that_is_not_mosquitto(fleet, capsys) -> None:
    rc = run_cmd("flash", "cam-9", "--out", str(fleet["root"] / "o"), "--broker", "mqtt://h",
                 "--broker-dir", str(fleet["broker"]), "--home", str(fleet["home"]),
                 "--mosquitto-pid", str(os.getpid()))
    assert rc == 2 and "not mosquitto" in capsys.readouterr().err
    assert not (fleet["root"] / "o").exists()


def test_ca_init_is_idempotent_and_force_replaces(tmp_path: Path, capsys) -> None:
    d = tmp_path / "ca"
    assert run_cmd("ca", "init", "--dir", str(d), "--dns", "broker.example") == 0
    first = (d / "ca.crt").read_bytes()
    server = (d / "server.crt").read_bytes()
    assert run_cmd("ca", "init", "--dir", str(d)) == 0
    assert "kept the existing CA" in capsys.readouterr().out
    assert (d / "ca.crt").read_bytes() == first and (d / "server.crt").read_bytes() == server
    assert _mode(d / "ca.key") == 0o600 and _mode(d / "server.key") == 0o600
    assert run_cmd("ca", "init", "--dir", str(d), "--force") == 0
    assert (d / "ca.crt").read_bytes() != first


def test_keys_commands(tmp_path: Path, capsys) -> None:
    home = str(tmp_path / "h")
    assert run_cmd("keys", "list", "--home", home) == 2
    assert "keys init" in capsys.readouterr().err
    assert run_cmd("keys", "init", "--home", home) == 0
    assert run_cmd("keys", "init", "--home", home) == 2  # refuses to replace
    first = FleetRegistry(home).verifier_keys().current_key_id
    assert run_cmd("keys", "rotate", "--home", home) == 0
    ring = FleetRegistry(home).verifier_keys()
    assert ring.current_key_id != first and first in ring
    capsys.readouterr()
    assert run_cmd("keys", "list", "--home", home) == 0
    listing = capsys.readouterr().out
    assert f"current  {ring.current_key_id}" in listing and f"previous {first}" in listing
    assert run_cmd("keys", "retire", ring.current_key_id, "--home", home) == 2
    assert run_cmd("keys", "retire", first, "--home", home) == 0
    assert FleetRegistry(home).verifier_keys().key_ids() == [ring.current_key_id]

    for _ in range(4):  # a longer history than the ring's default keeps
        assert run_cmd("keys", "rotate", "--home", home, "--max-previous", "4") == 0
    assert len(FleetRegistry(home).verifier_keys().key_ids()) == 5


# ------------------------------------------------------------------ against a real Mosquitto


try:
    find_mosquitto()
    HAVE_MOSQUITTO = True
except BrokerError:  # pragma: no cover - depends on the machine
    HAVE_MOSQUITTO = False


@dataclass
class LiveFleet:
    broker: MosquittoBroker
    dir: Path
    home: Path
    ports: dict[str, int]

    @property
    def pid(self) -> str:
        assert self.broker._proc is not None
        return str(self.broker._proc.pid)

    def service_password(self, name: str) -> str:
        return (self.dir / "credentials" / f"{name}.password").read_text().strip()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveFleet]:
    if not HAVE_MOSQUITTO:
        pytest.skip("mosquitto is not installed")
    d, home = tmp_path / "broker", tmp_path / "home"
    ports = {"mqtts": free_port(), "client_cert": free_port(), "wss": free_port()}
    plain = free_port()
    assert run_cmd("ca", "init", "--dir", str(d)) == 0
    assert run_cmd("broker-files", "init", "--dir", str(d), "--verifier", "verifier-1",
                   "--mqtts-port", str(ports["mqtts"]), "--client-cert-port",
                   str(ports["client_cert"]), "--wss-port", str(ports["wss"]), "--websockets",
                   "--loopback-port", str(plain),
                   "--bind", "127.0.0.1", "--user", getpass.getuser()) == 0
    assert run_cmd("keys", "init", "--home", str(home)) == 0
    broker = MosquittoBroker(port=plain, config=d / "mosquitto.conf").start()
    ports["plain"] = broker.port
    try:
        for port in ports.values():  # the runner waits for the first listener only
            wait_for_port("127.0.0.1", port, WAIT_S, broker._proc)
        yield LiveFleet(broker, d, home, ports)
    finally:
        broker.stop()


async def _uplink_arrives(live: LiveFleet, bundle: DeviceBundle) -> bool:
    """Connect with the bundle, publish on its own uplink; True when a verifier received it.

    False when the broker refuses the device: a CONNACK refusal, a failed TLS handshake, or no
    CONNACK at all within CONNECT_S (aiomqtt 2.5 does not notice a TLS alert that arrives after
    the handshake, such as TLS 1.3's "certificate revoked", and waits for its timeout).
    """
    url = f"mqtt://127.0.0.1:{live.ports['plain']}"
    verifier_auth = ClientAuth("verifier-1", live.service_password("verifier-1"))
    payload = uuid.uuid4().bytes
    async with make_client(url, client_id=f"v-{uuid.uuid4().hex[:6]}",
                           auth=verifier_auth) as verifier:
        await verifier.subscribe(f"{P}/dev/+/up/#", qos=1)
        try:
            async with asyncio.timeout(CONNECT_S):
                async with make_client(bundle.broker_url, client_id=f"d-{uuid.uuid4().hex[:6]}",
                                       auth=bundle.client_auth()) as device:
                    await device.publish(bundle.topics["open"], payload, qos=1)
        except (aiomqtt.MqttError, ssl.SSLError, OSError, TimeoutError):
            return False
        async with asyncio.timeout(WAIT_S):
            async for message in verifier.messages:
                if message.payload == payload:
                    return str(message.topic) == bundle.topics["open"]
    return False


def _arrives(live: LiveFleet, bundle: DeviceBundle) -> bool:
    return asyncio.run(_uplink_arrives(live, bundle))


def _tls_refuses_certificate(bundle: DeviceBundle, port: int) -> bool:
    """The broker's verdict on the bundle's client certificate, read straight off the socket:
    TLS 1.3 sends a refusal as an alert after the handshake, on the first read."""
    auth = bundle.client_auth()
    context = ssl.create_default_context(cafile=auth.ca_file)
    context.load_cert_chain(auth.cert_file, auth.key_file)  # type: ignore[arg-type]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"\x10\x00")  # a truncated CONNECT: the broker answers or closes
            tls.recv(1)
    except ssl.SSLError as exc:
        return "revoked" in str(exc).lower() or "certificate" in str(exc).lower()
    except OSError:
        return False
    return False


@pytest.mark.broker
def test_flashed_device_connects_and_revoked_device_is_refused(live: LiveFleet) -> None:
    out = live.dir.parent / "cam-1"
    assert run_cmd("flash", "cam-1", "--out", str(out), "--broker",
                   f"mqtts://127.0.0.1:{live.ports['mqtts']}", "--broker-dir", str(live.dir),
                   "--home", str(live.home), "--mosquitto-pid", live.pid) == 0
    bundle = DeviceBundle.load(out)
    assert eventually(lambda: _arrives(live, bundle)), "a flashed device could not publish"

    assert run_cmd("revoke", "cam-1", "--broker-dir", str(live.dir), "--home", str(live.home),
                   "--pid", live.pid) == 0
    assert eventually(lambda: not _arrives(live, bundle)), "a revoked device still connects"
    assert FleetRegistry(live.home).public_key("cam-1") is None


@pytest.mark.broker
def test_certificate_device_connects_and_is_refused_after_revoke(live: LiveFleet) -> None:
    out = live.dir.parent / "cam-c"
    assert run_cmd("flash", "cam-c", "--cert", "--out", str(out), "--broker",
                   f"mqtts://127.0.0.1:{live.ports['client_cert']}", "--broker-dir",
                   str(live.dir), "--home", str(live.home), "--pid-file",
                   str(_pid_file(live))) == 0
    bundle = DeviceBundle.load(out)
    assert bundle.password is None and bundle.uses_client_certificate
    assert _arrives(live, bundle), "a device with a client certificate could not publish"

    assert run_cmd("revoke", "cam-c", "--broker-dir", str(live.dir), "--home", str(live.home),
                   "--pid", live.pid) == 0
    port = live.ports["client_cert"]
    assert eventually(lambda: _tls_refuses_certificate(bundle, port)), \
        "a revoked client certificate was still accepted after SIGHUP"
    assert not _arrives(live, bundle)
    # The CRL names the certificate the bundle holds.
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(bundle.cert_pem or b"")
    crl = x509.load_pem_x509_crl((live.dir / "ca.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def _pid_file(live: LiveFleet) -> Path:
    path = live.dir.parent / "mosquitto.pid"
    path.write_text(live.pid + "\n")
    return path

