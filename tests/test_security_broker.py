"""The production broker config, password file and ACL against a real Mosquitto process.

Each test starts its own broker from `broker/mosquitto-prod.conf` rendered with temporary
files (plain loopback listener, TLS, TLS + client certificate and TLS websockets on free
loopback ports) and stops it afterwards. "Receives nothing" is checked after a positive
control message, published later on a topic the subscriber may read, has arrived: Mosquitto
delivers one publisher's messages to a subscriber in order, so anything forbidden would have
arrived first.
"""

from __future__ import annotations

import getpass
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from broker.runner import BrokerError, MosquittoBroker, find_mosquitto, free_port, wait_for_port
from security import ca as ca_mod
from security.mosquitto_files import (AclPolicy, BrokerFiles, ensure_password_file, remove_user,
                                      set_password, write_acl_file, write_prod_config)

try:
    find_mosquitto()
except BrokerError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.broker

P = "edgespec/v1"
WAIT_S = 5.0  # positive events: generous, they normally take milliseconds
QUIET_S = 0.3  # negative checks, after the positive control has arrived
NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
NO_MATCHING_SUBSCRIBERS = 0x10
VERIFIER = "verifier-1"
DASHBOARD = "dashboard"
HOME_ASSISTANT = "home-assistant"
DEVICES = ("cam-a", "cam-b")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One CA, server certificate and device certificate for the whole module."""
    d = tmp_path_factory.mktemp("pki")
    authority = ca_mod.create_ca()
    authority.save(d)
    ca_mod.issue_server_cert(authority).write(d / "server.crt", d / "server.key")
    cam = ca_mod.issue_client_cert(authority, "cam-a")
    cam.write(d / "cam-a.crt", d / "cam-a.key")
    return {"dir": d, "ca": authority, "cam_a_cert": cam}


@dataclass
class ProdBroker:
    """A running production-config broker and the files it reads."""

    broker: MosquittoBroker
    files: BrokerFiles
    ports: dict[str, int]
    passwords: dict[str, str]
    pki: dict[str, Any]
    peers: list[Peer] = field(default_factory=list)

    def peer(self, username: str | None, password: str | None = None, *,
             listener: str = "plain", **kwargs: Any) -> Peer:
        if username is not None and password is None:
            password = self.passwords.get(username)
        peer = Peer(self.ports[listener], username, password, **kwargs)
        self.peers.append(peer)
        return peer

    def connected(self, username: str, **kwargs: Any) -> Peer:
        peer = self.peer(username, **kwargs)
        rc = peer.connect()
        assert rc == 0, f"{username} could not connect: {rc}"
        return peer

    def tls(self, **extra: Any) -> dict[str, Any]:
        return {"ca_certs": str(self.files.cafile), **extra}


class Peer:
    """A paho MQTT v5 client driven synchronously: every call waits for its acknowledgement."""

    def __init__(self, port: int, username: str | None, password: str | None, *,
                 tls: dict[str, Any] | None = None, transport: str = "tcp") -> None:
        self.port = port
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.disconnected = threading.Event()
        self._cond = threading.Condition()
        self._connack: Any = None
        self._acks: dict[int, Any] = {}
        client_id = f"{username or 'anon'}-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
            transport=transport, reconnect_on_failure=False)  # type: ignore[arg-type]
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(**tls)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self._started = False

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        with self._cond:
            self._connack = rc
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put((msg.topic, msg.payload))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _props: Any) -> None:
        with self._cond:
            self._acks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        with self._cond:
            self._acks[mid] = rc.value
            self._cond.notify_all()

    def connect(self) -> int | None:
        """CONNACK reason code (0 = accepted), or None if the connection closed without one."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        self._started = True
        with self._cond:
            self._cond.wait_for(lambda: self._connack is not None or self.disconnected.is_set(),
                                timeout=WAIT_S)
            return None if self._connack is None else int(self._connack.value)

    def _wait_ack(self, mid: int) -> Any:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, timeout=WAIT_S), \
                f"no acknowledgement for packet {mid}"
            return self._acks.pop(mid)

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """SUBACK reason codes (granted QoS, or >= 0x80 for a refusal)."""
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_ack(mid)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """PUBACK reason code for QoS 1: 0 accepted, 0x87 not authorized.

        Mosquitto answers 0x10 (no matching subscribers) for an accepted message nobody
        subscribed to; that is success too and is reported as 0.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        code = self._wait_ack(info.mid)
        return 0 if code == NO_MATCHING_SUBSCRIBERS else code

    def expect(self, topic: str, payload: bytes | None = None) -> list[tuple[str, bytes]]:
        """Wait for `topic` (and `payload`); return every message received up to and with it."""
        got = []
        while True:
            item = self.inbox.get(timeout=WAIT_S)
            got.append(item)
            if item[0] == topic and (payload is None or item[1] == payload):
                return got

    def quiet(self) -> list[tuple[str, bytes]]:
        """Messages that arrive within QUIET_S (the bounded wait of a negative check)."""
        got = []
        try:
            while True:
                got.append(self.inbox.get(timeout=QUIET_S))
        except queue.Empty:
            return got

    def die(self) -> None:
        """Leave so that the broker publishes the Last Will (v5 reason 0x04)."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT,
                                                     "Disconnect with will message"))
        self.client.loop_stop()
        self._started = False

    def close(self) -> None:
        if self._started:
            self.client.disconnect()
            self.client.loop_stop()
            self._started = False


def eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll `condition` until it holds or `timeout` passes. Mosquitto applies SIGHUP in its
    main loop a moment after the signal, and tells nobody when it is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def refused(peer: Peer) -> bool:
    """True when the broker refuses `peer`: in the TLS handshake (TLS 1.3 reports a refused
    client certificate on the first read, so either side of connect()) or in CONNACK."""
    try:
        return peer.connect() != 0
    except (ssl.SSLError, OSError):
        return True


@pytest.fixture
def prod(tmp_path: Path, pki: dict[str, Any]) -> Iterator[ProdBroker]:
    d = tmp_path
    files = BrokerFiles(password_file=d / "passwd", acl_file=d / "acl",
                        cafile=pki["dir"] / "ca.crt", certfile=pki["dir"] / "server.crt",
                        keyfile=pki["dir"] / "server.key", crlfile=d / "ca.crl",
                        persistence_dir=d / "data")
    files.persistence_dir.mkdir()
    passwords = {name: f"pw-{name}-{uuid.uuid4().hex}" for name in (*DEVICES, VERIFIER, DASHBOARD, HOME_ASSISTANT)}
    ensure_password_file(files.password_file)
    for name, password in passwords.items():
        set_password(files.password_file, name, password)
    write_acl_file(files.acl_file, AclPolicy(prefix=P, verifiers=(VERIFIER,),
                                             dashboards=(DASHBOARD,), home_assistants=(HOME_ASSISTANT,)))
    ca_mod.write_crl(files.crlfile, ca_mod.make_crl(pki["ca"]))
    ports = {"mqtts": free_port(), "client_cert": free_port(), "wss": free_port()}
    conf = write_prod_config(d / "mosquitto.conf", files, mqtts_port=ports["mqtts"],
                             client_cert_port=ports["client_cert"], wss_port=ports["wss"],
                             tls_bind="127.0.0.1", user=getpass.getuser())
    broker = MosquittoBroker(port=0, config=conf).start()
    ports["plain"] = broker.port
    state = ProdBroker(broker, files, ports, passwords, pki)
    try:
        for port in ports.values():  # the runner waits for the first listener only
            wait_for_port("127.0.0.1", port, WAIT_S, broker._proc)
        yield state
    finally:
        for peer in state.peers:
            peer.close()
        broker.stop()


# ------------------------------------------------------------------ authentication


def test_anonymous_client_is_refused(prod: ProdBroker) -> None:
    assert prod.peer(None).connect() == NOT_AUTHORIZED


def test_wrong_password_and_unknown_user_are_refused(prod: ProdBroker) -> None:
    assert prod.peer("cam-a", "not-the-password").connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    assert prod.peer("cam-zz", "whatever").connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    assert prod.peer("cam-a", "").connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    assert prod.peer("cam-a").connect() == 0


def test_revoked_device_is_disconnected_and_refused_after_reload(prod: ProdBroker) -> None:
    cam_b = prod.connected("cam-b")
    verifier = prod.connected(VERIFIER)
    assert verifier.subscribe(f"{P}/dev/+/up/#") == [1]

    assert remove_user(prod.files.password_file, "cam-b") is True
    prod.broker.reload()
    # Mosquitto re-checks connected clients' credentials on SIGHUP and drops cam-b.
    assert cam_b.disconnected.wait(WAIT_S), "revoked device stayed connected after SIGHUP"
    assert prod.peer("cam-b").connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)

    cam_a = prod.connected("cam-a")  # everyone else is unaffected
    assert cam_a.publish(f"{P}/dev/cam-a/up/open", b"still here") == 0
    verifier.expect(f"{P}/dev/cam-a/up/open", b"still here")


def test_new_device_is_accepted_after_reload(prod: ProdBroker) -> None:
    set_password(prod.files.password_file, "cam-new", "fresh-secret")
    assert prod.peer("cam-new", "fresh-secret").connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    prod.broker.reload()
    peers: list[Peer] = []

    def connects() -> bool:
        peers.append(prod.peer("cam-new", "fresh-secret"))
        return peers[-1].connect() == 0

    assert eventually(connects), "a device added to the password file was refused after SIGHUP"
    assert peers[-1].publish(f"{P}/dev/cam-new/up/open", b"hello") == 0


# ------------------------------------------------------------------ device isolation


def test_device_cannot_read_another_devices_downlink(prod: ProdBroker) -> None:
    cam_a, cam_b = prod.connected("cam-a"), prod.connected("cam-b")
    verifier = prod.connected(VERIFIER)
    # Mosquitto 2.0 grants every SUBSCRIBE (the acl_file does not check them) and filters
    # each delivery against the device's read rights instead.
    assert cam_a.subscribe(f"{P}/dev/cam-b/down") == [1]
    assert cam_a.subscribe(f"{P}/dev/+/down") == [1]
    assert cam_a.subscribe("#") == [1]
    assert cam_a.subscribe(f"$share/steal/{P}/dev/cam-b/down") == [1]
    assert cam_b.subscribe(f"{P}/dev/cam-b/down") == [1]

    assert verifier.publish(f"{P}/dev/cam-b/down", b"verdict for b") == 0
    assert verifier.publish(f"{P}/dev/cam-a/down", b"verdict for a") == 0
    cam_b.expect(f"{P}/dev/cam-b/down", b"verdict for b")  # the ACL lets b read its own

    got = cam_a.expect(f"{P}/dev/cam-a/down", b"verdict for a") + cam_a.quiet()
    assert all(topic == f"{P}/dev/cam-a/down" for topic, _ in got), got
    assert (f"{P}/dev/cam-b/down", b"verdict for b") not in got


def test_device_cannot_publish_on_another_devices_uplink(prod: ProdBroker) -> None:
    cam_a = prod.connected("cam-a")
    verifier = prod.connected(VERIFIER)
    assert verifier.subscribe(f"{P}/dev/+/up/#") == [1]

    for forged in (f"{P}/dev/cam-b/up/open", f"{P}/dev/cam-b/up/v/{VERIFIER}",
                   f"{P}/dev/cam-b/result", f"{P}/dev/cam-b/status"):
        assert cam_a.publish(forged, b"forged") == NOT_AUTHORIZED, forged
    # Nor may it forge verdicts (even to itself) or a verifier's availability.
    assert cam_a.publish(f"{P}/dev/cam-a/down", b"forged") == NOT_AUTHORIZED
    assert cam_a.publish(f"{P}/verifier/{VERIFIER}/status", b"offline") == NOT_AUTHORIZED

    assert cam_a.publish(f"{P}/dev/cam-a/up/v/{VERIFIER}", b"own draft") == 0
    got = verifier.expect(f"{P}/dev/cam-a/up/v/{VERIFIER}", b"own draft") + verifier.quiet()
    assert all(payload != b"forged" for _, payload in got), got


def test_device_writes_its_own_topics_and_reads_verifier_status(prod: ProdBroker) -> None:
    verifier = prod.connected(VERIFIER)
    assert verifier.publish(f"{P}/verifier/{VERIFIER}/status", b"online", retain=True) == 0
    cam_a = prod.connected("cam-a")
    assert cam_a.subscribe(f"{P}/verifier/+/status") == [1]
    cam_a.expect(f"{P}/verifier/{VERIFIER}/status", b"online")  # retained, readable
    for topic in (f"{P}/dev/cam-a/up/open", f"{P}/dev/cam-a/up/v/{VERIFIER}",
                  f"{P}/dev/cam-a/result", f"{P}/dev/cam-a/status"):
        assert cam_a.publish(topic, b"ok") == 0, topic


def test_device_writes_its_own_home_automation_topics_only(prod: ProdBroker) -> None:
    dashboard = prod.connected(DASHBOARD)
    assert dashboard.subscribe("#") == [1]
    cam_a = prod.connected("cam-a")
    assert cam_a.subscribe("homeassistant/status") == [1]
    own = (f"{P}/dev/cam-a/state", f"{P}/dev/cam-a/events", f"{P}/dev/cam-a/tracked_object_update",
           "homeassistant/device/cam-a/config")
    for topic in own:
        assert cam_a.publish(topic, b"{}") == 0, topic
    for forged in (f"{P}/dev/cam-b/state", f"{P}/dev/cam-b/events", f"{P}/dev/cam-b/tracked_object_update",
                   "homeassistant/device/cam-b/config", "homeassistant/sensor/cam-a/config",
                   "homeassistant/status"):
        assert cam_a.publish(forged, b"forged") == NOT_AUTHORIZED, forged
    # The dashboard reads them all; the device hears Home Assistant's birth message.
    got = dashboard.expect("homeassistant/device/cam-a/config") + dashboard.quiet()
    assert {topic for topic, _ in got} == set(own), got
    assert all(payload != b"forged" for _, payload in got)
    assert dashboard.publish(f"{P}/dev/cam-a/state", b"x") == NOT_AUTHORIZED
    assert dashboard.publish("homeassistant/status", b"online") == NOT_AUTHORIZED
    # Home Assistant's account says `online` (the device hears it) and reads the cameras.
    home_assistant = prod.connected(HOME_ASSISTANT)
    assert home_assistant.subscribe("#") == [1]
    assert home_assistant.publish("homeassistant/status", b"online") == 0
    cam_a.expect("homeassistant/status", b"online")
    assert cam_a.publish(f"{P}/dev/cam-a/state", b"{}") == 0
    home_assistant.expect(f"{P}/dev/cam-a/state", b"{}")
    assert home_assistant.publish("homeassistant/device/cam-a/config", b"x") == NOT_AUTHORIZED
    assert home_assistant.publish(f"{P}/dev/cam-a/up/open", b"x") == NOT_AUTHORIZED


def test_last_will_is_subject_to_the_acl(prod: ProdBroker) -> None:
    dashboard = prod.connected(DASHBOARD)
    assert dashboard.subscribe(f"{P}/dev/+/status") == [1]
    # Mosquitto 2.0.11 accepts a CONNECT whose will names another device's topic, and then
    # drops the will when it would be published.
    forger = prod.peer("cam-a")
    forger.client.will_set(f"{P}/dev/cam-b/status", b"offline", qos=1, retain=True)
    assert forger.connect() == 0
    forger.die()
    honest = prod.peer("cam-a")
    honest.client.will_set(f"{P}/dev/cam-a/status", b"offline", qos=1, retain=True)
    assert honest.connect() == 0
    honest.die()
    got = dashboard.expect(f"{P}/dev/cam-a/status", b"offline") + dashboard.quiet()
    assert got == [(f"{P}/dev/cam-a/status", b"offline")], got


# ------------------------------------------------------------------ services


def test_verifier_reads_all_uplinks_and_writes_downlinks(prod: ProdBroker) -> None:
    verifier = prod.connected(VERIFIER)
    # Shared subscription: the read check applies to each message's own topic.
    assert verifier.subscribe(f"$share/verifiers/{P}/dev/+/up/open") == [1]
    assert verifier.subscribe(f"{P}/dev/+/up/v/{VERIFIER}") == [1]
    cam_a, cam_b = prod.connected("cam-a"), prod.connected("cam-b")
    assert cam_a.subscribe(f"{P}/dev/cam-a/down") == [1]

    assert cam_a.publish(f"{P}/dev/cam-a/up/open", b"open a") == 0
    assert cam_b.publish(f"{P}/dev/cam-b/up/open", b"open b") == 0
    assert cam_b.publish(f"{P}/dev/cam-b/up/v/{VERIFIER}", b"draft b") == 0
    received = set()
    for _ in range(3):
        received.add(verifier.inbox.get(timeout=WAIT_S))
    assert received == {(f"{P}/dev/cam-a/up/open", b"open a"),
                        (f"{P}/dev/cam-b/up/open", b"open b"),
                        (f"{P}/dev/cam-b/up/v/{VERIFIER}", b"draft b")}

    assert verifier.publish(f"{P}/dev/cam-a/down", b"verdict") == 0
    cam_a.expect(f"{P}/dev/cam-a/down", b"verdict")

    # A verifier cannot impersonate a device, another verifier, or publish results.
    assert verifier.publish(f"{P}/dev/cam-a/up/open", b"x") == NOT_AUTHORIZED
    assert verifier.publish(f"{P}/verifier/verifier-2/status", b"x") == NOT_AUTHORIZED
    assert verifier.publish(f"{P}/dev/cam-a/result", b"x") == NOT_AUTHORIZED


def test_dashboard_reads_results_and_availability_only(prod: ProdBroker) -> None:
    dashboard = prod.connected(DASHBOARD)
    assert dashboard.subscribe("#") == [1]
    cam_a = prod.connected("cam-a")
    verifier = prod.connected(VERIFIER)

    assert cam_a.publish(f"{P}/dev/cam-a/up/open", b"secret draft") == 0
    assert verifier.publish(f"{P}/dev/cam-a/down", b"secret verdict") == 0
    assert cam_a.publish(f"{P}/dev/cam-a/status", b"online") == 0
    assert verifier.publish(f"{P}/verifier/{VERIFIER}/status", b"online") == 0
    assert cam_a.publish(f"{P}/dev/cam-a/result", b'{"caption": "a cat"}') == 0

    got = dashboard.expect(f"{P}/dev/cam-a/result") + dashboard.quiet()
    topics = {topic for topic, _ in got}
    assert topics == {f"{P}/dev/cam-a/status", f"{P}/verifier/{VERIFIER}/status",
                      f"{P}/dev/cam-a/result"}, topics
    assert dashboard.publish(f"{P}/dev/cam-a/result", b"x") == NOT_AUTHORIZED
    assert dashboard.publish(f"{P}/dev/cam-a/down", b"x") == NOT_AUTHORIZED


# ------------------------------------------------------------------ TLS listeners


def test_tls_listener_with_password(prod: ProdBroker) -> None:
    cam_a = prod.peer("cam-a", listener="mqtts", tls=prod.tls())
    assert cam_a.connect() == 0
    assert cam_a.subscribe(f"{P}/dev/cam-a/down") == [1]
    verifier = prod.connected(VERIFIER)  # plain loopback; same broker, same ACL
    assert verifier.publish(f"{P}/dev/cam-a/down", b"over tls") == 0
    cam_a.expect(f"{P}/dev/cam-a/down", b"over tls")

    wrong = prod.peer("cam-a", "wrong", listener="mqtts", tls=prod.tls())
    assert wrong.connect() in (BAD_CREDENTIALS, NOT_AUTHORIZED)
    # A client that does not trust the project CA refuses the broker's certificate.
    other_ca = ca_mod.create_ca("someone else")
    other = prod.files.persistence_dir / "other-ca.crt"
    ca_mod.write_pem_cert(other, other_ca.cert)
    stranger = prod.peer("cam-a", listener="mqtts", tls={"ca_certs": str(other)})
    with pytest.raises(ssl.SSLError):
        stranger.connect()


def test_client_certificate_listener_and_crl_revocation(prod: ProdBroker) -> None:
    pki_dir = prod.pki["dir"]
    cert_tls = prod.tls(certfile=str(pki_dir / "cam-a.crt"), keyfile=str(pki_dir / "cam-a.key"))
    cam_a = prod.peer(None, listener="client_cert", tls=cert_tls)  # no password: CN = cam-a
    assert cam_a.connect() == 0
    assert cam_a.publish(f"{P}/dev/cam-a/up/open", b"via cert") == 0
    assert cam_a.publish(f"{P}/dev/cam-b/up/open", b"forged") == NOT_AUTHORIZED

    assert refused(prod.peer("cam-a", listener="client_cert", tls=prod.tls()))

    serial = prod.pki["cam_a_cert"].cert.serial_number
    ca_mod.write_crl(prod.files.crlfile, ca_mod.make_crl(prod.pki["ca"], [serial]))
    prod.broker.reload()
    assert eventually(lambda: refused(prod.peer(None, listener="client_cert", tls=cert_tls))), \
        "a certificate on the CRL was still accepted after SIGHUP"


def test_websockets_tls_listener_for_dashboards(prod: ProdBroker) -> None:
    dashboard = prod.peer(DASHBOARD, listener="wss", tls=prod.tls(), transport="websockets")
    assert dashboard.connect() == 0
    assert dashboard.subscribe(f"{P}/dev/+/result") == [1]
    cam_a = prod.connected("cam-a")
    assert cam_a.publish(f"{P}/dev/cam-a/result", b'{"caption": "a dog"}') == 0
    dashboard.expect(f"{P}/dev/cam-a/result", b'{"caption": "a dog"}')
