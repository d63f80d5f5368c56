"""The camera node: capture -> motion events -> vision features -> an edge session per event
-> the verified caption on the device's result topic. Frames never leave the device; only
the features (once per session, fp16), token ids and the truncated q do.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from schemas import ResultMsg, Topics
from schemas.topics import PROTOCOL
from speculative.models import LoadedLM
from transport.urls import ClientAuth
from speculative.sampling import QRule, SamplingParams

from .captions import CAPTION_PROMPT
from .capture import open_source
from .events import MotionConfig, MotionDetector, MotionEvent
from .event_prompt import request_inputs
from .features import FeatureExtractor, ObjectFeatures, encode_facts
from .objects import ObjectFacts
from .link import EdgeLink
from .modes import CLOUD_FAILURES, CameraModes, Captioned
from .mode_policy import Mode
from .offline_captions import PendingCaption
from .privacy import PrivacyConfig
from .session import EdgeOutcome, EdgeRequest, result_message, run_edge_session
from .settings import DEFAULTS

log = logging.getLogger("edgespec.camera")
JPEG_QUALITY = 80  # what a cloud-only captioner would be sent, for the bandwidth comparison


@dataclass(frozen=True, kw_only=True)
class CameraConfig:
    """The camera node's settings (keyword-only); the session settings' defaults are
    camera_node.settings.DEFAULTS."""

    device_id: str
    source: str = "synthetic"
    broker: str = "mqtt://127.0.0.1:1883"
    prefix: str = PROTOCOL
    prompt: str = CAPTION_PROMPT
    # A chat model's instruction ({caption}: the event's facts in words), sent as a user turn of the
    # draft's chat template with no features; None: `prompt` after the vision features (event_prompt.py).
    text_prompt: str | None = None
    sampling: SamplingParams = DEFAULTS.sampling
    gamma: int = DEFAULTS.gamma
    q_rule: QRule = DEFAULTS.q_rule  # entries of q per drafted token
    max_new_tokens: int = DEFAULTS.max_new_tokens
    # Sampling seed: None (the default) derives each caption's from the device id, the event and
    # a nonce drawn at every start (`caption_seed`), so cameras, events and restarts never share
    # a random stream; a number makes runs reproducible: caption n uses seed + n.
    seed: int | None = None
    max_events: int | None = None  # stop after this many captions
    realtime: bool = False  # pace file/synthetic sources at their frame rate
    timeout_s: float = DEFAULTS.timeout_s
    motion: MotionConfig = field(default_factory=MotionConfig)
    auth: ClientAuth = ClientAuth()
    keys: object | None = None  # security.channel.DeviceKeys; None: plaintext sessions
    privacy: PrivacyConfig = PrivacyConfig()
    draft_ahead: bool = DEFAULTS.draft_ahead  # pipelining: draft the next block while one is verified
    busy_poll_s: float = DEFAULTS.busy_poll_s  # poll for a verdict this long before sleeping (0 on battery)
    stall_s: float = 5.0  # a source that gives no frame this long ends the open event
    # How captions are made: "auto" (the mode policy picks hybrid, cloud-only or edge-only from
    # what the camera measures), or always "hybrid", "cloud" or "edge" (edge-only when the
    # forced mode cannot reach a verifier). See camera_node/modes.py.
    mode: str = "auto"
    gamma_ceiling: int = 8  # auto and hybrid: the controller picks each round's gamma up to this
    local_only: bool = False  # privacy: nothing leaves the device (edge-only, never verified)


@dataclass
class Caption:
    """One caption and what it cost; `verified` False: the draft's own text (edge-only)."""

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
    objects: list[dict[str, object]] = field(default_factory=list)
    session: EdgeOutcome | None = field(default=None, repr=False, compare=False)  # rounds, timings, traffic
    mode: str = Mode.HYBRID.value
    verified: bool = True


@dataclass
class CameraRun:
    """What a camera did so far: filled in while it runs, so a stopped run still reports."""

    frames: int = 0
    events: int = 0
    nothing_followed: int = 0  # events with no moving object to caption
    stalls: int = 0  # times the source gave no frame for ``stall_s``
    captions: list[Caption] = field(default_factory=list)

    def summary(self) -> str:
        """One line: ``41 frames, 1 event, 1 caption`` or ``41 frames, no motion found``."""
        frames = _count(self.frames, "frame")
        if not self.events:
            return f"{frames}, no motion found"
        skipped = f" ({self.nothing_followed} with no moving object)" if self.nothing_followed else ""
        unverified = sum(not c.verified for c in self.captions)
        waiting = f", {unverified} by the draft alone" if unverified else ""
        return f"{frames}, {_count(self.events, 'event')}, {_count(len(self.captions), 'caption')}{waiting}{skipped}"


def _count(n: int, noun: str) -> str:
    """``1 event``, ``2 events``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def jpeg_size(frame: np.ndarray) -> int:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return int(buf.size) if ok else 0


def event_jpeg_bytes(event: MotionEvent) -> tuple[int, int]:
    """(JPEG bytes of the two key frames, estimate for every frame of the event clip)."""
    first, last = jpeg_size(event.first), jpeg_size(event.last)
    return first + last, int((first + last) / 2 * max(event.frame_count, 2))


async def describe_event(link: EdgeLink, lm: LoadedLM, extractor: FeatureExtractor, event: MotionEvent,
                         cfg: CameraConfig, seed: int, facts: list[ObjectFacts] | None = None,
                         modes: CameraModes | None = None) -> Caption | None:
    """One caption for one event, published on the result topic; None (no caption) when the
    device followed no moving object in it (a flicker, a change of the whole view).
    ``facts``: the event's objects when already measured (ObjectFeatures only); ``modes``:
    the camera's mode keeping (None: a hybrid session, whatever the link)."""
    objects: list[dict[str, object]] = []
    if isinstance(extractor, ObjectFeatures):
        facts = extractor.facts(event) if facts is None else facts
        if not facts:
            return None
        features = encode_facts(facts, extractor.slots)  # [S, D], computed on the device
        objects = [{"kind": f.kind, "colour": f.colour, "direction": f.direction, "entry": f.entry,
                    "exit": f.exit, "stopped": f.stopped} for f in facts[: extractor.slots]]
    else:
        features = extractor.extract(event)
    prompt_ids, wire_features = request_inputs(lm, cfg, features, objects)
    req = EdgeRequest(prompt_ids, wire_features, sampling=cfg.sampling, gamma=cfg.gamma,
                      q_rule=cfg.q_rule, max_new_tokens=cfg.max_new_tokens, seed=seed, draft_ahead=cfg.draft_ahead,
                      busy_poll_s=cfg.busy_poll_s)
    made = await (modes.caption(link, lm, req) if modes is not None else _hybrid(link, lm, req))
    key_bytes, clip_bytes = event_jpeg_bytes(event)
    extra = {"event": {"start_t": event.start_t, "end_t": event.end_t, "frames": event.frame_count,
                       "peak_area": round(float(event.peak_area), 4), "ended": event.reason.value},
             "objects": objects,
             "jpeg_bytes_keyframes": key_bytes, "jpeg_bytes_clip": clip_bytes}
    await _publish(link, made, extra)
    outcome = made.outcome
    if outcome is None:
        return Caption(link.device_id, made.text, event, 0.0, 0.0, 0, 0, 0, 0, key_bytes, clip_bytes, made.seconds,
                       objects, mode=made.mode.value, verified=False)
    r = outcome.result
    return Caption(link.device_id, made.text, event, r.acceptance_rate, r.mean_accepted, r.rounds, outcome.traffic.up,
                   outcome.traffic.down, outcome.feature_bytes, key_bytes, clip_bytes, r.seconds, objects,
                   session=outcome, mode=made.mode.value)


async def _hybrid(link: EdgeLink, lm: LoadedLM, req: EdgeRequest) -> Captioned:
    outcome = await run_edge_session(link, lm, req)
    r = outcome.result
    return Captioned(Mode.HYBRID, list(r.token_ids), lm.decode(r.token_ids), r.seconds, outcome=outcome)


async def _publish(link: EdgeLink, made: Captioned, extra: dict) -> None:
    """The caption on the result topic; an edge-only one (unverified) under its offline id,
    or kept for later when the broker is out of reach."""
    extra = {**extra, **made.extra()}
    if made.outcome is not None:
        try:
            await link.publish_result(result_message(link.device_id, made.outcome, made.text, extra))
        except CLOUD_FAILURES as exc:  # the link went right after the session: the caption stays here
            log.warning("caption not published, the link is down: %s", exc)
        return
    pending = made.pending
    assert pending is not None
    pending.extra = extra
    if link.connected:
        await link.publish_result(offline_result(link.device_id, pending))
        pending.published = True


def offline_result(device_id: str, item: PendingCaption) -> ResultMsg:
    """The result message of an unverified, edge-only caption."""
    return ResultMsg(device_id=device_id, session_id=item.offline_id, ts=item.created, text=item.text,
                     token_ids=list(item.recording.tokens), rounds=0, acceptance_rate=0.0, mean_accepted=0.0,
                     bytes_up=0, bytes_down=0, extra=item.extra)


async def publish_verified(link: EdgeLink, lm: LoadedLM, item: PendingCaption, outcome: EdgeOutcome) -> None:
    """The verified caption that replaces an unverified one (`extra.replaces`)."""
    extra = {**{k: v for k, v in item.extra.items() if k != "verified"}, **outcome.extra}
    await link.publish_result(result_message(link.device_id, outcome, lm.decode(outcome.result.token_ids), extra))


def caption_seed(device_id: str, boot_nonce: bytes, number: int, start_t: float) -> int:
    """The sampling seed (uint64) of one caption session when none was configured: a hash of
    the device id, `boot_nonce` (random, drawn at each start of the camera), the event's
    number and its start time. Seeds `cfg.seed + n` made every camera's n-th caption draw the
    same random numbers, so the fleet's sampled captions were correlated."""
    text = f"{PROTOCOL} caption seed\0{device_id}\0{boot_nonce.hex()}\0{number}\0{start_t!r}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _next_frame(frames):
    return next(frames, None)


class _Captioner:
    """Captions the events of one run, one at a time, and reports each as it goes."""

    def __init__(self, cfg: CameraConfig, lm: LoadedLM, extractor: FeatureExtractor, run: CameraRun,
                 link: EdgeLink, on_caption=None, on_event=None, announce=None) -> None:
        self.cfg, self.lm, self.extractor, self.run, self.link = cfg, lm, extractor, run, link
        self.on_caption, self.on_event, self.announce = on_caption, on_event, announce
        self.boot_nonce = os.urandom(16)  # fresh per start: seeds never repeat across restarts
        self.modes = CameraModes(forced=cfg.mode, privacy=cfg.local_only, ceiling=cfg.gamma_ceiling,
                                 pipelined=cfg.draft_ahead, caption_tokens=min(24, cfg.max_new_tokens))

    async def keep_up(self, period_s: float = 0.5) -> None:
        """Twice a second: the mode decided again (so a link that came back is used), unverified
        captions published once the broker is back, and the backlog verified."""
        modes, link = self.modes, self.link
        while True:
            await asyncio.sleep(period_s)
            modes.decide(link)
            try:
                await self.flush_backlog()
            except CLOUD_FAILURES as exc:  # the link went again: the next tick tries again
                log.info("offline captions wait: %s", exc)

    async def flush_backlog(self) -> None:
        modes, link = self.modes, self.link
        if link.connected:
            for item in modes.backlog.unpublished():
                await link.publish_result(offline_result(link.device_id, item))
                item.published = True
        await modes.verify_backlog(link, self.lm, lambda item, out: publish_verified(link, self.lm, item, out))

    async def __call__(self, event: MotionEvent) -> bool:
        """Caption one event; True when max_events is reached."""
        cfg, run, announce = self.cfg, self.run, self.announce
        run.events += 1
        facts = self.extractor.facts(event) if isinstance(self.extractor, ObjectFeatures) else None
        if self.on_event is not None:
            self.on_event(event, run.events, facts)
        if announce is not None:
            await announce.event_ended(event, run.events, facts)
        seed = cfg.seed + len(run.captions) if cfg.seed is not None \
            else caption_seed(cfg.device_id, self.boot_nonce, run.events, event.start_t)
        result = await describe_event(self.link, self.lm, self.extractor, event, cfg, seed, facts, modes=self.modes)
        if result is None:
            run.nothing_followed += 1
            log.info("event %d: no moving object followed, not captioned", run.events)
        else:
            run.captions.append(result)
        if announce is not None:
            await announce.event_done(result)
        if result is not None and self.on_caption is not None:
            self.on_caption(result)
        return result is not None and cfg.max_events is not None and len(run.captions) >= cfg.max_events


async def _watch(cfg: CameraConfig, source, detector: MotionDetector, run: CameraRun, caption: _Captioner,
                 announce=None) -> None:
    """Feed the source's frames to the motion detector, read on a worker thread, until the
    source ends (its open event is captioned) or ``max_events`` captions were made. A source
    that gives no frame for ``cfg.stall_s`` seconds ends its open event and is waited for."""
    loop = asyncio.get_running_loop()
    frames = iter(source)
    started, t0 = time.monotonic(), None
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = loop.run_in_executor(None, _next_frame, frames)
            done, _ = await asyncio.wait({pending}, timeout=cfg.stall_s)
            if not done:  # the source stalls: end the open event, keep waiting
                run.stalls += 1
                log.warning("%s: no frame for %.1f s", cfg.source, cfg.stall_s)
                stalled = detector.flush()
                if stalled is not None and await caption(stalled):
                    return
                continue
            frame, pending = pending.result(), None
            if frame is None:
                break
            run.frames += 1
            if cfg.realtime:
                t0 = frame.t if t0 is None else t0
                await asyncio.sleep(max(0.0, (frame.t - t0) - (time.monotonic() - started)))
            event = detector.feed(frame)
            if event is not None and await caption(event):
                return
            if announce is not None and detector.in_event:
                await announce.motion()
        tail = detector.flush()  # motion that lasted to the source's last frame
        if tail is not None:
            await caption(tail)
    finally:
        if pending is not None and not pending.done():
            # Let the reader thread finish its frame before the source is released.
            await asyncio.wait({pending}, timeout=cfg.stall_s)


async def run_camera(cfg: CameraConfig, lm: LoadedLM, extractor: FeatureExtractor | None = None,
                     on_caption=None, on_event=None, run: CameraRun | None = None,
                     announce=None) -> list[Caption]:
    """Watch `cfg.source` until it ends or `max_events` captions were made.

    Frames are read on a worker thread, so the MQTT link stays served while a source blocks.
    An event still open when the source ends is captioned, and so is one whose source gives
    no frame for ``cfg.stall_s`` seconds (the camera then keeps waiting for frames).
    ``on_event(event, number, facts)`` is called as each event ends (``facts``: the moving
    objects measured, or None for other extractors), ``on_caption(caption)`` as each
    caption is published; ``run`` (a :class:`CameraRun`) is filled in as it goes.
    ``announce`` (a :class:`camera_node.announce.CameraAnnouncer`, optional) publishes the
    camera's state, events and Home Assistant discovery as the run goes.
    """
    extractor = extractor or ObjectFeatures()
    run = run if run is not None else CameraRun()
    # The source first: a wrong path or URL fails before anything connects.
    with open_source(cfg.source) as source:
        # The camera keeps trying to reach its broker for as long as it runs (reconnect_s None):
        # meanwhile it captions on the device alone, and verifies those captions once back.
        async with EdgeLink(cfg.broker, cfg.device_id, topics=Topics(cfg.prefix), auth=cfg.auth,
                            timeout_s=cfg.timeout_s, keys=cfg.keys, reconnect_s=None) as link:
            caption = _Captioner(cfg, lm, extractor, run, link, on_caption, on_event, announce)
            keeping = asyncio.create_task(caption.keep_up())
            try:
                if announce is not None:
                    await announce.attach(link, run)
                await _watch(cfg, source, MotionDetector(cfg.motion), run, caption, announce)
                keeping.cancel()
                await caption.flush_backlog()  # what was captioned offline, verified before leaving
            finally:
                keeping.cancel()
                if announce is not None:
                    await announce.detach()
    return run.captions
