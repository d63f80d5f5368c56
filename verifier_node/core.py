"""The verifier's message handling, free of MQTT: (topic, payload) in, replies out.

Every input is validated before any model work; every rejection is a typed `WireError`,
counted by reason, and answered with an ERROR the sender can read whenever the sender's
device id is known. Nothing a device sends can raise out of `handle`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from schemas import (
    Close,
    DraftMsg,
    ErrorCode,
    ErrorMsg,
    Limits,
    Opened,
    Resync,
    Sealed,
    SealedOpen,
    SessionOpen,
    Topics,
    VerdictMsg,
    WireError,
    decode,
    encode,
)
from speculative.kvmem import kv_bytes_per_token
from schemas.messages import DEFAULT_LIMITS, MsgType, unpack_array
from schemas.results import VerifiedMsg
from security.channel import verifier_open
from security.freshness import OpenFreshness, StaleOpen
from security.keys import UnknownKeyId
from security.registry import RegistryError
from speculative.batch import KVPool, verify_batch
from speculative.prefill import open_batch
from schemas.topics import Uplink
from speculative.loop import StopRule
from speculative.models import LoadedLM
from speculative.sampling import SamplingParams, SparseQ
from speculative.target import TargetSession
from speculative.verify import Verdict

from .limits import DeviceRateLimiter
from .sessions import FinishedSession, FinishedSessions, Session, SessionTable
from .timing import BatchTimes

log = logging.getLogger("edgespec.verifier")

Reply = tuple[str, bytes]
SEEN_OPENS_LIMIT = 100_000  # sealed OPENs remembered against replay (32 bytes each)
FINISHED_KEPT = 4096  # finished sessions whose last verdict answers a redelivered last DRAFT
# Failures of messages that did not authenticate: their ERROR names no session, so a forger
# cannot make a device's session end by sending garbage under its session id.
UNAUTHENTICATED = (ErrorCode.DECRYPT_FAILED, ErrorCode.REPLAY, ErrorCode.PLAINTEXT_REFUSED, ErrorCode.WRONG_DEVICE)
BUSY_REASON = WireError(ErrorCode.BUSY, "").reason


@dataclass
class VerifierCrypto:
    """Keys for end-to-end encrypted sessions, from a `security.registry.FleetRegistry`:
    `public_key(device_id)` gives a device's provisioned X25519 key (or None) and
    `verifier_keys()` the verifier's key ring, both re-read when their files change, so
    flashing, revoking and key rotation take effect without a restart. With `require`,
    plaintext session messages are refused."""

    registry: Any
    require: bool = True
    # Sealed OPENs' freshness (security/freshness.py): their timestamp window and the record of
    # opens seen, a file shared across restarts and a pool when given one. None: in memory.
    freshness: Any = None


@dataclass(frozen=True)
class VerifierConfig:
    verifier_id: str = "verifier-1"
    max_sessions: int = 1024
    session_idle_s: float = 300.0
    limits: Limits = DEFAULT_LIMITS
    batching: bool = True  # verify blocks that arrive together in one forward
    max_kv_bytes: int = 8 << 30  # the session table evicts LRU sessions beyond this much KV cache
    max_sessions_per_device: int = 8  # beyond it a device's own oldest session goes
    device_rate: float = 1000.0  # uplink messages per second per device (a session sends one per round)
    device_burst: int = 2000


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
    block: "PendingBlock | None" = None  # not verified if the open fails (its session has `ended`)
    seq = None  # an error about an open names no draft

    @property
    def replies(self) -> list[Reply]:
        return [r for r in (self.result, None if self.block is None else self.block.result) if r is not None]

    @property
    def prefill_length(self) -> int:
        """Positions the prefill feeds: the vision prefix and all but the last context token."""
        return (0 if self.features is None else int(self.features.shape[0])) + len(self.context) - 1


@dataclass
class PendingBlock:
    """A validated draft block waiting for its (possibly batched) target forward."""

    session: Session
    msg: DraftMsg
    q: SparseQ | None
    down: str
    result: Reply | None = None  # its VERDICT (or an error) once verified

    @property
    def seq(self) -> int:
        return self.msg.seq

    @property
    def replies(self) -> list[Reply]:
        return [self.result]


class VerifierCore:
    """Sessions, validation and verification for one verifier."""

    def __init__(self, lm: LoadedLM, config: VerifierConfig = VerifierConfig(), topics: Topics = Topics(),
                 crypto: VerifierCrypto | None = None):
        self.lm = lm
        self.crypto = crypto
        self.config = config
        self.topics = topics
        # Every session's KV cache lives in one pool, so a batch gathers and scatters views.
        self.pool = KVPool(lm)
        self.sessions = SessionTable(config.max_sessions, config.session_idle_s, max_bytes=config.max_kv_bytes,
                                     bytes_per_token=kv_bytes_per_token(lm.model.config, lm.model.dtype),
                                     on_drop=self._drop_cache,
                                     max_per_device=config.max_sessions_per_device,
                                     max_tokens_per_session=lm.max_positions)
        self.limiter = DeviceRateLimiter(config.device_rate, config.device_burst)
        self.rejected: Counter[str] = Counter()
        self.stats: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        # Per verified block: how many drafts were accepted, and per draft position how often
        # it was judged (every position up to the first rejection) and accepted.
        self.accepted_lengths: Counter[int] = Counter()
        self.position_judged: Counter[int] = Counter()
        self.position_accepted: Counter[int] = Counter()
        self.batch_times = BatchTimes()
        self._seen_opens: OrderedDict[bytes, None] = OrderedDict()  # sealed OPENs accepted (replay guard)
        self.freshness = crypto.freshness if crypto is not None and crypto.freshness is not None \
            else OpenFreshness()
        self._deferred: list[PendingBlock] = []  # carried blocks whose open rode in the last forward
        self.finished = FinishedSessions(FINISHED_KEPT)
        self._verified: list[Reply] = []  # VerifiedMsg of sessions finished since `take_verified`

    def _drop_cache(self, session: Session) -> None:
        """A session leaves the table. One that has ended (closed, finished, failed, resynced)
        never reads its cache again: its pool slot is freed without a copy. One evicted while
        alive keeps a private copy, since a block of it may still be in this batch."""
        if session.ended:
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
            replies = self._handle_batch(messages)
        self.stats["messages_in"] += len(messages)
        self.stats["bytes_in"] += sum(len(payload) for _, payload in messages)
        self.stats["messages_out"] += len(replies)
        self.stats["bytes_out"] += sum(len(payload) for _, payload in replies)
        return replies

    def _handle_batch(self, messages: list[tuple[str, bytes]]) -> list[Reply]:
        # Replies keep the order of the messages (a device sees its answers in the order it
        # sent): each message gets a slot, its replies at once or a pending open or block
        # whose `result` is filled when the batch's model work is done.
        slots: list[list[Reply] | PendingOpen | PendingBlock] = []
        opens: list[PendingOpen] = []
        pending: list[PendingBlock] = []
        waiting: set[bytes] = set()  # session ids of `opens` and `pending`
        for item in self._take_deferred():  # blocks held by the previous batch come first
            if isinstance(item, PendingBlock):
                pending.append(item)
                waiting.add(item.session.session_id)
            slots.append(item)

        def flush() -> None:
            self._open_and_verify(opens, pending)
            opens.clear()
            pending.clear()
            waiting.clear()

        def before_dispatch(session_id: bytes | None) -> None:
            # A second message for a session with an open or a block in this batch (a QoS-1
            # duplicate, a close) must see its outcome: do what is pending first.
            if session_id in waiting:
                flush()

        for topic, payload in messages:
            out = self._handle_one(topic, payload, before_dispatch)
            if isinstance(out, (PendingBlock, PendingOpen)):
                (pending if isinstance(out, PendingBlock) else opens).append(out)
                waiting.add(out.session.session_id)
            slots.append(out)
        flush()
        return [reply for slot in slots for reply in (slot if isinstance(slot, list) else slot.replies)]

    def _take_deferred(self) -> "list[PendingBlock | list[Reply]]":
        """The blocks that came in OPENs of the previous batch whose prefill rode in its forward
        (see `_open_and_verify`), still to verify; a RESYNC for one whose session was evicted
        meanwhile. A session that moved on, ended, or was replaced under its id drops its block."""
        carried, self._deferred = self._deferred, []
        out: list[PendingBlock | list[Reply]] = []
        for block in carried:
            session = block.session
            held = self.sessions.get(session.session_id)
            if held is session and session.last_seq is None:
                out.append(block)
            elif held is None and not session.ended:  # the device re-opens
                self.stats["resyncs"] += 1
                out.append([(block.down, self._wrap(session, Resync(session.session_id,
                                                                    "session not held by this verifier")))])
        return out

    def _prefill(self, opens: list[PendingOpen]) -> None:
        """Prefill the sessions opened in this batch (one forward when batching) and release
        their OPENED replies."""
        if not opens:
            return
        try:
            with self.batch_times.model():
                self._prefill_model(opens)
        except Exception as exc:  # a bug must not take the other sessions down with it
            log.exception("prefill failed for %d sessions", len(opens))
            self._failed(opens, f"verifier failed to open this session: {type(exc).__name__}")
            return
        self.stats["prefill_batches"] += 1
        for o in opens:
            if o.block is None:  # a carried block's verdict brings the OPENED with it
                o.result = (o.down, o.session.opened_reply)

    def _prefill_model(self, opens: list[PendingOpen]) -> None:
        if self.config.batching:
            open_batch([o.session.target for o in opens], [(o.context, o.features) for o in opens])
        else:
            for o in opens:
                o.session.target.open(o.context, o.features)

    def _open_and_verify(self, opens: list[PendingOpen], pending: list[PendingBlock]) -> None:
        """Fill the results of `opens` and `pending`.

        An open that carries its first block, with nothing to batch it with (or batching off),
        is prefilled and verified in one forward. With batching, an open whose prefill is no
        longer than the blocks' rows (a vision prefix and a short prompt) rides in the blocks'
        forward as one more row instead of costing a forward of its own; the block it carried
        is then verified in the next batch's forward (`handle_batch` takes it first, and the
        service runs that batch at once). Other opens are prefilled together in one forward
        before the blocks', and their blocks join the blocks' forward."""
        carrying = [o for o in opens if o.block is not None]
        if carrying and (not self.config.batching or len(opens) + len(pending) == 1):
            for o in carrying:
                self._open_with_block(o)
            opens = [o for o in opens if o.block is None]
        riding: list[PendingOpen] = []
        alone = opens
        if self.config.batching and opens and pending:
            width = max(len(p.msg.tokens) for p in pending) + 1
            riding, alone = [], []
            for o in opens:
                (riding if o.prefill_length <= width else alone).append(o)
        self._prefill(alone)
        self._verify([*pending, *(o.block for o in alone if o.block is not None and not o.session.ended)], riding)
        self._deferred.extend(o.block for o in riding if o.block is not None and not o.session.ended)

    @property
    def has_deferred(self) -> bool:
        """Blocks wait for the next `handle_batch` (which may be given no messages)."""
        return bool(self._deferred)

    def _open_with_block(self, o: PendingOpen) -> None:
        """Prefill `o` and verify the block it carried in one forward."""
        block = o.block
        assert block is not None
        self.batch_sizes[1] += 1
        try:
            with self.batch_times.model():
                verdict = o.session.target.open_and_verify(o.context, o.features, block.msg.tokens, block.q)
        except Exception as exc:  # a bug must not take the other sessions down with it
            log.exception("open with a first block failed")
            self._failed([o], f"verifier failed to open this session: {type(exc).__name__}")
            return
        self.stats["opens_with_block"] += 1
        block.result = (o.down, self._settle(o.session, block.msg, verdict))

    def _verify(self, pending: list[PendingBlock], opening: list[PendingOpen]) -> None:
        """Verify `pending` and fill their results; `opening` (with batching) are opened in
        the same forward."""
        if not pending:
            return
        self.batch_sizes[len(pending)] += 1
        try:
            with self.batch_times.model():
                verdicts = self._verify_model(pending, opening)
        except Exception as exc:  # a bug must not take the other sessions down with it
            log.exception("verification failed for %d blocks and %d opens", len(pending), len(opening))
            self._failed([*opening, *pending], f"verifier failed on this block: {type(exc).__name__}")
            return
        if opening:
            self.stats["opens_in_verify_batches"] += len(opening)
        for o in opening:
            if o.block is None:  # a carried block's verdict (next batch) brings the OPENED with it
                o.result = (o.down, o.session.opened_reply)
        for p, v in zip(pending, verdicts):
            p.result = (p.down, self._settle(p.session, p.msg, v))

    def _verify_model(self, pending: list[PendingBlock], opening: list[PendingOpen]) -> list[Verdict]:
        # A single block alone takes the plain path: it has less to set up.
        if self.config.batching and (len(pending) > 1 or opening):
            return verify_batch([p.session.target for p in pending], [(p.msg.tokens, p.q) for p in pending],
                                pool=self.pool, opening=[(o.session.target, (o.context, o.features)) for o in opening])
        return [p.session.target.verify(p.msg.tokens, p.q) for p in pending]

    def _failed(self, items: "list[PendingOpen | PendingBlock]", message: str) -> None:
        """An INTERNAL error as the result of each open or block whose model work failed; the
        sessions are dropped (their caches may be inconsistent now)."""
        err = WireError(ErrorCode.INTERNAL, message)
        for item in items:
            session = item.session
            session.ended = True  # an open's block is then not verified: the ERROR answers both
            self._count(err)
            self.sessions.remove(session.session_id)
            item.result = (item.down, self._wrap(session, ErrorMsg(session.session_id, item.seq, int(err.code), str(err))))

    def _handle_one(self, topic: str, payload: bytes,
                    before_dispatch=None) -> "list[Reply] | PendingBlock | PendingOpen":
        """One message: its replies, or the open or block it adds to the batch.
        `before_dispatch(session_id)` runs once the message is decoded, before it touches a session."""
        try:
            uplink = self.topics.parse_uplink(topic)
        except WireError as err:
            self._count(err)
            return []  # no device to answer
        session: Session | None = None
        allowed, tell = self.limiter.admit(uplink.device_id)
        if not allowed:
            if not tell:  # a flood: count it and build nothing
                self.rejected[BUSY_REASON] += 1
                return []
            err = WireError(ErrorCode.BUSY, f"more than {self.config.device_rate:g} messages per second from "
                            f"{uplink.device_id}: dropped (told at most once a second)")
            self._count(err)
            # No session id: the drop must not end a session (the device's timeout re-sends).
            return [(self.topics.down(uplink.device_id), encode(ErrorMsg(None, None, int(err.code), str(err))))]
        try:
            msg = decode(payload, self.config.limits)
            if before_dispatch is not None:
                before_dispatch(getattr(msg, "session_id", None))
            if uplink.kind == "open":
                if isinstance(msg, SealedOpen):
                    return self._sealed_open(uplink.device_id, topic, msg)
                if not isinstance(msg, SessionOpen):
                    raise WireError(ErrorCode.UNKNOWN_TYPE, f"only OPEN is accepted on {topic}")
                self._check_plaintext_allowed()
                return self._open(uplink.device_id, msg)
            if uplink.verifier_id != self.config.verifier_id:
                raise WireError(ErrorCode.BAD_TOPIC, f"sessions on {topic} belong to another verifier")
            if isinstance(msg, Sealed):
                session = self.sessions.get(msg.session_id)
                return self._sealed(uplink, topic, msg, session)
            if isinstance(msg, (DraftMsg, Close)):
                self._check_plaintext_allowed()
                existing = self.sessions.get(msg.session_id)
                known = existing or self.finished.get(msg.session_id)
                if known is not None and known.cipher is not None:
                    raise WireError(ErrorCode.PLAINTEXT_REFUSED, "this session is encrypted; plaintext refused")
                return self._draft(uplink, msg, existing) if isinstance(msg, DraftMsg) \
                    else self._close(uplink, msg, existing)
            raise WireError(ErrorCode.UNKNOWN_TYPE, f"a device may not send {msg.type.name} messages")
        except WireError as err:
            self._count(err)
            return [self._error(uplink.device_id, err, payload, session, uplink.kind)]
        except Exception as exc:  # a bug must not stop the service or other devices' sessions
            log.exception("internal error on %s", topic)
            err = WireError(ErrorCode.INTERNAL, f"verifier failed on this message: {type(exc).__name__}")
            self._count(err)
            return [self._error(uplink.device_id, err, payload, session, uplink.kind)]

    # ------------------------------------------------------------------ handlers

    def _check_plaintext_allowed(self) -> None:
        if self.crypto is not None and self.crypto.require:
            raise WireError(ErrorCode.PLAINTEXT_REFUSED, "this verifier accepts only encrypted sessions")

    def _sealed_open(self, device_id: str, topic: str, msg: SealedOpen) -> "list[Reply] | PendingOpen":
        if self.crypto is None:
            raise WireError(ErrorCode.DECRYPT_FAILED, "this verifier has no keys for encrypted sessions")
        held = self.sessions.get(msg.session_id)
        existing = held or self.finished.get(msg.session_id)
        if existing is not None and existing.device_id == device_id \
                and existing.cipher is not None and existing.cipher.open_ciphertext == msg.ciphertext:
            self.stats["duplicate_opens"] += 1
            return self._opened_again(existing)
        if held is None and msg.ciphertext[:32] in self._seen_opens:
            raise WireError(ErrorCode.REPLAY, "this sealed OPEN was already used; a device opens with fresh keys")
        try:
            device_pub = self.crypto.registry.public_key(device_id)
            ring = self.crypto.registry.verifier_keys()
        except RegistryError as exc:
            log.error("fleet registry: %s", exc)
            raise WireError(ErrorCode.UNKNOWN_DEVICE, f"no usable key for device {device_id!r} here") from None
        if device_pub is None:
            raise WireError(ErrorCode.UNKNOWN_DEVICE, f"device {device_id!r} is not provisioned here (edgespec flash)")
        try:
            verifier_key = ring.get(msg.verifier_key_id)
        except UnknownKeyId:
            raise WireError(ErrorCode.DECRYPT_FAILED, f"verifier key {msg.verifier_key_id!r} is unknown or retired;"
                            " re-provision the device with the current verifier key") from None
        cipher, inner = verifier_open(verifier_key, device_pub, device_id, topic, msg)
        cipher.open_ciphertext = msg.ciphertext
        self._seen_opens[msg.ciphertext[:32]] = None  # authenticated: remember it (bounded)
        while len(self._seen_opens) > SEEN_OPENS_LIMIT:
            self._seen_opens.popitem(last=False)
        open_msg = decode(inner, self.config.limits)
        if not isinstance(open_msg, SessionOpen) or open_msg.session_id != msg.session_id:
            raise WireError(ErrorCode.MALFORMED, "a sealed OPEN must hold an OPEN for the same session id")
        try:  # fresh: inside the time window and never seen, also before a restart or by a peer
            self.freshness.check(device_id, msg.ephemeral_pub, open_msg.sent_at_ms)
        except StaleOpen as exc:
            self.stats[f"opens_refused_{exc.reason}"] += 1
            raise WireError(ErrorCode.REPLAY, str(exc)) from None
        return self._open(device_id, open_msg, cipher)

    def _sealed(self, uplink: Uplink, topic: str, msg: Sealed, session: "Session | FinishedSession | None") -> list[Reply]:
        if session is None:
            session = self._finished_for(uplink, msg.session_id)
        if session is None:
            self.stats["resyncs"] += 1
            return [(self.topics.down(uplink.device_id), encode(Resync(msg.session_id, "session not held by this verifier")))]
        if session.device_id != uplink.device_id or session.cipher is None:
            raise WireError(ErrorCode.WRONG_DEVICE, "session id belongs to another device")
        inner_bytes, duplicate = session.cipher.open(topic, msg)
        inner = decode(inner_bytes, self.config.limits)
        if getattr(inner, "session_id", None) != msg.session_id:
            raise WireError(ErrorCode.MALFORMED, "the sealed message names another session than its envelope")
        if duplicate:
            if isinstance(inner, DraftMsg) and inner.seq == session.last_seq and session.last_reply is not None:
                self.stats["duplicates"] += 1
                return [(self.topics.down(uplink.device_id), session.last_reply)]
            raise WireError(ErrorCode.REPLAY, f"envelope seq {msg.seq} was already received")
        if isinstance(session, FinishedSession):
            return self._after_finish(session, inner)
        if isinstance(inner, DraftMsg):
            return self._draft(uplink, inner, session)
        if isinstance(inner, Close):
            return self._close(uplink, inner, session)
        raise WireError(ErrorCode.UNKNOWN_TYPE, f"a device may not send {inner.type.name} messages")

    def _open(self, device_id: str, msg: SessionOpen, cipher: Any = None) -> "list[Reply] | PendingOpen":
        existing = self.sessions.get(msg.session_id)
        if existing is not None:
            if existing.device_id != device_id:
                raise WireError(ErrorCode.WRONG_DEVICE, "session id belongs to another device")
            if cipher is None and existing.cipher is None:
                self.stats["duplicate_opens"] += 1
                return self._opened_again(existing)
            self.sessions.remove(msg.session_id)  # a re-open with new keys replaces the session
        finished = self.finished.get(msg.session_id)
        if finished is not None and finished.device_id == device_id and cipher is None and finished.cipher is None:
            self.stats["duplicate_opens"] += 1  # a redelivered plaintext OPEN of a finished session
            return self._opened_again(finished)
        if msg.tokenizer_fp != self.lm.fingerprint:
            raise WireError(
                ErrorCode.TOKENIZER_MISMATCH,
                f"draft tokenizer {msg.tokenizer_fp.hex()} differs from the target's {self.lm.fingerprint.hex()}:"
                " draft and target must share one tokenizer",
            )
        context = msg.prompt_ids + msg.generated_ids
        if len(msg.generated_ids) >= msg.max_new_tokens:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"{len(msg.generated_ids)} generated tokens resumed, but "
                            f"max_new_tokens is {msg.max_new_tokens}: nothing is left to generate")
        if not msg.prompt_ids:
            raise WireError(ErrorCode.OUT_OF_RANGE, "prompt_ids must hold at least one token")
        self._check_tokens(context, "prompt")
        self._check_tokens(msg.stop_token_ids, "stop_token_ids")
        features = self._check_features(msg)
        prefix = 0 if features is None else features.shape[0]
        needed = prefix + len(msg.prompt_ids) + msg.max_new_tokens + msg.gamma + 1
        if needed > self.lm.max_positions:
            raise WireError(
                ErrorCode.OUT_OF_RANGE,
                f"prompt + max_new_tokens need {needed} positions, the target has {self.lm.max_positions}",
            )
        params = SamplingParams(msg.temperature, msg.top_k, msg.top_p)
        # A re-open (tokens already generated) continues with fresh randomness: the seed's
        # stream from its start would repeat the uniforms of the rounds already committed.
        target = TargetSession(self.lm, params, seed=msg.seed, resumed_at=len(context) if msg.generated_ids else 0)
        target.committed = list(context)  # its prefill comes with the batch's (`_prefill`)
        session = Session(
            device_id=device_id,
            session_id=msg.session_id,
            target=target,
            stop=StopRule(msg.max_new_tokens, tuple(msg.stop_token_ids)),
            prompt_len=len(msg.prompt_ids),
            gamma=msg.gamma,
            cipher=cipher,
            resumed=len(msg.generated_ids),
        )
        down = self.topics.down(device_id)
        first = msg.first_draft()
        block = None if first is None else PendingBlock(session, first, self._check_draft(session, first), down)
        session.opened_with_block = block is not None
        self.sessions.add(session)
        self.finished.pop(msg.session_id)  # an id opened anew is no longer a finished session
        self.stats["opened"] += 1
        self.stats["encrypted_sessions" if cipher is not None else "plaintext_sessions"] += 1
        session.opened = Opened(session.session_id, self.config.verifier_id, session.committed_len)
        # With a carried block the OPENED goes out with its VERDICT (`_settle`), not before.
        session.opened_reply = None if block is not None else self._wrap(session, session.opened)
        return PendingOpen(session, context, features, down, block=block)

    def _opened_again(self, session: "Session | FinishedSession") -> list[Reply]:
        """The reply to a repeated OPEN: its OPENED (with the first block's VERDICT when it
        carried one), or nothing while that is still being computed (it is on its way)."""
        if session.opened_reply is None:
            return []
        return [(self.topics.down(session.device_id), session.opened_reply)]

    def _draft(self, uplink: Uplink, msg: DraftMsg, session: "Session | FinishedSession | None") -> "list[Reply] | PendingBlock":
        """`session`: the table's entry for msg.session_id, looked up by the caller."""
        down = self.topics.down(uplink.device_id)
        if session is None:
            session = self._finished_for(uplink, msg.session_id)
        if session is None:
            self.stats["resyncs"] += 1
            return [(down, encode(Resync(msg.session_id, "session not held by this verifier")))]
        if session.device_id != uplink.device_id:
            raise WireError(ErrorCode.WRONG_DEVICE, "session id belongs to another device")
        if session.last_seq is not None and msg.seq == session.last_seq and session.last_reply is not None:
            self.stats["duplicates"] += 1  # QoS 1 redelivery: answer again, never verify twice
            return [(down, session.last_reply)]
        if isinstance(session, FinishedSession):
            return self._after_finish(session, msg)
        if session.last_seq is not None and msg.seq != session.last_seq + 1:
            raise WireError(ErrorCode.BAD_SEQUENCE, f"seq {msg.seq} after {session.last_seq}: stale or out of order")
        if msg.committed_len != session.committed_len:
            self.stats["resyncs"] += 1
            session.ended = True
            self.sessions.remove(msg.session_id)
            reason = f"device has {msg.committed_len} committed tokens, verifier {session.committed_len}"
            return [(down, self._wrap(session, Resync(msg.session_id, reason)))]
        return PendingBlock(session, msg, self._check_draft(session, msg), down)

    def _settle(self, session: Session, msg: DraftMsg, verdict: Verdict) -> bytes:
        """Record a verdict for duplicate answers and build its reply."""
        _, session.done = session.stop.clip(session.generated)
        message = VerdictMsg(
            session_id=msg.session_id,
            seq=msg.seq,
            accept_mask=list(verdict.accept_mask),
            n_accepted=verdict.n_accepted,
            next_token=verdict.next_token,
            committed_len=session.committed_len,
            done=session.done,
        )
        if session.opened_with_block and msg.seq == 0:  # the OPEN's block: one reply for both
            reply = session.opened_reply = self._wrap(session, replace(session.opened, first_verdict=message))
        else:
            reply = self._wrap(session, message)
        session.last_seq, session.last_reply = msg.seq, reply
        if session.done:
            self._finish(session)
        self.stats["verified_blocks"] += 1
        self.stats["accepted_tokens"] += verdict.n_accepted
        self.stats["drafted_tokens"] += len(msg.tokens)
        self.accepted_lengths[verdict.n_accepted] += 1
        for position in range(min(verdict.n_accepted + 1, len(msg.tokens))):
            self.position_judged[position] += 1
            self.position_accepted[position] += position < verdict.n_accepted
        return reply

    def _finish(self, session: Session) -> None:
        """A session whose VERDICT says done ends with it: its KV cache goes now, and its
        device sends no CLOSE. What answers a redelivered last DRAFT stays (`finished`)."""
        session.ended = True
        self.sessions.remove(session.session_id)  # its cache is freed without a copy (`_drop_cache`)
        self.finished.add(session)
        self.stats["finished"] += 1
        tokens, _ = session.stop.clip(session.generated)
        if len(self._verified) < FINISHED_KEPT:  # taken after every batch by the service
            verified = VerifiedMsg(session.device_id, session.session_id.hex(), self.config.verifier_id, time.time(),
                                   list(tokens), self.lm.decode(list(tokens)), session.resumed)
            self._verified.append((self.topics.verified(session.device_id), verified.to_json()))

    def take_verified(self) -> list[Reply]:
        """The verified results (`schemas.results.VerifiedMsg`) of sessions finished since the
        last call, to publish on their device's `verified` topic."""
        out, self._verified = self._verified, []
        return out

    def _close(self, uplink: Uplink, msg: Close, session: Session | None) -> list[Reply]:
        if session is not None and session.device_id == uplink.device_id:
            session.ended = True
            self.sessions.remove(msg.session_id)
            self.stats["closed"] += 1
        elif session is None and (finished := self._finished_for(uplink, msg.session_id)) is not None:
            return self._after_finish(finished, msg)  # a CLOSE after the final verdict
        return []

    def _finished_for(self, uplink: Uplink, session_id: bytes) -> FinishedSession | None:
        """The finished session `session_id` (None if none is kept); WRONG_DEVICE when it was
        another device's."""
        finished = self.finished.get(session_id)
        if finished is not None and finished.device_id != uplink.device_id:
            raise WireError(ErrorCode.WRONG_DEVICE, "session id belongs to another device")
        return finished

    def _after_finish(self, finished: FinishedSession, inner: Any) -> list[Reply]:
        """A new message for a session that finished (a repeat of its last DRAFT was answered
        as a duplicate before this): a CLOSE is accepted; a DRAFT is too late."""
        if isinstance(inner, Close):
            self.finished.pop(finished.session_id)
            return []
        if isinstance(inner, DraftMsg):
            raise WireError(ErrorCode.BAD_SEQUENCE, "the session has already finished")
        raise WireError(ErrorCode.UNKNOWN_TYPE, f"a device may not send {inner.type.name} messages")

    # ------------------------------------------------------------------ validation

    def _check_tokens(self, tokens: list[int], name: str) -> None:
        vocab = self.lm.vocab_size
        bad = [t for t in tokens if t >= vocab]
        if bad:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"{name} holds token id {bad[0]} >= vocabulary size {vocab}")

    def _check_features(self, msg: SessionOpen) -> np.ndarray | None:
        if msg.features is None:
            return None
        projector = self.lm.projector
        if projector is None:
            raise WireError(ErrorCode.BAD_FEATURES, "this target takes no vision features")
        array = msg.features.to_array()
        expected = tuple(projector.feature_shape)
        if array.shape != expected:
            raise WireError(ErrorCode.BAD_FEATURES, f"features have shape {array.shape}, the target expects {expected}")
        return array

    def _check_draft(self, session: Session, msg: DraftMsg) -> SparseQ | None:
        if len(msg.tokens) > session.gamma:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"{len(msg.tokens)} drafted tokens, the session opened with "
                            f"gamma {session.gamma}")
        self._check_tokens(msg.tokens, "tokens")
        greedy = session.target.params.greedy
        if msg.q is None:
            if not greedy and msg.tokens:
                raise WireError(ErrorCode.MALFORMED, "a sampled session's draft must carry q")
            return None
        ids, weights = msg.q.arrays(len(msg.tokens))
        if ids.size and int(ids.max()) >= self.lm.vocab_size:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"q holds token id {int(ids.max())} >= vocabulary size")
        q = SparseQ(torch.from_numpy(ids), torch.from_numpy(weights))
        if msg.tokens and bool((q.prob_of(torch.tensor(msg.tokens)) <= 0).any()):
            raise WireError(ErrorCode.OUT_OF_RANGE, "a draft token has probability 0 under its own q")
        return None if greedy else q

    # ------------------------------------------------------------------ replies

    def _wrap(self, session: Session, msg) -> bytes:
        """Encode a reply, sealed when the session is encrypted."""
        inner = encode(msg)
        if session.cipher is None:
            return inner
        return encode(session.cipher.seal(self.topics.down(session.device_id), inner))

    def _error(self, device_id: str, err: WireError, payload: bytes, session: Session | None = None,
               topic_kind: str = "session") -> Reply:
        session_id, seq = _peek_ids(payload)
        if err.code in UNAUTHENTICATED and topic_kind == "session":
            session_id, seq = None, None
        msg = ErrorMsg(session_id, seq, int(err.code), str(err)[:400])
        if session is not None and session.device_id == device_id and session.cipher is not None \
                and err.code not in UNAUTHENTICATED:
            return self.topics.down(device_id), self._wrap(session, msg)
        return self.topics.down(device_id), encode(msg)

    def _count(self, err: WireError) -> None:
        self.rejected[err.reason] += 1
        log.debug("rejected: %s", err)


def _peek_ids(payload: bytes) -> tuple[bytes | None, int | None]:
    """Best-effort (session_id, seq) of a rejected message, so the sender can match the error."""
    try:
        items = unpack_array(payload)
    except WireError:
        return None, None
    sid = items[2] if len(items) > 2 and isinstance(items[2], bytes) and len(items[2]) == 16 else None
    if len(items) > 1 and items[1] in (MsgType.SEALED, MsgType.SEALED_OPEN):
        return sid, None  # an envelope's seq is not the draft's: the error is for the session's current message
    seq = items[3] if len(items) > 3 and isinstance(items[3], int) and not isinstance(items[3], bool) \
        and 0 <= items[3] < 2**63 else None
    return sid, seq
