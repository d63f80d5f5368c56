"""The message-bus port: topic matching, the in-memory bus, and the same behaviour from the
MQTT bus against a real Mosquitto."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from transport.memory import MemoryBus, MemoryHub
from transport.mqtt_bus import MqttBus
from transport.port import BusStopped, Message, MessageBus
from transport.topics import TopicError, check_filter, check_topic, topic_matches


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b", False),
    ("a/b", "a/b/c", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),  # an empty level is a level
    ("a/+/c", "a/b/d", False),
    ("a/+", "a/b/c", False),
    ("+/+", "a/b", True),
    ("+", "a/b", False),
    ("a/#", "a", True),  # '#' includes the parent level
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("#", "a/b", True),
    ("a/+/#", "a/b", True),
    ("a/+/#", "a", False),
    ("#", "$SYS/broker/uptime", False),  # wildcards at the start skip $ topics
    ("+/broker/uptime", "$SYS/broker/uptime", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("edgespec/v1/dev/+/result", "edgespec/v1/dev/cam-1/result", True),
])
def test_topic_matches(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "a/+b", "#/a", "a\0b"])
def test_bad_filters_are_refused(bad):
    with pytest.raises(TopicError):
        check_filter(bad)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "a\0"])
def test_bad_topics_are_refused(bad):
    with pytest.raises(TopicError):
        check_topic(bad)


LEVEL = st.sampled_from(["a", "b", "", "$x"])
FILTER_LEVEL = st.sampled_from(["a", "b", "", "+", "$x"])


@given(st.lists(FILTER_LEVEL, min_size=1, max_size=4), st.booleans(),
       st.lists(LEVEL, min_size=1, max_size=5))
def test_topic_matches_agrees_with_paho(levels, hash_tail, topic_levels):
    topic_filter = "/".join(levels + ["#"] if hash_tail else levels)
    topic = "/".join(topic_levels)
    assert topic_matches(topic_filter, topic) == topic_matches_sub(topic_filter, topic)


def test_memory_bus_is_a_message_bus():
    assert isinstance(MemoryBus(), MessageBus)


def test_memory_bus_delivers_by_filter_in_order():
    async def main():
        hub = MemoryHub()
        a, b = hub.bus(), hub.bus()
        seen_a: list[Message] = []
        seen_b: list[Message] = []
        await a.subscribe("dev/+/up", seen_a.append)
        await b.subscribe("dev/#", seen_b.append)
        for i in range(3):
            await a.publish(f"dev/cam-{i}/up", bytes([i]))
        await b.publish("dev/cam-1/down", b"x")
        await b.publish("other", b"y")
        return seen_a, seen_b

    seen_a, seen_b = asyncio.run(main())
    assert [(m.topic, m.payload) for m in seen_a] == [(f"dev/cam-{i}/up", bytes([i])) for i in range(3)]
    assert [m.topic for m in seen_b] == ["dev/cam-0/up", "dev/cam-1/up", "dev/cam-2/up", "dev/cam-1/down"]
    assert not any(m.retain for m in seen_a + seen_b)


def test_memory_bus_retained_messages_reach_late_subscribers():
    async def main():
        bus = MemoryBus()
        await bus.publish("status/v1", b"online", retain=True)
        await bus.publish("status/v2", b"online", retain=True)
        await bus.publish("status/v2", b"", retain=True)  # an empty retained message clears it
        late: list[Message] = []
        await bus.subscribe("status/+", late.append)
        await bus.publish("status/v1", b"offline")
        return late

    late = asyncio.run(main())
    assert late == [Message("status/v1", b"online", retain=True), Message("status/v1", b"offline")]


def test_memory_bus_request_response_by_key():
    async def main():
        hub = MemoryHub()
        client, server = hub.bus(), hub.bus()

        def answer(message: Message) -> None:  # the server echoes the request id on the reply topic
            asyncio.get_running_loop().create_task(server.publish("reply", message.payload + b":ok"))

        await server.subscribe("ask", answer)
        await client.subscribe("reply", lambda m: client.resolve(m.payload.split(b":")[0], m))
        replies = await asyncio.gather(*(client.request("ask", key, key=key, timeout_s=2)
                                         for key in (b"r1", b"r2")))
        late = client.resolve(b"r1", Message("reply", b"r1:again"))  # nobody waits on r1 any more
        with pytest.raises(asyncio.TimeoutError):
            await client.request("nobody-listens", b"r3", key=b"r3", timeout_s=0.05)
        return replies, late

    replies, late = asyncio.run(main())
    assert [m.payload for m in replies] == [b"r1:ok", b"r2:ok"]
    assert late is False


def test_memory_bus_stop_ends_waiting_requests_and_deliveries():
    async def main():
        hub = MemoryHub()
        a, b = hub.bus(), hub.bus()
        seen: list[Message] = []
        await b.subscribe("#", seen.append)
        waiting = asyncio.ensure_future(a.request("q", b"", key="k", timeout_s=5))
        await asyncio.sleep(0)
        await a.stop()
        with pytest.raises(BusStopped):
            await waiting
        with pytest.raises(BusStopped):
            await a.publish("q", b"after")
        await b.stop()
        await hub.bus().publish("q", b"to nobody")
        return seen

    seen = asyncio.run(main())
    assert [m.payload for m in seen] == [b""]  # the request's publish, nothing after stop


def test_memory_bus_refuses_duplicate_keys_and_bad_topics():
    async def main():
        bus = MemoryBus()
        first = asyncio.ensure_future(bus.request("q", b"", key=1, timeout_s=5))
        await asyncio.sleep(0)
        with pytest.raises(ValueError):
            await bus.request("q", b"", key=1, timeout_s=5)
        with pytest.raises(TopicError):
            await bus.publish("q/+", b"")
        with pytest.raises(TopicError):
            await bus.subscribe("q/#/x", lambda m: None)
        bus.resolve(1, Message("q", b"done"))
        return await first

    assert asyncio.run(main()).payload == b"done"


@pytest.mark.broker
def test_mqtt_bus_request_response(mosquitto):
    """The same port over Mosquitto: filter matching on the client side and keyed replies."""
    prefix = f"bus-{uuid.uuid4().hex[:8]}"

    async def main():
        async with MqttBus(mosquitto.url, client_id=f"{prefix}-server") as server, \
                MqttBus(mosquitto.url, client_id=f"{prefix}-client") as client:
            def answer(message: Message) -> None:
                key = message.topic.rsplit("/", 1)[1]
                asyncio.get_running_loop().create_task(server.publish(f"{prefix}/reply/{key}", message.payload[::-1]))

            await server.subscribe(f"{prefix}/ask/+", answer)
            await client.subscribe(f"{prefix}/reply/#", lambda m: client.resolve(m.topic.rsplit("/", 1)[1], m))
            replies = await asyncio.gather(*(client.request(f"{prefix}/ask/{k}", k.encode(), key=k, timeout_s=5)
                                             for k in ("abc", "xyz")))
            return [m.payload for m in replies]

    assert asyncio.run(asyncio.wait_for(main(), 20)) == [b"cba", b"zyx"]
