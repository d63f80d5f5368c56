"""Probes of a production deployment as an attacker holding one device's credentials would run
them, against a broker made by the project's own commands (`ca init`, `broker-files
init`, `keys init`, `flash`, `flash --cert`) and started from the generated `mosquitto.conf`:
anonymous and wrong-credential connects, another device's topics, forged verdicts, revocation
of connected password and certificate devices (cut within 1 s of `revoke` returning), and
secrets in the output of a verifier and a device.

Probes of shared-subscription joins, replays and retained uplinks live in
tests/test_security_routing.py and tests/test_security_replay.py."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.runner import BrokerError, MosquittoBroker, find_mosquitto, free_port, wait_for_port
from conftest import read_until_ready

try:
    find_mosquitto()
except BrokerError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = [pytest.mark.security, pytest.mark.broker]

REPO = Path(__file__).resolve().parent.parent
P = "edgespec/v1"
NOT_AUTHORIZED = 0x87
CUT_S = 1.0


def edgespec(*argv: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgespec.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env or os.environ, check=False)


@dataclass
class Deployment:
    root: Path
    broker_dir: Path
    home: Path
    broker: MosquittoBroker
    ports: dict[str, int]

    def bundle(self, device: str) -> dict:
        return json.loads((self.root / device / "device.json").read_text())

    def password(self, account: str) -> str:
        return (self.broker_dir / "credentials" / f"{account}.password").read_text().strip()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Deployment:
    root = tmp_path_factory.mktemp("prod")
    broker_dir, home, ca_dir = root / "broker", root / "fleet", root / "ca"
    ports = {name: free_port() for name in ("plain", "mqtts", "client_cert")}
    steps = [("ca", "init", "--dir", str(ca_dir)),
             ("broker-files", "init", "--dir", str(broker_dir), "--ca-dir", str(ca_dir), "--bind", "127.0.0.1",
              "--loopback-port", str(ports["plain"]), "--mqtts-port", str(ports["mqtts"]),
              "--client-cert-port", str(ports["client_cert"]), "--user", getpass.getuser()),
             ("keys", "init", "--home", str(home))]
    for device, cert in (("cam-p", False), ("cam-c", True), ("cam-q", False), ("cam-r", True), ("cam-o", False)):
        port = ports["client_cert"] if cert else ports["mqtts"]
        steps.append(("flash", device, "--out", str(root / device), "--broker", f"mqtts://localhost:{port}",
                      "--broker-dir", str(broker_dir), "--home", str(home), *(["--cert"] if cert else [])))
    for step in steps:
        out = edgespec(*step)
        assert out.returncode == 0, out.stderr
    broker = MosquittoBroker(port=ports["plain"], config=broker_dir / "mosquitto.conf").start()
    try:
        for port in ports.values():
            wait_for_port("127.0.0.1", port, 5, broker._proc)
        yield Deployment(root, broker_dir, home, broker, ports)
    finally:
        broker.stop()


class Client:
    """A paho MQTT v5 client with its outcomes recorded."""

    def __init__(self, d: Deployment, *, device: str | None = None, username: str | None = None,
                 password: str | None = None, port: str = "plain"):
        self.gone = threading.Event()
        self.connack = threading.Event()
        self.rc = None
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.inbox: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        if device is not None:
            folder = d.root / device
            if (folder / "client.crt").exists():
                self.c.tls_set(ca_certs=str(folder / "ca.crt"), certfile=str(folder / "client.crt"),
                               keyfile=str(folder / "client.key"))
                port = "client_cert"
            else:
                self.c.tls_set(ca_certs=str(folder / "ca.crt"))
                username, password, port = device, d.bundle(device)["password"], "mqtts"
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: self.gone.set()
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda _c, _u, m: self.inbox.append((m.topic, m.payload))
        self.c.connect("localhost", d.ports[port])
        self.c.loop_start()
        self.connack.wait(5)

    def _on_connect(self, _c, _u, _f, rc, _p) -> None:
        self.rc = rc.value if hasattr(rc, "value") else rc
        self.connack.set()

    def _on_publish(self, _c, _u, mid, rc, _p) -> None:
        with self.acked:
            self.acks[mid] = rc.value if hasattr(rc, "value") else rc
            self.acked.notify_all()

    def publish(self, topic: str, payload: bytes = b"x") -> int:
        mid = self.c.publish(topic, payload, qos=1).mid
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, 5)
            return self.acks[mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_anonymous_and_wrong_credentials_are_refused(deployment: Deployment) -> None:
    for kwargs in ({}, {"username": "cam-p", "password": "wrong"}, {"username": "nobody", "password": "x"},
                   {"username": "verifier-1", "password": deployment.password("dashboard")}):
        client = Client(deployment, **kwargs)
        try:
            assert client.rc == NOT_AUTHORIZED, kwargs
        finally:
            client.close()


def test_other_devices_topics_and_forged_verdicts_are_refused(deployment: Deployment) -> None:
    for device in ("cam-p", "cam-c"):
        client = Client(deployment, device=device)
        try:
            assert client.rc == 0
            for topic in (f"{P}/dev/cam-o/up/open", f"{P}/dev/cam-o/result", f"{P}/dev/cam-o/status",
                          f"{P}/dev/cam-o/down", f"{P}/dev/{device}/down", f"{P}/dev/cam-o/verified",
                          f"{P}/dev/{device}/verified", f"{P}/verifier/verifier-1/status"):
                assert client.publish(topic) == NOT_AUTHORIZED, (device, topic)
            # Reads: another device's downlink never arrives; its own status (a positive control,
            # delivered in order after the forbidden one) does.
            client.c.subscribe([(f"{P}/dev/cam-o/down", 1), (f"{P}/dev/cam-o/up/#", 1)])
            other = Client(deployment, device="cam-o")
            verifier = Client(deployment, username="verifier-1", password=deployment.password("verifier-1"))
            try:
                time.sleep(0.2)
                assert verifier.publish(f"{P}/dev/cam-o/down", b"verdict") != NOT_AUTHORIZED
                assert other.publish(f"{P}/dev/cam-o/up/open", b"open") != NOT_AUTHORIZED
                client.c.subscribe(f"{P}/verifier/+/status", qos=1)
                time.sleep(0.2)
                verifier.publish(f"{P}/verifier/verifier-1/status", b"control")
                deadline = time.monotonic() + 5
                while not client.inbox and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert [t for t, _ in client.inbox] == [f"{P}/verifier/verifier-1/status"]
            finally:
                other.close()
                verifier.close()
        finally:
            client.close()


@pytest.mark.parametrize("device", ["cam-q", "cam-r"], ids=["password", "certificate"])
def test_revocation_cuts_a_connected_device_within_1_s(deployment: Deployment, device: str) -> None:
    client = Client(deployment, device=device)
    try:
        assert client.rc == 0
        assert client.publish(f"{P}/dev/{device}/status") != NOT_AUTHORIZED
        t0 = time.monotonic()
        out = edgespec("revoke", device, "--broker-dir", str(deployment.broker_dir), "--home", str(deployment.home),
                       "--pid", str(deployment.broker._proc.pid))
        took = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        assert took < 3.0, f"revoke took {took:.1f} s"
        assert client.gone.wait(CUT_S), f"{device} still connected {CUT_S} s after revoke returned:\n{out.stdout}"
    finally:
        client.close()
    again = Client(deployment, device=device)
    try:
        assert again.rc != 0 or again.gone.wait(2), "a revoked device connected again"
    finally:
        again.close()


def test_no_secret_in_output(deployment: Deployment, tiny_pair) -> None:
    """A verifier given its password in the URL (with -v), one given --broker-dir over mqtts://
    with the project CA, and a device with a password: no password in any output."""
    from edgespec.toolkit import drain

    target, draft = tiny_pair
    secret = deployment.password("verifier-1")
    device_secret = deployment.bundle("cam-p")["password"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outputs = []
    runs = [["--broker", f"mqtt://verifier-1:{secret}@127.0.0.1:{deployment.ports['plain']}", "-v"],
            ["--broker", f"mqtts://localhost:{deployment.ports['mqtts']}", "--broker-dir",
             str(deployment.broker_dir), "-v"]]
    for extra in runs:
        proc = subprocess.Popen([sys.executable, "-m", "edgespec.cli", "verifier", "--target-model", str(target),
                                 "--home", str(deployment.home), *extra], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines: list[str] = []
        try:
            lines = read_until_ready(proc)
            assert any("ready on" in line for line in lines), "".join(lines)
            tail = drain(proc)
            if extra is runs[1]:  # a device session through it: generate, with the bundle's password
                out = edgespec("generate", "--config", str(deployment.root / "cam-p"), "--draft-model", str(draft),
                               "--prompt", "a red car", "--max-new-tokens", "4", "-v", env=env)
                assert out.returncode == 0, out.stderr
                outputs += [out.stdout, out.stderr]
        finally:
            proc.terminate()
            proc.wait(10)
        outputs.append("".join(lines) + "".join(tail))
    text = "\n".join(outputs)
    assert "ready on" in text
    assert secret not in text and device_secret not in text, text
