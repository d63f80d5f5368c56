"""What a token of a cloud-only session costs on this verifier now, as verdicts tell devices.

A streamed token needs one forward over one new token (`decode_s`: timed when the verifier
starts, then by every such forward). On a verifier busy with other sessions it also waits for
their batches: each streamed token rides in the next batch, so on a verifier always busy a
token costs a batch's time. `per_token_s` blends the two by the share of recent time spent in
model calls: ``decode_s + busy * max(0, call_s - decode_s)``. A device compares it with what
its own hybrid rounds measured, which include that waiting too (camera_node/modes.py). Pure:
the caller passes the clock's readings.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StreamCost:
    alpha: float = 0.2  # weight of the newest observation in the smoothed figures
    decode_s: float | None = None  # a forward over one new token of one session, smoothed
    call_s: float = 0.0  # a model call's time, smoothed
    busy: float = 0.0  # share of time in model calls: each call against itself and the idle gap before it
    calls: int = field(default=0, init=False)
    _last_end: float | None = field(default=None, init=False)

    def observe_decode(self, seconds: float) -> None:
        if seconds < 0:
            return
        old = self.decode_s
        self.decode_s = seconds if old is None else (1 - self.alpha) * old + self.alpha * seconds

    def observe_call(self, started: float, ended: float) -> None:
        """A model call ran from `started` to `ended` (seconds of one monotonic clock)."""
        elapsed = max(0.0, ended - started)
        if self._last_end is None:
            share = 0.0  # nothing known of the time before it: counted as idle
        else:
            gap = max(0.0, started - self._last_end)
            share = elapsed / (elapsed + gap) if elapsed + gap > 0 else 0.0
        if self.calls == 0:
            self.call_s, self.busy = elapsed, share
        else:
            self.call_s = (1 - self.alpha) * self.call_s + self.alpha * elapsed
            self.busy = (1 - self.alpha) * self.busy + self.alpha * share
        self.calls += 1
        self._last_end = ended

    def per_token_s(self) -> float | None:
        """Seconds a streamed token costs here now; None before any one-token forward was timed."""
        if self.decode_s is None:
            return None
        return self.decode_s + self.busy * max(0.0, self.call_s - self.decode_s)
