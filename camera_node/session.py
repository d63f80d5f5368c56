"""One edge session over MQTT: open, draft/verify rounds, close. The algorithm itself lives in
speculative.loop.EdgeGeneration; this module only moves its blocks and verdicts on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from schemas import DraftMsg, Features, Resync, ResultMsg, SessionOpen, SparseQWire, VerdictMsg
from speculative.draft import DraftBlock, Drafter
from speculative.gamma_control import GammaController
from speculative.loop import EdgeGeneration, GenerationResult, StopRule
from speculative.models import LoadedLM
from speculative.sampling import QRule, SamplingParams

from .channel import SessionChannel
from .link import EdgeLink, Traffic, VerifierLost, VerifierTimeout
from .machine import BlockSent, Closed, DeviceSession, Fail, Lost, Opened, OpenSent, Resynced, State, Verdict
from .settings import DEFAULTS

log = logging.getLogger("edgespec.camera")
MAX_REOPENS_PER_ROUND = DEFAULTS.reopens

FEATURE_WIRE_DTYPE = "float16"


@dataclass(frozen=True)
class EdgeRequest:
    """What the device asks one session to generate."""

    prompt_ids: list[int]
    features: np.ndarray | None = None
    sampling: SamplingParams = DEFAULTS.sampling
    gamma: int = DEFAULTS.gamma
    max_new_tokens: int = DEFAULTS.max_new_tokens
    seed: int = 0
    q_rule: QRule = DEFAULTS.q_rule
    stop_token_ids: tuple[int, ...] | None = None  # None: the draft model's eos ids
    draft_ahead: bool = DEFAULTS.draft_ahead  # see camera_node/settings.py
    block_in_open: bool = DEFAULTS.block_in_open
    busy_poll_s: float = DEFAULTS.busy_poll_s  # see exchange_drafting_ahead
    # Adaptive draft length: `gamma` is then the ceiling negotiated in the OPEN, and the
    # controller (speculative/gamma_control.py) picks each round's gamma from what it measured.
    controller: GammaController | None = field(default=None, compare=False)

    def stops(self, lm: LoadedLM) -> tuple[int, ...]:
        """The stop tokens: as asked, else the model's eos ids."""
        return tuple(lm.eos_token_ids if self.stop_token_ids is None else self.stop_token_ids)


@dataclass
class EdgeOutcome:
    session_id: bytes
    verifier_id: str
    result: GenerationResult
    traffic: Traffic
    resyncs: int = 0
    feature_bytes: int = 0
    round_seconds: list[float] = field(default_factory=list)  # send -> verdict, per round
    extra: dict = field(default_factory=dict)


def wire_features(features: np.ndarray | None) -> tuple[Features | None, np.ndarray | None]:
    """Features as sent (fp16) and as both sides then see them, so draft and target agree."""
    if features is None:
        return None, None
    wire = Features.from_array(features, FEATURE_WIRE_DTYPE)
    return wire, wire.to_array()


def result_message(device_id: str, outcome: EdgeOutcome, text: str, extra: dict | None = None) -> ResultMsg:
    """The dashboard record of a finished session."""
    r = outcome.result
    return ResultMsg(
        device_id=device_id, session_id=outcome.session_id.hex(), ts=time.time(), text=text,
        token_ids=list(r.token_ids), rounds=r.rounds, acceptance_rate=round(r.acceptance_rate, 4),
        mean_accepted=round(r.mean_accepted, 4), bytes_up=outcome.traffic.up, bytes_down=outcome.traffic.down,
        extra={"verifier_id": outcome.verifier_id, "feature_bytes": outcome.feature_bytes, **outcome.extra,
               **(extra or {})},
    )


def q_to_wire(block: DraftBlock) -> SparseQWire | None:
    if block.q is None:
        return None
    return SparseQWire.from_arrays(block.q.ids.numpy(), block.q.weights.numpy())


async def exchange_drafting_ahead(channel, message: DraftMsg | SessionOpen, edge: EdgeGeneration | None,
                                  busy_poll_s: float = 0.0):
    """Send a block (a DRAFT, or an OPEN carrying the first one) and wait for its verdict;
    meanwhile draft the next block a forward at a time (`edge`; None: only wait).

    Everything runs on the event loop's thread, which yields between forwards: the message is
    on the socket before the first forward, and a verdict that lands during one is taken when
    it ends (~1 ms). With nothing left to draft the loop keeps polling its socket for
    `busy_poll_s` before it sleeps in the kernel: on a virtualised CPU a process that slept can
    run its next forward about twice as slow (`edgespec bench` measures it), so a device that
    can spare the CPU answers its verdicts sooner. 0 sleeps at once (battery-powered devices,
    and simulated fleets sharing a machine with their verifier).
    """
    reply = asyncio.ensure_future(channel.open_with_block(message) if isinstance(message, SessionOpen)
                                  else channel.exchange(message))
    try:
        await asyncio.sleep(0)  # the task sends the message now, before any forward
        stepping = edge is not None
        poll_until = time.perf_counter() + busy_poll_s
        while not reply.done():
            if channel.has_downlink():
                # A reply came in: the waiting task takes it before anything else runs here (a
                # draft forward now would hold the verdict back for its whole length).
                await asyncio.sleep(0)
                continue
            if stepping and edge is not None:
                stepping = edge.draft_ahead_step()
                poll_until = time.perf_counter() + busy_poll_s
            elif time.perf_counter() >= poll_until:
                await asyncio.wait((reply,))
                break
            else:
                os.sched_yield()
            await asyncio.sleep(0)
        return await reply
    finally:
        if not reply.done():  # a draft forward raised, or this session was cancelled
            reply.cancel()


async def wait_opened_retrying(channel: SessionChannel, open_msg: SessionOpen, session: DeviceSession) -> int:
    """Wait for the OPENED of an OPEN already sent; if a verifier went offline meanwhile (the
    OPEN may have gone to it through the shared subscription) or the link reconnected, send
    the OPEN again, as long as `session` allows. Returns how many times it was re-sent."""
    resent = 0
    while True:
        try:
            await (channel.reopen(open_msg) if resent else channel.wait_opened())
        except VerifierLost as exc:
            if isinstance(session.step(Lost(exc)), Fail):
                raise
            log.warning("%s; sending the open again", exc)
            resent += 1
            continue
        session.step(Opened(channel.verifier_id))
        return resent


async def verify_block(channel: SessionChannel, session: DeviceSession, edge: EdgeGeneration, draft: DraftMsg,
                       open_msg: SessionOpen, req: EdgeRequest, first: SessionOpen | None = None) -> VerdictMsg:
    """Send one block (a DRAFT, or `first`: the OPEN carrying block 0) and return its verdict.
    When the session is lost (a RESYNC, a timeout, a verifier gone) it is re-opened with the
    full context on the pool and the block sent again, as often as `session`'s policy allows."""
    session.step(OpenSent(carries_block=True) if first is not None else BlockSent(draft.seq))
    reopen = False
    while True:
        try:
            if reopen:
                await channel.reopen(replace(open_msg, generated_ids=list(edge.generated)))
                session.step(Opened(channel.verifier_id))
                session.step(BlockSent(draft.seq))
            ahead = req.draft_ahead and edge.ahead_worthwhile
            message = first if first is not None and not reopen else draft
            reply = await exchange_drafting_ahead(channel, message, edge if ahead else None, req.busy_poll_s)
        except VerifierTimeout as exc:  # the verifier died, went silent, or the link dropped
            if isinstance(session.step(Lost(exc)), Fail):
                raise
            log.warning("%s; re-opening the session on the pool", exc)
            reopen = True
            continue
        if not isinstance(reply, Resync):
            if session.state is not State.ACTIVE:  # the verdict of the OPEN: it was opened
                session.step(Opened(channel.verifier_id))
            session.step(Verdict(reply.seq, reply.done))
            return reply
        action = session.step(Resynced(reply.reason))
        if isinstance(action, Fail):
            raise action.error
        reopen = True


def open_message(session_id: bytes, lm: LoadedLM, req: EdgeRequest, wire: Features | None,
                 stops: tuple[int, ...]) -> SessionOpen:
    return SessionOpen(
        session_id=session_id, prompt_ids=list(req.prompt_ids), features=wire,
        temperature=req.sampling.temperature, top_k=req.sampling.top_k, top_p=req.sampling.top_p,
        seed=req.seed, gamma=req.gamma, q_top=req.q_rule.bound, max_new_tokens=req.max_new_tokens,
        stop_token_ids=list(stops), tokenizer_fp=lm.fingerprint,
    )


async def _generate(channel: SessionChannel, session: DeviceSession, edge: EdgeGeneration, prepare,
                    open_msg: SessionOpen, req: EdgeRequest) -> tuple[bool, list[float]]:
    """The session's rounds; returns whether the OPEN carried the first block, and each
    round's seconds from send to verdict."""
    # 1. Draft the first block and send it in the OPEN (the verifier prefills and verifies it
    # in one forward, and its verdict follows the OPENED); or open first (the OPEN is on the
    # socket when send_open returns) and draft while the verifier prefills.
    block = prepare() if req.block_in_open else None
    carried = block is not None
    if not carried:
        await channel.send_open(open_msg)
        session.step(OpenSent())
        if not req.block_in_open:
            block = prepare()
        await wait_opened_retrying(channel, open_msg, session)
    seq = 0
    round_seconds: list[float] = []
    ctrl = req.controller
    while not edge.done:
        # 2. Draft a block (the first was drafted before or while the session opened) and send
        # it with its exact q; 3. a lost session is re-opened and the block sent again.
        drafting = time.perf_counter()
        if block is None:
            if ctrl is not None:
                edge.gamma = ctrl.next_gamma()
            block = edge.next_block()
        draft_s = time.perf_counter() - drafting
        draft = DraftMsg(channel.session_id, seq, edge.committed_len, block.tokens, q_to_wire(block))
        first = None
        if carried and seq == 0:
            first = replace(open_msg, first_block=list(block.tokens), first_q=draft.q)
        sent_at = time.perf_counter()
        reply = await verify_block(channel, session, edge, draft, open_msg, req, first)
        # 4. Apply the verdict.
        round_seconds.append(time.perf_counter() - sent_at)
        if ctrl is not None:
            k = len(block.tokens)
            ctrl.observe(reply.n_accepted, k, wait_s=round_seconds[-1],
                         verify_s=None if reply.verify_ms is None else reply.verify_ms / 1000,
                         stream_s=None if reply.stream_us is None else reply.stream_us / 1e6,
                         draft_s_per_token=draft_s / k if k and seq else None)
        edge.apply(reply.n_accepted, reply.next_token)
        block = None
        seq += 1
    return carried, round_seconds


async def run_edge_session(link: EdgeLink, lm: LoadedLM, req: EdgeRequest, drafter=None) -> EdgeOutcome:
    """Generate with the verifier reached through `link`; returns tokens, statistics and traffic.

    `drafter` replaces the draft model (e.g. speculative.recorded.RecordedDrafter in load
    tests); `lm` still gives the tokenizer fingerprint and stop tokens.
    """
    started = time.perf_counter()
    session_id = os.urandom(16)
    channel = link.channel(session_id)
    session = DeviceSession(link.retry)
    stops = req.stops(lm)
    wire, features = wire_features(req.features)
    open_msg = open_message(session_id, lm, req, wire, stops)
    try:
        drafter = drafter or Drafter(lm, req.sampling, seed=req.seed, q_rule=req.q_rule)
        edge = EdgeGeneration(drafter, list(req.prompt_ids), req.gamma, StopRule(req.max_new_tokens, stops))
        if req.controller is not None:
            edge.gamma = req.controller.next_gamma()

        def prepare():
            drafter.start(list(req.prompt_ids), features)
            return None if edge.done else edge.next_block()

        carried, round_seconds = await _generate(channel, session, edge, prepare, open_msg, req)
    finally:
        # The verifier said done: it has ended the session, no CLOSE to send.
        await channel.close(finished=session.finished)
        session.step(Closed())
    result = edge.result
    # Verified alone, an OPEN needs a prefill forward unless it carried the first block (or
    # has nothing to prefill: one token, no features); so does every re-open.
    prefills = (0 if carried or (len(req.prompt_ids) == 1 and wire is None) else 1) + session.resyncs
    result.target_forwards = result.rounds + prefills
    result.seconds = time.perf_counter() - started
    return EdgeOutcome(
        session_id=session_id,
        verifier_id=channel.verifier_id or "",
        result=result,
        traffic=channel.traffic,
        resyncs=session.resyncs,
        feature_bytes=len(wire.data) if wire is not None else 0,
        round_seconds=round_seconds,
        extra={} if req.controller is None else {"link": link_measurements(req.controller)},
    )


def link_measurements(ctrl: GammaController) -> dict:
    """What the device measured of its link, as published with each result."""
    t = ctrl.timing()
    return {"rtt_ms": round(t.rtt_s * 1e3, 2), "acceptance": round(ctrl.acceptance.value, 4),
            "draft_ms_per_token": round(t.draft_s * 1e3, 3), "verify_ms": round(t.verify_s(ctrl.gamma) * 1e3, 2),
            "gamma": ctrl.gamma}


class NoDraft:
    """The `DraftSource` of a cloud-only session: the device drafts nothing."""

    forwards = 0

    def start(self, prompt_ids: list[int], features=None) -> None:
        pass

    def propose(self, gamma: int) -> DraftBlock:
        return DraftBlock([], None)

    def draft_ahead_step(self, next_gamma: int) -> bool:
        return False

    def commit(self, n_accepted: int, next_token: int) -> None:
        pass


async def run_cloud_session(link: EdgeLink, lm: LoadedLM, req: EdgeRequest) -> EdgeOutcome:
    """Cloud-only: the verifier generates the whole continuation with the target and streams
    it back, one VERDICT per token, while the device only listens (no draft model runs). The
    OPEN still goes out sealed, and the tokens come back sealed."""
    started = time.perf_counter()
    session_id = os.urandom(16)
    channel = link.channel(session_id)
    stops = req.stops(lm)
    wire, _ = wire_features(req.features)
    open_msg = replace(open_message(session_id, lm, replace(req, gamma=0), wire, stops),
                       first_block=[], stream=True)
    edge = EdgeGeneration(NoDraft(), list(req.prompt_ids), 0, StopRule(req.max_new_tokens, stops))
    round_seconds: list[float] = []
    finished = False
    try:
        sent_at = time.perf_counter()
        reply = await channel.open_with_block(open_msg)
        seq = 0
        while True:
            if isinstance(reply, Resync):
                raise VerifierLost(f"the verifier lost the streaming session: {reply.reason}")
            round_seconds.append(time.perf_counter() - sent_at)
            edge.next_block()
            edge.apply(reply.n_accepted, reply.next_token)
            finished = reply.done
            if edge.done or reply.done:
                break
            seq += 1
            sent_at = time.perf_counter()
            reply = await channel._verdict(seq)
    finally:
        await channel.close(finished=finished)
    result = edge.result
    result.target_forwards = result.rounds
    result.seconds = time.perf_counter() - started
    return EdgeOutcome(session_id=session_id, verifier_id=channel.verifier_id or "", result=result,
                       traffic=channel.traffic, feature_bytes=len(wire.data) if wire is not None else 0,
                       round_seconds=round_seconds, extra={"mode": "cloud_only"})
