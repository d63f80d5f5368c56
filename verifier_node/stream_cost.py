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

from speculative.gamma_control import Ewma


@dataclass
class StreamCost:
    decode: Ewma = field(default_factory=lambda: Ewma(prior=0.0))  # a one-token forward of one session
    call: Ewma = field(default_factory=lambda: Ewma(prior=0.0))  # a model call
    # Share of time in model calls: each call against itself and the idle gap before it.
    busy_share: Ewma = field(default_factory=lambda: Ewma(prior=0.0))
    _last_end: float | None = field(default=None, init=False)

    @property
    def decode_s(self) -> float | None:
        return self.decode.value if self.decode.samples else None

    @property
    def call_s(self) -> float:
        return self.call.value

    @property
    def busy(self) -> float:
        return self.busy_share.value

    def observe_decode(self, seconds: float) -> None:
        self.decode.observe(seconds)

    def observe_call(self, started: float, ended: float) -> None:
        """A model call ran from `started` to `ended` (seconds of one monotonic clock)."""
        elapsed = max(0.0, ended - started)
        if self._last_end is None:
            share = 0.0  # nothing known of the time before it: counted as idle
        else:
            gap = max(0.0, started - self._last_end)
            share = elapsed / (elapsed + gap) if elapsed + gap > 0 else 0.0
        self.call.observe(elapsed)
        self.busy_share.observe(share)
        self._last_end = ended

    def per_token_s(self) -> float | None:
        """Seconds a streamed token costs here now; None before any one-token forward was timed."""
        decode = self.decode_s
        if decode is None:
            return None
        return decode + self.busy * max(0.0, self.call_s - decode)
