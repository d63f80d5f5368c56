"""The device session as a state machine, without I/O: feed it what happened (`step(event)`),
and it says what to do next (an action) and keeps the session's state and counters.

    IDLE --OpenSent--> OPENING --Opened--> ACTIVE --BlockSent/Verdict--> ACTIVE
    OPENING | ACTIVE | RESYNCING --Resynced/Lost--> RESYNCING (Reopen) or Fail
    RESYNCING --Opened--> ACTIVE;  any --Closed--> CLOSED

One `RetryPolicy` bounds the re-opens: `attempts` sends of one message (the OPEN of the open
phase, or one block) in all, the first included. The count starts again with each new block.
A session that fails after re-opens fails with one error that says so, and why the first
re-open was made.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from transport.retry import RetryPolicy

from .errors import ResyncFailed, VerifierLost


class State(enum.Enum):
    IDLE = "idle"  # nothing sent yet
    OPENING = "opening"  # the OPEN is out (perhaps with the first block), no OPENED yet
    ACTIVE = "active"  # the verifier holds the session: blocks go out, verdicts come back
    RESYNCING = "resyncing"  # the session was lost: the OPEN goes out again with the full context
    CLOSED = "closed"


# Events: what happened to the session.
@dataclass(frozen=True)
class OpenSent:
    carries_block: bool = False  # the OPEN carries block 0


@dataclass(frozen=True)
class Opened:
    verifier_id: str | None


@dataclass(frozen=True)
class BlockSent:
    seq: int


@dataclass(frozen=True)
class Verdict:
    seq: int
    done: bool = False


@dataclass(frozen=True)
class Resynced:
    """The verifier answered RESYNC: it no longer holds the session."""

    reason: str


@dataclass(frozen=True)
class Lost:
    """Waiting for a reply failed: a timeout, or a verifier that went offline (VerifierLost)."""

    error: Exception


@dataclass(frozen=True)
class Closed:
    pass


Event = OpenSent | Opened | BlockSent | Verdict | Resynced | Lost | Closed


# Actions: what the device does next.
@dataclass(frozen=True)
class Proceed:
    pass


@dataclass(frozen=True)
class Reopen:
    """Send the OPEN again, with the context committed so far, then the block in flight."""

    reason: str


@dataclass(frozen=True)
class Fail:
    error: Exception


Action = Proceed | Reopen | Fail

_ALLOWED: dict[type, frozenset[State]] = {
    OpenSent: frozenset({State.IDLE}),
    Opened: frozenset({State.OPENING, State.RESYNCING}),
    BlockSent: frozenset({State.ACTIVE}),
    Verdict: frozenset({State.ACTIVE}),
    Resynced: frozenset({State.OPENING, State.ACTIVE}),
    Lost: frozenset({State.OPENING, State.ACTIVE, State.RESYNCING}),
    Closed: frozenset(State),
}


class InvalidTransition(RuntimeError):
    """An event the session cannot take in its state (a bug in the caller)."""


@dataclass
class DeviceSession:
    """One session's state: where it is, who holds it, how often it was re-opened."""

    policy: RetryPolicy
    state: State = State.IDLE
    verifier_id: str | None = None
    seq: int | None = None  # the block in flight
    resyncs: int = 0  # re-opens in all
    finished: bool = False  # the last verdict said done: the verifier ended the session itself
    tries: int = 0  # failed sends of the message in flight
    first_loss: str | None = None  # why the message in flight was first sent again

    def step(self, event: Event) -> Action:
        if self.state not in _ALLOWED[type(event)]:
            raise InvalidTransition(f"{type(event).__name__} in state {self.state.value}")
        if isinstance(event, OpenSent):
            self.state, self.tries, self.first_loss = State.OPENING, 0, None
            self.seq = 0 if event.carries_block else None
        elif isinstance(event, Opened):
            self.state, self.verifier_id = State.ACTIVE, event.verifier_id
        elif isinstance(event, BlockSent):
            if event.seq != self.seq:
                self.seq, self.tries, self.first_loss = event.seq, 0, None
        elif isinstance(event, Verdict):
            self.finished = event.done
        elif isinstance(event, (Resynced, Lost)):
            return self._lost(event)
        else:
            self.state = State.CLOSED
        return Proceed()

    def _lost(self, event: Resynced | Lost) -> Action:
        last = self.policy.attempts is not None and self.tries + 1 >= self.policy.attempts
        if isinstance(event, Lost):
            # A plain timeout before any verifier answered: nobody serves this broker, say so.
            never_opened = self.verifier_id is None and not isinstance(event.error, VerifierLost)
            if last or never_opened:
                return Fail(self._after_reopens(event.error))
            reason = str(event.error)
        elif last:
            return Fail(ResyncFailed(f"session lost {self.tries + 1} times in one round: {event.reason}"))
        else:
            reason = event.reason
        self.tries += 1
        self.resyncs += 1
        self.first_loss = self.first_loss or reason
        self.state = State.RESYNCING
        return Reopen(reason)

    def _after_reopens(self, error: Exception) -> Exception:
        """`error`, told as the end of this message's re-opens when there were any: one line
        that says what was tried, and why, in place of a line for each re-open. The message is
        extended in place (the caller may raise the error it stepped with)."""
        if self.tries and len(error.args) == 1 and isinstance(error.args[0], str):
            times = "once" if self.tries == 1 else f"{self.tries} times"
            first = "" if self.first_loss in (None, str(error)) else f" (first because {self.first_loss})"
            error.args = (f"{error}; the session was re-opened {times}{first}",)
        return error
