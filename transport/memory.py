"""`MessageBus` in one process: buses on one `MemoryHub` hear each other as MQTT clients on one
broker would, with topic-filter matching (`+`, `#`) and retained messages, and no sockets.

Delivery is in order and asynchronous, as over a broker: `publish` schedules each matching
handler on the event loop and yields once, so when it returns the handlers have run. Every
subscription of a bus whose filter matches gets the message (QoS is accepted and ignored:
nothing is lost in memory). A retained message is kept per topic (an empty one clears it) and
delivered to each later subscription that matches it, with `retain=True`.
"""

from __future__ import annotations

import asyncio

from .port import BusStopped, Handler, Message, PendingReplies, RepliesByKey
from .topics import check_filter, check_topic, topic_matches


class MemoryHub:
    """The broker of in-memory buses: who subscribed to what, and the retained messages."""

    def __init__(self) -> None:
        self.buses: list[MemoryBus] = []
        self.retained: dict[str, bytes] = {}

    def bus(self) -> MemoryBus:
        """A new bus (a client) on this hub."""
        return MemoryBus(self)

    def route(self, message: Message) -> None:
        if message.retain:
            if message.payload:
                self.retained[message.topic] = message.payload
            else:
                self.retained.pop(message.topic, None)
        loop = asyncio.get_running_loop()
        delivered = Message(message.topic, message.payload)  # retain is set only for late subscribers
        for bus in list(self.buses):
            for topic_filter, handler in list(bus.subscriptions):
                if topic_matches(topic_filter, message.topic):
                    loop.call_soon(bus.deliver, handler, delivered)


class MemoryBus(RepliesByKey):
    """One client of a `MemoryHub` (a hub of its own when none is given)."""

    def __init__(self, hub: MemoryHub | None = None) -> None:
        self.hub = hub if hub is not None else MemoryHub()
        self.subscriptions: list[tuple[str, Handler]] = []
        self._replies = PendingReplies()
        self.hub.buses.append(self)

    @property
    def stopped(self) -> bool:
        return self._replies.stopped

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self.stopped:
            raise BusStopped("the bus is stopped")
        self.hub.route(Message(check_topic(topic), bytes(payload), retain))
        await asyncio.sleep(0)

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        if self.stopped:
            raise BusStopped("the bus is stopped")
        self.subscriptions.append((check_filter(topic_filter), handler))
        loop = asyncio.get_running_loop()
        for topic, payload in list(self.hub.retained.items()):
            if topic_matches(topic_filter, topic):
                loop.call_soon(self.deliver, handler, Message(topic, payload, retain=True))
        await asyncio.sleep(0)

    async def unsubscribe(self, topic_filter: str) -> None:
        self.subscriptions = [(f, h) for f, h in self.subscriptions if f != topic_filter]

    def deliver(self, handler: Handler, message: Message) -> None:
        if not self.stopped:
            handler(message)

    async def stop(self) -> None:
        """Leave the hub: no more deliveries to this bus; waiting requests get `BusStopped`."""
        self._replies.stop()
        self.subscriptions = []
        if self in self.hub.buses:
            self.hub.buses.remove(self)
