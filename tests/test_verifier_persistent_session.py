"""The verifier's MQTT v5 persistent session: a draft published while the verifier is
reconnecting (here: across a broker restart, with the broker's persistence on) is queued by
the broker and answered once the verifier is back, without a re-open."""

from __future__ import annotations

import asyncio
import os

import pytest

from verifier_node import service
from broker.runner import MosquittoBroker
from transport.client import make_client
from schemas import DraftMsg, Opened, SessionOpen, Topics, VerdictMsg, decode, encode
from verifier_node.core import VerifierConfig, VerifierCore

pytestmark = pytest.mark.broker


async def _next(client, kind):
    async for message in client.messages:
        msg = decode(message.payload)
        if isinstance(msg, kind):
            return msg


def test_draft_sent_while_the_verifier_reconnects_is_answered(mosquitto_store, loaded_pair, monkeypatch):
    target, _ = loaded_pair
    store = mosquitto_store
    broker = MosquittoBroker(port=0, extra_config=f"persistence true\npersistence_location {store}/\n"
                                                   "autosave_interval 1\n").start()
    monkeypatch.setattr(service, "RECONNECT_BACKOFF_S", (2.0,))  # a window in which the verifier is away
    topics = Topics("persist/v1")
    core = VerifierCore(target, VerifierConfig(verifier_id="persist-v"), topics)
    sid = os.urandom(16)
    ids = target.encode("a red circle moves")

    def device():
        return make_client(broker.url, client_id="persist-dev", clean_start=False, session_expiry_s=300)

    async def scenario():
        stop = asyncio.Event()
        ready = asyncio.Event()
        verifier = asyncio.create_task(service.serve_reconnecting(core, broker.url, stop=stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 30)
        async with device() as dev:
            await dev.subscribe(topics.down("persist-dev"), qos=1)
            await dev.publish(topics.open("persist-dev"), encode(SessionOpen(
                sid, ids, max_new_tokens=16, tokenizer_fp=target.fingerprint)), qos=1)
            opened = await asyncio.wait_for(_next(dev, Opened), 10)
        broker.stop()
        broker.start()  # the verifier now waits 2 s before it reconnects
        async with device() as dev:  # the device's own session kept its subscription
            await dev.publish(topics.session_up("persist-dev", "persist-v"),
                              encode(DraftMsg(sid, 0, opened.committed_len, [5, 6], None)), qos=1)
            verdict = await asyncio.wait_for(_next(dev, VerdictMsg), 15)
        stop.set()
        await asyncio.wait_for(verifier, 15)
        return verdict

    try:
        verdict = asyncio.run(scenario())
    finally:
        broker.stop()
    assert verdict.seq == 0 and verdict.session_id == sid
    assert core.stats["resyncs"] == 0 and core.stats["verified_blocks"] == 1
