"""One session's protocol as a state machine: events in, actions out, no model and no I/O.

Phases::

    OPENING --opened / first verdict--> ACTIVE --verdict done--> FINISHED
       |                                  |
       +---- close, resync, failure ------+--> ENDED

OPENING: the OPEN is accepted; its prefill, and the first block it carried if any, are
pending (a repeated OPEN that carried a block gets no answer meanwhile). ACTIVE: drafts are
verified in seq order. FINISHED: the last VERDICT said done; the session's KV cache is gone,
what answers a redelivered last DRAFT or OPEN stays. ENDED: closed by its device, or answered
with RESYNC or an error by the verifier.

The handlers return what to do (`Verify`, `Answer`, `Refuse`, ...); the caller
(`core.VerifierCore`) does it: verifying, publishing, counting, dropping the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from schemas import Close, DraftMsg, ErrorCode, WireError
from schemas.messages import Message
from security.session_codec import PLAIN, SessionCodec

NOT_HELD = "session not held by this verifier"


class Phase(Enum):
    OPENING = "opening"
    ACTIVE = "active"
    FINISHED = "finished"
    ENDED = "ended"


@dataclass(frozen=True)
class Verify:
    """Verify this block with the target (it passed every protocol check)."""

    msg: DraftMsg


@dataclass(frozen=True)
class Answer:
    """Send this reply again, as built before (a QoS-1 redelivery: never verify twice)."""

    payload: bytes


@dataclass(frozen=True)
class Refuse:
    """Reject the message with this error."""

    error: WireError


@dataclass(frozen=True)
class NotHeld:
    """No session of this id here: answer RESYNC (in the clear; the device re-opens)."""

    session_id: bytes


@dataclass(frozen=True)
class Desync:
    """The device and the verifier disagree on the committed tokens: the session has ended;
    answer RESYNC with `reason`."""

    reason: str


@dataclass(frozen=True)
class Closed:
    """The device closed its session: drop it."""


@dataclass(frozen=True)
class Forget:
    """A CLOSE after the final verdict: forget the finished session."""

    session_id: bytes


@dataclass(frozen=True)
class Ignore:
    """Nothing to do and nothing to answer."""


@dataclass(frozen=True)
class Finish:
    """The verdict said done: the session is finished."""


Action = Verify | Answer | Refuse | NotHeld | Desync | Closed | Forget | Ignore | Finish
WRONG_DEVICE = "session id belongs to another device"


@dataclass
class SessionProtocol:
    """The protocol state of one session. `codec` seals its replies and opens its envelopes
    (chosen at its OPEN); `opened_reply`: the OPENED, built at the OPEN (when the OPEN carried
    a block: built with that block's VERDICT inside, None until then); `last_reply`: the
    reply to draft `last_seq`."""

    device_id: str
    session_id: bytes
    codec: SessionCodec = field(default=PLAIN, repr=False)
    phase: Phase = Phase.OPENING
    last_seq: int | None = None
    last_reply: bytes | None = None
    opened_reply: bytes | None = None
    opened_by: bytes = b""  # the sealed OPEN's ciphertext, to recognise its QoS-1 duplicates

    @property
    def ended(self) -> bool:
        """Finished or ended: its KV cache is never read again."""
        return self.phase in (Phase.FINISHED, Phase.ENDED)

    # ------------------------------------------------------------------ events from the device

    def open_again(self) -> Answer | Ignore:
        """A repeated OPEN: its OPENED again, or nothing while that is being computed."""
        return Ignore() if self.opened_reply is None else Answer(self.opened_reply)

    def draft(self, device_id: str, msg: DraftMsg, committed_len: int | None) -> Action:
        """A DRAFT; `committed_len`: the tokens the verifier holds (None once finished)."""
        if device_id != self.device_id:
            return Refuse(WireError(ErrorCode.WRONG_DEVICE, WRONG_DEVICE))
        if self.last_seq is not None and msg.seq == self.last_seq and self.last_reply is not None:
            return Answer(self.last_reply)
        if self.phase is Phase.FINISHED:
            return Refuse(WireError(ErrorCode.BAD_SEQUENCE, "the session has already finished"))
        if self.last_seq is not None and msg.seq != self.last_seq + 1:
            return Refuse(WireError(ErrorCode.BAD_SEQUENCE,
                                    f"seq {msg.seq} after {self.last_seq}: stale or out of order"))
        if msg.committed_len != committed_len:
            self.phase = Phase.ENDED
            return Desync(f"device has {msg.committed_len} committed tokens, verifier {committed_len}")
        return Verify(msg)

    def close(self, device_id: str) -> Action:
        """A CLOSE (plaintext: another device's CLOSE of a live session is ignored)."""
        if self.phase is Phase.FINISHED:
            if device_id != self.device_id:
                return Refuse(WireError(ErrorCode.WRONG_DEVICE, WRONG_DEVICE))
            return Forget(self.session_id)
        if device_id != self.device_id:
            return Ignore()
        self.phase = Phase.ENDED
        return Closed()

    def sealed(self, device_id: str) -> Refuse | None:
        """An envelope names this session: refused unless it came from its device."""
        if device_id != self.device_id:
            return Refuse(WireError(ErrorCode.WRONG_DEVICE, WRONG_DEVICE))
        return None

    def inner(self, device_id: str, inner: Message, committed_len: int | None, *,
              duplicate_of: int | None = None) -> Action:
        """The message an authenticated envelope held (from this session's device);
        `duplicate_of`: the envelope's seq when that seq was received before."""
        if duplicate_of is not None:
            if isinstance(inner, DraftMsg) and inner.seq == self.last_seq and self.last_reply is not None:
                return Answer(self.last_reply)
            return Refuse(WireError(ErrorCode.REPLAY, f"envelope seq {duplicate_of} was already received"))
        if self.phase is Phase.FINISHED:  # a repeat of its last DRAFT came as a duplicate envelope
            if isinstance(inner, Close):
                return Forget(self.session_id)
            if isinstance(inner, DraftMsg):
                return Refuse(WireError(ErrorCode.BAD_SEQUENCE, "the session has already finished"))
        elif isinstance(inner, DraftMsg):
            return self.draft(device_id, inner, committed_len)
        elif isinstance(inner, Close):
            return self.close(device_id)
        return Refuse(WireError(ErrorCode.UNKNOWN_TYPE, f"a device may not send {inner.type.name} messages"))

    # ------------------------------------------------------------------ events from the model

    def answers_open(self, seq: int) -> bool:
        """Whether the verdict of draft `seq` is the answer to the OPEN (its carried block)."""
        return self.phase is Phase.OPENING and seq == 0

    def opened(self) -> bytes | None:
        """The prefill is done: the OPENED to send (None: the verdict of the block the OPEN
        carried brings it, and the session stays OPENING until then)."""
        if self.opened_reply is not None:
            self.phase = Phase.ACTIVE
        return self.opened_reply

    def verdict(self, seq: int, reply: bytes, done: bool) -> Finish | None:
        """Draft `seq` was verified and answered with `reply`."""
        if self.answers_open(seq):
            self.opened_reply = reply
            self.phase = Phase.ACTIVE
        self.last_seq, self.last_reply = seq, reply
        if done:
            self.phase = Phase.FINISHED
            return Finish()
        return None

    def failed(self) -> None:
        """The model work for this session failed (answered with an error): it has ended."""
        self.phase = Phase.ENDED
