"""The verifier's message handling, free of MQTT: (topic, payload) in, replies out.

A pipeline: the gate (topic, per-device rate) and decoding, then admission checks
(admission.py), then the session's protocol state machine (protocol.py), whose actions the
batch scheduler (scheduler.py) runs through the target model; replies are sealed by the
session's codec (security/session_codec.py), chosen once at its OPEN.

Every input is validated before any model work; every rejection is a typed `WireError`,
counted by reason, and answered with an ERROR the sender can read whenever the sender's
device id is known. Nothing a device sends can raise out of `handle`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from schemas import (Close, DraftMsg, ErrorCode, ErrorMsg, Opened, Resync, Sealed, SealedOpen, SessionOpen, Topics,
                     VerdictMsg, WireError, decode, encode)
from schemas.messages import Message
from schemas.results import VerifiedMsg
from schemas.topics import Uplink
from security.session_codec import PLAIN, SessionCodec
from speculative.batch import KVPool, verify_batch
from speculative.kvmem import kv_bytes_per_token
from speculative.loop import StopRule
from speculative.models import LoadedLM
from speculative.prefill import open_batch
from speculative.sampling import SamplingParams
from speculative.target import TargetSession
from speculative.verify import Verdict

from . import protocol as p
from .admission import Checks, Gate, SealedOpens, VerifierCrypto
from .replies import error_reply, peek_ids
from .scheduler import Batch, ModelCalls, Pending, PendingBlock, PendingOpen, Scheduler, Slot
from .sessions import FinishedSessions, Session, SessionTable
from .settings import DEFAULTS, VerifierSettings
from .stats import VerifierStats
from .timing import BatchTimes

log = logging.getLogger("edgespec.verifier")

Reply = tuple[str, bytes]
VerifierConfig = VerifierSettings  # the name the nodes' callers know
__all__ = ["VerifierConfig", "VerifierCore", "VerifierCrypto", "VerifierSettings", "peek_ids"]


class VerifierCore:
    """Sessions, validation and verification for one verifier."""

    def __init__(self, lm: LoadedLM, config: VerifierSettings = DEFAULTS, topics: Topics = Topics(),
                 crypto: VerifierCrypto | None = None):
        self.lm = lm
        self.crypto = crypto
        self.config = self.settings = config
        self.topics = topics
        self.tally = VerifierStats()
        # Every session's KV cache lives in one pool, so a batch gathers and scatters views.
        self.pool = KVPool(lm)
        self.sessions = SessionTable(config.max_sessions, config.session_idle_s, max_bytes=config.max_kv_bytes,
                                     bytes_per_token=kv_bytes_per_token(lm.model.config, lm.model.dtype),
                                     on_drop=self._drop_cache,
                                     max_per_device=config.max_sessions_per_device,
                                     max_tokens_per_session=lm.max_positions)
        self.finished = FinishedSessions(config.finished_kept)
        self.gate = Gate(config, topics, self.tally)
        self.checks = Checks(lm)
        self.sealed_opens = SealedOpens(crypto, config, self.tally)
        # The batched forwards, looked up in this module when called (so a test can replace them here).
        model = ModelCalls(prefill=lambda *a: open_batch(*a), verify=lambda *a, **k: verify_batch(*a, **k))
        self.scheduler = Scheduler(self.pool, self.sessions, self.tally, self, batching=config.batching, model=model)
        self._verified: list[Reply] = []  # VerifiedMsg of sessions finished since `take_verified`

    # The counters, by the names the service and the metrics endpoint read.
    stats = property(lambda self: self.tally.stats)
    rejected = property(lambda self: self.tally.rejected)
    batch_sizes = property(lambda self: self.tally.batch_sizes)
    accepted_lengths = property(lambda self: self.tally.accepted_lengths)
    position_judged = property(lambda self: self.tally.position_judged)
    position_accepted = property(lambda self: self.tally.position_accepted)

    @property
    def batch_times(self) -> BatchTimes:
        return self.tally.batch_times

    def time_decode(self, context: int = 16, reps: int = 3) -> float:
        """Time forwards over one new token after a `context`-token prefix (a cloud-only
        session's steps) on a scratch session; the fastest starts the one-token time behind
        what verdicts tell devices of a cloud-only token's cost (stream_cost.py). In ms."""
        scratch = TargetSession(self.lm, SamplingParams())
        scratch.open([self.lm.eos_token_ids[0] if self.lm.eos_token_ids else 0] * context)
        fastest = float("inf")
        for _ in range(max(1, reps)):
            started = time.perf_counter()
            scratch.verify([], None)
            fastest = min(fastest, time.perf_counter() - started)
        self.scheduler.stream.observe_decode(fastest)
        return fastest * 1000

    @property
    def has_deferred(self) -> bool:
        """Blocks wait for the next `handle_batch` (which may be given no messages)."""
        return self.scheduler.has_deferred

    def _drop_cache(self, session: Session) -> None:
        """A session leaves the table. One that has ended (closed, finished, failed, resynced)
        never reads its cache again: its pool slot is freed without a copy. One evicted while
        alive keeps a private copy, since a block of it may still be in this batch."""
        if session.protocol.ended:
            self.pool.discard(session.target)
        else:
            self.pool.release(session.target)

    # ------------------------------------------------------------------ entry point

    def handle(self, topic: str, payload: bytes) -> list[Reply]:
        """Process one uplink message; returns the messages to publish (QoS 1)."""
        return self.handle_batch([(topic, payload)])

    def handle_batch(self, messages: list[tuple[str, bytes]]) -> list[Reply]:
        """Process messages that arrived together; their drafted blocks are verified in one
        batched target forward (one block per session per forward, in arrival order)."""
        with self.batch_times.batch(len(messages)):
            batch = Batch(self.scheduler)
            for topic, payload in messages:
                batch.add(self._handle_one(topic, payload, batch.before_dispatch))
            batch.flush()
            replies = batch.replies()
        self.tally.traffic(messages, replies)
        return replies

    def take_verified(self) -> list[Reply]:
        """The verified results (`schemas.results.VerifiedMsg`) of sessions finished since the
        last call, to publish on their device's `verified` topic."""
        out, self._verified = self._verified, []
        return out

    def _handle_one(self, topic: str, payload: bytes,
                    before_dispatch: Callable[[bytes | None], None] | None = None) -> Slot:
        """One message: its replies, or the open or block it adds to the batch.
        `before_dispatch(session_id)` runs once the message is decoded, before it touches a session."""
        uplink = self.gate.admit(topic)
        if isinstance(uplink, list):
            return uplink
        held: list[Session | None] = [None]  # the live session an error reply is sealed for
        try:
            msg = decode(payload, self.config.limits)
            if before_dispatch is not None:
                before_dispatch(getattr(msg, "session_id", None))
            return self._dispatch(uplink, topic, msg, held)
        except WireError as exc:
            err = exc
        except Exception as exc:  # a bug must not stop the service or other devices' sessions
            log.exception("internal error on %s", topic)
            err = WireError(ErrorCode.INTERNAL, f"verifier failed on this message: {type(exc).__name__}")
        self.tally.refused(err)
        session = held[0]
        return [error_reply(uplink.device_id, err, payload, self.topics.down(uplink.device_id),
                            session=None if session is None else session.protocol, topic_kind=uplink.kind)]

    def _dispatch(self, uplink: Uplink, topic: str, msg: Message, held: list[Session | None]) -> Slot:
        """A decoded message to its handler; `held[0]` is set to the live session a sealed
        message names."""
        if uplink.kind == "open":
            if isinstance(msg, SealedOpen):
                return self._sealed_open(uplink.device_id, topic, msg)
            if not isinstance(msg, SessionOpen):
                raise WireError(ErrorCode.UNKNOWN_TYPE, f"only OPEN is accepted on {topic}")
            self.sealed_opens.plaintext_allowed()
            return self._open(uplink.device_id, msg, PLAIN)
        if uplink.verifier_id != self.config.verifier_id:
            raise WireError(ErrorCode.BAD_TOPIC, f"sessions on {topic} belong to another verifier")
        if isinstance(msg, Sealed):
            held[0] = self.sessions.get(msg.session_id)
            return self._sealed(uplink, topic, msg, held[0])
        if isinstance(msg, (DraftMsg, Close)):
            return self._plain(uplink, msg)
        raise WireError(ErrorCode.UNKNOWN_TYPE, f"a device may not send {msg.type.name} messages")

    # ------------------------------------------------------------------ session messages

    def _plain(self, uplink: Uplink, msg: DraftMsg | Close) -> Slot:
        """A plaintext DRAFT or CLOSE."""
        self.sealed_opens.plaintext_allowed()
        live = self.sessions.get(msg.session_id)
        state = live.protocol if live is not None else self.finished.get(msg.session_id)
        if state is not None:
            state.codec.refuse_plain()
        if isinstance(msg, Close):
            return [] if state is None else self._act(state.close(uplink.device_id), uplink, live)
        if state is None:
            return self._act(p.NotHeld(msg.session_id), uplink, None)
        committed = None if live is None else live.committed_len
        return self._act(state.draft(uplink.device_id, msg, committed), uplink, live)

    def _sealed(self, uplink: Uplink, topic: str, msg: Sealed, live: Session | None) -> Slot:
        """An envelope: opened with its session's codec, its inner message to the protocol."""
        state = live.protocol if live is not None else self.finished.get(msg.session_id)
        if state is None:
            return self._act(p.NotHeld(msg.session_id), uplink, None)
        refused = state.sealed(uplink.device_id)
        if refused is not None:
            raise refused.error
        inner_bytes, duplicate = state.codec.open(topic, msg)
        inner = decode(inner_bytes, self.config.limits)
        if getattr(inner, "session_id", None) != msg.session_id:
            raise WireError(ErrorCode.MALFORMED, "the sealed message names another session than its envelope")
        committed = None if live is None else live.committed_len
        action = state.inner(uplink.device_id, inner, committed, duplicate_of=msg.seq if duplicate else None)
        return self._act(action, uplink, live)

    def _act(self, action: p.Action, uplink: Uplink, live: Session | None) -> Slot:
        """Do what the protocol decided for a session message."""
        down = self.topics.down(uplink.device_id)
        if isinstance(action, p.Verify):
            assert live is not None
            q = self.checks.draft(live.gamma, live.target.params.greedy, action.msg)
            return PendingBlock(live, action.msg, q, down)
        if isinstance(action, p.Refuse):
            raise action.error
        if isinstance(action, p.Answer):
            self.stats["duplicates"] += 1  # QoS 1 redelivery: answer again, never verify twice
            return [(down, action.payload)]
        if isinstance(action, p.NotHeld):
            self.stats["resyncs"] += 1
            return [(down, encode(Resync(action.session_id, p.NOT_HELD)))]
        if isinstance(action, p.Desync):
            assert live is not None
            self.stats["resyncs"] += 1
            self.sessions.remove(live.session_id)
            return [(down, live.protocol.codec.seal(down, Resync(live.session_id, action.reason)))]
        if isinstance(action, p.Closed):
            assert live is not None
            self.sessions.remove(live.session_id)
            self.stats["closed"] += 1
        elif isinstance(action, p.Forget):
            self.finished.pop(action.session_id)
        return []

    # ------------------------------------------------------------------ opens

    def _sealed_open(self, device_id: str, topic: str, msg: SealedOpen) -> Slot:
        """A sealed OPEN: a repeat of the one that opened a session is answered again;
        otherwise it is authenticated, and its codec opens the session."""
        live = self.sessions.get(msg.session_id)
        state = live.protocol if live is not None else self.finished.get(msg.session_id)
        if state is not None and state.device_id == device_id \
                and state.opened_by == msg.ciphertext:
            self.stats["duplicate_opens"] += 1
            return self._open_again(state)
        codec, open_msg = self.sealed_opens.open(device_id, topic, msg, held=live is not None)
        return self._open(device_id, open_msg, codec, opened_by=msg.ciphertext)

    def _open(self, device_id: str, msg: SessionOpen, codec: SessionCodec, opened_by: bytes = b"") -> Slot:
        """An OPEN (decrypted, for a sealed one) with the codec its session will use."""
        existing = self.sessions.get(msg.session_id)
        if existing is not None:
            if existing.device_id != device_id:
                raise WireError(ErrorCode.WRONG_DEVICE, p.WRONG_DEVICE)
            if not codec.sealed and not existing.protocol.codec.sealed:
                self.stats["duplicate_opens"] += 1
                return self._open_again(existing.protocol)
            self.sessions.remove(msg.session_id)  # a re-open with new keys replaces the session
        finished = self.finished.get(msg.session_id)
        if finished is not None and finished.device_id == device_id and not codec.sealed \
                and not finished.codec.sealed:
            self.stats["duplicate_opens"] += 1  # a redelivered plaintext OPEN of a finished session
            return self._open_again(finished)
        context, features = self.checks.open(msg)
        if msg.stream and (msg.gamma != 0 or msg.first_block != []):
            raise WireError(ErrorCode.OUT_OF_RANGE, "a streaming OPEN has gamma 0 and carries an empty first block")
        session = self._new_session(device_id, msg, context, codec, opened_by)
        down = self.topics.down(device_id)
        first = msg.first_draft()
        block = None if first is None else \
            PendingBlock(session, first, self.checks.draft(session.gamma, session.target.params.greedy, first), down)
        self.sessions.add(session)
        self.finished.pop(msg.session_id)  # an id opened anew is no longer a finished session
        self.stats["opened"] += 1
        self.stats["encrypted_sessions" if codec.sealed else "plaintext_sessions"] += 1
        if block is None:  # with a carried block the OPENED goes out with its VERDICT (`settle`)
            session.protocol.opened_reply = codec.seal(down, session.opened)
        return PendingOpen(session, context, features, down, block=block)

    def _new_session(self, device_id: str, msg: SessionOpen, context: list[int], codec: SessionCodec,
                     opened_by: bytes) -> Session:
        params = SamplingParams(msg.temperature, msg.top_k, msg.top_p)
        # A re-open (tokens already generated) continues with fresh randomness: the seed's
        # stream from its start would repeat the uniforms of the rounds already committed.
        target = TargetSession(self.lm, params, seed=msg.seed, resumed_at=len(context) if msg.generated_ids else 0)
        target.committed = list(context)  # its prefill comes with the batch's (scheduler)
        return Session(
            protocol=p.SessionProtocol(device_id, msg.session_id, codec, opened_by=opened_by),
            target=target,
            stop=StopRule(msg.max_new_tokens, tuple(msg.stop_token_ids)),
            prompt_len=len(msg.prompt_ids),
            opened=Opened(msg.session_id, self.config.verifier_id, len(context)),
            gamma=msg.gamma,
            resumed=len(msg.generated_ids),
            stream=bool(msg.stream),
        )

    def _open_again(self, state: p.SessionProtocol) -> list[Reply]:
        """The reply to a repeated OPEN: its OPENED (with the first block's VERDICT when it
        carried one), or nothing while that is still being computed (it is on its way)."""
        action = state.open_again()
        return [(self.topics.down(state.device_id), action.payload)] if isinstance(action, p.Answer) else []

    # ------------------------------------------------------------------ outcomes (the scheduler's)

    def settle(self, session: Session, msg: DraftMsg, verdict: Verdict) -> bytes:
        """Record a verdict for duplicate answers and build its reply."""
        _, done = session.stop.clip(session.generated)
        message = VerdictMsg(
            session_id=msg.session_id,
            seq=msg.seq,
            accept_mask=list(verdict.accept_mask),
            n_accepted=verdict.n_accepted,
            next_token=verdict.next_token,
            committed_len=session.committed_len,
            done=done,
            verify_ms=_in_units(self.scheduler.last_model_s, 1e3),
            stream_us=_in_units(self.scheduler.stream.per_token_s(), 1e6),
        )
        state = session.protocol
        down = self.topics.down(session.device_id)
        # The OPEN's carried block: one reply for both, the OPENED holding the VERDICT.
        reply = state.codec.seal(down, replace(session.opened, first_verdict=message)
                                 if state.answers_open(msg.seq) else message)
        if state.verdict(msg.seq, reply, done) is not None:
            self._finish(session)
        elif session.stream:  # cloud-only: the next token without waiting for the device
            follow = DraftMsg(msg.session_id, msg.seq + 1, session.committed_len, [], None)
            self.scheduler.defer(PendingBlock(session, follow, None, down))
        self.tally.verdict(verdict.n_accepted, len(msg.tokens))
        return reply

    def fail(self, items: list[Pending], message: str) -> None:
        """An INTERNAL error as the result of each open or block whose model work failed; the
        sessions are dropped (their caches may be inconsistent now)."""
        err = WireError(ErrorCode.INTERNAL, message)
        for item in items:
            session = item.session
            session.protocol.failed()  # an open's block is then not verified: the ERROR answers both
            self.tally.refused(err)
            self.sessions.remove(session.session_id)
            error = ErrorMsg(session.session_id, item.seq, int(err.code), str(err))
            item.result = (item.down, session.protocol.codec.seal(item.down, error))

    def _finish(self, session: Session) -> None:
        """A session whose VERDICT says done ends with it: its KV cache goes now, and its
        device sends no CLOSE. What answers a redelivered last DRAFT stays (`finished`)."""
        self.sessions.remove(session.session_id)  # its cache is freed without a copy (`_drop_cache`)
        self.finished.add(session)
        self.stats["finished"] += 1
        tokens, _ = session.stop.clip(session.generated)
        if len(self._verified) < self.config.finished_kept:  # taken after every batch by the service
            verified = VerifiedMsg(session.device_id, session.session_id.hex(), self.config.verifier_id, time.time(),
                                   list(tokens), self.lm.decode(list(tokens)), session.resumed)
            self._verified.append((self.topics.verified(session.device_id), verified.to_json()))


def _in_units(seconds: float | None, per_second: float) -> int | None:
    """Seconds as a whole number of smaller units (ms: 1e3, us: 1e6), for a verdict."""
    return None if seconds is None else round(seconds * per_second)
