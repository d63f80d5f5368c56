"""The device's fast path: replies routed in the socket callback, publishes written at once
without waiting for PUBACK, drafting ahead between the event loop's turns, an OPEN that carries
the first block, and an OPEN re-sent when the verifier it may have gone to announces that it is
offline."""

from __future__ import annotations

import asyncio
import contextlib
import queue as queues

import aiomqtt
import pytest

from camera_node.link import EdgeLink
from camera_node.session import EdgeRequest, run_edge_session
from conftest import dev_keys, start_verifier, stop_process, reference
from schemas import Topics
from schemas.topics import OFFLINE
from speculative.loop import EdgeGeneration, StopRule
from transport.client import make_client, routing_queue
from transport.publish import publish_now, read_waiting


@contextlib.contextmanager
def paho_subscriber(url: str, topic: str, client_id: str):
    """A plain paho client on its own thread, subscribed to `topic` (QoS 1); yields the queue
    its messages land in as (topic, payload), once the subscription is in place."""
    import time

    import paho.mqtt.client as paho

    from transport.urls import BrokerAddress

    got: queues.Queue = queues.Queue()
    addr = BrokerAddress.parse(url)
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    sub.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    sub.connect(addr.host, addr.port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    try:
        time.sleep(0.3)  # the subscription is in place
        yield got
    finally:
        sub.loop_stop()
        sub.disconnect()


async def until_acked(infos, tries: int, step_s: float = 0.02) -> None:
    """Let the loop turn (PUBACKs are read then) until every publish is acknowledged, or give up."""
    for _ in range(tries):
        if all(info.is_published() for info in infos):
            return
        await asyncio.sleep(step_s)


def test_routing_queue_hands_items_over_at_once():
    seen = []
    queue = routing_queue(seen.append)(maxsize=1)
    queue.put_nowait("a")
    queue.put_nowait("b")  # never full: nothing is queued
    assert seen == ["a", "b"] and queue.empty()


@pytest.mark.broker
def test_read_waiting_takes_everything_already_in_the_socket(mosquitto):
    """Messages that reached the socket while the loop was busy are all read by one call,
    without the event loop running the read callback."""

    import time

    import paho.mqtt.client as paho

    from transport.urls import BrokerAddress

    def publish_blocking(n: int) -> None:  # another client, on its own thread
        addr = BrokerAddress.parse(mosquitto.url)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rw-pub", protocol=paho.MQTTv5)
        pub.connect(addr.host, addr.port)
        pub.loop_start()
        try:
            for info in [pub.publish("rw/t", str(i).encode(), qos=1) for i in range(n)]:
                info.wait_for_publish(5)
        finally:
            pub.loop_stop()
            pub.disconnect()

    async def main():
        seen = []
        async with make_client(mosquitto.url, client_id="rw-sub", queue_type=routing_queue(seen.append)) as sub:
            await sub.subscribe("rw/t", qos=1)
            publish_blocking(40)  # this loop is "busy" meanwhile: the copies wait in the kernel
            time.sleep(0.2)  # noqa: ASYNC251 (the loop stays busy on purpose)
            before = len(seen)
            read_waiting(sub)
            return before, [m.payload for m in seen]

    before, payloads = asyncio.run(main())
    assert before < 40  # the event loop did not get to them all by itself
    assert payloads == [str(i).encode() for i in range(40)]


@pytest.mark.broker
def test_publish_now_is_on_the_wire_before_the_loop_turns_and_leaves_no_write_callback(mosquitto):
    """A node that computes right after publishing (the loop does not turn meanwhile) has its
    message delivered anyway; and once the loop turns, no write callback is left behind to run
    on every turn."""
    with paho_subscriber(mosquitto.url, "pn/t", "pn-sub") as got:

        async def main():
            async with make_client(mosquitto.url, client_id="pn-pub") as pub:
                await asyncio.sleep(0.05)
                sock = pub._client.socket()
                info = publish_now(pub, "pn/t", b"now")
                arrived = got.get(timeout=2)[1]  # blocks this loop: only the immediate write can deliver it
                for _ in range(3):
                    await asyncio.sleep(0)
                loop = asyncio.get_running_loop()
                writers = loop._selector.get_map().get(sock.fileno())
                still_writing = writers is not None and writers.events & 2  # selectors.EVENT_WRITE
                await asyncio.sleep(0.2)
                return arrived, info.is_published(), still_writing

        arrived, acked, still_writing = asyncio.run(asyncio.wait_for(main(), 10))
    assert arrived == b"now" and acked and not still_writing


@pytest.mark.broker
def test_publish_many_writes_a_batch_at_once_in_order_and_uncorks_the_socket(mosquitto):
    """A verifier's replies to one batch: all on the wire before the loop turns, in the order
    given, each acknowledged, and the socket no longer corked (a cork left on would hold the
    next reply back for 200 ms)."""
    import socket

    from transport.publish import CORK, publish_many

    sent = [(f"pm/{i % 3}", f"reply {i}".encode() * (1 + i % 7)) for i in range(60)]
    with paho_subscriber(mosquitto.url, "pm/#", "pm-sub") as got:

        async def main():
            async with make_client(mosquitto.url, client_id="pm-pub") as pub:
                await asyncio.sleep(0.05)
                sock = pub._client.socket()
                infos = publish_many(pub, sent)
                arrived = [got.get(timeout=2) for _ in sent]  # blocks this loop: only the write delivers them
                corked = sock.getsockopt(socket.IPPROTO_TCP, CORK) if CORK is not None else 0
                await until_acked(infos, 50)
                return arrived, [info.is_published() for info in infos], corked

        arrived, acked, corked = asyncio.run(asyncio.wait_for(main(), 10))
    assert arrived == sent and all(acked) and corked == 0


@pytest.mark.broker
def test_a_client_keeps_no_more_publishes_in_flight_than_the_broker_allows():
    """A broker with a smaller Receive Maximum than the project's 64: the client takes the
    broker's figure (exceeding it is a protocol error that gets the connection closed), and a
    batch larger than it still arrives whole once the PUBACKs are read."""
    from broker.runner import MosquittoBroker
    from transport.publish import publish_many

    with MosquittoBroker(port=0, extra_config="max_inflight_messages 5") as broker, \
            paho_subscriber(broker.url, "rm/t", "rm-sub") as got:

        async def main():
            async with make_client(broker.url, client_id="rm-pub") as pub:
                limit = pub._client._max_inflight_messages
                infos = publish_many(pub, [("rm/t", str(i).encode()) for i in range(30)])
                await until_acked(infos, 100)
                return limit, [got.get(timeout=2)[1] for _ in range(30)]

        limit, payloads = asyncio.run(asyncio.wait_for(main(), 10))
    assert limit == 5
    assert payloads == [str(i).encode() for i in range(30)]


@pytest.mark.broker
def test_a_failed_publish_on_a_live_connection_is_retried_and_leaves_the_link_up(mosquitto):
    """An MqttError from one publish (a PUBACK that timed out) while the connection stays up:
    the publish is retried, and the link still counts as connected for the next one."""

    async def main():
        async with EdgeLink(mosquitto.url, "retry-cam", topics=Topics("retry/v1"), keys=dev_keys("retry-cam"),
                            timeout_s=5, reconnect_s=2) as link:
            real = link._client.publish
            calls = []

            async def flaky(*args, **kwargs):
                calls.append(args[0])
                if len(calls) == 1:
                    raise aiomqtt.MqttError("Operation timed out")
                return await real(*args, **kwargs)

            link._client.publish = flaky
            await link.publish("retry/v1/x", b"a")
            assert link._connected.is_set()
            await link.publish("retry/v1/x", b"b")  # no wait for a reconnect that never comes
            return list(calls)  # (leaving publishes the OFFLINE status too)

    assert asyncio.run(asyncio.wait_for(main(), 10)) == ["retry/v1/x"] * 3


class _Drafter:
    def __init__(self):
        self.forwards = 0

    def propose(self, gamma):
        from speculative.draft import DraftBlock
        return DraftBlock([1] * gamma, None)

    def commit(self, n, token):
        pass


def test_drafting_ahead_is_bet_on_only_after_a_fully_accepted_round():
    edge = EdgeGeneration(_Drafter(), [5], 4, StopRule(100))
    assert edge.ahead_worthwhile  # no evidence yet: bet
    edge.next_block()
    edge.apply(4, 7)
    assert edge.ahead_worthwhile
    edge.next_block()
    edge.apply(1, 7)
    assert not edge.ahead_worthwhile




@pytest.mark.broker
@pytest.mark.parametrize("ahead,block_in_open", [(True, True), (False, True), (True, False)])
def test_greedy_through_broker_equals_target_with_and_without_drafting_ahead(mosquitto, tiny_pair, loaded_pair,
                                                                            ahead, block_in_open):
    target, draft = loaded_pair
    prefix = f"fast-{int(ahead)}{int(block_in_open)}/v1"
    proc = start_verifier(mosquitto.url, tiny_pair[0], f"fast-{int(ahead)}", "--prefix", prefix)
    try:
        async def scenario():
            async with EdgeLink(mosquitto.url, "fast-dev", topics=Topics(prefix), keys=dev_keys("fast-dev")) as link:
                outs = []
                for text in ("a red circle moves", "the camera sees", "hello world"):
                    ids = target.encode(text)
                    outs.append((ids, await run_edge_session(link, draft, EdgeRequest(
                        ids, None, gamma=3, max_new_tokens=40, draft_ahead=ahead, block_in_open=block_in_open))))
                return outs

        for ids, outcome in asyncio.run(asyncio.wait_for(scenario(), 120)):
            r = outcome.result
            assert r.token_ids == reference(target, ids, 40)
            # Up: the OPEN (carrying the first block, or not) and the other blocks' DRAFTs; no
            # CLOSE, since the last VERDICT said done. Down: a VERDICT per block and the OPENED,
            # which holds the first block's VERDICT when the OPEN carried it.
            assert outcome.traffic.up_messages == r.rounds + (0 if block_in_open else 1)
            assert outcome.traffic.down_messages == r.rounds + (0 if block_in_open else 1)
            assert r.target_forwards == r.rounds + (0 if block_in_open else 1)
    finally:
        stop_process(proc)


@pytest.mark.broker
def test_open_is_sent_again_when_a_verifier_goes_offline_during_it(mosquitto, tiny_pair, loaded_pair):
    """No verifier is up when the OPEN goes out (the broker drops it, as it would with a
    verifier that died holding it); a verifier's Last Will then wakes the device, which sends
    the OPEN again and finishes on the verifier that is up by then."""
    target, draft = loaded_pair
    prefix = "reopen/v1"
    topics = Topics(prefix)
    ids = target.encode("a red circle moves")

    async def scenario():
        async with EdgeLink(mosquitto.url, "reopen-dev", topics=topics, keys=dev_keys("reopen-dev"),
                            timeout_s=60) as link:
            job = asyncio.create_task(run_edge_session(link, draft, EdgeRequest(ids, None, gamma=2, max_new_tokens=24)))
            while not any(ch.open_pending for ch in link._channels.values()):
                await asyncio.sleep(0.01)
            proc = await asyncio.to_thread(start_verifier, mosquitto.url, tiny_pair[0], "reopen-live",
                                           "--prefix", prefix)
            try:
                async with aiomqtt.Client("127.0.0.1", mosquitto.port) as announcer:
                    await announcer.publish(topics.verifier_status("reopen-ghost"), OFFLINE, qos=1)
                return await asyncio.wait_for(job, 60)
            finally:
                stop_process(proc)

    outcome = asyncio.run(scenario())
    assert outcome.resyncs == 1 and outcome.verifier_id == "reopen-live"
    assert outcome.result.token_ids == reference(target, ids, 24)


def test_a_failing_draft_forward_cancels_the_wait_for_its_verdict():
    from camera_node.session import exchange_drafting_ahead
    from schemas import DraftMsg

    class Channel:
        async def exchange(self, draft):
            await asyncio.sleep(3600)  # no verdict comes

        def has_downlink(self):
            return False

    class Edge:
        def draft_ahead_step(self):
            raise RuntimeError("draft forward failed")

    async def main():
        with pytest.raises(RuntimeError, match="draft forward failed"):
            await exchange_drafting_ahead(Channel(), DraftMsg(b"s" * 16, 0, 1, [1], None), Edge())
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []  # the wait for the verdict did not outlive the failure


def test_a_publish_made_while_paho_saw_the_connection_down_is_not_waited_for():
    """paho keeps such a message and sends it after the reconnect, but its info raises on
    `is_published()`; the link must neither crash on it nor wait on it forever."""
    import paho.mqtt.client as paho

    from camera_node.link import _settled

    down = paho.MQTTMessageInfo(1)
    down.rc = paho.MQTT_ERR_NO_CONN
    with pytest.raises(RuntimeError):
        down.is_published()
    assert _settled(down)
    pending = paho.MQTTMessageInfo(2)
    assert not _settled(pending)
    pending._set_as_published()
    assert _settled(pending)
