"""Which way the camera generates: the draft alone, the verifier's target alone, or both.

* ``EDGE_ONLY``: the device's draft model generates by itself. Nothing leaves the device; the
  text is the draft's, not the target's.
* ``CLOUD_ONLY``: the verifier's target generates and streams the tokens back; the device
  drafts nothing (the least device energy).
* ``HYBRID``: speculative decoding, the device drafts blocks and the verifier judges them;
  the text is the target's.

The policy, one decision per call of `ModePolicy.decide` (docs/operations.md has it as a table):

1. Privacy on: ``EDGE_ONLY``, at once.
2. Not reachable (no broker connection, or no verifier answered recently): ``EDGE_ONLY``, at once.
3. Low battery (below ``low_battery``, not on mains; left again above ``low_battery +
   battery_band``): ``CLOUD_ONLY``, when it has a prediction.
4. Otherwise the mode with the highest predicted tokens per second among ``HYBRID`` and
   ``CLOUD_ONLY`` (and ``EDGE_ONLY`` only when ``edge_competes``: it gives the draft's text).
   A mode with no prediction is not a candidate.

Steps 3 and 4 switch with hysteresis: the same new mode must be proposed by ``confirm``
consecutive decisions, be predicted faster than the current mode by more than ``margin``
(step 4; a current mode with no prediction is beaten by any), and the current mode must have
been held for ``min_dwell_s`` since the last switch. Steps 1 and 2 never wait, so a link that
comes and goes keeps the device on edge-only until it has stayed up long enough. Pure: the
caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Mode(str, Enum):
    EDGE_ONLY = "edge_only"
    CLOUD_ONLY = "cloud_only"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class LinkView:
    """What the device knows when it decides: settings, link state, battery, predictions.

    Throughputs are predicted tokens per second of each mode (None: not possible now, e.g.
    no acceptance measured yet for ``hybrid_tps``); see `predict_edge_only`,
    `predict_cloud_only` and speculative.gamma_control for ``hybrid_tps``.
    """

    privacy: bool = False  # privacy setting: nothing may leave the device
    reachable: bool = True  # broker connected and a verifier answered recently
    rtt_ms: float | None = None
    acceptance: float | None = None  # per-position acceptance of the draft (informational)
    battery: float | None = None  # charge fraction 0..1; None: no battery
    on_mains: bool = True
    edge_tps: float | None = None
    cloud_tps: float | None = None
    hybrid_tps: float | None = None

    def throughput(self, mode: Mode) -> float | None:
        return {Mode.EDGE_ONLY: self.edge_tps, Mode.CLOUD_ONLY: self.cloud_tps, Mode.HYBRID: self.hybrid_tps}[mode]


def predict_edge_only(draft_s_per_token: float) -> float | None:
    """Tokens per second of the draft alone."""
    return 1.0 / draft_s_per_token if draft_s_per_token > 0 else None


def predict_cloud_only(rtt_s: float, target_s_per_token: float, tokens: int) -> float | None:
    """Tokens per second of a generation of ``tokens`` tokens made by the target and streamed
    back: one round trip, then the target's time per token."""
    seconds = rtt_s + tokens * target_s_per_token
    return tokens / seconds if tokens > 0 and seconds > 0 else None


@dataclass(frozen=True)
class ModeSettings:
    """Thresholds and hysteresis of the mode choice."""

    confirm: int = 3  # consecutive decisions proposing the same new mode before a switch
    min_dwell_s: float = 10.0  # a mode is held at least this long (forced switches excepted)
    margin: float = 0.15  # a faster mode must be predicted this much faster (relative)
    low_battery: float = 0.2  # below this fraction, off mains: prefer cloud-only
    battery_band: float = 0.05  # leave the low-battery state only above low_battery + band
    edge_competes: bool = False  # edge-only may win on speed alone (its text is the draft's)

    def __post_init__(self) -> None:
        if self.confirm < 1:
            raise ValueError(f"confirm {self.confirm}: must be >= 1")
        if self.margin < 0 or self.min_dwell_s < 0 or self.battery_band < 0:
            raise ValueError("margin, min_dwell_s and battery_band must be >= 0")


@dataclass(frozen=True)
class ModeDecision:
    mode: Mode
    reason: str  # privacy, unreachable, low battery, faster, held, ...
    switched: bool  # this decision changed the mode


@dataclass
class ModePolicy:
    """The current mode and what the hysteresis remembers; `decide` once per decision."""

    settings: ModeSettings = ModeSettings()
    mode: Mode = Mode.EDGE_ONLY  # until the link is known to work
    since_s: float | None = None  # when the last switch happened (None: none yet, no dwell owed)
    low_battery: bool = False
    _pending: Mode | None = field(default=None, init=False)
    _streak: int = field(default=0, init=False)

    def _battery_low(self, view: LinkView) -> bool:
        """The low-battery state, with a band so a charge near the threshold does not flap it."""
        s = self.settings
        if view.battery is None or view.on_mains:
            self.low_battery = False
        elif self.low_battery:
            self.low_battery = view.battery <= s.low_battery + s.battery_band
        else:
            self.low_battery = view.battery < s.low_battery
        return self.low_battery

    def _candidate(self, view: LinkView) -> tuple[Mode, str]:
        """The mode steps 3-4 propose, and why (before dwell and confirmation)."""
        if self._battery_low(view) and view.cloud_tps is not None:
            return Mode.CLOUD_ONLY, "low battery"
        modes = [Mode.HYBRID, Mode.CLOUD_ONLY] + ([Mode.EDGE_ONLY] if self.settings.edge_competes else [])
        rated = [(view.throughput(m) or 0.0, m) for m in modes if view.throughput(m) is not None]
        if not rated:
            return Mode.EDGE_ONLY, "no mode with a prediction"
        best_tps, best = max(rated, key=lambda r: r[0])
        current = view.throughput(self.mode) if self.mode in modes else None
        if current is not None and best is not self.mode and best_tps <= current * (1 + self.settings.margin):
            return self.mode, "held (within the margin)"
        return best, "faster"

    def _switch(self, mode: Mode, reason: str, now_s: float) -> ModeDecision:
        switched = mode is not self.mode
        if switched:
            self.mode, self.since_s = mode, now_s
        self._pending, self._streak = None, 0
        return ModeDecision(mode, reason, switched)

    def decide(self, view: LinkView, now_s: float) -> ModeDecision:
        """The mode for the next generation (``now_s``: a monotonic clock, in seconds)."""
        if view.privacy:
            return self._switch(Mode.EDGE_ONLY, "privacy", now_s)
        if not view.reachable:
            return self._switch(Mode.EDGE_ONLY, "unreachable", now_s)
        candidate, reason = self._candidate(view)
        if candidate is self.mode:
            self._pending, self._streak = None, 0
            return ModeDecision(self.mode, reason, False)
        if candidate is self._pending:
            self._streak += 1
        else:
            self._pending, self._streak = candidate, 1
        dwelt = self.since_s is None or now_s - self.since_s >= self.settings.min_dwell_s
        if self._streak >= self.settings.confirm and dwelt:
            return self._switch(candidate, reason, now_s)
        return ModeDecision(self.mode, f"held (waiting to switch to {candidate.value}: {reason})", False)
