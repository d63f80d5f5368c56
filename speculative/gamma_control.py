"""Choosing the draft length gamma before each round, from measured acceptance and timings.

A round drafts g tokens, sends them, and waits for the verdict. With per-position acceptance
a (the probability that a judged draft position is accepted), the tokens a round yields,
the bonus or correction token included, are on average

    E(g) = (1 - a^(g+1)) / (1 - a)          (g + 1 when a = 1)

and a round costs the drafting (g * t_d), the network round trip (rtt) and the verifier's
forward over the block, t_v(g) = t_v0 + g * t_v1. Two policies:

* ``latency``: maximise this device's tokens per second, E(g) / (g * t_d + rtt + t_v(g)).
  With pipelining (the next block is drafted while the verdict is awaited) drafting overlaps
  the wait and a round costs about max(g * t_d, rtt + t_v(g)).
* ``capacity``: maximise tokens per verifier-second, E(g) / t_v(g), among the g whose
  latency rate is at least the best latency rate divided by ``max_slowdown``.

The optimum grows with the delay (roughly with its logarithm: each extra draft position is
worth a^g, so it pays while a^g exceeds the share of the round its drafting costs), and at
low acceptance with little delay it is 1. `step_gamma` damps the choice: it moves towards the
optimum at most ``max_step`` per round, and only when the optimum is predicted to be better
than the current gamma by more than ``margin`` (hysteresis), so noisy inputs do not make
gamma oscillate. `GammaController` keeps the smoothed inputs (`AcceptanceEstimator`, `Ewma`,
`VerifierTimeModel`) and applies `step_gamma` before each round.

Everything here is arithmetic on floats: no I/O, no clocks, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["latency", "capacity"]
POLICIES: tuple[Policy, ...] = ("latency", "capacity")

A_MAX = 0.999  # acceptance is capped below 1 so one lucky streak cannot ask for the longest block


Acceptance = float | Sequence[float]  # one rate for every position, or a rate per position


def expected_tokens(a: Acceptance, g: int) -> float:
    """E(g): tokens a round of g drafts yields on average, at per-position acceptance ``a``:
    one rate (i.i.d. positions), or the rate of each position given that the ones before it
    were accepted (the last one holding beyond the list): 1 + sum_k prod_{i<k} a_i."""
    if g < 0:
        raise ValueError(f"gamma {g}: must be >= 0")
    if isinstance(a, Sequence):
        rates = [min(max(x, 0.0), 1.0) for x in a] or [0.0]
        total, reach = 1.0, 1.0
        for k in range(g):
            reach *= rates[min(k, len(rates) - 1)]
            total += reach
        return total
    a = min(max(a, 0.0), 1.0)
    if a >= 1.0:
        return float(g + 1)
    return (1.0 - a ** (g + 1)) / (1.0 - a)


@dataclass(frozen=True)
class Timing:
    """One round's cost model, in seconds: drafting per token, network round trip, and the
    verifier's time for a block of g tokens, ``verify_base_s + g * verify_per_token_s``."""

    draft_s: float
    rtt_s: float
    verify_base_s: float
    verify_per_token_s: float = 0.0

    def verify_s(self, g: int) -> float:
        return self.verify_base_s + g * self.verify_per_token_s

    def round_s(self, g: int, *, pipelined: bool = False) -> float:
        """Seconds one round of g drafts takes on the device: drafting, then the wait; with
        pipelining the drafting overlaps the wait for the previous block."""
        wait = self.rtt_s + self.verify_s(g)
        drafting = g * self.draft_s
        return max(drafting, wait) if pipelined else drafting + wait


def latency_rate(a: Acceptance, g: int, timing: Timing, *, pipelined: bool = False) -> float:
    """This device's tokens per second at gamma g."""
    seconds = timing.round_s(g, pipelined=pipelined)
    return expected_tokens(a, g) / seconds if seconds > 0 else math.inf


def capacity_rate(a: Acceptance, g: int, timing: Timing) -> float:
    """Tokens per second of verifier time at gamma g."""
    seconds = timing.verify_s(g)
    return expected_tokens(a, g) / seconds if seconds > 0 else math.inf


@dataclass(frozen=True)
class GammaSettings:
    """Bounds, policy and damping of the gamma choice."""

    policy: Policy = "latency"
    g_min: int = 1
    g_max: int = 8  # never above the session's negotiated gamma either (see `bounds`)
    pipelined: bool = False  # the device drafts the next block while it waits (draft-ahead)
    max_step: int = 1  # gamma moves at most this much per round
    margin: float = 0.03  # the optimum must be predicted this much better (relative) to move
    max_slowdown: float = 1.25  # capacity policy: latency rate at least best / max_slowdown

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: one of {', '.join(POLICIES)}")
        if not 0 <= self.g_min <= self.g_max:
            raise ValueError(f"gamma bounds {self.g_min}..{self.g_max}: need 0 <= g_min <= g_max")
        if self.max_step < 1:
            raise ValueError(f"max_step {self.max_step}: must be >= 1")
        if self.margin < 0:
            raise ValueError(f"margin {self.margin}: must be >= 0")
        if self.max_slowdown < 1:
            raise ValueError(f"max_slowdown {self.max_slowdown}: must be >= 1")

    def bounds(self, negotiated: int) -> tuple[int, int]:
        """(lowest, highest) gamma allowed in a session that negotiated ``negotiated``."""
        high = min(self.g_max, negotiated)
        return min(self.g_min, high), high


def objective(a: Acceptance, g: int, timing: Timing, settings: GammaSettings) -> float:
    """What the policy maximises at gamma g (tokens per device- or verifier-second)."""
    if settings.policy == "capacity":
        return capacity_rate(a, g, timing)
    return latency_rate(a, g, timing, pipelined=settings.pipelined)


def best_gamma(a: Acceptance, timing: Timing, settings: GammaSettings, negotiated: int) -> int:
    """The undamped optimum within the bounds (the smallest g on a tie)."""
    low, high = settings.bounds(negotiated)
    choices = list(range(low, high + 1))
    if settings.policy == "capacity":  # only the g fast enough for this device
        rates = {g: latency_rate(a, g, timing, pipelined=settings.pipelined) for g in choices}
        floor = max(rates.values()) / settings.max_slowdown
        choices = [g for g, r in rates.items() if r >= floor * (1 - 1e-12)]
    return max(choices, key=lambda g: (objective(a, g, timing, settings), -g))


def _fast_enough(g: int, a: Acceptance, timing: Timing, settings: GammaSettings, negotiated: int) -> bool:
    """Whether g meets the capacity policy's latency floor (always, under the latency policy)."""
    if settings.policy != "capacity":
        return True
    low, high = settings.bounds(negotiated)
    best = max(latency_rate(a, h, timing, pipelined=settings.pipelined) for h in range(low, high + 1))
    return latency_rate(a, g, timing, pipelined=settings.pipelined) >= best / settings.max_slowdown * (1 - 1e-12)


def step_gamma(current: int, a: Acceptance, timing: Timing, settings: GammaSettings, negotiated: int) -> int:
    """The next round's gamma: towards the optimum by at most ``max_step``, and only when the
    optimum beats the current gamma by more than ``margin``; always within the bounds."""
    low, high = settings.bounds(negotiated)
    current = min(max(current, low), high)
    target = best_gamma(a, timing, settings, negotiated)
    if target == current:
        return current
    here = objective(a, current, timing, settings)
    there = objective(a, target, timing, settings)
    if there <= here * (1 + settings.margin) and _fast_enough(current, a, timing, settings, negotiated):
        return current
    step = max(-settings.max_step, min(settings.max_step, target - current))
    return current + step


def judged_positions(n_accepted: int, n_drafted: int) -> int:
    """Draft positions the verifier judged: all of them when all passed, else up to and
    including the first rejected one."""
    if not 0 <= n_accepted <= n_drafted:
        raise ValueError(f"verdict accepts {n_accepted} of {n_drafted} drafts")
    return n_accepted if n_accepted == n_drafted else n_accepted + 1


@dataclass
class AcceptanceEstimator:
    """Smoothed per-position acceptance from verdicts (n_accepted, n_drafted).

    Accepted and judged positions are each smoothed with weight ``alpha`` per verdict and
    their ratio is the estimate, so a long round counts for more than a short one. Before the
    first verdict (and while little is known) the ``prior`` holds, worth ``prior_positions``
    judged positions.
    """

    alpha: float = 0.2
    prior: float = 0.7
    prior_positions: float = 4.0
    _accepted: float = field(init=False)
    _judged: float = field(init=False)
    verdicts: int = field(default=0, init=False)
    # Per draft position i: smoothed (accepted, judged) counts of the rounds that reached it.
    _at: list[list[float]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha {self.alpha}: must be in (0, 1]")
        if not 0 <= self.prior <= 1:
            raise ValueError(f"prior {self.prior}: must be in [0, 1]")
        self._accepted = self.prior * self.prior_positions
        self._judged = self.prior_positions

    def observe(self, n_accepted: int, n_drafted: int) -> None:
        """One verdict; a block of no drafts judges nothing and is ignored."""
        judged = judged_positions(n_accepted, n_drafted)
        if judged == 0:
            return
        self._accepted = (1 - self.alpha) * self._accepted + self.alpha * n_accepted
        self._judged = (1 - self.alpha) * self._judged + self.alpha * judged
        self.verdicts += 1
        while len(self._at) < judged:
            self._at.append([0.0, 0.0])
        for i in range(judged):
            counts = self._at[i]
            counts[0] = (1 - self.alpha) * counts[0] + self.alpha * (i < n_accepted)
            counts[1] = (1 - self.alpha) * counts[1] + self.alpha

    def profile(self, positions: int) -> list[float]:
        """The acceptance of each of the first `positions` draft positions given that the
        ones before it were accepted (acceptance comes in runs: deep in a block it is often
        higher than the average), each drawn towards the pooled `value` with one verdict's
        weight (a position seen rarely says little)."""
        pooled = self.value
        out = []
        for i in range(positions):
            accepted, judged = self._at[i] if i < len(self._at) else (0.0, 0.0)
            rate = (accepted + pooled * self.alpha) / (judged + self.alpha)  # the pooled rate: one verdict's weight
            out.append(min(max(rate, 0.0), A_MAX))
        return out

    @property
    def value(self) -> float:
        """The estimate a, in [0, A_MAX]."""
        if self._judged <= 0:
            return self.prior
        return min(max(self._accepted / self._judged, 0.0), A_MAX)


@dataclass
class Ewma:
    """An exponentially weighted mean of a measured quantity; ``prior`` until the first sample."""

    prior: float
    alpha: float = 0.2
    samples: int = field(default=0, init=False)
    _value: float = field(init=False)

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha {self.alpha}: must be in (0, 1]")
        self._value = self.prior

    def observe(self, x: float) -> None:
        if not math.isfinite(x) or x < 0:
            return  # a clock glitch is not a measurement
        self._value = x if self.samples == 0 else (1 - self.alpha) * self._value + self.alpha * x
        self.samples += 1

    @property
    def value(self) -> float:
        return self._value


@dataclass
class VerifierTimeModel:
    """The verifier's time for a block of g tokens, t_v0 + g * t_v1, fitted to observations.

    A weighted least-squares line over smoothed sums (recent rounds weigh more). While the
    rounds seen do not vary g enough to fix a slope, the slope stays at ``prior_per_token_s``
    and the intercept follows the smoothed time; before any observation both priors hold.
    """

    prior_base_s: float = 0.02
    prior_per_token_s: float = 0.0
    alpha: float = 0.1
    min_spread: float = 0.25  # variance of g (tokens^2) needed before a slope is fitted
    observations: int = field(default=0, init=False)
    _w: float = field(default=0.0, init=False)
    _g: float = field(default=0.0, init=False)
    _t: float = field(default=0.0, init=False)
    _gg: float = field(default=0.0, init=False)
    _gt: float = field(default=0.0, init=False)

    def observe(self, g: int, seconds: float) -> None:
        if g < 0 or not math.isfinite(seconds) or seconds < 0:
            return
        keep = 1 - self.alpha
        self._w = keep * self._w + self.alpha
        self._g = keep * self._g + self.alpha * g
        self._t = keep * self._t + self.alpha * seconds
        self._gg = keep * self._gg + self.alpha * g * g
        self._gt = keep * self._gt + self.alpha * g * seconds
        self.observations += 1

    def coefficients(self) -> tuple[float, float]:
        """(t_v0, t_v1), both >= 0."""
        if self.observations == 0:
            return self.prior_base_s, self.prior_per_token_s
        mean_g, mean_t = self._g / self._w, self._t / self._w
        var_g = self._gg / self._w - mean_g * mean_g
        slope = self.prior_per_token_s
        if var_g >= self.min_spread:
            slope = max(0.0, (self._gt / self._w - mean_g * mean_t) / var_g)
        base = mean_t - slope * mean_g
        if base < 0:  # the line would pass below zero at g = 0: keep it through the mean, flat
            base, slope = 0.0, mean_t / mean_g if mean_g > 0 else 0.0
        return base, slope


@dataclass
class GammaController:
    """Smoothed inputs and the damped gamma choice of one session (or one device).

    Call `observe` after each verdict with what was measured, and `next_gamma` before drafting
    the next block. The session's negotiated gamma is the ceiling.
    """

    negotiated: int
    settings: GammaSettings = GammaSettings()
    acceptance: AcceptanceEstimator = field(default_factory=AcceptanceEstimator)
    draft_s: Ewma = field(default_factory=lambda: Ewma(prior=0.005))
    rtt_s: Ewma = field(default_factory=lambda: Ewma(prior=0.02))
    verifier: VerifierTimeModel = field(default_factory=VerifierTimeModel)
    # What a token of a cloud-only session costs on the verifier, as it tells it in verdicts
    # (its one-token forward, more while busy); not part of a round's cost.
    stream_s: Ewma = field(default_factory=lambda: Ewma(prior=0.0))
    gamma: int = -1  # the current choice; -1: start at the ceiling

    def __post_init__(self) -> None:
        if self.negotiated < 0:
            raise ValueError(f"negotiated gamma {self.negotiated}: must be >= 0")
        low, high = self.settings.bounds(self.negotiated)
        self.gamma = high if self.gamma < 0 else min(max(self.gamma, low), high)

    def observe(self, n_accepted: int, n_drafted: int, *, draft_s_per_token: float | None = None,
                rtt_s: float | None = None, verify_s: float | None = None, wait_s: float | None = None,
                stream_s: float | None = None) -> None:
        """One round: its verdict and whichever timings were measured: seconds per drafted
        token, the network round trip without the verifier's time, the verifier's time for the
        block, or ``wait_s``, send to verdict, from which the round trip is taken as what the
        verifier's time (measured, else as modelled) leaves of it; and what a cloud-only token
        costs the verifier, if it told it."""
        self.acceptance.observe(n_accepted, n_drafted)
        if stream_s is not None:
            self.stream_s.observe(stream_s)
        if draft_s_per_token is not None:
            self.draft_s.observe(draft_s_per_token)
        if rtt_s is None and wait_s is not None:
            base, per_token = self.verifier.coefficients()
            verifying = verify_s if verify_s is not None else base + n_drafted * per_token
            rtt_s = max(0.0, wait_s - verifying)
        if rtt_s is not None:
            self.rtt_s.observe(rtt_s)
        if verify_s is not None:
            self.verifier.observe(n_drafted, verify_s)

    def timing(self) -> Timing:
        base, per_token = self.verifier.coefficients()
        return Timing(draft_s=self.draft_s.value, rtt_s=self.rtt_s.value, verify_base_s=base,
                      verify_per_token_s=per_token)

    def next_gamma(self) -> int:
        """The gamma for the next round (and remembered as the current one)."""
        profile = self.acceptance.profile(max(1, self.negotiated))
        self.gamma = step_gamma(self.gamma, profile, self.timing(), self.settings, self.negotiated)
        return self.gamma
