"""Writing and reading at once on the paho connection aiomqtt keeps: no wait for the event
loop's next turn, and several publishes in as few TCP segments as the socket allows."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl

import aiomqtt

CORK = getattr(socket, "TCP_CORK", None)  # Linux only; elsewhere the writes go out one by one


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
    paho = client._client
    infos = [paho.publish(topic, payload, qos) for topic, payload in messages]
    if all(info.rc != 0 for info in infos):
        return infos
    sock = paho.socket()
    corked = sock if len(messages) > 1 and isinstance(sock, socket.socket) and sock.fileno() >= 0 else None
    if corked is not None and CORK is not None:
        corked.setsockopt(socket.IPPROTO_TCP, CORK, 1)
    try:
        paho.loop_write()
    finally:
        if corked is not None and CORK is not None and corked.fileno() >= 0:
            corked.setsockopt(socket.IPPROTO_TCP, CORK, 0)  # sends what the cork held, now
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
    paho = client._client
    for _ in range(max_reads):
        sock = paho.socket()
        if sock is None:
            return
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending and not select.select([sock], [], [], 0)[0]:
            return
        if paho.loop_read() != 0:
            return
