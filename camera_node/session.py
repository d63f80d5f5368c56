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

from schemas import DraftMsg, Features, Resync, ResultMsg, SessionOpen, SparseQWire
from speculative.draft import DraftBlock, Drafter
from speculative.loop import EdgeGeneration, GenerationResult, StopRule
from speculative.models import LoadedLM
from speculative.sampling import DEFAULT_Q_TOP, SamplingParams

from .link import EdgeLink, ResyncFailed, Traffic, VerifierLost, VerifierTimeout

log = logging.getLogger("edgespec.camera")
MAX_REOPENS_PER_ROUND = 3

FEATURE_WIRE_DTYPE = "float16"


@dataclass(frozen=True)
class EdgeRequest:
    """What the device asks one session to generate."""

    prompt_ids: list[int]
    features: np.ndarray | None = None
    sampling: SamplingParams = SamplingParams()
    gamma: int = 4
    max_new_tokens: int = 32
    seed: int = 0
    q_top: int = DEFAULT_Q_TOP
    stop_token_ids: tuple[int, ...] | None = None  # None: the draft model's eos ids
    draft_ahead: bool = True  # draft the next block while this one is verified (see docs/benchmarks.md)
    block_in_open: bool = True  # the OPEN carries the first block: one round trip and one forward fewer
    busy_poll_s: float = 0.02  # poll the socket this long for a verdict before sleeping (see exchange_drafting_ahead)


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


def result_message(device_id: str, outcome: "EdgeOutcome", text: str, extra: dict | None = None) -> ResultMsg:
    """The dashboard record of a finished session."""
    r = outcome.result
    return ResultMsg(
        device_id=device_id, session_id=outcome.session_id.hex(), ts=time.time(), text=text,
        token_ids=list(r.token_ids), rounds=r.rounds, acceptance_rate=round(r.acceptance_rate, 4),
        mean_accepted=round(r.mean_accepted, 4), bytes_up=outcome.traffic.up, bytes_down=outcome.traffic.down,
        extra={"verifier_id": outcome.verifier_id, "feature_bytes": outcome.feature_bytes, **(extra or {})},
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
            if stepping:
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


async def wait_opened_retrying(channel, open_msg: SessionOpen) -> int:
    """Wait for the OPENED of an OPEN already sent; if a verifier went offline meanwhile (the
    OPEN may have gone to it through the shared subscription) or the link reconnected, send
    the OPEN again. Returns how many times it was re-sent."""
    for attempt in range(MAX_REOPENS_PER_ROUND + 1):
        try:
            await (channel.reopen(open_msg) if attempt else channel.wait_opened())
            return attempt
        except VerifierLost as exc:
            if attempt == MAX_REOPENS_PER_ROUND:
                raise
            log.warning("%s; sending the open again", exc)
    raise AssertionError("unreachable")


async def run_edge_session(link: EdgeLink, lm: LoadedLM, req: EdgeRequest, drafter=None) -> EdgeOutcome:
    """Generate with the verifier reached through `link`; returns tokens, statistics and traffic.

    `drafter` replaces the draft model (e.g. speculative.recorded.RecordedDrafter in load
    tests); `lm` still gives the tokenizer fingerprint and stop tokens.
    """
    started = time.perf_counter()
    session_id = os.urandom(16)
    channel = link.channel(session_id)
    stops = lm.eos_token_ids if req.stop_token_ids is None else req.stop_token_ids
    wire, features = wire_features(req.features)
    open_msg = SessionOpen(
        session_id=session_id, prompt_ids=list(req.prompt_ids), features=wire,
        temperature=req.sampling.temperature, top_k=req.sampling.top_k, top_p=req.sampling.top_p,
        seed=req.seed, gamma=req.gamma, q_top=req.q_top, max_new_tokens=req.max_new_tokens,
        stop_token_ids=list(stops), tokenizer_fp=lm.fingerprint,
    )
    resyncs = 0
    finished = False  # the verifier said done: it has ended the session, no CLOSE to send
    try:
        drafter = drafter or Drafter(lm, req.sampling, seed=req.seed, q_top=req.q_top)
        edge = EdgeGeneration(drafter, list(req.prompt_ids), req.gamma, StopRule(req.max_new_tokens, tuple(stops)))

        def prepare():
            drafter.start(list(req.prompt_ids), features)
            return None if edge.done else edge.next_block()

        # 1. Draft the first block and send it in the OPEN (the verifier prefills and verifies
        # it in one forward, and its verdict follows the OPENED); or open first (the OPEN is on
        # the socket when send_open returns) and draft while the verifier prefills.
        block = prepare() if req.block_in_open else None
        carried = block is not None
        if not carried:
            await channel.send_open(open_msg)
            if not req.block_in_open:
                block = prepare()
            resyncs += await wait_opened_retrying(channel, open_msg)
        seq = 0
        round_seconds: list[float] = []
        while not edge.done:
            # 2. Draft a block (the first was drafted before or while the session opened) and
            # send it with its exact q.
            if block is None:
                block = edge.next_block()
            draft = DraftMsg(session_id, seq, edge.committed_len, block.tokens, q_to_wire(block))
            first: SessionOpen | None = None
            if carried and seq == 0:
                first = replace(open_msg, first_block=list(block.tokens), first_q=draft.q)
            sent_at = time.perf_counter()
            reopen = False
            for attempt in range(MAX_REOPENS_PER_ROUND + 1):
                try:
                    if reopen:
                        # 3. The verifier lost the session (or we lost it): re-open with the full
                        # context on the pool, then resend the same block.
                        await channel.reopen(replace(open_msg, generated_ids=list(edge.generated)))
                    ahead = req.draft_ahead and edge.ahead_worthwhile
                    message = first if first is not None and not reopen else draft
                    reply = await exchange_drafting_ahead(channel, message, edge if ahead else None, req.busy_poll_s)
                except VerifierTimeout as exc:  # the verifier died, went silent, or the link dropped
                    if attempt == MAX_REOPENS_PER_ROUND:
                        raise
                    if channel.verifier_id is None and not isinstance(exc, VerifierLost):
                        raise  # no verifier ever answered the open: say so now
                    log.warning("%s; re-opening the session on the pool", exc)
                    reply = Resync(session_id, str(exc))
                if not isinstance(reply, Resync):
                    break
                if attempt == MAX_REOPENS_PER_ROUND:
                    raise ResyncFailed(f"session lost {attempt + 1} times in one round: {reply.reason}")
                resyncs += 1
                reopen = True
            # 4. Apply the verdict.
            round_seconds.append(time.perf_counter() - sent_at)
            edge.apply(reply.n_accepted, reply.next_token)
            finished = reply.done
            block = None
            seq += 1
    finally:
        await channel.close(finished=finished)
    result = edge.result
    # Verified alone, an OPEN needs a prefill forward unless it carried the first block (or
    # has nothing to prefill: one token, no features); so does every re-open.
    prefills = (0 if carried or (len(req.prompt_ids) == 1 and wire is None) else 1) + resyncs
    result.target_forwards = result.rounds + prefills
    result.seconds = time.perf_counter() - started
    return EdgeOutcome(
        session_id=session_id,
        verifier_id=channel.verifier_id or "",
        result=result,
        traffic=channel.traffic,
        resyncs=resyncs,
        feature_bytes=len(wire.data) if wire is not None else 0,
        round_seconds=round_seconds,
    )
