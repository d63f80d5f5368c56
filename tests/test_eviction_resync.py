"""A verifier whose session table is full evicts the least recently used session; the device
whose session was evicted gets RESYNC, re-opens with its full context (prompt, features,
committed tokens) and its output stays exactly the target's."""

from __future__ import annotations

import asyncio

import pytest

from camera_node.link import EdgeLink, publish_size
from camera_node.session import EdgeRequest, run_edge_session
from conftest import dev_keys, start_verifier, stop_process, reference
from schemas import Topics

pytestmark = pytest.mark.broker
PREFIX = "evict/v1"


class PausingLink(EdgeLink):
    """Holds its `pause_at`-th message until `resume` is set (so the test orders events)."""

    def __init__(self, *args, pause_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.pause_at, self.sent = pause_at, 0
        self.paused, self.resume = asyncio.Event(), asyncio.Event()

    def send(self, topic, payload):
        self.sent += 1
        if self.sent != self.pause_at:
            return super().send(topic, payload)
        self.paused.set()

        async def held():
            await self.resume.wait()
            return await self.publish(topic, payload)

        task = asyncio.ensure_future(held())
        self._sending.add(task)
        task.add_done_callback(self._sent)
        return publish_size(topic, payload)


def test_eviction_then_resync_keeps_output(mosquitto, tiny_pair, loaded_pair):
    target, draft = loaded_pair
    proc = start_verifier(mosquitto.url, tiny_pair[0], "one-slot", "--prefix", PREFIX, "--max-sessions", "1")
    x_ids, y_ids = target.encode("a red circle moves"), target.encode("hello world")
    try:
        async def scenario():
            topics = Topics(PREFIX)
            # x: the open and 3 drafts go out, then x's 5th message waits while y takes its slot
            async with PausingLink(mosquitto.url, "evict-x", topics=topics, keys=dev_keys("evict-x"),
                                   pause_at=5) as x, \
                    EdgeLink(mosquitto.url, "evict-y", topics=topics, keys=dev_keys("evict-y")) as y:
                x_job = asyncio.create_task(run_edge_session(
                    x, draft, EdgeRequest(x_ids, None, gamma=2, max_new_tokens=32, draft_ahead=False)))
                await x.paused.wait()
                y_out = await run_edge_session(y, draft, EdgeRequest(y_ids, None, gamma=2, max_new_tokens=16))
                x.resume.set()
                return await x_job, y_out

        x_out, y_out = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        stop_process(proc)
    assert x_out.resyncs >= 1
    assert x_out.result.token_ids == reference(target, x_ids, 32)
    assert y_out.result.token_ids == reference(target, y_ids, 16)
