"""The camera node: capture -> motion events -> vision features -> an edge session per event
-> the verified caption on the device's result topic. Frames never leave the device; only
the features (once per session, fp16), token ids and the truncated q do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgespec.mqtt import ClientAuth
from schemas import Topics
from speculative.models import LoadedLM
from speculative.sampling import SamplingParams

from .captions import CAPTION_PROMPT
from .capture import open_source
from .events import MotionConfig, MotionDetector, MotionEvent
from .features import FeatureExtractor, OpenCVFeatures
from .link import EdgeLink
from .privacy import PrivacyConfig
from .session import EdgeRequest, result_message, run_edge_session

log = logging.getLogger("edgespec.camera")
JPEG_QUALITY = 80  # what a cloud-only captioner would be sent, for the bandwidth comparison


@dataclass(frozen=True)
class CameraConfig:
    device_id: str
    source: str = "synthetic"
    broker: str = "mqtt://127.0.0.1:1883"
    prefix: str = "edgespec/v1"
    prompt: str = CAPTION_PROMPT
    sampling: SamplingParams = SamplingParams()
    gamma: int = 4
    max_new_tokens: int = 48
    seed: int = 0
    max_events: int | None = None  # stop after this many captions
    realtime: bool = False  # pace file/synthetic sources at their frame rate
    timeout_s: float = 10.0
    motion: MotionConfig = field(default_factory=MotionConfig)
    auth: ClientAuth = ClientAuth()
    keys: object | None = None  # security.channel.DeviceKeys; None: plaintext sessions
    privacy: PrivacyConfig = PrivacyConfig()
    draft_ahead: bool = True  # pipelining: draft the next block while one is verified
    busy_poll_s: float = 0.02  # poll for a verdict this long before sleeping (0 on battery)


@dataclass
class Caption:
    """One verified caption and what it cost."""

    device_id: str
    text: str
    event: MotionEvent
    acceptance_rate: float
    mean_accepted: float
    rounds: int
    bytes_up: int
    bytes_down: int
    feature_bytes: int
    jpeg_bytes_keyframes: int
    jpeg_bytes_clip: int
    seconds: float


def jpeg_size(frame: np.ndarray) -> int:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return int(buf.size) if ok else 0


def event_jpeg_bytes(event: MotionEvent) -> tuple[int, int]:
    """(JPEG bytes of the two key frames, estimate for every frame of the event clip)."""
    first, last = jpeg_size(event.first), jpeg_size(event.last)
    return first + last, int((first + last) / 2 * max(event.frame_count, 2))


async def describe_event(link: EdgeLink, lm: LoadedLM, extractor: FeatureExtractor, event: MotionEvent,
                         cfg: CameraConfig, seed: int) -> Caption:
    """One caption session for one event, published on the result topic."""
    features = extractor.extract(event.first, event.last)  # [S, D], computed on the device
    features = cfg.privacy.features(features)
    req = EdgeRequest(lm.encode(cfg.privacy.prompt(cfg.prompt)), features, cfg.sampling, cfg.gamma,
                      cfg.max_new_tokens, seed, draft_ahead=cfg.draft_ahead, busy_poll_s=cfg.busy_poll_s)
    outcome = await run_edge_session(link, lm, req)
    text = lm.decode(outcome.result.token_ids)
    key_bytes, clip_bytes = event_jpeg_bytes(event)
    extra = {"event": {"start_t": event.start_t, "end_t": event.end_t, "frames": event.frame_count,
                       "peak_area": round(float(event.peak_area), 4)},
             "jpeg_bytes_keyframes": key_bytes, "jpeg_bytes_clip": clip_bytes}
    await link.publish_result(result_message(link.device_id, outcome, text, extra))
    r = outcome.result
    return Caption(link.device_id, text, event, r.acceptance_rate, r.mean_accepted, r.rounds, outcome.traffic.up,
                   outcome.traffic.down, outcome.feature_bytes, key_bytes, clip_bytes, r.seconds)


async def run_camera(cfg: CameraConfig, lm: LoadedLM, extractor: FeatureExtractor | None = None,
                     on_caption=None) -> list[Caption]:
    """Watch `cfg.source` until it ends or `max_events` captions were made."""
    extractor = extractor or OpenCVFeatures()
    detector = MotionDetector(cfg.motion)
    captions: list[Caption] = []
    async with EdgeLink(cfg.broker, cfg.device_id, topics=Topics(cfg.prefix), auth=cfg.auth,
                        timeout_s=cfg.timeout_s, keys=cfg.keys) as link:
        with open_source(cfg.source) as source:
            started, t0 = time.monotonic(), None
            for frame in source:
                if cfg.realtime:
                    t0 = frame.t if t0 is None else t0
                    delay = (frame.t - t0) - (time.monotonic() - started)
                    if delay > 0:
                        await asyncio.sleep(delay)
                event = detector.feed(frame)
                if event is None:
                    continue
                caption = await describe_event(link, lm, extractor, event, cfg, cfg.seed + len(captions))
                captions.append(caption)
                if on_caption is not None:
                    on_caption(caption)
                if cfg.max_events is not None and len(captions) >= cfg.max_events:
                    break
    return captions
