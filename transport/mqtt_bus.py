"""`MessageBus` over a broker: an aiomqtt client (`make_client`) whose incoming messages go
straight to the handlers of the matching subscriptions (`routing_queue`), in the socket's read
callback."""

from __future__ import annotations


import aiomqtt

from .client import make_client, routing_queue
from .port import BusStopped, Handler, Message, PendingReplies, RepliesByKey
from .topics import check_filter, topic_matches


class MqttBus(RepliesByKey):
    """Use as `async with MqttBus(url, client_id=...) as bus:`; keyword arguments beyond the
    URL go to `make_client` (auth, will, keepalive, session settings)."""

    def __init__(self, url: str, *, client_id: str, **client_kwargs) -> None:
        self.client: aiomqtt.Client = make_client(url, client_id=client_id,
                                                  queue_type=routing_queue(self._route), **client_kwargs)
        self.subscriptions: list[tuple[str, Handler]] = []
        self._replies = PendingReplies()
        self._connected = False

    async def __aenter__(self) -> MqttBus:
        await self.client.__aenter__()
        self._connected = True
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    def _route(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else bytes(message.payload or b"")
        delivered = Message(topic, payload, bool(message.retain))
        for topic_filter, handler in list(self.subscriptions):
            if topic_matches(topic_filter, topic):
                handler(delivered)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self._replies.stopped:
            raise BusStopped("the bus is stopped")
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        self.subscriptions.append((check_filter(topic_filter), handler))
        await self.client.subscribe(topic_filter, qos=qos)

    async def stop(self) -> None:
        """Waiting requests get `BusStopped`; the connection is closed."""
        self._replies.stop()
        self.subscriptions = []
        if self._connected:
            self._connected = False
            await self.client.__aexit__(None, None, None)
