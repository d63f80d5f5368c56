"""The message bus the nodes' logic can be written against, whatever carries the messages.

`MessageBus` is the port: publish, subscribe with an MQTT topic filter, request/response
futures keyed by a correlation key, stop. `transport.mqtt_bus.MqttBus` implements it over an
aiomqtt client and a broker; `transport.memory.MemoryBus` in one process, for tests.

A handler is called with each matching message as it arrives (on the event loop, without a
task of its own); it must not block. A request's reply is found by the caller's own handler,
which reads the correlation key out of the message and calls `resolve(key, message)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


Handler = Callable[[Message], None]


class BusStopped(ConnectionError):
    """The bus was stopped: nothing more is published, and waiting requests end with this."""


@runtime_checkable
class MessageBus(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None: ...

    async def request(self, topic: str, payload: bytes, *, key: Hashable, timeout_s: float,
                      qos: int = 1) -> Message: ...

    def resolve(self, key: Hashable, message: Message) -> bool: ...

    async def stop(self) -> None: ...


class PendingReplies:
    """Futures of requests waiting for their reply, by correlation key (one per key)."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, asyncio.Future[Message]] = {}
        self.stopped = False

    def expect(self, key: Hashable) -> asyncio.Future[Message]:
        if self.stopped:
            raise BusStopped("the bus is stopped")
        if key in self._waiting:
            raise ValueError(f"a request with key {key!r} is already waiting")
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return future

    def resolve(self, key: Hashable, message: Message) -> bool:
        """Hand `message` to the request waiting on `key`; False when none is (late, unknown)."""
        future = self._waiting.pop(key, None)
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def forget(self, key: Hashable) -> None:
        self._waiting.pop(key, None)

    def stop(self) -> None:
        self.stopped = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(BusStopped("the bus stopped before the reply came"))

    async def request(self, bus: MessageBus, topic: str, payload: bytes, *, key: Hashable,
                      timeout_s: float, qos: int = 1) -> Message:
        """Publish on `bus` and wait for the reply resolved under `key` (asyncio.TimeoutError
        after `timeout_s`)."""
        future = self.expect(key)
        try:
            await bus.publish(topic, payload, qos=qos)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self.forget(key)


class RepliesByKey:
    """The request/resolve half of a `MessageBus`, over the bus's own `PendingReplies`."""

    _replies: PendingReplies

    async def request(self, topic: str, payload: bytes, *, key: Hashable, timeout_s: float,
                      qos: int = 1) -> Message:
        return await self._replies.request(self, topic, payload, key=key, timeout_s=timeout_s,  # type: ignore[arg-type]
                                           qos=qos)

    def resolve(self, key: Hashable, message: Message) -> bool:
        return self._replies.resolve(key, message)
