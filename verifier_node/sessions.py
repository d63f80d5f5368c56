"""The verifier's session table: one target KV cache per session, bounded in count."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from schemas import Opened
from speculative.loop import StopRule
from speculative.target import TargetSession

from .protocol import SessionProtocol


@dataclass
class Session:
    """What the verifier holds for one live device session: its protocol state and its model
    state (the target's KV cache and committed tokens)."""

    protocol: SessionProtocol
    target: TargetSession
    stop: StopRule
    prompt_len: int
    opened: Opened  # the answer to its OPEN
    gamma: int = 32  # the most drafts per block the device announced
    resumed: int = 0  # generated tokens the device supplied at its OPEN (a re-open), not verified here
    stream: bool = False  # cloud-only: the verifier generates on its own, one token a batch
    last_used: float = field(default_factory=time.monotonic)

    @property
    def device_id(self) -> str:
        return self.protocol.device_id

    @property
    def session_id(self) -> bytes:
        return self.protocol.session_id

    @property
    def committed_len(self) -> int:
        return len(self.target.committed)

    @property
    def generated(self) -> list[int]:
        return self.target.committed[self.prompt_len:]


class FinishedSessions:
    """The most recent `limit` finished sessions by id (oldest forgotten first): their protocol
    state, enough to authenticate and answer a QoS-1 redelivery of the last DRAFT or of the
    OPEN. Their KV caches are gone; a device sends no CLOSE (one that comes is accepted)."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._by_id: OrderedDict[bytes, SessionProtocol] = OrderedDict()

    def add(self, session: Session) -> None:
        self._by_id[session.session_id] = session.protocol
        self._by_id.move_to_end(session.session_id)
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)

    def get(self, session_id: bytes) -> SessionProtocol | None:
        return self._by_id.get(session_id)

    def pop(self, session_id: bytes) -> SessionProtocol | None:
        return self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)


class SessionTable:
    """Sessions by id, least recently used first.

    Bounded twice: at most `max_sessions` sessions and at most `max_bytes` of KV cache
    (positions held x `bytes_per_token`); beyond either the least recently used session is
    evicted (its device gets RESYNC on its next draft). Idle sessions expire. `on_drop` is
    called for every session that leaves the table.
    """

    def __init__(self, max_sessions: int, idle_timeout_s: float, *, max_bytes: int | None = None,
                 bytes_per_token: int = 0, on_drop=None, max_per_device: int | None = None,
                 max_tokens_per_session: int | None = None):
        """`max_tokens_per_session` (the model's positions): while that many for every session
        held fits in `max_bytes`, a new session needs no count of what the others hold."""
        self.max_sessions = max_sessions
        self.max_per_device = max_per_device
        self.idle_timeout_s = idle_timeout_s
        self.max_bytes = max_bytes
        self.bytes_per_token = bytes_per_token
        self.on_drop = on_drop or (lambda session: None)
        self.max_tokens_per_session = max_tokens_per_session
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()
        self._by_device: dict[str, OrderedDict[bytes, None]] = {}  # each device's sessions, oldest first
        self.evictions = 0
        self.expired = 0
        self.quota_evictions = 0  # a device's own sessions dropped for its newer ones

    def kv_bytes(self) -> int:
        """KV cache bytes the sessions hold now."""
        return self.bytes_per_token * sum(s.target.state.length for s in self._sessions.values())

    def _over(self) -> bool:
        n = len(self._sessions)
        if n > self.max_sessions:
            return True
        if self.max_bytes is None or n <= 1:
            return False
        if self.max_tokens_per_session is not None \
                and n * self.max_tokens_per_session * self.bytes_per_token <= self.max_bytes:
            return False  # cannot be over, however long the sessions are
        return self.kv_bytes() > self.max_bytes

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: bytes) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_used = time.monotonic()
            self._sessions.move_to_end(session_id)
            self._by_device[session.device_id].move_to_end(session_id)
        return session

    def add(self, session: Session) -> None:
        """Hold `session`. A device at its quota gives up its own least recently used session
        first (so one device opening session after session cannot push other devices' out);
        beyond the table's bounds the least recently used of all go."""
        if self.max_per_device is not None:
            own = [sid for sid in self._by_device.get(session.device_id, ()) if sid != session.session_id]
            for old in own[: max(0, len(own) - self.max_per_device + 1)]:
                self.remove(old)
                self.quota_evictions += 1
        if self._sessions.get(session.session_id, session) is not session:
            self.remove(session.session_id)  # another session under the same id goes
        self._sessions[session.session_id] = session
        self._by_device.setdefault(session.device_id, OrderedDict())[session.session_id] = None
        while self._over():
            _, evicted = self._sessions.popitem(last=False)
            self._forget(evicted)
            self.evictions += 1

    def _forget(self, session: Session) -> None:
        own = self._by_device.get(session.device_id)
        if own is not None:
            own.pop(session.session_id, None)
            if not own:
                del self._by_device[session.device_id]
        self.on_drop(session)

    def remove(self, session_id: bytes) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._forget(session)

    def expire(self, now: float | None = None) -> int:
        """Drop sessions idle longer than the timeout; returns how many."""
        now = time.monotonic() if now is None else now
        stale = [sid for sid, s in self._sessions.items() if now - s.last_used > self.idle_timeout_s]
        for sid in stale:
            self._forget(self._sessions.pop(sid))
        self.expired += len(stale)
        return len(stale)
