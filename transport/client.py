"""MQTT v5 clients for both nodes: TCP_NODELAY, the broker's in-flight limit, routed delivery.

A QoS-1 round trip on loopback takes 88 ms without TCP_NODELAY on the clients' sockets
(paho-mqtt and aiomqtt do not set it), 0.47 ms p50 with it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast

import aiomqtt
from paho.mqtt.client import CallbackOnConnect_v2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .urls import BrokerAddress, ClientAuth

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
    paho = client._client
    # aiomqtt's own handler, with paho's version-2 signature
    on_connect = cast(CallbackOnConnect_v2, paho.on_connect)

    def follow(paho_client, userdata, flags, reason_code, properties=None) -> None:
        # Set before paho resends a resumed session's unacknowledged publishes (after this
        # callback). paho's setter refuses any change once connected, for fear of a switch
        # between 0 (no limit) and a limit; this is a limit either way.
        paho_client._max_inflight_messages = getattr(properties, "ReceiveMaximum", None) or 65535
        on_connect(paho_client, userdata, flags, reason_code, properties)

    paho.on_connect = follow


async def until_disconnected(client: aiomqtt.Client) -> None:
    """Return never while the connection lasts: with a `routing_queue`, `client.messages`
    yields nothing but raises `MqttError` when the connection is lost, which this raises."""
    async for _ in client.messages:
        pass


def settle(client: aiomqtt.Client) -> None:
    """Take the error a closed client's connection ended with, if any, so asyncio does not
    report it as "Future exception was never retrieved" when nobody waited for the end (a
    node that gave up and left). Uses the future aiomqtt keeps (`_disconnected`, aiomqtt 2.x)."""
    ended = getattr(client, "_disconnected", None)
    if isinstance(ended, asyncio.Future) and ended.done() and not ended.cancelled():
        ended.exception()


def routing_queue(route) -> type:
    """An aiomqtt `queue_type` that hands each incoming message to `route(message)` at once,
    in the socket's read callback, instead of queueing it for `client.messages`: a reply
    reaches its waiter in one event-loop turn instead of four or five. `client.messages` then
    yields nothing, but still raises `MqttError` when the connection is lost."""

    class RoutingQueue(asyncio.Queue):
        def put_nowait(self, item) -> None:
            route(item)

    return RoutingQueue
