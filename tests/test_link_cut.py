"""A camera whose link is cut for 10 s: it keeps captioning on the device alone (published
unverified when the broker is back), verified captions resume soon after the link returns,
and every offline caption is verified and replaced. Through the project's network emulator
in front of a real Mosquitto, with a verifier on the built-in pair connected directly."""

from __future__ import annotations

import asyncio
import time

import pytest

from camera_node.announce import CameraAnnouncer
from camera_node.node import CameraConfig, run_camera
from conftest import dev_keys, start_verifier, stop_process
from edgespec.bench_network import ProxyThread
from edgespec.config import resolve_model_dir
from schemas import ResultMsg, Topics
from transport.client import make_client

pytestmark = pytest.mark.broker
PREFIX = "cut/v1"
CUT_S = 10.0


@pytest.fixture(scope="module")
def cut_verifier(mosquitto):
    proc = start_verifier(mosquitto.url, resolve_model_dir("default", "target"), "verifier-cut", "--prefix", PREFIX)
    yield proc
    stop_process(proc)


def test_captions_go_on_through_a_cut_and_are_verified_after(mosquitto, cut_verifier, default_pair):
    _, draft = default_pair
    proxy = ProxyThread(mosquitto.host, mosquitto.port)
    captions: list[tuple[float, bool, str]] = []  # (when, verified, mode) as the camera made them
    cut: dict[str, float] = {}
    announcer = CameraAnnouncer(ha_discovery=True)  # state and events too, as `edgespec camera` publishes them

    def on_caption(caption):
        captions.append((time.monotonic(), caption.verified, caption.mode))
        if len(captions) == 2 and not cut:  # two verified captions, then the link goes
            cut["at"] = time.monotonic()
            proxy.loop.call_soon_threadsafe(proxy.proxy.cut_for, CUT_S)

    cfg = CameraConfig(device_id="cam-cut", source="synthetic:7", broker=proxy.url, prefix=PREFIX, realtime=True,
                       max_events=9, keys=dev_keys("cam-cut"), timeout_s=2.0)

    async def scenario():
        results: list[tuple[float, ResultMsg]] = []
        async with make_client(mosquitto.url, client_id="cut-dashboard") as dash:
            await dash.subscribe(Topics(PREFIX).result("cam-cut"), qos=1)

            async def listen():
                async for message in dash.messages:
                    results.append((time.monotonic(), ResultMsg.from_json(message.payload)))

            listener = asyncio.create_task(listen())
            try:
                await run_camera(cfg, draft, on_caption=on_caption, announce=announcer)
                await asyncio.sleep(1.0)  # the last results on their way
            finally:
                listener.cancel()
        return results

    try:
        results = asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        proxy.close()
    assert cut, "the link was never cut"
    assert announcer.skipped > 0  # announcements while the link was down were not waited for
    back = cut["at"] + CUT_S
    during = [c for c in captions if cut["at"] + 1.0 < c[0] < back]
    assert during and all(not verified and mode == "edge_only" for _, verified, mode in during), captions
    offline = {r.session_id: t for t, r in results if r.extra.get("verified") is False}
    replaced = {r.extra["replaces"]: t for t, r in results if "replaces" in r.extra}
    assert len(offline) >= len(during)
    # Verified captions resume within 5 s of the link's return ...
    first_verified = min(t for t, r in results if t > back and r.extra.get("verified") is not False)
    assert first_verified - back <= 5.0, first_verified - back
    # ... and every offline caption is verified (replaced) within 30 s.
    assert set(offline) <= set(replaced), (set(offline) - set(replaced))
    assert max(replaced[i] for i in offline) - back <= 30.0
    print(f"cut {CUT_S:g} s: {len(during)} captions during it, all unverified; first verified "
          f"{first_verified - back:.1f} s after the return; {len(offline)} offline captions all replaced, the last "
          f"{max(replaced[i] for i in offline) - back:.1f} s after the return")
    for _, r in results:
        if "replaces" in r.extra:
            assert r.extra["mode"] == "hybrid" and r.rounds >= 1
