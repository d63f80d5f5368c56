"""A camera's home-automation topics through a real Mosquitto: a synthetic camera run (tiny
pair, the session verifier) publishes retained Home Assistant discovery, availability online
then offline, the retained state, Frigate-style events whose id is the caption description's,
and sends discovery again when Home Assistant says `online`."""

from __future__ import annotations

import asyncio
import json

import pytest

from camera_node.announce import CameraAnnouncer
from camera_node.node import CameraConfig, CameraRun, run_camera
from conftest import dev_keys
from transport.client import make_client
from schemas import Topics
from speculative.models import load_lm

pytestmark = pytest.mark.broker

PREFIX = "edgespec/v1"  # the session verifier's prefix
HA = "ha-test"  # a discovery prefix of this test's own: no other test's retained config


class TextOnly:
    """A feature extractor for a target without a vision projector (the tiny test pair):
    every event is captioned from the prompt alone."""

    def extract(self, event):
        return None


class Watcher:
    """Every message on the subscribed topics, in order, with a wait for the next match."""

    def __init__(self, client):
        self.client = client
        self.seen: list[tuple[str, bytes, bool]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    async def start(self, *topics: str) -> Watcher:
        for topic in topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for message in self.client.messages:
                async with self._changed:
                    self.seen.append((str(message.topic), bytes(message.payload), bool(message.retain)))
                    self._changed.notify_all()
        except Exception:  # noqa: BLE001 - the client disconnected; wait_for then times out
            return

    async def wait_for(self, count: int, topic: str, timeout: float = 30.0, payload: bytes | None = None):
        """The first `count` messages on `topic` (with `payload`, when given), once they are all in."""
        def matches():
            return [m for m in self.seen if m[0] == topic and (payload is None or m[1] == payload)]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matches()) >= count), timeout)
        return matches()[:count]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def test_camera_publishes_discovery_availability_events_and_descriptions(mosquitto, verifier, tiny_pair):
    device = "cam-ha"
    topics = Topics(PREFIX)
    discovery_topic = f"{HA}/device/{device}/config"
    draft = load_lm(tiny_pair[1])
    cfg = CameraConfig(device_id=device, source="synthetic:5", broker=mosquitto.url, prefix=PREFIX,
                       keys=dev_keys(device), max_events=1, max_new_tokens=6, realtime=True)
    announcer = CameraAnnouncer(ha_prefix=HA)
    run = CameraRun()

    async def scenario():
        async with make_client(mosquitto.url, client_id="test-ha-watch") as client, \
                make_client(mosquitto.url, client_id="test-ha-home-assistant") as home_assistant:
            watch = await Watcher(client).start(discovery_topic, topics.device_status(device),
                                                topics.device_state(device), topics.device_events(device),
                                                topics.device_description(device))
            camera = asyncio.create_task(run_camera(cfg, draft, TextOnly(), run=run, announce=announcer))
            await watch.wait_for(1, discovery_topic)
            # Home Assistant restarts: its birth message asks every device for discovery again.
            await home_assistant.publish(f"{HA}/status", b"online", qos=1)
            await watch.wait_for(2, discovery_topic)
            captions = await asyncio.wait_for(camera, 90)
            await watch.wait_for(1, topics.device_status(device), payload=b"offline")
            watch.stop()
        # A client that arrives later gets the retained discovery, availability and state.
        async with make_client(mosquitto.url, client_id="test-ha-late") as late:
            later = await Watcher(late).start(discovery_topic, topics.device_status(device),
                                              topics.device_state(device))
            retained = [await later.wait_for(1, t) for t in (discovery_topic, topics.device_status(device),
                                                              topics.device_state(device))]
            later.stop()
        return captions, watch.seen, [r[0] for r in retained]

    captions, seen, retained = asyncio.run(asyncio.wait_for(scenario(), 150))
    assert len(captions) == 1
    by_topic: dict[str, list] = {}
    for topic, payload, _ in seen:
        by_topic.setdefault(topic, []).append(payload)

    # Discovery: retained, sent at start and again after Home Assistant's `online`.
    configs = [json.loads(p) for p in by_topic[discovery_topic]]
    assert len(configs) == 2 and configs[0] == configs[1] and announcer.discovery_sent == 2
    assert configs[0]["availability"][0]["topic"] == topics.device_status(device)
    assert retained[0][2] is True and json.loads(retained[0][1]) == configs[0]

    # Availability: online while the camera runs, offline after (retained).
    status = by_topic[topics.device_status(device)]
    assert status[0] == b"online" and status[-1] == b"offline"
    assert retained[1][1] == b"offline" and retained[1][2] is True

    # Events: new, update, end for each event; the captioned one's id is the description's.
    events = [json.loads(p) for p in by_topic[topics.device_events(device)]]
    descriptions = [json.loads(p) for p in by_topic[topics.device_description(device)]]
    assert len(descriptions) == 1
    description = descriptions[0]
    assert description["type"] == "description" and description["description"] == captions[0].text
    kinds = [e["type"] for e in events if e["after"]["id"] == description["id"]]
    assert kinds == ["new", "update", "end"]
    end = next(e for e in events if e["type"] == "end" and e["after"]["id"] == description["id"])
    assert end["after"]["description"] == captions[0].text and end["after"]["end_time"] is not None
    assert all(e["type"] in ("new", "update", "end") and e["before"]["id"] == e["after"]["id"] for e in events)

    # State: motion, then captioning, then idle with the caption; retained.
    states = [json.loads(p) for p in by_topic[topics.device_state(device)]]
    statuses = [s["status"] for s in states]
    assert statuses[0] == "idle" and "motion" in statuses and "captioning" in statuses
    final = json.loads(retained[2][1])
    assert retained[2][2] is True and final["status"] == "idle" and final["last_caption"] == captions[0].text[:255]
    assert final["last_event_id"] == description["id"] and final["captions"] == 1
    assert final["caption_attributes"]["text"] == captions[0].text
    assert final["tokens_per_s"] > 0 and 0 <= final["acceptance_percent"] <= 100
