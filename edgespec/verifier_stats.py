"""Reading verifiers' stats topics from a tool (`edgespec bench`, `edgespec loadtest`).

A verifier publishes its stats JSON every few seconds and once more, marked `final`, when it
stops cleanly (verifier_node.service). `StatsWatcher` keeps the latest message of each
verifier it hears; `stop` stops verifier processes and waits for their final stats.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiomqtt


class StatsWatcher:
    """`async with StatsWatcher(url, topic_filter) as watcher:` subscribes (the filter may
    hold a `+`), then keeps `stats[verifier_id]`, the latest stats of each verifier."""

    def __init__(self, url: str, topic_filter: str):
        self.url, self.topic_filter = url, topic_filter
        self.stats: dict[str, dict] = {}
        self._client: aiomqtt.Client | None = None
        self._collector: asyncio.Task | None = None

    async def __aenter__(self) -> StatsWatcher:
        from transport.client import make_client

        self._client = make_client(self.url, client_id=f"stats-watcher-{os.getpid()}-{id(self):x}")
        await self._client.__aenter__()
        await self._client.subscribe(self.topic_filter, qos=1)
        self._collector = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._collector is not None and self._client is not None
        self._collector.cancel()
        await self._client.__aexit__(*exc)

    async def _collect(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            body = json.loads(message.payload)
            self.stats[body["verifier_id"]] = body

    async def stop(self, procs: list[subprocess.Popen], timeout_s: float = 10.0) -> dict[str, dict]:
        """SIGTERM `procs` and wait up to `timeout_s` until a final stats message of each has
        come; returns `stats` as it is then (a verifier whose final did not come keeps its
        latest, or is missing)."""
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline and not (
                len(self.stats) == len(procs) and all(s.get("final") for s in self.stats.values())):
            await asyncio.sleep(0.05)
        return self.stats
