"""The camera node end to end: synthetic capture -> motion event -> features -> a caption
drafted on the device and verified through a real Mosquitto, equal to the target's own."""

from __future__ import annotations

import asyncio

import pytest

from camera_node.captions import CAPTION_PROMPT
from camera_node.features import ObjectFeatures
from camera_node.node import CameraConfig, run_camera
from camera_node.session import wire_features
from conftest import dev_keys, start_verifier, stop_process
from edgespec.config import resolve_model_dir
from transport.client import make_client
from schemas import ResultMsg, Topics
from speculative.loop import generate_autoregressive
from speculative.sampling import SamplingParams

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def default_verifier(mosquitto):
    proc = start_verifier(mosquitto.url, resolve_model_dir("default", "target"), "verifier-default",
                          "--prefix", "cam-test/v1")
    yield proc
    stop_process(proc)


def test_synthetic_camera_caption_equals_target_greedy(mosquitto, default_verifier, default_pair):
    target, draft = default_pair
    cfg = CameraConfig(device_id="cam-t", source="synthetic:3", broker=mosquitto.url, prefix="cam-test/v1",
                       max_events=2, keys=dev_keys("cam-t"))

    async def scenario():
        async with make_client(mosquitto.url, client_id="test-dashboard") as dash:
            await dash.subscribe(Topics("cam-test/v1").result("cam-t"), qos=1)
            captions = await run_camera(cfg, draft)
            results = []
            async for message in dash.messages:
                results.append(ResultMsg.from_json(message.payload))
                if len(results) == len(captions):
                    return captions, results

    captions, results = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert len(captions) == 2
    extractor = ObjectFeatures()
    prompt = draft.encode(CAPTION_PROMPT)
    for caption, result in zip(captions, results):
        _, features = wire_features(extractor.extract(caption.event))
        ref = generate_autoregressive(target, prompt, features, SamplingParams(), cfg.max_new_tokens)
        assert result.token_ids == ref.token_ids
        assert result.text == caption.text == target.decode(ref.token_ids)
        assert result.device_id == "cam-t" and result.bytes_up > 0 and result.ts > 0
        assert result.extra["jpeg_bytes_keyframes"] > result.bytes_up  # far below sending frames
