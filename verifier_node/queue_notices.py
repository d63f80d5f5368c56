"""QUEUED notices: a verifier that will not answer a session's OPEN or block soon says so, so
its device waits on instead of giving up after its fixed timeout (schemas/README.md, "Waiting
for a reply").

Between batches the service asks `QueueNotices.tell` about the batch it is about to run and
the messages still queued behind it. Each message's wait is estimated from the verifier's
recent batch time: (batches before it + 1) x that time. A message expected to take
`NOTICE_AFTER_S` or more gets a QUEUED on its device's downlink, at most once every
`NOTICE_EVERY_S` per session. A fast verifier sends none, and pays only one comparison per batch.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable

from schemas import Queued, Topics, WireError, encode
from schemas.messages import MAX_ETA_MS

from .replies import peek_ids

Reply = tuple[str, bytes]
NOTICE_AFTER_S = 0.25  # an answer expected this late or later is announced
NOTICE_EVERY_S = 1.0  # at most one QUEUED per session in this time
MAX_LOOKED_AT = 1024  # queued messages looked at per pass (those further back are told later)


class QueueNotices:
    """The QUEUED notices of one verifier: its batch time, and when each session was last told."""

    def __init__(self, topics: Topics, max_batch: int, clock: Callable[[], float] = time.monotonic):
        self.topics = topics
        self.max_batch = max(1, max_batch)
        self.clock = clock
        self.batch_s = 0.0  # recent batch time: follows a longer batch at once, a shorter one by half
        self.sent = 0
        self._told: dict[bytes, float] = {}  # session id -> when its device was last told

    def took(self, seconds: float) -> None:
        """One batch took `seconds` (its model work and replies)."""
        self.batch_s = max(seconds, (self.batch_s + seconds) / 2)

    def eta_s(self, batches_before: int) -> float:
        return (batches_before + 1) * self.batch_s

    def tell(self, batch: list[tuple[str, bytes]], queued: Iterable[tuple[str, bytes]], queued_len: int) -> list[Reply]:
        """QUEUED for the messages of `batch` (run next) and of `queued` (behind it, `queued_len`
        in all) whose answer is expected in `NOTICE_AFTER_S` or more."""
        last_batches = 1 + max(queued_len - 1, 0) // self.max_batch if queued_len else 0
        if self.eta_s(last_batches) < NOTICE_AFTER_S:
            return []  # the fast path: nothing waits long
        now = self.clock()
        self._told = {sid: at for sid, at in self._told.items() if now - at < NOTICE_EVERY_S}
        out: list[Reply] = []
        waiting = itertools.chain(((0, m) for m in batch),
                                  ((1 + i // self.max_batch, m) for i, m in
                                   enumerate(itertools.islice(queued, MAX_LOOKED_AT))))
        for ahead, ((topic, payload), batches_before) in enumerate((m, b) for b, m in waiting):
            eta = self.eta_s(batches_before)
            if eta < NOTICE_AFTER_S:
                continue
            notice = self._notice(topic, payload, ahead, eta, now)
            if notice is not None:
                out.append(notice)
        self.sent += len(out)
        return out

    def _notice(self, topic: str, payload: bytes, ahead: int, eta: float, now: float) -> Reply | None:
        session_id, _ = peek_ids(payload)
        if session_id is None or session_id in self._told:
            return None
        try:
            device_id = self.topics.parse_uplink(topic).device_id
        except WireError:
            return None
        self._told[session_id] = now
        eta_ms = min(round(eta * 1000), MAX_ETA_MS)
        return self.topics.down(device_id), encode(Queued(session_id, ahead, eta_ms))
