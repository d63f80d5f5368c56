"""The draft-length choice (speculative/gamma_control.py): the round model, its optimum, the
damping, and the smoothed inputs."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speculative.gamma_control import (
    A_MAX, AcceptanceEstimator, Ewma, GammaController, GammaSettings, Timing, VerifierTimeModel, best_gamma,
    capacity_rate, expected_tokens, judged_positions, latency_rate, objective, step_gamma,
)

WIDE = GammaSettings(g_max=16)


def timing(rtt_s: float, *, draft_s: float = 0.005, base: float = 0.01, per_token: float = 0.001) -> Timing:
    return Timing(draft_s=draft_s, rtt_s=rtt_s, verify_base_s=base, verify_per_token_s=per_token)


def test_expected_tokens_closed_form_and_limits() -> None:
    assert expected_tokens(0.0, 5) == 1.0  # only the verifier's own token
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens(0.999999, 3) == pytest.approx(4.0, rel=1e-5)  # continuous at a = 1
    with pytest.raises(ValueError):
        expected_tokens(0.5, -1)


def test_round_time_with_and_without_pipelining() -> None:
    t = timing(0.05)
    assert t.round_s(4) == pytest.approx(4 * 0.005 + 0.05 + 0.014)
    assert t.round_s(4, pipelined=True) == pytest.approx(0.064)  # drafting hidden in the wait
    assert t.round_s(40, pipelined=True) == pytest.approx(0.2)  # drafting longer than the wait
    assert latency_rate(0.8, 4, t) == pytest.approx(expected_tokens(0.8, 4) / t.round_s(4))
    assert capacity_rate(0.8, 4, t) == pytest.approx(expected_tokens(0.8, 4) / 0.014)


def test_high_acceptance_and_long_delay_pick_a_longer_block() -> None:
    assert best_gamma(0.9, timing(0.5), WIDE, 16) > best_gamma(0.9, timing(0.0), WIDE, 16)


def test_low_acceptance_below_a_critical_delay_picks_one() -> None:
    for rtt in (0.0, 0.001, 0.005):
        assert best_gamma(0.3, timing(rtt), WIDE, 16) == 1
    assert best_gamma(0.3, timing(1.0), WIDE, 16) > 1  # above it, drafting more pays


def test_optimum_grows_logarithmically_with_delay() -> None:
    """Non-decreasing in the delay, by about the same step per tenfold delay."""
    for a in (0.6, 0.8):
        picks = [best_gamma(a, timing(d), GammaSettings(g_max=200), 200) for d in (0.1, 1.0, 10.0, 100.0)]
        steps = [hi - lo for lo, hi in itertools.pairwise(picks)]
        assert all(step > 0 for step in steps)
        assert max(steps) <= 1.5 * min(steps) + 1, picks


def test_bounds_and_negotiated_ceiling() -> None:
    s = GammaSettings(g_min=2, g_max=8)
    assert best_gamma(0.99, timing(5.0), s, 16) == 8
    assert best_gamma(0.99, timing(5.0), s, 5) == 5  # never above what the session negotiated
    assert best_gamma(0.0, timing(0.0), s, 16) == 2
    assert s.bounds(1) == (1, 1)
    with pytest.raises(ValueError):
        GammaSettings(g_min=5, g_max=2)
    with pytest.raises(ValueError):
        GammaSettings(policy="fastest")  # type: ignore[arg-type]


def test_pipelining_affords_a_longer_block() -> None:
    plain, piped = GammaSettings(g_max=16), GammaSettings(g_max=16, pipelined=True)
    assert best_gamma(0.6, timing(0.05), piped, 16) > best_gamma(0.6, timing(0.05), plain, 16)


def test_capacity_policy_trades_some_latency_for_verifier_time() -> None:
    t = timing(0.0)
    latency = best_gamma(0.9, t, WIDE, 16)
    cap = GammaSettings(g_max=16, policy="capacity", max_slowdown=1.25)
    chosen = best_gamma(0.9, t, cap, 16)
    assert capacity_rate(0.9, chosen, t) > capacity_rate(0.9, latency, t)
    assert latency_rate(0.9, chosen, t) >= latency_rate(0.9, latency, t) / 1.25
    strict = GammaSettings(g_max=16, policy="capacity", max_slowdown=1.0)
    assert best_gamma(0.9, t, strict, 16) == latency


def test_step_is_damped_and_has_hysteresis() -> None:
    s = GammaSettings(g_max=16, max_step=1)
    far = timing(1.0)
    target = best_gamma(0.9, far, s, 16)
    assert target >= 6
    assert step_gamma(1, 0.9, far, s, 16) == 2  # one step at a time
    assert step_gamma(1, 0.9, far, GammaSettings(g_max=16, max_step=2), 16) == 3
    # a gain below the margin does not move gamma
    t = timing(0.05)
    best = best_gamma(0.8, t, s, 16)
    near = best + 1
    gain = latency_rate(0.8, best, t) / latency_rate(0.8, near, t) - 1
    assert 0 < gain
    assert step_gamma(near, 0.8, t, GammaSettings(g_max=16, margin=gain * 2), 16) == near
    assert step_gamma(near, 0.8, t, GammaSettings(g_max=16, margin=gain / 2), 16) == best
    assert step_gamma(40, 0.8, t, s, 16) <= 16  # an out-of-bounds current is clamped first


def test_capacity_step_leaves_a_gamma_too_slow_for_the_device() -> None:
    """Under the capacity policy a gamma below the latency floor moves even within the margin."""
    t = timing(0.0)
    s = GammaSettings(g_max=16, policy="capacity", max_slowdown=1.05, margin=10.0)
    assert step_gamma(16, 0.95, t, s, 16) == 15


rates = st.floats(min_value=0.0, max_value=0.98)
delays = st.floats(min_value=0.0, max_value=2.0)


@settings(max_examples=60, deadline=None)
@given(a=rates, rtt=delays, start=st.integers(0, 20), piped=st.booleans(),
       policy=st.sampled_from(["latency", "capacity"]), step=st.integers(1, 2), margin=st.floats(0.0, 0.2))
def test_stationary_inputs_converge_and_stop(a, rtt, start, piped, policy, step, margin) -> None:
    s = GammaSettings(g_max=12, pipelined=piped, policy=policy, max_step=step, margin=margin)
    t = timing(rtt)
    g = start
    seen = []
    for _ in range(30):
        g = step_gamma(g, a, t, s, 10)
        seen.append(g)
        assert 1 <= g <= 10
    assert len(set(seen[-10:])) == 1  # settled, and never moves again
    assert step_gamma(seen[-1], a, t, s, 10) == seen[-1]
    # within the margin of the optimum
    best = best_gamma(a, t, s, 10)
    assert objective(a, seen[-1], t, s) * (1 + margin) >= objective(a, best, t, s) * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(a=rates, rtt1=delays, rtt2=delays)
def test_more_delay_never_shortens_the_block(a, rtt1, rtt2) -> None:
    lo, hi = sorted((rtt1, rtt2))
    assert best_gamma(a, timing(lo), WIDE, 16) <= best_gamma(a, timing(hi), WIDE, 16)


def test_judged_positions() -> None:
    assert judged_positions(4, 4) == 4
    assert judged_positions(2, 4) == 3
    assert judged_positions(0, 4) == 1
    assert judged_positions(0, 0) == 0
    with pytest.raises(ValueError):
        judged_positions(5, 4)


def test_acceptance_estimator_follows_per_position_acceptance() -> None:
    est = AcceptanceEstimator(alpha=0.1, prior=0.5)
    assert est.value == 0.5
    for _ in range(200):  # 3 accepted of 4, then a rejection: 3 / 4 judged positions
        est.observe(3, 4)
    assert est.value == pytest.approx(0.75, abs=1e-3)
    for _ in range(200):
        est.observe(4, 4)
    assert est.value == A_MAX  # capped below 1
    est.observe(0, 0)  # nothing judged: no change
    assert est.value == A_MAX
    with pytest.raises(ValueError):
        est.observe(5, 4)


def test_acceptance_estimator_weighs_rounds_by_judged_positions() -> None:
    est = AcceptanceEstimator(alpha=1.0)
    est.observe(7, 8)
    assert est.value == pytest.approx(7 / 8)
    est = AcceptanceEstimator(alpha=0.5, prior_positions=0.0)
    est.observe(8, 8)  # 8 of 8
    est.observe(0, 8)  # 0 of 1
    assert est.value == pytest.approx(0.8)  # (4 + 0) / (4 + 0.5): the long round weighs more than 1 / 2


def test_ewma() -> None:
    e = Ewma(prior=1.0, alpha=0.5)
    assert e.value == 1.0
    e.observe(4.0)
    assert e.value == 4.0  # the first sample replaces the prior
    e.observe(2.0)
    assert e.value == 3.0
    e.observe(math.nan)
    e.observe(-1.0)
    assert e.value == 3.0 and e.samples == 2


def test_verifier_time_model_fits_a_line_and_falls_back() -> None:
    m = VerifierTimeModel(prior_base_s=0.05, prior_per_token_s=0.002)
    assert m.coefficients() == (0.05, 0.002)
    for _ in range(30):  # one block size only: the slope stays the prior's
        m.observe(4, 0.03)
    base, slope = m.coefficients()
    assert slope == 0.002 and base + 4 * slope == pytest.approx(0.03)
    m = VerifierTimeModel(alpha=0.2)
    for i in range(200):
        g = 1 + i % 8
        m.observe(g, 0.01 + 0.003 * g)
    base, slope = m.coefficients()
    assert base == pytest.approx(0.01, abs=1e-6) and slope == pytest.approx(0.003, abs=1e-7)


def test_controller_moves_with_measurements() -> None:
    c = GammaController(negotiated=8, settings=GammaSettings(g_max=8, max_step=2))
    assert c.gamma == 8  # starts at the ceiling
    for _ in range(40):  # low acceptance, fast link: gamma walks down to 1
        c.observe(0, c.gamma, draft_s_per_token=0.005, rtt_s=0.0, verify_s=0.01)
        c.next_gamma()
    assert c.gamma == 1
    for _ in range(60):  # everything accepted over a slow link: back up to the ceiling
        c.observe(c.gamma, c.gamma, draft_s_per_token=0.005, rtt_s=0.5, verify_s=0.01)
        c.next_gamma()
    assert c.gamma == 8
    assert GammaController(negotiated=3).gamma == 3
    assert GammaController(negotiated=8, gamma=20).gamma == 8


def test_controller_takes_the_round_trip_from_the_wait() -> None:
    c = GammaController(negotiated=4, verifier=VerifierTimeModel(prior_base_s=0.02, prior_per_token_s=0.0))
    c.observe(2, 4, wait_s=0.12)  # no verifier time measured: the model's 20 ms is taken off
    assert c.rtt_s.value == pytest.approx(0.10)
    c.observe(2, 4, wait_s=0.05, verify_s=0.04)
    assert c.rtt_s.value == pytest.approx(0.8 * 0.10 + 0.2 * 0.01)
    c.observe(2, 4, wait_s=0.01, verify_s=0.04)  # a verifier time above the wait: no negative trip
    assert c.rtt_s.value >= 0


def test_acceptance_per_position_follows_runs() -> None:
    """Acceptance comes in runs: rounds either fail at the first draft or pass whole. The
    per-position profile says so (position 0 about half, the later ones near 1), and E(g)
    from it is 1 + a_0 + a_0 a_1 + ..., not the i.i.d. formula."""
    from speculative.gamma_control import AcceptanceEstimator, expected_tokens

    est = AcceptanceEstimator()
    for i in range(60):
        est.observe(8, 8) if i % 2 else est.observe(0, 8)
    profile = est.profile(8)
    assert 0.35 < profile[0] < 0.65
    assert all(rate > 0.95 for rate in profile[1:])
    assert expected_tokens(profile, 8) == pytest.approx(1 + sum(
        math.prod(profile[:k]) for k in range(1, 9)))
    assert expected_tokens([0.5], 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)  # the last rate holds on
    assert expected_tokens(0.5, 3) == pytest.approx(expected_tokens([0.5, 0.5, 0.5], 3))
