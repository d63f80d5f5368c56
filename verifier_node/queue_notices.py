"""QUEUED notices: a verifier that will not answer a session's OPEN or block soon says so, so
its device waits on instead of giving up after its fixed timeout (schemas/README.md, "Waiting
for a reply").

The service asks `QueueNotices.tell` before each batch about the batch it is about to run and
the messages queued behind it, and, while a long batch runs on the model thread, every
`TICK_S` about that batch (running for `running_s`) and the messages queued meanwhile. Each
message's wait is estimated from the verifier's batch times: what is left of the batch it
is in or waits for, plus one batch time for each batch before it. A running batch is
expected to take at least twice as long as it has so far (a first batch has no history, a
long prefill takes longer than the blocks before it). A message expected to take
`NOTICE_AFTER_S` or more gets a QUEUED on its device's downlink, at most once every
`NOTICE_EVERY_S`. A fast verifier sends none, and pays only one comparison per batch.
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
NOTICE_EVERY_S = 0.5  # at most one QUEUED per waiting message in this time
TICK_S = 0.25  # while a batch runs on the model thread, the waiting messages are looked at this often
MAX_LOOKED_AT = 1024  # queued messages looked at per pass (those further back are told later)


class QueueNotices:
    """The QUEUED notices of one verifier: its batch time, and when each waiting message was
    last told."""

    def __init__(self, topics: Topics, max_batch: int, clock: Callable[[], float] = time.monotonic):
        self.topics = topics
        self.max_batch = max(1, max_batch)
        self.clock = clock
        self.batch_s = 0.0  # recent batch time: follows a longer batch at once, a shorter one by half
        self.batches = 0  # batches timed
        self.sent = 0
        self._told: dict[tuple[bytes, int], float] = {}  # (session id, message) -> when its device was last told

    def took(self, seconds: float) -> None:
        """One batch took `seconds` (its model work and replies)."""
        self.batch_s = max(seconds, (self.batch_s + seconds) / 2)
        self.batches += 1

    def eta_s(self, batches_before: int, running_s: float | None = None) -> float:
        """When a message with `batches_before` batches before its own is answered: the batch
        about to run (or running for `running_s`), then one batch time for each other."""
        if running_s is None:
            return (batches_before + 1) * self.batch_s
        per_batch = max(self.batch_s, running_s)
        left = max(self.batch_s - running_s, running_s)  # a running batch takes at least twice as long as so far
        return left + batches_before * per_batch

    def tell(self, batch: list[tuple[str, bytes]], queued: Iterable[tuple[str, bytes]], queued_len: int,
             running_s: float | None = None) -> list[Reply]:
        """QUEUED for the messages of `batch` (run next, or running for `running_s`) and of
        `queued` (behind it, `queued_len` in all) whose answer is expected in `NOTICE_AFTER_S`
        or more."""
        last_batches = 1 + max(queued_len - 1, 0) // self.max_batch if queued_len else 0
        if self.eta_s(last_batches, running_s) < NOTICE_AFTER_S:
            return []  # the fast path: nothing waits long
        now = self.clock()
        self._told = {key: at for key, at in self._told.items() if now - at < NOTICE_EVERY_S}
        out: list[Reply] = []
        waiting = itertools.chain(((0, m) for m in batch),
                                  ((1 + i // self.max_batch, m) for i, m in
                                   enumerate(itertools.islice(queued, MAX_LOOKED_AT))))
        for ahead, (batches_before, (topic, payload)) in enumerate(waiting):
            eta = self.eta_s(batches_before, running_s)
            if eta < NOTICE_AFTER_S:
                continue
            notice = self._notice(topic, payload, ahead, eta, now)
            if notice is not None:
                out.append(notice)
        self.sent += len(out)
        return out

    def _notice(self, topic: str, payload: bytes, ahead: int, eta: float, now: float) -> Reply | None:
        session_id, _ = peek_ids(payload)
        if session_id is None:
            return None
        # Each message is told on its own: a session's next block, sent when the verdict of
        # the last one came, is told at once, not after the interval of the last one's notice.
        key = (session_id, hash(payload))
        if key in self._told:
            return None
        try:
            device_id = self.topics.parse_uplink(topic).device_id
        except WireError:
            return None
        self._told[key] = now
        eta_ms = min(round(eta * 1000), MAX_ETA_MS)
        return self.topics.down(device_id), encode(Queued(session_id, ahead, eta_ms))
