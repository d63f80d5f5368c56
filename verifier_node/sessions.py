"""The verifier's session table: one target KV cache per session, bounded in count."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from typing import Any

from speculative.loop import StopRule
from speculative.target import TargetSession


@dataclass
class Session:
    """What the verifier holds for one device session."""

    device_id: str
    session_id: bytes
    target: TargetSession
    stop: StopRule
    prompt_len: int
    last_seq: int | None = None
    last_reply: bytes | None = None  # the verdict for last_seq, re-sent for a duplicate
    opened_reply: bytes | None = None  # the OPENED answer, re-sent for a duplicate open
    cipher: Any = None  # security.channel.SessionCipher for an encrypted session
    done: bool = False
    last_used: float = field(default_factory=time.monotonic)

    @property
    def committed_len(self) -> int:
        return len(self.target.committed)

    @property
    def generated(self) -> list[int]:
        return self.target.committed[self.prompt_len:]


class SessionTable:
    """Sessions by id, least recently used first; evicts the LRU beyond `max_sessions`."""

    def __init__(self, max_sessions: int, idle_timeout_s: float):
        self.max_sessions = max_sessions
        self.idle_timeout_s = idle_timeout_s
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self.evictions = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: bytes) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_used = time.monotonic()
            self._sessions.move_to_end(session_id)
        return session

    def add(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self._sessions.move_to_end(session.session_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self.evictions += 1

    def remove(self, session_id: bytes) -> None:
        self._sessions.pop(session_id, None)

    def expire(self, now: float | None = None) -> int:
        """Drop sessions idle longer than the timeout; returns how many."""
        now = time.monotonic() if now is None else now
        stale = [sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_timeout_s]
        for sid in stale:
            del self._sessions[sid]
        self.expired += len(stale)
        return len(stale)
