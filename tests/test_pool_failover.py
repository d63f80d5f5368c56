"""A verifier pool behind one broker: opens spread by a shared subscription, and a verifier
killed in the middle of 20 sessions costs the devices no token."""

from __future__ import annotations

import asyncio
import signal

import pytest

from camera_node.session import EdgeRequest, run_edge_session
from conftest import open_links, reference, start_verifier, stop_process

pytestmark = pytest.mark.broker
PREFIX = "pool/v1"
PROMPTS = ["a red circle moves", "hello world", "the camera sees", "two objects"]




def test_killed_verifier_loses_no_token(mosquitto, tiny_pair, loaded_pair):
    target, draft = loaded_pair
    a = start_verifier(mosquitto.url, tiny_pair[0], "pool-a", "--prefix", PREFIX)
    b = start_verifier(mosquitto.url, tiny_pair[0], "pool-b", "--prefix", PREFIX)
    n_tokens = 48
    try:
        async def scenario():
            links = await open_links(mosquitto.url, "pool-dev", PREFIX, 20)
            try:
                jobs = [asyncio.create_task(run_edge_session(
                    link, draft, EdgeRequest(target.encode(PROMPTS[i % 4]), None, gamma=2, max_new_tokens=n_tokens)))
                    for i, link in enumerate(links)]
                # Wait until verifier a holds several sessions, then kill it without warning.
                while sum(ch.verifier_id == "pool-a" for link in links for ch in link._channels.values()) < 3:
                    await asyncio.sleep(0.01)
                a.send_signal(signal.SIGKILL)
                return await asyncio.gather(*jobs)
            finally:
                for link in links:
                    await link.__aexit__(None, None, None)

        outcomes = asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        stop_process(a)
        stop_process(b)
    assert len(outcomes) == 20
    moved = [o for o in outcomes if o.resyncs > 0]
    assert moved, "no session was moved off the killed verifier"
    for i, o in enumerate(outcomes):
        assert o.result.token_ids == reference(target, target.encode(PROMPTS[i % 4]), n_tokens), i
    assert {o.verifier_id for o in moved} == {"pool-b"}
