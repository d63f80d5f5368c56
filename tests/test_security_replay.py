"""Issue 18, item 2: a sealed OPEN is fresh only once, also after a verifier restart, and a
retained uplink (the broker replaying a stored message) is never acted on.

The restart test serves a verifier with `edgespec verifier`'s crypto set-up (the development
fleet home, EDGESPEC_HOME) on the session broker, captures a device's sealed OPEN from the wire,
and replays it to a new verifier (nothing kept in memory) on the same home."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

import pytest

from camera_node.link import EdgeLink
from conftest import dev_keys
from edgespec.identity import resolve_verifier_crypto
from transport.client import make_client
from schemas import ErrorCode, ErrorMsg, Opened, Sealed, SessionOpen, Topics, decode, encode
from schemas.messages import now_ms
from security.channel import DeviceKeys, device_open
from security.freshness import OpenFreshness
from security.keys import VerifierKeyRing, generate_keypair
from security.registry import FleetRegistry
from verifier_node import service
from verifier_node.core import VerifierConfig, VerifierCore, VerifierCrypto

pytestmark = [pytest.mark.security]
T = Topics("replay/v1")


@pytest.fixture()
def fleet(tmp_path):
    registry = FleetRegistry(tmp_path / "fleet")
    registry.save_verifier_keys(VerifierKeyRing(generate_keypair()))
    device = generate_keypair()
    registry.add("cam-1", device.public_bytes)
    return registry, device


def make_core(lm, registry, record=None, **freshness):
    crypto = VerifierCrypto(registry, freshness=OpenFreshness(record, **freshness))
    return VerifierCore(lm, VerifierConfig(verifier_id="verifier-1"), T, crypto)


def sealed_open(registry, device, lm, **changes):
    ring = registry.verifier_keys()
    sid = os.urandom(16)
    msg = dataclasses.replace(SessionOpen(sid, lm.encode("the scene"), tokenizer_fp=lm.fingerprint,
                                          max_new_tokens=4), **changes)
    _, sealed = device_open(device, ring.current.public, ring.current_key_id, "cam-1", sid,
                            T.open("cam-1"), encode(msg))
    return encode(sealed)


def outcome(replies):
    (_topic, payload), = replies
    msg = decode(payload)
    return "opened" if isinstance(msg, Sealed) else ErrorCode(msg.code).name.lower()


def test_open_replayed_to_a_restarted_core_or_a_peer_is_refused(tmp_path, fleet, loaded_pair):
    registry, device = fleet
    lm = loaded_pair[0]
    record = tmp_path / "opens.log"
    first = make_core(lm, registry, record)
    captured = sealed_open(registry, device, lm)
    assert outcome(first.handle(T.open("cam-1"), captured)) == "opened"
    # A restart (a new core, the same record) and a second verifier of the pool given the same
    # record both refuse it, counted; a fresh OPEN of the same device is still answered.
    for core in (make_core(lm, registry, record), make_core(lm, registry, record)):
        assert outcome(core.handle(T.open("cam-1"), captured)) == "replay"
        assert core.rejected["replay"] == 1 and core.stats["opens_refused_seen"] == 1
        assert outcome(core.handle(T.open("cam-1"), sealed_open(registry, device, lm))) == "opened"


def test_stale_or_unstamped_open_is_refused(fleet, loaded_pair):
    registry, device = fleet
    lm = loaded_pair[0]
    core = make_core(lm, registry, window_s=60)
    for changes, reason in (({"sent_at_ms": now_ms() - 61_000}, "stale"),
                            ({"sent_at_ms": now_ms() + 61_000}, "stale"),
                            ({"sent_at_ms": None}, "no_timestamp")):
        assert outcome(core.handle(T.open("cam-1"), sealed_open(registry, device, lm, **changes))) == "replay"
        assert core.stats[f"opens_refused_{reason}"] >= 1
    assert core.rejected["replay"] == 3 and core.stats["opened"] == 0


@pytest.mark.broker
def test_captured_open_replayed_after_a_verifier_restart_is_refused(mosquitto, loaded_pair):
    """The probe of the issue, through the broker with the verifier's own crypto set-up
    (`edgespec verifier`'s): today the restarted verifier answers the replay with an OPENED."""
    target, _ = loaded_pair
    prefix, device_id, vid = "replay-restart/v1", f"cam-replay-{os.getpid()}", "replay-v"
    topics = Topics(prefix)
    args = argparse.Namespace(home=None, allow_plaintext=False)  # the development fleet home

    def verifier():
        return VerifierCore(target, VerifierConfig(verifier_id=vid), topics, resolve_verifier_crypto(args))

    async def serving(core, body):
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(service.serve(core, mosquitto.url, ready=ready, stop=stop))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            return await body()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    async def open_and_capture():
        async with make_client(mosquitto.url, client_id=f"sniffer-{os.getpid()}") as sniffer, \
                EdgeLink(mosquitto.url, device_id, topics=topics, keys=dev_keys(device_id), timeout_s=20) as link:
            await sniffer.subscribe(topics.open(device_id), qos=1)
            channel = link.channel(os.urandom(16))
            await channel.send_open(SessionOpen(channel.session_id, target.encode("a red car"),
                                                tokenizer_fp=target.fingerprint, max_new_tokens=4))
            opened = await channel.wait_opened()
            async for message in sniffer.messages:
                return opened, message.payload

    async def replay(captured):
        async with make_client(mosquitto.url, client_id=f"attacker-{os.getpid()}") as attacker:
            await attacker.subscribe(topics.down(device_id), qos=1)
            await attacker.publish(topics.open(device_id), captured, qos=1)
            async for message in attacker.messages:
                return decode(message.payload)

    first = verifier()
    opened, captured = asyncio.run(serving(first, open_and_capture))
    assert isinstance(opened, Opened) and first.stats["opened"] == 1
    restarted = verifier()  # a new process's state: only what the fleet home keeps
    answer = asyncio.run(serving(restarted, lambda: asyncio.wait_for(replay(captured), 20)))
    assert isinstance(answer, ErrorMsg) and answer.code == ErrorCode.REPLAY, answer
    assert restarted.rejected["replay"] == 1 and restarted.stats["opens_refused_seen"] == 1
    assert restarted.stats["opened"] == 0


@pytest.mark.broker
def test_retained_uplink_is_ignored_and_counted(mosquitto, fleet, loaded_pair):
    registry, device = fleet
    lm = loaded_pair[0]
    core = make_core(lm, registry)
    ring = registry.verifier_keys()
    keys = DeviceKeys(device, ring.current.public, ring.current_key_id)

    async def scenario():
        async with make_client(mosquitto.url, client_id=f"retainer-{os.getpid()}") as dev:
            # Stored by the broker before the verifier subscribes: replayed to it with retain set.
            await dev.publish(T.open("cam-1"), sealed_open(registry, device, lm), qos=1, retain=True)
            await dev.publish(T.session_up("cam-1", "verifier-1"), b"stored draft", qos=1, retain=True)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(service.serve(core, mosquitto.url, ready=ready, stop=stop))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            async with EdgeLink(mosquitto.url, "cam-1", topics=T, keys=keys, timeout_s=20) as link:
                channel = link.channel(os.urandom(16))  # a live OPEN is answered (positive control)
                await channel.send_open(SessionOpen(channel.session_id, lm.encode("a dog"),
                                                    tokenizer_fp=lm.fingerprint, max_new_tokens=4))
                return await channel.wait_opened()
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            async with make_client(mosquitto.url, client_id=f"cleaner-{os.getpid()}") as dev:
                for topic in (T.open("cam-1"), T.session_up("cam-1", "verifier-1")):
                    await dev.publish(topic, b"", qos=1, retain=True)  # clear the stored messages

    assert isinstance(asyncio.run(scenario()), Opened)
    assert core.rejected[service.RETAINED_REASON] == 2
    assert core.stats["opened"] == 1 and sum(core.rejected.values()) == 2
