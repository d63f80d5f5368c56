"""A broker restarted in the middle of sessions: devices and the verifier reconnect (MQTT v5
persistent sessions on a broker with persistence), lost replies are recovered by re-opening
with the full context, and every session completes with the target's exact output."""

from __future__ import annotations

import asyncio

import pytest

from broker.runner import MosquittoBroker
from camera_node.session import EdgeRequest, run_edge_session
from conftest import open_links, reference, start_verifier, stop_process

pytestmark = pytest.mark.broker
PREFIX = "restart/v1"
PROMPTS = ["a red circle moves", "hello world", "the camera sees", "two objects"]


def test_broker_restart_mid_session(mosquitto_store, tiny_pair, loaded_pair):
    target, draft = loaded_pair
    store = mosquitto_store
    extra = f"persistence true\npersistence_location {store}/\nautosave_interval 1\n"
    broker = MosquittoBroker(port=0, extra_config=extra).start()
    verifier = start_verifier(broker.url, tiny_pair[0], "restart-verifier", "--prefix", PREFIX)
    try:
        async def scenario():
            links = await open_links(broker.url, "restart-dev", PREFIX, 4)
            jobs = [asyncio.create_task(run_edge_session(
                link, draft, EdgeRequest(target.encode(PROMPTS[i]), None, gamma=1, max_new_tokens=64)))
                for i, link in enumerate(links)]
            # Restart once every device has a session under way.
            while sum(ch.traffic.down_messages >= 2 for link in links for ch in link._channels.values()) < 4:
                await asyncio.sleep(0.01)
            broker.stop()
            broker.start()  # same port, same persistence folder
            outcomes = await asyncio.gather(*jobs)
            for link in links:
                await link.__aexit__(None, None, None)
            return outcomes, [link.reconnects for link in links]

        outcomes, reconnects = asyncio.run(asyncio.wait_for(scenario(), 180))
    finally:
        stop_process(verifier)
        broker.stop()
    assert all(r >= 1 for r in reconnects)
    for prompt, o in zip(PROMPTS, outcomes):
        assert o.result.token_ids == reference(target, target.encode(prompt), 64)
