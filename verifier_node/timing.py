"""How long the verifier's recent batches took, as a whole and in the model.

A batch's time is everything `VerifierCore.handle_batch` does for it: decoding, opening the
envelopes, validation, the session table, the model calls, judging and sealing the replies.
Its model time is the part spent in the target's forwards and the verification around them,
kept as wall time and as the CPU time of the thread that runs them (all of a forward's with
one torch thread, the nodes' default). When the two are equal the forward was not preempted,
and whatever longer it takes than the same call in another process is the CPU's own (caches
after a wait, on a VM). A batch's time less its model time is the verifier's per-message
work. A dashboard reads the figures from the verifier's stats topic; `edgespec bench` uses
them to say where a round through the broker loses time against the in-process loop.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from contextlib import contextmanager

import numpy as np

KEPT_BATCHES = 4096
# Upper bounds (seconds) of the cumulative batch-duration histogram the metrics endpoint exports.
DURATION_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class BatchTimes:
    """The last `keep` batches: (messages, seconds in all, seconds in the model, CPU seconds
    in the model)."""

    def __init__(self, keep: int = KEPT_BATCHES):
        self._rows: deque[tuple[int, float, float, float]] = deque(maxlen=keep)
        self._model_s = 0.0
        self._model_cpu_s = 0.0
        # Every batch since the start, not only the kept ones: per bucket of DURATION_BUCKETS_S
        # (the last entry: slower than all of them), and the count and sum of seconds.
        self.bucket_counts = [0] * (len(DURATION_BUCKETS_S) + 1)
        self.count = 0
        self.total_s = 0.0

    @contextmanager
    def model(self):
        """Count the time inside as model time of the batch being timed."""
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self._model_s += time.perf_counter() - started
            self._model_cpu_s += time.thread_time() - cpu

    @contextmanager
    def batch(self, messages: int):
        """Time one batch of `messages` messages."""
        self._model_s = self._model_cpu_s = 0.0
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self._rows.append((messages, seconds, self._model_s, self._model_cpu_s))
            self.bucket_counts[bisect.bisect_left(DURATION_BUCKETS_S, seconds)] += 1
            self.count += 1
            self.total_s += seconds

    def summary(self) -> dict:
        """For all kept batches and for the single-message ones: how many, and the mean and
        median milliseconds in all, in the model (wall and CPU), and outside it (`other`)."""
        rows = np.array(self._rows, dtype=float).reshape(-1, 4)
        return {"all": _describe(rows), "single": _describe(rows[rows[:, 0] == 1])}


def _describe(rows: np.ndarray) -> dict:
    if not len(rows):
        return {"batches": 0}
    total, model, cpu = rows[:, 1] * 1e3, rows[:, 2] * 1e3, rows[:, 3] * 1e3
    out: dict = {"batches": len(rows), "messages": int(rows[:, 0].sum())}
    for name, values in (("total_ms", total), ("model_ms", model), ("model_cpu_ms", cpu), ("other_ms", total - model)):
        out[name] = {"mean": round(float(values.mean()), 4), "p50": round(float(np.median(values)), 4)}
    return out
