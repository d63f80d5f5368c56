"""Issue 18, items 1, 4 and 7 against a production-config Mosquitto (the `prod` fixture of
tests/test_security_broker.py): nobody can take another device's session opens by joining a
shared subscription; service accounts are never devices and only verifiers write verified
results; a device can leave only a bounded amount of retained data."""

from __future__ import annotations

import asyncio
import os

import pytest

from transport.urls import ClientAuth
from schemas import Opened, SessionOpen, Topics, decode, encode
from test_security_broker import (DASHBOARD, HOME_ASSISTANT, NOT_AUTHORIZED, P, VERIFIER,  # noqa: F401
                                  ProdBroker, pki, prod)
from verifier_node import service
from schemas.topics import OFFLINE, ONLINE
from verifier_node.core import VerifierConfig, VerifierCore
from verifier_node.membership import PoolMembership

pytestmark = [pytest.mark.security]
SHARE = f"$share/verifiers/{P}/dev/+/up/open"


def serving(prod: ProdBroker, core: VerifierCore, body):
    """Run `body()` while `core` serves on the production broker as the verifier account."""
    url = f"mqtt://127.0.0.1:{prod.ports['plain']}"
    auth = ClientAuth(VERIFIER, prod.passwords[VERIFIER])

    async def main():
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(service.serve(core, url, auth=auth, ready=ready, stop=stop))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            return await asyncio.to_thread(body)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    return asyncio.run(main())


def test_pool_members_split_opens_and_ignore_stale_online() -> None:
    now = [0.0]
    a, b = (PoolMembership(v, ttl_s=15, clock=lambda: now[0]) for v in ("va", "vb"))
    assert a.status("vb", ONLINE, retained=True) is False  # a stored `online` proves nothing
    assert a.members() == ["va"]
    assert a.status("vb", ONLINE, retained=False) is True  # a live one does: greet it back
    b.alive("va")
    keys = [os.urandom(16) for _ in range(400)]
    owned_a, owned_b = sum(map(a.owns, keys)), sum(map(b.owns, keys))
    assert owned_a + owned_b == 400 and 120 < owned_a < 280  # each OPEN once, spread
    now[0] = 16.0  # a peer not heard for longer than the TTL is gone (a stale view heals)
    assert a.members() == ["va"] and all(map(a.owns, keys))
    b.status("va", OFFLINE, retained=False)
    assert all(map(b.owns, keys))


@pytest.mark.broker
def test_accounts_that_join_the_share_take_no_opens(prod: ProdBroker, loaded_pair) -> None:
    """Item 1. Before: each extra member of the share swallowed its part of cam-a's opens."""
    target = loaded_pair[0]
    core = VerifierCore(target, VerifierConfig(verifier_id=VERIFIER), Topics(P))  # plaintext allowed
    joiners = [prod.connected(name) for name in ("cam-b", "cam-b", "cam-b", DASHBOARD, DASHBOARD,
                                                  HOME_ASSISTANT)]
    for joiner in joiners:
        assert joiner.subscribe(SHARE) == [1]  # Mosquitto 2.0 grants it: the design must not care
    n_opens = 12

    def device() -> list:
        cam_a = prod.connected("cam-a")
        assert cam_a.subscribe(f"{P}/dev/cam-a/down") == [1]
        for _ in range(n_opens):
            msg = SessionOpen(os.urandom(16), target.encode("a red car"), tokenizer_fp=target.fingerprint,
                              max_new_tokens=4)
            assert cam_a.publish(f"{P}/dev/cam-a/up/open", encode(msg)) == 0
        answers = []
        for _ in range(n_opens):
            try:
                answers.append(decode(cam_a.inbox.get(timeout=3)[1]))
            except Exception:  # noqa: BLE001 - queue.Empty: an open nobody answered
                break
        return answers

    answers = serving(prod, core, device)
    opened = sum(isinstance(a, Opened) for a in answers)
    assert opened == n_opens, f"{opened} of {n_opens} opens answered with {len(joiners)} accounts in the share"
    assert all(not j.inbox.qsize() for j in joiners)  # and none of them read an open


@pytest.mark.broker
def test_service_accounts_are_never_devices_and_only_verifiers_write_verified(prod: ProdBroker) -> None:
    """Item 4. Before: the `%u` patterns let the dashboard and verifier accounts publish uplinks
    and results as devices named like them (the dashboard opened a session)."""
    verifier = prod.connected(VERIFIER)
    assert verifier.subscribe(f"{P}/dev/+/up/#") == [1]
    for name in (VERIFIER, DASHBOARD, HOME_ASSISTANT):
        peer = prod.connected(name)
        for topic in (f"{P}/dev/{name}/up/open", f"{P}/dev/{name}/up/v/{VERIFIER}", f"{P}/dev/{name}/result",
                      f"{P}/dev/{name}/status", f"{P}/dev/{name}/state", f"homeassistant/device/{name}/config"):
            assert peer.publish(topic, b"as a device") == NOT_AUTHORIZED, (name, topic)
    # Verified results: verifiers write them, dashboards read them, a device cannot forge one.
    dashboard = prod.connected(DASHBOARD)
    assert dashboard.subscribe(f"{P}/dev/+/verified") == [1]
    cam_a = prod.connected("cam-a")
    assert cam_a.publish(f"{P}/dev/cam-a/verified", b'{"forged": true}') == NOT_AUTHORIZED
    assert verifier.publish(f"{P}/dev/cam-a/verified", b'{"v": 1}') == 0
    got = dashboard.expect(f"{P}/dev/cam-a/verified") + dashboard.quiet()
    assert got == [(f"{P}/dev/cam-a/verified", b'{"v": 1}')]
    assert cam_a.publish(f"{P}/dev/cam-a/up/open", b"own open") == 0  # positive control
    got = verifier.expect(f"{P}/dev/cam-a/up/open", b"own open")
    assert all(payload != b"as a device" for _, payload in got), got


@pytest.mark.broker
def test_a_device_can_leave_only_bounded_retained_data(prod: ProdBroker) -> None:
    """Item 7. Before: a device kept ten 256 KiB retained messages on ten topics of its own
    (`up/#`), and up to 1 MiB each. Now its writable topics are a finite list and a packet is at
    most 520 KiB."""
    cam_a = prod.connected("cam-a")
    blob = b"r" * (256 * 1024)
    stored = [f"{P}/dev/cam-a/up/x{i}" for i in range(5)] + [f"{P}/dev/cam-a/up/v/fake-{i}" for i in range(5)]
    refused = [cam_a.publish(topic, blob, retain=True) for topic in stored]
    assert refused == [NOT_AUTHORIZED] * 10, refused
    verifier = prod.connected(VERIFIER)
    assert verifier.subscribe(f"{P}/dev/cam-a/up/#") == [1]
    assert verifier.quiet() == []  # nothing was stored
    # The largest wire message (512 KiB) still passes; a larger packet ends the connection.
    assert cam_a.publish(f"{P}/dev/cam-a/up/open", b"o" * (512 * 1024)) == 0
    verifier.expect(f"{P}/dev/cam-a/up/open")
    cam_a.client.publish(f"{P}/dev/cam-a/up/open", b"o" * (600 * 1024), qos=1, retain=True)
    assert cam_a.disconnected.wait(5), "an oversize packet did not end the connection"
    assert verifier.quiet() == []


@pytest.mark.broker
def test_verifier_publishes_what_it_verified(mosquitto, loaded_pair) -> None:
    """Item 4. A dashboard tells a verified result from a device's claim: the verifier itself
    publishes the token ids it committed and their text on `dev/<id>/verified` (a topic only
    verifiers may write, see the test above); a claim with no such record is only a claim."""
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, result_message, run_edge_session
    from transport.client import make_client
    from schemas import ResultMsg
    from schemas.results import VerifiedMsg

    target, draft = loaded_pair
    topics = Topics(f"verified-{os.getpid()}/v1")
    core = VerifierCore(target, VerifierConfig(verifier_id="vv"), topics)

    async def main():
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(service.serve(core, mosquitto.url, ready=ready, stop=stop))
        try:
            await asyncio.wait_for(ready.wait(), 20)
            async with make_client(mosquitto.url, client_id=f"dash-{os.getpid()}") as dash:
                await dash.subscribe(f"{topics.prefix}/dev/+/result", qos=1)
                await dash.subscribe(f"{topics.prefix}/dev/+/verified", qos=1)
                async with EdgeLink(mosquitto.url, "cam-v", topics=topics, timeout_s=20) as link:
                    outcome = await run_edge_session(link, draft, EdgeRequest(target.encode("a red car"),
                                                                              max_new_tokens=12))
                    await link.publish_result(result_message("cam-v", outcome, draft.decode(outcome.result.token_ids)))
                got = {}
                async for message in dash.messages:
                    got[str(message.topic).rsplit("/", 1)[1]] = (str(message.topic), message.payload)
                    if len(got) == 2:
                        return got
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    got = asyncio.run(asyncio.wait_for(main(), 60))
    claim, verified = ResultMsg.from_json(got["result"][1]), VerifiedMsg.from_json(got["verified"][1])
    assert got["verified"][0] == topics.verified("cam-v") and verified.device_id == "cam-v"
    assert verified.session_id == claim.session_id and verified.verifier_id == "vv" and verified.resumed == 0
    assert verified.token_ids == claim.token_ids and verified.text == claim.text
