"""A node's availability on the broker and its way back after a lost connection, for the
device and the verifier alike.

A node's `Status` topic holds its `online` or `offline` payload, retained: the Last Will
(`Status.will`) says offline when the connection dies, `Status.go_online` says online once the
node's subscriptions are made (so nobody sends it anything it would miss), `Status.go_offline`
is the clean goodbye. `reconnect` closes a lost client and connects it again with backoff.
The payloads are the wire contract's (schemas.topics), passed in by the nodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiomqtt

from .retry import Tries


@dataclass(frozen=True)
class Status:
    """A node's retained availability: its status topic and the two payloads it may hold."""

    topic: str
    online: bytes
    offline: bytes

    def will(self, *, delay_s: int = 0) -> aiomqtt.Will:
        """The Last Will: offline, retained; published `delay_s` seconds after the connection
        dies (MQTT v5 Will Delay Interval) unless the node is back by then."""
        properties = None
        if delay_s:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.WILLMESSAGE)
            properties.WillDelayInterval = delay_s
        return aiomqtt.Will(self.topic, self.offline, qos=1, retain=True, properties=properties)

    async def go_online(self, client: aiomqtt.Client, subscriptions: Iterable[str] = ()) -> None:
        """Subscribe `client` to each topic filter (QoS 1), then say online (retained)."""
        for topic_filter in subscriptions:
            await client.subscribe(topic_filter, qos=1)
        await client.publish(self.topic, self.online, qos=1, retain=True)

    async def go_offline(self, client: aiomqtt.Client) -> bool:
        """Say offline (retained); False when the connection is already gone."""
        try:
            await client.publish(self.topic, self.offline, qos=1, retain=True)
        except aiomqtt.MqttError:
            return False
        return True


async def reconnect(client: aiomqtt.Client, connect: Callable[[], Awaitable[None]], tries: Tries) -> None:
    """Close `client` and run `connect` (which enters it again, resubscribes and goes online)
    until it succeeds, waiting `tries`' backoff between tries; raises the last MqttError once
    `tries` is exhausted."""
    while True:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
        try:
            await connect()
            return
        except aiomqtt.MqttError:
            if tries.exhausted():
                raise
            await tries.wait()
