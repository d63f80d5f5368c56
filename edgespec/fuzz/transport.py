"""How attackers reach the verifier: an MQTT client, or a verifier core in this process."""

from __future__ import annotations

import asyncio
from typing import Any
from collections.abc import Callable

from .contract import FuzzContext


class Transport:
    async def publish(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError


class MqttTransport(Transport):
    """One aiomqtt client; its downlink messages go to `on_message`."""

    def __init__(self, url: str, client_id: str, auth: Any, subscribe: list[str], on_message: Callable):
        from transport.client import make_client

        self.client = make_client(url, client_id=client_id, auth=auth)
        self.subscribe_to = subscribe
        self.on_message = on_message
        self.errors: list[str] = []
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> MqttTransport:
        await self.client.__aenter__()
        for topic in self.subscribe_to:
            await self.client.subscribe(topic, qos=1)
        self._reader = asyncio.create_task(self._read(), name="fuzz-reader")
        return self

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                self.on_message(str(message.topic), payload)
            except Exception as exc:  # one bad message must not stop this reader (cf. EdgeLink._read)
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.client.__aexit__(None, None, None)


class LocalBus(Transport):
    """A verifier core in this process as the only subscriber: for tests without a broker."""

    def __init__(self, core: Any, ctx: FuzzContext):
        self.core = core
        self.ctx = ctx
        self.listeners: dict[str, Callable[[bytes], None]] = {}

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.ctx.verifier_receives(topic):
            for down, reply in self.core.handle(topic, payload):
                if down in self.listeners:
                    asyncio.get_running_loop().call_soon(self.listeners[down], reply)
        await asyncio.sleep(0)
