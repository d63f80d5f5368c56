"""One session's messages on the device's link: open, exchange drafts for verdicts, close.

The link hands each downlink message and notice for this session to `SessionChannel.deliver`
as a typed inbox entry. Entries wait in the inbox until a reply is awaited; a reply is awaited
as a future of the link's `PendingReplies`, keyed by (session id, sequence number) (`OPEN`
for the OPENED), and the inbox is read into it in order: duplicates (QoS 1 may deliver twice)
and stale replies are dropped there, as is anything that fails authentication. A QUEUED
(the verifier holds the awaited message in its queue) moves the wait's deadline instead of
answering it: a device gives up only on a verifier silent for its timeout (schemas/README.md,
"Waiting for a reply").
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas import Close, DraftMsg, ErrorMsg, Opened, Queued, Resync, Sealed, SessionOpen, VerdictMsg, WireError
from schemas.messages import decode, now_ms
from schemas.topics import ONLINE
from security.session_codec import PLAIN, SealedCodec, SessionCodec

from .errors import BrokerUnreachable, VerifierLost, VerifierRejected, VerifierTimeout

if TYPE_CHECKING:
    from .link import EdgeLink

log = logging.getLogger("edgespec.camera")
OPEN = -1  # the sequence number under which the OPENED is awaited (the OPEN comes before block 0)


@dataclass
class Traffic:
    """Bytes one session sent and received, counted as whole PUBLISH packets."""

    up: int = 0
    down: int = 0
    up_messages: int = 0
    down_messages: int = 0


@dataclass(frozen=True)
class Downlink:
    """A message on the device's downlink for this session, and its PUBLISH packet's size."""

    msg: object
    size: int


@dataclass(frozen=True)
class VerifierGone:
    """A verifier announced it is offline."""

    verifier_id: str


@dataclass(frozen=True)
class Reconnected:
    """The broker connection was re-established: replies may have been lost."""


@dataclass(frozen=True)
class LinkFailed:
    """The broker connection was lost for good."""

    error: BrokerUnreachable


InboxEntry = Downlink | VerifierGone | Reconnected | LinkFailed


class SessionChannel:
    """One session's messages: open, exchange drafts for verdicts, close."""

    def __init__(self, link: EdgeLink, session_id: bytes):
        self.link = link
        self.session_id = session_id
        self.verifier_id: str | None = None
        self.traffic = Traffic()
        self.codec: SessionCodec = PLAIN  # chosen at OPEN: sealed when the link has device keys
        self._earlier: SessionCodec | None = None  # the codec of the OPEN before a re-open (late replies)
        self.rejected = 0
        self.stale = 0  # late replies to the OPEN before a re-open, dropped
        self.open_pending = False  # an OPEN was sent and its OPENED not yet received
        self._inbox: collections.deque[InboxEntry] = collections.deque()
        self._awaited: int | None = None  # the sequence number whose reply is awaited
        self._or_resync = False  # a RESYNC answers the OPENED awaited
        self._reply: asyncio.Future | None = None

    # -- the inbox (filled in the link's read callback)

    def deliver(self, entry: InboxEntry) -> None:
        self._inbox.append(entry)
        self._pump()

    def has_downlink(self) -> bool:
        """Whether a reply or notice for this session came in and was not yet taken."""
        return bool(self._inbox) or (self._reply is not None and self._reply.done())

    def drain(self) -> None:
        """Forget queued replies and notices (before a re-open: they belong to the old session)."""
        self._inbox.clear()

    def _pump(self) -> None:
        """Read the inbox into the awaited reply, in order, until one answers it."""
        while self._inbox and self._awaited is not None and self._reply is not None and not self._reply.done():
            answer = self._answer(self._inbox.popleft())
            if answer is not None:
                key, self._awaited = (self.session_id, self._awaited), None
                self.link.replies.resolve(key, answer)

    def _answer(self, entry: InboxEntry):
        """What `entry` answers to the awaited reply: a notice, a message, or None (dropped)."""
        if not isinstance(entry, Downlink):
            return entry
        self.traffic.down += entry.size
        self.traffic.down_messages += 1
        msg = self._authentic(entry.msg)
        if msg is None:
            return None
        if isinstance(msg, Queued):
            return msg
        if self._awaited == OPEN:
            if isinstance(msg, Opened):
                self.verifier_id, self.open_pending = msg.verifier_id, False
                return msg
            return msg if isinstance(msg, ErrorMsg) or (self._or_resync and isinstance(msg, Resync)) else None
        if isinstance(msg, VerdictMsg):
            return msg if msg.seq == self._awaited else None  # else a duplicate or stale verdict
        if isinstance(msg, ErrorMsg):
            return msg if msg.seq is None or msg.seq == self._awaited else None
        return msg if isinstance(msg, Resync) else None

    def _authentic(self, msg):
        """The message as the session may take it: opened when sealed; None when refused."""
        try:
            if not isinstance(msg, Sealed):
                # An encrypted session takes only RESYNC and QUEUED in the clear, and ERROR only
                # while its open is unanswered (the verifier cannot seal before it has the keys).
                if not isinstance(msg, (Resync, Queued, ErrorMsg) if self.open_pending else (Resync, Queued)):
                    self.codec.refuse_plain()
                return msg
            inner, duplicate = self.codec.open(self.link.downlink_topic, msg)
            return None if duplicate else decode(inner)
        except WireError as err:
            if isinstance(msg, Sealed) and self._sealed_earlier(msg):
                self.stale += 1  # a reply to the OPEN before the re-open, late: not an attack
                return None
            self.rejected += 1
            log.warning("dropped a downlink message that failed authentication: %s", err)
            return None

    def _sealed_earlier(self, msg: Sealed) -> bool:
        """Whether `msg` was sealed for the session as it was before the last re-open."""
        if self._earlier is None:
            return False
        try:
            self._earlier.open(self.link.downlink_topic, msg)
        except WireError:
            return False
        return True

    # -- waiting for a reply

    async def _await(self, seq: int, waiting_for: str, *, or_resync: bool = False):
        """The reply to `seq` (OPEN: to the OPEN): a message `_answer` let through. Waits
        `timeout_s` from the send or from the verifier's latest QUEUED plus its estimate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.link.timeout_s
        queued: Queued | None = None  # the latest QUEUED for this wait
        while True:
            key = (self.session_id, seq)
            self._reply = self.link.replies.expect(key)
            self._awaited, self._or_resync = seq, or_resync
            self._pump()
            try:
                answer = await _within(self._reply, deadline - loop.time())
            except asyncio.TimeoutError:
                raise self._timeout(waiting_for, queued) from None
            finally:
                self._awaited, self._reply = None, None
                self.link.replies.forget(key)
            if isinstance(answer, Queued):  # the verifier is alive and busy: wait on
                queued = answer
                deadline = max(deadline, loop.time() + self.link.timeout_s + answer.eta_ms / 1000)
                continue
            if not isinstance(answer, VerifierGone):
                return _raise_notice(answer, waiting_for)
            # A retained `offline` can be stale for a moment (a broker that restarted sends the
            # Will of a verifier that reconnects at once): give it a short grace, and keep
            # waiting if that verifier is back, since it kept its sessions.
            await asyncio.sleep(self.link.gone_grace_s)
            gone = answer.verifier_id
            if gone != self.verifier_id or self.link.verifier_status.get(gone) != ONLINE:
                raise VerifierLost(f"verifier {gone} went offline while waiting for {waiting_for}")

    def _timeout(self, waiting_for: str, queued: Queued | None) -> VerifierTimeout:
        timeout = self.link.timeout_s
        if queued is None:
            # The hint only while no verifier ever answered this session: one that did is running.
            hint = "; is `edgespec verifier` running against this broker?" if self.verifier_id is None else ""
            return VerifierTimeout(
                f"no verifier answered {waiting_for} within {timeout:.1f} s on {self.link.topics.prefix}{hint}")
        return VerifierTimeout(
            f"no verifier answered {waiting_for}: silent for {timeout:.1f} s after it said the message was "
            f"queued (answer expected in {queued.eta_ms / 1000:.1f} s) on {self.link.topics.prefix}")

    # -- the session's messages

    async def _send(self, topic: str, payload: bytes) -> None:
        self.traffic.up += self.link.send(topic, payload)
        self.traffic.up_messages += 1

    async def _send_msg(self, topic: str, msg) -> None:
        await self._send(topic, self.codec.seal(topic, msg))

    async def reopen(self, msg: SessionOpen) -> Opened:
        """Send `msg` again after the session was lost, forgetting replies already queued (they
        belong to the old session), and wait for its OPENED."""
        self.drain()
        await self.send_open(msg)
        return await self.wait_opened()  # type: ignore[return-value]

    async def send_open(self, msg: SessionOpen) -> None:
        """Send the OPEN (sealed under fresh keys when the link has device keys), stamped with
        the time it is sent: a verifier refuses a sealed OPEN outside its freshness window."""
        msg = dataclasses.replace(msg, sent_at_ms=now_ms())
        topic = self.link.topics.open(self.link.device_id)
        self.open_pending = True
        self._earlier = self.codec if self.codec.sealed else None
        keys = self.link.keys
        if keys is None:
            self.codec, payload = PLAIN, PLAIN.seal(topic, msg)
        else:
            self.codec, payload = SealedCodec.for_device(keys, self.link.device_id, self.session_id, topic, msg)
        await self._send(topic, payload)

    async def wait_opened(self, *, or_resync: bool = False) -> Opened | Resync:
        """The OPENED (a RESYNC too with `or_resync`: the verifier lost the session before it
        could answer the block the OPEN carried)."""
        msg = await self._await(OPEN, "the session open", or_resync=or_resync)
        if isinstance(msg, ErrorMsg):
            raise VerifierRejected(msg)
        return msg

    async def exchange(self, draft: DraftMsg) -> VerdictMsg | Resync:
        """Send a draft block and wait for its verdict (or a RESYNC)."""
        assert self.verifier_id is not None, "wait_opened() first"
        await self._send_msg(self.link.topics.session_up(self.link.device_id, self.verifier_id), draft)
        return await self._verdict(draft.seq)

    async def open_with_block(self, msg: SessionOpen) -> VerdictMsg | Resync:
        """Send an OPEN that carries the first block (`msg.first_block`) and wait for the
        OPENED, which holds the block's verdict (seq 0)."""
        assert msg.first_block is not None
        await self.send_open(msg)
        opened = await self.wait_opened(or_resync=True)
        if isinstance(opened, Resync):
            return opened
        if opened.first_verdict is not None:
            return opened.first_verdict
        return await self._verdict(0)  # a verifier that answers the block in a VERDICT of its own

    async def _verdict(self, seq: int) -> VerdictMsg | Resync:
        msg = await self._await(seq, f"draft seq {seq}")
        if isinstance(msg, ErrorMsg):
            raise VerifierRejected(msg)
        return msg

    async def close(self, reason: str = "done", *, finished: bool = False) -> None:
        """End the session here. `finished`: the verifier's last VERDICT said done, so it has
        ended the session itself and no CLOSE is sent."""
        try:
            if self.verifier_id is not None and not finished:
                topic = self.link.topics.session_up(self.link.device_id, self.verifier_id)
                await self._send_msg(topic, Close(self.session_id, reason))
        finally:
            self.link.release(self.session_id)


async def _within(future: asyncio.Future, seconds: float):
    """`future`'s result, taken at once when it is there (no loop turn), else waited for at
    most `seconds` (asyncio.TimeoutError)."""
    if future.done():
        return future.result()
    if not hasattr(asyncio, "timeout"):  # Python 3.10
        return await asyncio.wait_for(future, max(seconds, 0.0))
    async with asyncio.timeout(max(seconds, 0.0)):
        return await future


def _raise_notice(answer, waiting_for: str):
    """`answer` when it is a message; raises for a notice of a lost connection."""
    if isinstance(answer, Reconnected):
        raise VerifierLost(f"the broker connection was re-established while waiting for {waiting_for}")
    if isinstance(answer, LinkFailed):
        raise answer.error
    return answer
