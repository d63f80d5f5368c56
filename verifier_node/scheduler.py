"""The batch scheduler: the opens and blocks a batch of messages produced, run through the
target model, their replies in the order the messages came.

Each message gets a slot: its replies at once, or a `PendingOpen` / `PendingBlock` whose
`result` is filled when the batch's model work is done. A second message for a session with
an open or a block in the batch (a QoS-1 duplicate, a close) first has the pending work done
(`Batch.before_dispatch`), so it sees its outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from schemas import DraftMsg, Resync
from speculative.batch import KVPool, verify_batch
from speculative.prefill import open_batch
from speculative.target import TargetSession
from speculative.sampling import SparseQ
from speculative.verify import Verdict

from .protocol import NOT_HELD
from .sessions import Session, SessionTable
from .stats import VerifierStats
from .stream_cost import StreamCost

log = logging.getLogger("edgespec.verifier")
Reply = tuple[str, bytes]


@dataclass
class PendingBlock:
    """A validated draft block waiting for its (possibly batched) target forward."""

    session: Session
    msg: DraftMsg
    q: SparseQ | None
    down: str
    result: Reply | None = None  # its VERDICT (or an error) once verified

    @property
    def seq(self) -> int | None:
        return self.msg.seq

    @property
    def replies(self) -> list[Reply]:
        return [] if self.result is None else [self.result]


@dataclass
class PendingOpen:
    """A validated session open waiting for its (possibly batched) prefill; `result` becomes
    its reply (the OPENED, or an error) once the prefill is done. `block`: the first block the
    OPEN carried, verified with the prefill or in the next batch; its result is then the one
    reply, the OPENED holding the block's VERDICT (`result` stays None)."""

    session: Session
    context: list[int]
    features: np.ndarray | None
    down: str
    result: Reply | None = None
    block: PendingBlock | None = None  # not verified if the open fails (its session has ended)

    @property
    def seq(self) -> int | None:
        return None  # an error about an open names no draft

    @property
    def replies(self) -> list[Reply]:
        return [r for r in (self.result, None if self.block is None else self.block.result) if r is not None]

    @property
    def prefill_length(self) -> int:
        """Positions the prefill feeds: the vision prefix and all but the last context token."""
        return (0 if self.features is None else int(self.features.shape[0])) + len(self.context) - 1


Pending = PendingOpen | PendingBlock
Slot = list[Reply] | PendingOpen | PendingBlock


class Outcomes(Protocol):
    """What the scheduler reports back (`core.VerifierCore`)."""

    def settle(self, session: Session, msg: DraftMsg, verdict: Verdict) -> bytes:
        """Record a verdict and build its reply."""
        ...

    def fail(self, items: list[Pending], message: str) -> None:
        """Answer each item whose model work failed with an INTERNAL error; drop its session."""
        ...


@dataclass(frozen=True)
class ModelCalls:
    """The target's batched forwards: `prefill(sessions, contexts)` opens sessions together,
    `verify(sessions, blocks, pool=, opening=)` verifies blocks (and opens more sessions) in one."""

    prefill: Callable[[list[TargetSession], list], None] = open_batch
    verify: Callable[..., list[Verdict]] = verify_batch


class Scheduler:
    """Runs opens and blocks through the target: prefills, verification forwards, and the
    blocks deferred to the next batch."""

    def __init__(self, pool: KVPool, sessions: SessionTable, stats: VerifierStats, outcomes: Outcomes, *,
                 batching: bool, model: ModelCalls = ModelCalls()):
        self.model = model
        self.pool = pool
        self.sessions = sessions
        self.stats = stats
        self.outcomes = outcomes
        self.batching = batching
        # Carried blocks whose open rode in the last forward, and the next (empty) block of each
        # streaming session (`defer`).
        self._deferred: list[PendingBlock] = []
        self.last_model_s: float | None = None  # the last model call's time, told in its verdicts
        # What a cloud-only token costs here now, told in verdicts (stream_cost.py): the
        # one-token forward (`VerifierCore.time_decode` at start, then every such model call)
        # and how busy the model calls keep the verifier.
        self.stream = StreamCost()

    @property
    def has_deferred(self) -> bool:
        """Blocks wait for the next batch (which may be given no messages)."""
        return bool(self._deferred)

    def defer(self, block: PendingBlock) -> None:
        """Verify `block` in the next batch (which the service runs at once)."""
        self._deferred.append(block)

    def take_deferred(self) -> list[Slot]:
        """The blocks deferred by the previous batch, still to verify: those that came in OPENs
        whose prefill rode in its forward (see `run`) and streaming sessions' next blocks; a
        RESYNC for one whose session was evicted meanwhile. A session that moved on, ended, or
        was replaced under its id drops its block."""
        carried, self._deferred = self._deferred, []
        out: list[Slot] = []
        for block in carried:
            session = block.session
            held = self.sessions.get(session.session_id)
            after = None if block.msg.seq == 0 else block.msg.seq - 1
            if held is session and session.protocol.last_seq == after:
                out.append(block)
            elif held is None and not session.protocol.ended:  # the device re-opens
                self.stats.stats["resyncs"] += 1
                resync = Resync(session.session_id, NOT_HELD)
                out.append([(block.down, session.protocol.codec.seal(block.down, resync))])
        return out

    def run(self, opens: list[PendingOpen], pending: list[PendingBlock]) -> None:
        """Fill the results of `opens` and `pending`.

        An open that carries its first block, with nothing to batch it with (or batching off),
        is prefilled and verified in one forward. With batching, an open whose prefill is no
        longer than the blocks' rows (a vision prefix and a short prompt) rides in the blocks'
        forward as one more row instead of costing a forward of its own; the block it carried
        is then verified in the next batch's forward (the next `Batch` takes it first, and the
        service runs that batch at once). Other opens are prefilled together in one forward
        before the blocks', and their blocks join the blocks' forward."""
        carrying = [o for o in opens if o.block is not None]
        if carrying and (not self.batching or len(opens) + len(pending) == 1):
            for o in carrying:
                self._open_with_block(o)
            opens = [o for o in opens if o.block is None]
        riding: list[PendingOpen] = []
        alone = opens
        if self.batching and opens and pending:
            width = max(len(p.msg.tokens) for p in pending) + 1
            riding, alone = [], []
            for o in opens:
                (riding if o.prefill_length <= width else alone).append(o)
        self._prefill(alone)
        self._verify([*pending, *_live_blocks(alone)], riding)
        self._deferred.extend(_live_blocks(riding))

    def _model(self, items: list[Pending], what: str, work: Callable[[], None]) -> bool:
        """Run `work` timed as model time; on an exception fail `items` (a bug must not take
        the other sessions down with it)."""
        started = time.perf_counter()
        try:
            with self.stats.batch_times.model():
                work()
        except Exception as exc:
            log.exception("%s failed for %d items", what, len(items))
            message = "verifier failed to open this session" if what != "verification" \
                else "verifier failed on this block"
            self.outcomes.fail(items, f"{message}: {type(exc).__name__}")
            return False
        ended = time.perf_counter()
        self.last_model_s = ended - started
        self.stream.observe_call(started, ended)
        return True

    def _prefill(self, opens: list[PendingOpen]) -> None:
        """Prefill the sessions opened in this batch (one forward when batching) and release
        their OPENED replies."""
        if not opens:
            return

        def work() -> None:
            if self.batching:
                self.model.prefill([o.session.target for o in opens], [(o.context, o.features) for o in opens])
            else:
                for o in opens:
                    o.session.target.open(o.context, o.features)

        if self._model(list(opens), "prefill", work):
            self.stats.stats["prefill_batches"] += 1
            _release_opened(opens)

    def _open_with_block(self, o: PendingOpen) -> None:
        """Prefill `o` and verify the block it carried in one forward."""
        block = o.block
        assert block is not None
        self.stats.batch_sizes[1] += 1
        verdicts: list[Verdict] = []

        def work() -> None:
            verdicts.append(o.session.target.open_and_verify(o.context, o.features, block.msg.tokens, block.q))

        if self._model([o], "open with a first block", work):
            self.stats.stats["opens_with_block"] += 1
            block.result = (o.down, self.outcomes.settle(o.session, block.msg, verdicts[0]))

    def _verify(self, pending: list[PendingBlock], opening: list[PendingOpen]) -> None:
        """Verify `pending` and fill their results; `opening` (with batching) are opened in
        the same forward."""
        if not pending:
            return
        self.stats.batch_sizes[len(pending)] += 1
        verdicts: list[Verdict] = []

        def work() -> None:
            # A single block alone takes the plain path: it has less to set up.
            if self.batching and (len(pending) > 1 or opening):
                verdicts.extend(self.model.verify(
                    [p.session.target for p in pending], [(p.msg.tokens, p.q) for p in pending], pool=self.pool,
                    opening=[(o.session.target, (o.context, o.features)) for o in opening]))
            else:
                verdicts.extend(p.session.target.verify(p.msg.tokens, p.q) for p in pending)

        if not self._model([*opening, *pending], "verification", work):
            return
        if len(pending) == 1 and not opening and not pending[0].msg.tokens and self.last_model_s is not None:
            self.stream.observe_decode(self.last_model_s)  # a block of no drafts: one new token
        if opening:
            self.stats.stats["opens_in_verify_batches"] += len(opening)
        _release_opened(opening)
        for p, v in zip(pending, verdicts):
            p.result = (p.down, self.outcomes.settle(p.session, p.msg, v))


def _live_blocks(opens: list[PendingOpen]) -> list[PendingBlock]:
    """The blocks `opens` carried whose sessions have not ended (an open that failed)."""
    return [o.block for o in opens if o.block is not None and not o.session.protocol.ended]


def _release_opened(opens: list[PendingOpen]) -> None:
    """Prefilled: each open's OPENED goes out (a carried block's verdict brings it otherwise)."""
    for o in opens:
        reply = o.session.protocol.opened()
        if o.block is None and reply is not None:
            o.result = (o.down, reply)


class Batch:
    """One batch's slots, and the opens and blocks waiting for the model."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.slots: list[Slot] = []
        self.opens: list[PendingOpen] = []
        self.pending: list[PendingBlock] = []
        self.waiting: set[bytes] = set()  # session ids of `opens` and `pending`
        for item in scheduler.take_deferred():  # blocks held by the previous batch come first
            self.add(item)

    def add(self, slot: Slot) -> None:
        if isinstance(slot, PendingBlock):
            self.pending.append(slot)
        elif isinstance(slot, PendingOpen):
            self.opens.append(slot)
        if not isinstance(slot, list):
            self.waiting.add(slot.session.session_id)
        self.slots.append(slot)

    def before_dispatch(self, session_id: bytes | None) -> None:
        """A message for `session_id` is about to touch its session: do what is pending first."""
        if session_id in self.waiting:
            self.flush()

    def flush(self) -> None:
        self.scheduler.run(self.opens, self.pending)
        self.opens, self.pending = [], []
        self.waiting.clear()

    def replies(self) -> list[Reply]:
        """Every slot's replies, in the order of the messages (after `flush`)."""
        return [reply for slot in self.slots for reply in (slot if isinstance(slot, list) else slot.replies)]
