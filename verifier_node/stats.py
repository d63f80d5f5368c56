"""The verifier's counters: traffic, outcomes, rejections by reason, batch sizes and times,
and how many drafted tokens were accepted (per block and per draft position).

The service publishes them on the verifier's stats topic (`service.stats_snapshot`) and the
metrics endpoint exports them (edgespec/metrics.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from schemas import WireError

from .timing import BatchTimes

log = logging.getLogger("edgespec.verifier")


@dataclass
class VerifierStats:
    """`stats`: events by name (opened, verified_blocks, duplicates, resyncs, ...);
    `rejected`: refused messages by reason (`WireError.reason`, and `busy`, `retained`,
    `overloaded`); `batch_sizes`: forwards by the number of blocks in them. Per verified block,
    `accepted_lengths` counts how many drafts were accepted, and per draft position
    `position_judged` how often it was judged (every position up to the first rejection) and
    `position_accepted` how often accepted."""

    stats: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    accepted_lengths: Counter[int] = field(default_factory=Counter)
    position_judged: Counter[int] = field(default_factory=Counter)
    position_accepted: Counter[int] = field(default_factory=Counter)
    batch_times: BatchTimes = field(default_factory=BatchTimes)

    def refused(self, err: WireError) -> None:
        """One message rejected with `err`."""
        self.rejected[err.reason] += 1
        log.debug("rejected: %s", err)

    def traffic(self, received: list[tuple[str, bytes]], sent: list[tuple[str, bytes]]) -> None:
        """One batch's messages in and replies out."""
        self.stats["messages_in"] += len(received)
        self.stats["bytes_in"] += sum(len(payload) for _, payload in received)
        self.stats["messages_out"] += len(sent)
        self.stats["bytes_out"] += sum(len(payload) for _, payload in sent)

    def verdict(self, n_accepted: int, drafted: int) -> None:
        """One verified block of `drafted` tokens, `n_accepted` of them accepted."""
        self.stats["verified_blocks"] += 1
        self.stats["accepted_tokens"] += n_accepted
        self.stats["drafted_tokens"] += drafted
        self.accepted_lengths[n_accepted] += 1
        for position in range(min(n_accepted + 1, drafted)):
            self.position_judged[position] += 1
            self.position_accepted[position] += position < n_accepted
