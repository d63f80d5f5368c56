"""The camera's mode, moment by moment, and a caption made in it.

`CameraModes` keeps what the device measured (its `GammaController`: acceptance, draft time,
round trip, verifier time; the cloud-only and edge-only rates it saw), asks the
`ModePolicy` (camera_node/mode_policy.py) for the mode before each caption and once a second
(`tick`), and makes the caption:

* ``hybrid``: speculative decoding, the draft length chosen each round by the controller;
* ``cloud_only``: the verifier's target generates and streams the tokens back;
* ``edge_only``: the draft model alone (`offline_captions.caption_offline`), published as
  unverified and kept in the backlog until `verify_backlog` has a verifier check it.

A hybrid or cloud-only caption whose session fails (the broker or the verifier went away)
is made edge-only instead, so the camera never stops captioning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from aiomqtt import MqttError

from speculative.gamma_control import Ewma, GammaController, GammaSettings, latency_rate
from speculative.models import LoadedLM

from .errors import BrokerUnreachable, ResyncFailed, VerifierRejected, VerifierTimeout
from .link import EdgeLink
from .mode_policy import LinkView, Mode, ModePolicy, ModeSettings, predict_cloud_only, predict_edge_only
from .offline_captions import (MAX_REPLAY_GAMMA, OfflineCaptions, PendingCaption, caption_offline, new_offline_id,
                               verify_later)
from .session import EdgeOutcome, EdgeRequest, link_measurements, run_cloud_session, run_edge_session

log = logging.getLogger("edgespec.camera")
MODE_CHOICES = ("auto", "hybrid", "cloud", "edge")
CLOUD_FAILURES = (VerifierTimeout, VerifierRejected, ResyncFailed, BrokerUnreachable, MqttError, ConnectionError)
T = TypeVar("T")
FAILURE_HOLD_S = 2.0  # after a failed session the link counts as unreachable this long
EXPLORE_EVERY = 20  # captions between two measurements of the mode not in use
# The first measurement of the mode not in use is skipped while its prediction is below this
# share of the current mode's measured rate (it could not win even if predicted 40% low).
EXPLORE_IF_PREDICTED = 0.6
# A cloud-only token's cost beside the verifier's forward: its handling and publishing of the
# token and the device's receipt (the built-in pair streamed a token in about 3.4 ms, its
# one-token forward about 1.5 ms of that).
CLOUD_TOKEN_OVERHEAD_S = 0.002


async def while_connected(link: EdgeLink, session: Awaitable[T], poll_s: float = 0.1) -> T:
    """`session`'s result, unless the broker connection drops first: then it is cancelled and
    BrokerUnreachable raised at once (waiting for its reply timeouts would stall the camera)."""
    task = asyncio.ensure_future(session)
    try:
        while not task.done():
            if not link.connected:
                raise BrokerUnreachable("the broker connection dropped during the session")
            await asyncio.wait({task}, timeout=poll_s)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


@dataclass
class Captioned:
    """One caption and how it was made."""

    mode: Mode
    token_ids: list[int]
    text: str
    seconds: float
    outcome: EdgeOutcome | None = None  # hybrid and cloud-only sessions
    pending: PendingCaption | None = None  # edge-only: waits for verification
    reason: str = ""

    @property
    def verified(self) -> bool:
        return self.outcome is not None

    def extra(self) -> dict:
        """What the result message says of the mode (see docs/topics.md)."""
        out: dict = {"mode": self.mode.value}
        if self.outcome is not None:
            out.update(self.outcome.extra)
        else:
            out["verified"] = False
        return out


@dataclass
class CameraModes:
    """Mode choice, measurements and the offline backlog of one camera."""

    forced: str = "auto"  # one of MODE_CHOICES: "auto" lets the policy choose
    privacy: bool = False  # nothing may leave the device: edge-only
    ceiling: int = 8  # the most drafts per block a hybrid session may use
    pipelined: bool = True
    battery: Callable[[], tuple[float | None, bool]] = lambda: (None, True)  # (fraction, on mains)
    caption_tokens: int = 24  # a caption's usual length, for the cloud-only prediction
    clock: Callable[[], float] = time.monotonic
    backlog: OfflineCaptions = field(default_factory=OfflineCaptions)
    policy: ModePolicy = field(default_factory=lambda: ModePolicy(ModeSettings(), mode=Mode.HYBRID))
    controller: GammaController = field(init=False)
    # Tokens per second of the captions made in each mode (what the policy compares once
    # measured; before that, hybrid is predicted by the controller's model).
    cloud_tps: Ewma = field(default_factory=lambda: Ewma(prior=0.0, alpha=0.3))
    hybrid_tps: Ewma = field(default_factory=lambda: Ewma(prior=0.0, alpha=0.3))
    edge_tps: Ewma = field(default_factory=lambda: Ewma(prior=0.0))
    explore_every: int = EXPLORE_EVERY
    captions: int = 0
    _explored_at: int = field(default=0, init=False)
    failed_at: float | None = None
    last_reason: str = ""

    def __post_init__(self) -> None:
        if self.forced not in MODE_CHOICES:
            raise ValueError(f"mode {self.forced!r}: one of {', '.join(MODE_CHOICES)}")
        if not 1 <= self.ceiling <= MAX_REPLAY_GAMMA:
            raise ValueError(f"gamma ceiling {self.ceiling}: between 1 and {MAX_REPLAY_GAMMA}")
        self.controller = GammaController(self.ceiling, GammaSettings(g_max=self.ceiling, pipelined=self.pipelined))

    # ------------------------------------------------------------------ choosing

    def reachable(self, link: EdgeLink) -> bool:
        recent_failure = self.failed_at is not None and self.clock() - self.failed_at < FAILURE_HOLD_S
        # Verifiers announce themselves with a retained status, which a device receives as it
        # connects: none online, no session could be answered.
        return link.connected and bool(link.verifiers_online()) and not recent_failure

    def predicted_hybrid(self) -> float:
        """Hybrid tokens per second from the controller's model (acceptance, timings)."""
        ctrl = self.controller
        return latency_rate(ctrl.acceptance.profile(max(1, ctrl.gamma)), ctrl.gamma, ctrl.timing(),
                            pipelined=self.pipelined)

    def predicted_cloud(self) -> float | None:
        """Cloud-only tokens per second from what hybrid rounds measured: the round trip, and
        what a streamed token costs the verifier as it tells it plus `CLOUD_TOKEN_OVERHEAD_S`
        (else its block time, modelled at no drafts). None before any verdict: on priors cloud-only is no
        candidate (the camera starts in hybrid and measures first)."""
        ctrl = self.controller
        if not ctrl.verifier.observations:
            return None
        timing = ctrl.timing()
        per_token = ctrl.stream_s.value + CLOUD_TOKEN_OVERHEAD_S if ctrl.stream_s.samples else timing.verify_s(0)
        return predict_cloud_only(timing.rtt_s, per_token, self.caption_tokens)

    def view(self, link: EdgeLink) -> LinkView:
        ctrl = self.controller
        timing = ctrl.timing()
        hybrid = self.hybrid_tps.value if self.hybrid_tps.samples else self.predicted_hybrid()
        cloud = self.cloud_tps.value if self.cloud_tps.samples else self.predicted_cloud()
        fraction, on_mains = self.battery()
        return LinkView(privacy=self.privacy or self.forced == "edge", reachable=self.reachable(link),
                        rtt_ms=timing.rtt_s * 1e3, acceptance=ctrl.acceptance.value, battery=fraction,
                        on_mains=on_mains,
                        edge_tps=self.edge_tps.value if self.edge_tps.samples else predict_edge_only(timing.draft_s),
                        cloud_tps=cloud, hybrid_tps=hybrid)

    def decide(self, link: EdgeLink) -> Mode:
        view = self.view(link)
        if self.forced in ("hybrid", "cloud") and view.reachable:
            self.last_reason = "configured"
            return Mode.HYBRID if self.forced == "hybrid" else Mode.CLOUD_ONLY
        decision = self.policy.decide(view, self.clock())
        if decision.switched:
            log.info("mode %s (%s)", decision.mode.value, decision.reason)
        self.last_reason = decision.reason
        return decision.mode

    # ------------------------------------------------------------------ captioning

    def explore(self, mode: Mode) -> Mode:
        """Now and then one caption in the other of hybrid and cloud-only, so that both rates
        are measured, and measured again as the network changes: once the current mode has
        two measured captions and the other none (unless the other's prediction is below
        `EXPLORE_IF_PREDICTED` of the current rate), then every `explore_every` captions."""
        if self.forced != "auto" or mode is Mode.EDGE_ONLY:
            return mode
        other, here = (Mode.CLOUD_ONLY, self.hybrid_tps) if mode is Mode.HYBRID else (Mode.HYBRID, self.cloud_tps)
        there = self.cloud_tps if other is Mode.CLOUD_ONLY else self.hybrid_tps
        first = there.samples == 0 and here.samples >= 2 and not self._hopeless(other, here.value)
        again = bool(self.explore_every) and self.captions - self._explored_at >= self.explore_every
        if not (first or again):
            return mode
        self._explored_at = self.captions
        self.last_reason = "measuring the other mode"
        return other

    def _hopeless(self, mode: Mode, current_tps: float) -> bool:
        """Whether `mode`'s prediction is below `EXPLORE_IF_PREDICTED` of the current rate."""
        predicted = self.predicted_cloud() if mode is Mode.CLOUD_ONLY else self.predicted_hybrid()
        return predicted is not None and predicted < EXPLORE_IF_PREDICTED * current_tps

    async def caption(self, link: EdgeLink, lm: LoadedLM, req: EdgeRequest) -> Captioned:
        """One caption in the mode chosen now (edge-only when the chosen one fails)."""
        mode = self.explore(self.decide(link))
        self.captions += 1
        if mode is Mode.EDGE_ONLY:
            return self.offline(lm, req, self.last_reason)
        try:
            if mode is Mode.CLOUD_ONLY:
                outcome = await while_connected(link, run_cloud_session(link, lm, req))
                r = outcome.result
                if r.seconds > 0:
                    self.cloud_tps.observe(len(r.token_ids) / r.seconds)
            else:
                outcome = await while_connected(link, run_edge_session(
                    link, lm, replace(req, gamma=self.ceiling, controller=self.controller)))
                outcome.extra["mode"] = Mode.HYBRID.value
                r = outcome.result
                if r.seconds > 0:
                    self.hybrid_tps.observe(len(r.token_ids) / r.seconds)
        except CLOUD_FAILURES as exc:
            self.failed_at = self.clock()
            log.warning("%s; captioning on the device alone", exc)
            return self.offline(lm, req, f"{mode.value} failed")
        self.failed_at = None
        r = outcome.result
        return Captioned(mode, list(r.token_ids), lm.decode(r.token_ids), r.seconds, outcome=outcome,
                         reason=self.last_reason)

    def offline(self, lm: LoadedLM, req: EdgeRequest, reason: str) -> Captioned:
        """An edge-only caption, kept in the backlog for verification."""
        started = time.perf_counter()
        recording = caption_offline(lm, req)
        seconds = time.perf_counter() - started
        if recording.tokens and seconds > 0:
            self.edge_tps.observe(len(recording.tokens) / seconds)
        text = lm.decode(recording.tokens)
        pending = PendingCaption(new_offline_id(), req, recording, text)
        if not self.privacy and self.forced != "edge":  # nothing leaves a private device, ever
            self.backlog.add(pending)
        return Captioned(Mode.EDGE_ONLY, list(recording.tokens), text, seconds, pending=pending, reason=reason)

    def may_verify(self, link: EdgeLink) -> bool:
        """Whether offline captions may go for verification now: a verifier is reachable, the
        camera is out of edge-only (or configured to a mode that drafts with a verifier), and
        nothing keeps its captions on the device."""
        out_of_edge = self.policy.mode is not Mode.EDGE_ONLY or self.forced in ("hybrid", "cloud")
        return out_of_edge and self.reachable(link) and not self.privacy and self.forced != "edge"

    async def verify_backlog(self, link: EdgeLink, lm: LoadedLM,
                             publish: Callable[[PendingCaption, EdgeOutcome], Awaitable[None]],
                             limit: int | None = None) -> int:
        """Verify queued captions, oldest first, while a verifier is reachable; `publish`
        sends each verified caption. Returns how many were verified."""
        done = 0
        while (item := self.backlog.oldest()) is not None and (limit is None or done < limit):
            if not self.may_verify(link):
                break
            item.tries += 1
            try:
                outcome = await while_connected(link, verify_later(link, lm, item))
            except CLOUD_FAILURES as exc:
                self.failed_at = self.clock()
                log.warning("verifying an offline caption: %s", exc)
                break
            outcome.extra["mode"] = Mode.HYBRID.value
            self.backlog.done(item)
            await publish(item, outcome)
            done += 1
        return done

    def measurements(self) -> dict:
        return link_measurements(self.controller)


__all__ = ["CLOUD_FAILURES", "MODE_CHOICES", "CameraModes", "Captioned"]
