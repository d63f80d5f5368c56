"""What a device measures of its link, through the network emulator and a real Mosquitto:
the verifier's model time comes in each VERDICT (`verify_ms`), the round trip is the wait
without it, and both are published with the result (`extra.link`)."""

from __future__ import annotations

import asyncio

import pytest

from camera_node.link import EdgeLink
from camera_node.session import EdgeRequest, run_edge_session
from conftest import dev_keys, reference
from edgespec.bench_network import ProxyThread
from speculative.gamma_control import GammaController

pytestmark = pytest.mark.broker
RTT_MS = 60.0


def test_round_trip_and_verifier_time_are_measured(mosquitto, verifier, loaded_pair):
    target, draft = loaded_pair
    proxy = ProxyThread(mosquitto.host, mosquitto.port)
    proxy.set_rtt(RTT_MS)
    ctrl = GammaController(4)
    ids = target.encode("a red circle moves")

    async def session():
        async with EdgeLink(proxy.url, "cam-measure", keys=dev_keys("cam-measure")) as link:
            return await run_edge_session(link, draft, EdgeRequest(ids, None, gamma=4, max_new_tokens=24,
                                                                   controller=ctrl))

    try:
        out = asyncio.run(session())
    finally:
        proxy.close()
    assert out.result.token_ids == reference(target, ids, 24)
    assert ctrl.verifier.observations > 0  # the verdicts told the verifier's time
    link = out.extra["link"]
    # The emulated round trip is there (lower bound: physical), and not inflated by much.
    assert RTT_MS * 0.9 <= link["rtt_ms"] <= RTT_MS * 4, link
    assert 1 <= link["gamma"] <= 4 and 0.0 <= link["acceptance"] <= 1.0
