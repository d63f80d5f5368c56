"""The camera on real footage and on sources that end or stall, through a real Mosquitto.

A real CC BY 4.0 clip (a worker in an orange vest walks away from the camera; the motion
lasts to its last frame) must give a verified caption whose kind and direction match the
clip's label; a source that stops giving frames must end its open event; the camera prints
what it did.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from camera_node import node
from camera_node.capture import Frame
from camera_node.captions import CAPTION_PROMPT, parse_caption
from camera_node.features import ObjectFeatures
from camera_node.node import CameraConfig, CameraRun, run_camera
from camera_node.session import wire_features
from conftest import dev_keys, start_verifier, stop_process
from edgespec.config import resolve_model_dir
from edgespec.eval_footage import LABELS_FILE, load_labels
from transport.client import make_client
from schemas import ResultMsg, Topics
from speculative.loop import generate_autoregressive
from speculative.sampling import SamplingParams

pytestmark = pytest.mark.broker

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "footage"
WORKER = FOOTAGE / "worker-zone-detection.gif"
PREFIX = "footage-test/v1"
needs_footage = pytest.mark.skipif(not WORKER.is_file(), reason="shared footage not present")


@pytest.fixture(scope="module")
def default_verifier(mosquitto):
    proc = start_verifier(mosquitto.url, resolve_model_dir("default", "target"), "verifier-footage",
                          "--prefix", PREFIX)
    yield proc
    stop_process(proc)


async def _run_and_collect(cfg: CameraConfig, lm, mosquitto_url: str, run: CameraRun):
    async with make_client(mosquitto_url, client_id=f"watch-{cfg.device_id}") as dash:
        await dash.subscribe(Topics(PREFIX).result(cfg.device_id), qos=1)
        captions = await run_camera(cfg, lm, run=run)
        results = []
        if captions:
            async for message in dash.messages:
                results.append(ResultMsg.from_json(message.payload))
                if len(results) == len(captions):
                    break
        return captions, results


@needs_footage
def test_real_clip_gives_a_verified_caption_matching_its_label(mosquitto, default_verifier, default_pair):
    target, draft = default_pair
    cfg = CameraConfig(device_id="cam-worker", source=str(WORKER), broker=mosquitto.url, prefix=PREFIX,
                       keys=dev_keys("cam-worker"))
    run = CameraRun()
    captions, results = asyncio.run(asyncio.wait_for(_run_and_collect(cfg, draft, mosquitto.url, run), 120))
    # The motion lasts to the clip's last frame: the flush at the end of the source captions it.
    assert run.frames == 71 and run.events == 1 and len(captions) == 1
    assert run.summary() == "71 frames, 1 event, 1 caption"
    caption, result = captions[0], results[0]
    assert caption.event.reason.value == "flush"
    label = load_labels(LABELS_FILE)[WORKER.name]["objects"][0]
    mention = parse_caption(result.text)[0]
    assert mention.kind in label["kind"] and mention.direction in label["direction"]
    assert mention.colour in label["colour"]
    # Verified: exactly the target's own greedy caption of the same (fp16, wire) features.
    _, features = wire_features(ObjectFeatures().extract(caption.event))
    reference = generate_autoregressive(target, target.encode(CAPTION_PROMPT), features, SamplingParams(),
                                        cfg.max_new_tokens)
    assert result.token_ids == reference.token_ids
    assert caption.objects and caption.objects[0]["kind"] == mention.kind


class _StallingSource:
    """Frames of a square moving right, then no frame until released (a stalled stream)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.frames_read = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()

    def __iter__(self):
        for i in range(30):
            image = np.full((120, 160, 3), 60, np.uint8)
            x = 10 + 3 * i if i >= 5 else None
            if x is not None:
                image[50:70, x : x + 20] = (40, 40, 220)
            self.frames_read += 1
            yield Frame(image, i / 10, i)
        self.release.wait(30)  # the stream stalls here


def test_stalled_source_ends_its_open_event(mosquitto, default_verifier, default_pair, monkeypatch):
    """No frame for stall_s seconds: the open event is captioned without waiting for more."""
    source = _StallingSource()
    monkeypatch.setattr(node, "open_source", lambda spec: source)
    draft = default_pair[1]
    cfg = CameraConfig(device_id="cam-stall", source="rtsp://stalls.invalid/", broker=mosquitto.url,
                       prefix=PREFIX, keys=dev_keys("cam-stall"), stall_s=0.5, max_events=1)
    run = CameraRun()
    captions = asyncio.run(asyncio.wait_for(run_camera(cfg, draft, run=run), 60))
    source.release.set()
    assert run.stalls >= 1 and run.frames == 30 and len(captions) == 1
    assert captions[0].event.reason.value == "flush"


def test_still_real_scene_finds_no_motion(mosquitto, verifier, tiny_pair, tmp_path):
    """A folder of one real frame repeated: no event, and the camera says so and exits 0."""
    import cv2

    if not WORKER.is_file():
        pytest.skip("shared footage not present")
    capture = cv2.VideoCapture(str(WORKER))
    ok, frame = capture.read()
    capture.release()
    assert ok
    for i in range(20):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), frame)
    out = subprocess.run(
        [sys.executable, "-m", "edgespec.cli", "camera", "--broker", mosquitto.url, "--device-id", "cam-still",
         "--source", str(tmp_path), "--draft-model", str(tiny_pair[1])],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[cam-still] 20 frames, no motion found"


def test_camera_command_prints_events_captions_and_summary(mosquitto, default_verifier):
    """`edgespec camera` on a real clip: one line per event and caption, then the summary."""
    if not WORKER.is_file():
        pytest.skip("shared footage not present")
    out = subprocess.run(
        [sys.executable, "-m", "edgespec.cli", "camera", "--broker", mosquitto.url, "--device-id", "cam-cli",
         "--prefix", PREFIX, "--source", str(WORKER)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("[cam-cli] event 1: ") and "ended by end of source" in lines[0]
    assert lines[1].startswith('[cam-cli] "a person')
    assert lines[-1] == "[cam-cli] 71 frames, 1 event, 1 caption"
    assert not out.stderr.strip() or "Traceback" not in out.stderr


def test_camera_with_a_missing_file_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edgespec.cli", "camera", "--device-id", "cam-x", "--source",
         str(tmp_path / "nope.mp4")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "nope.mp4" in out.stderr
