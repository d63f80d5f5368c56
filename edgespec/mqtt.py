"""Shared MQTT plumbing for both nodes: broker URLs and MQTT v5 clients with TCP_NODELAY.

DESIGN.md measured 88 ms per QoS-1 round trip on loopback until TCP_NODELAY was set on the
clients' sockets (paho-mqtt and aiomqtt do not set it), 0.47 ms p50 with it.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import aiomqtt

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
CORK = getattr(socket, "TCP_CORK", None)  # Linux only; elsewhere the writes go out one by one
RECONNECT_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # seconds before reconnect attempt 1, 2, ...; then the last
DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 9001, "wss": 8884}


class BrokerUrlError(ValueError):
    """A --broker value that is not mqtt[s]://[user[:password]@]host[:port]."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    websockets: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "BrokerAddress":
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme not in DEFAULT_PORTS:
            raise BrokerUrlError(f"broker URL {url!r}: scheme must be one of {sorted(DEFAULT_PORTS)}")
        if not parsed.hostname:
            raise BrokerUrlError(f"broker URL {url!r} has no host")
        try:
            port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {url!r}: {exc}") from None
        return cls(
            host=parsed.hostname,
            port=port,
            tls=parsed.scheme in ("mqtts", "ssl", "wss"),
            websockets=parsed.scheme in ("ws", "wss"),
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )


@dataclass(frozen=True)
class ClientAuth:
    """Credentials and TLS material from a provisioning bundle (all optional)."""

    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def redact_url(url: str) -> str:
    """`url` with any password in it replaced by `***`: what may be printed or logged."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.password is None:
        return url
    host = parsed.netloc.rsplit("@", 1)[1]
    user = parsed.netloc.rsplit("@", 1)[0].split(":", 1)[0]
    return parsed._replace(netloc=f"{user}:***@{host}").geturl()


def make_client(
    url: str,
    *,
    client_id: str,
    will: aiomqtt.Will | None = None,
    auth: ClientAuth = ClientAuth(),
    keepalive: int = 30,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    max_queued_incoming: int = 10000,
    timeout_s: float = 10.0,
    queue_type: type | None = None,
) -> aiomqtt.Client:
    """An aiomqtt MQTT v5 client with TCP_NODELAY, ready for `async with`."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    addr = BrokerAddress.parse(url)
    tls_context = None
    if addr.tls:
        tls_context = ssl.create_default_context(cafile=auth.ca_file)
        if auth.cert_file:
            tls_context.load_cert_chain(auth.cert_file, auth.key_file)
    properties = None
    if session_expiry_s:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = session_expiry_s
    client = aiomqtt.Client(
        addr.host,
        addr.port,
        identifier=client_id,
        username=auth.username or addr.username,
        password=auth.password or addr.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        keepalive=keepalive,
        clean_start=clean_start,
        properties=properties,
        tls_context=tls_context,
        transport="websockets" if addr.websockets else "tcp",
        socket_options=[NODELAY],
        max_queued_incoming_messages=max_queued_incoming,
        timeout=timeout_s,
        queue_type=queue_type,
    )
    _follow_receive_maximum(client)
    return client


def _follow_receive_maximum(client: aiomqtt.Client) -> None:
    """Keep as many QoS-1 publishes unacknowledged as the broker's CONNACK allows (MQTT v5
    Receive Maximum; 65,535 when absent), not paho's fixed 20.

    paho holds every publish beyond its own limit until a PUBACK frees a place, and a PUBACK
    is read only when the event loop turns: a verifier answering a batch of 40 blocks sent 20
    verdicts and kept the rest back through its next batched forward, so those devices
    missed that batch and the batches stayed small. Going above the broker's figure instead
    is a protocol error that gets the connection closed. Uses the paho client aiomqtt keeps,
    as `publish_now` does."""
    paho = client._client  # noqa: SLF001
    on_connect = paho.on_connect

    def follow(paho_client, userdata, flags, reason_code, properties=None) -> None:
        # Set before paho resends a resumed session's unacknowledged publishes (after this
        # callback). paho's setter refuses any change once connected, for fear of a switch
        # between 0 (no limit) and a limit; this is a limit either way.
        paho_client._max_inflight_messages = getattr(properties, "ReceiveMaximum", None) or 65535  # noqa: SLF001
        on_connect(paho_client, userdata, flags, reason_code, properties)

    paho.on_connect = follow


def publish_now(client: aiomqtt.Client, topic: str, payload: bytes, qos: int = 1):
    """Publish on the client's paho connection and write the packet to the socket at once.

    No asyncio task and no PUBACK future per message, which is most of what `await
    client.publish` costs a verifier answering hundreds of blocks a second; and no wait for
    the event loop's next turn, which would hold a message back for as long as the node's
    next computation takes (a verifier's next batch, a device's next draft forward). paho
    still retransmits it (QoS 1); a write the socket cannot take yet stays queued for the loop.
    Returns paho's MQTTMessageInfo (`is_published()` once the broker acknowledged it). Its `rc`
    is MQTT_ERR_NO_CONN when paho has lost the connection: paho then keeps a QoS-1 message and
    sends it once the client reconnects, so it must not be published again.

    aiomqtt has no public call for this, so it uses the paho client aiomqtt keeps (`_client`,
    present throughout aiomqtt 2.x, which pyproject pins)."""
    return publish_many(client, [(topic, payload)], qos)[0]


def publish_many(client: aiomqtt.Client, messages: list[tuple[str, bytes]], qos: int = 1) -> list:
    """`publish_now` for several messages: all are queued, then written in one go, as few TCP
    segments as the socket allows (TCP_CORK on Linux while paho writes them one packet a
    send, as with TCP_NODELAY every send would go out, and wake the broker, on its own).
    A verifier answers a batch of 20-60 blocks at once; one segment for all of them costs it
    and the broker a fraction of what 20-60 do. Returns paho's MQTTMessageInfo per message."""
    paho = client._client  # noqa: SLF001
    infos = [paho.publish(topic, payload, qos) for topic, payload in messages]
    if all(info.rc != 0 for info in infos):
        return infos
    sock = paho.socket()
    cork = len(messages) > 1 and CORK is not None and isinstance(sock, socket.socket)
    if cork:
        sock.setsockopt(socket.IPPROTO_TCP, CORK, 1)
    try:
        paho.loop_write()
    finally:
        if cork and sock.fileno() >= 0:
            sock.setsockopt(socket.IPPROTO_TCP, CORK, 0)  # sends what the cork held, now
    if sock is not None and not paho.want_write():
        # aiomqtt adds its write callback through call_soon_threadsafe, so it would arrive
        # after the write above emptied paho's queue, and then run on every loop turn (paho
        # thinks no callback is set and never removes it). Callbacks run in order: drop it
        # right after it is added, unless something was queued meanwhile.
        loop = asyncio.get_running_loop()

        def drop_write_callback() -> None:
            if not paho.want_write() and sock.fileno() >= 0:
                loop.remove_writer(sock.fileno())

        loop.call_soon(drop_write_callback)
    return infos


def read_waiting(client: aiomqtt.Client, max_reads: int = 256) -> None:
    """Read now, without waiting, every packet already in the client's socket (incoming
    messages go where the client routes them, as on any read).

    aiomqtt reads a socket only when the event loop gets round to its read callback, and paho
    reads a bounded number of packets there; a verifier that just spent 15 ms in a batched
    forward has many blocks waiting in the kernel, and this puts them all in the next batch
    instead of a window's worth. Uses the paho client aiomqtt keeps, as `publish_now` does.
    """
    paho = client._client  # noqa: SLF001
    for _ in range(max_reads):
        sock = paho.socket()
        if sock is None:
            return
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending and not select.select([sock], [], [], 0)[0]:
            return
        if paho.loop_read() != 0:
            return


async def get_within(queue: asyncio.Queue, seconds: float):
    """`queue.get()` or asyncio.TimeoutError after `seconds`. On Python 3.11+ this waits in
    the caller's task; `asyncio.wait_for` there wraps the get in a task of its own, which costs
    a loop turn (about 10 us) before the caller sees a message."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await queue.get()
    return await asyncio.wait_for(queue.get(), seconds)


def reconnect_delay(attempt: int, backoff: tuple[float, ...] = RECONNECT_BACKOFF_S) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based)."""
    return backoff[min(attempt, len(backoff) - 1)]


async def until_disconnected(client: aiomqtt.Client) -> None:
    """Return never while the connection lasts: with a `routing_queue`, `client.messages`
    yields nothing but raises `MqttError` when the connection is lost, which this raises."""
    async for _ in client.messages:
        pass


def routing_queue(route) -> type:
    """An aiomqtt `queue_type` that hands each incoming message to `route(message)` at once,
    in the socket's read callback, instead of queueing it for `client.messages`: a reply
    reaches its waiter in one event-loop turn instead of four or five. `client.messages` then
    yields nothing, but still raises `MqttError` when the connection is lost."""

    class RoutingQueue(asyncio.Queue):
        def put_nowait(self, item) -> None:
            route(item)

    return RoutingQueue


class BusyPoll:
    """Keeps an event loop polling its sockets (zero-timeout selects, yielding the CPU between
    them) for `seconds` after each `kick()`, instead of sleeping in the kernel.

    On a virtualised CPU a process that slept even 1 ms can run its next model forward about
    twice as slow as one that kept running (`edgespec bench` measures it: "hand-off"); a
    verifier kicks this after each reply, since the device's next block follows within a few
    milliseconds. It costs a core while hot; 0 seconds turns it off.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._until = 0.0
        self._kicked = asyncio.Event()

    def kick(self) -> None:
        if self.seconds > 0:
            self._until = asyncio.get_running_loop().time() + self.seconds
            self._kicked.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() < self._until:
                os.sched_yield()
                await asyncio.sleep(0)
            else:
                self._kicked.clear()
                await self._kicked.wait()
