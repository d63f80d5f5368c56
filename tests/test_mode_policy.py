"""The camera's mode choice (camera_node/mode_policy.py): forced rules at once, the rest with
hysteresis, so flapping inputs do not flap the mode."""

from __future__ import annotations

import pytest

from camera_node.mode_policy import (
    LinkView, Mode, ModePolicy, ModeSettings, predict_cloud_only, predict_edge_only,
)

UP = LinkView(reachable=True, rtt_ms=30, acceptance=0.8, edge_tps=40, cloud_tps=20, hybrid_tps=30)
QUICK = ModeSettings(confirm=3, min_dwell_s=0.0, margin=0.15)


def run(policy: ModePolicy, views: list[LinkView], t0: float = 0.0, dt: float = 1.0) -> list[Mode]:
    return [policy.decide(v, t0 + i * dt).mode for i, v in enumerate(views)]


def test_predictions() -> None:
    assert predict_edge_only(0.02) == pytest.approx(50.0)
    assert predict_edge_only(0.0) is None
    assert predict_cloud_only(0.1, 0.01, 10) == pytest.approx(10 / 0.2)
    assert predict_cloud_only(0.1, 0.01, 0) is None


def test_starts_edge_only_and_switches_to_the_fastest_after_confirmation() -> None:
    policy = ModePolicy(QUICK)
    assert policy.mode is Mode.EDGE_ONLY
    assert run(policy, [UP] * 4) == [Mode.EDGE_ONLY, Mode.EDGE_ONLY, Mode.HYBRID, Mode.HYBRID]


def test_edge_only_never_wins_on_speed_unless_allowed() -> None:
    policy = ModePolicy(QUICK, mode=Mode.HYBRID)
    assert run(policy, [UP] * 5)[-1] is Mode.HYBRID  # edge_tps 40 is faster, but it is the draft's text
    policy = ModePolicy(ModeSettings(confirm=1, min_dwell_s=0, edge_competes=True), mode=Mode.HYBRID)
    assert policy.decide(UP, 0).mode is Mode.EDGE_ONLY


def test_privacy_and_unreachable_force_edge_only_at_once() -> None:
    for view in (LinkView(privacy=True, hybrid_tps=100, cloud_tps=100), LinkView(reachable=False, hybrid_tps=100)):
        policy = ModePolicy(ModeSettings(confirm=10, min_dwell_s=1e9), mode=Mode.HYBRID, since_s=0.0)
        decision = policy.decide(view, 1.0)
        assert decision.mode is Mode.EDGE_ONLY and decision.switched
        assert decision.reason in ("privacy", "unreachable")


def test_flapping_reachability_keeps_edge_only() -> None:
    """Up, down, up, down...: each loss is edge-only at once, and a recovery must last `confirm`
    decisions, so the mode never returns to hybrid."""
    policy = ModePolicy(QUICK, mode=Mode.HYBRID)
    down = LinkView(reachable=False)
    modes = run(policy, [down, UP] * 10 + [UP, UP, UP])
    assert modes[0] is Mode.EDGE_ONLY
    assert set(modes[:20]) == {Mode.EDGE_ONLY}
    assert modes[-1] is Mode.HYBRID  # a steady link wins it back


def test_flapping_throughputs_do_not_flap_the_mode() -> None:
    """Hybrid and cloud-only alternate as the faster one every decision: no switch ever."""
    a = LinkView(cloud_tps=20, hybrid_tps=40)
    b = LinkView(cloud_tps=40, hybrid_tps=20)
    policy = ModePolicy(QUICK, mode=Mode.HYBRID)
    decisions = [policy.decide(v, float(i)) for i, v in enumerate([b, a] * 20)]
    assert not any(d.switched for d in decisions)
    assert policy.mode is Mode.HYBRID


def test_margin_holds_a_mode_that_is_only_slightly_slower() -> None:
    policy = ModePolicy(QUICK, mode=Mode.HYBRID)
    slightly = LinkView(cloud_tps=33, hybrid_tps=30)  # 10% faster: within the 15% margin
    assert run(policy, [slightly] * 10)[-1] is Mode.HYBRID
    clearly = LinkView(cloud_tps=40, hybrid_tps=30)
    assert run(policy, [clearly] * 3) == [Mode.HYBRID, Mode.HYBRID, Mode.CLOUD_ONLY]


def test_minimum_dwell_time() -> None:
    policy = ModePolicy(ModeSettings(confirm=1, min_dwell_s=30, margin=0.0), mode=Mode.HYBRID, since_s=0.0)
    faster_cloud = LinkView(cloud_tps=50, hybrid_tps=20)
    assert policy.decide(faster_cloud, 10).mode is Mode.HYBRID
    decision = policy.decide(faster_cloud, 31)
    assert decision.mode is Mode.CLOUD_ONLY and decision.switched


def test_low_battery_prefers_cloud_only_when_reachable() -> None:
    policy = ModePolicy(ModeSettings(confirm=1, min_dwell_s=0), mode=Mode.HYBRID)
    low = LinkView(battery=0.1, on_mains=False, cloud_tps=10, hybrid_tps=30)
    d = policy.decide(low, 0)
    assert d.mode is Mode.CLOUD_ONLY and d.reason == "low battery"
    # on mains, or with a healthy charge, speed decides again
    assert ModePolicy(ModeSettings(confirm=1, min_dwell_s=0), mode=Mode.HYBRID).decide(
        LinkView(battery=0.1, on_mains=True, cloud_tps=10, hybrid_tps=30), 0).mode is Mode.HYBRID
    # unreachable on low battery: edge-only all the same
    assert policy.decide(LinkView(reachable=False, battery=0.1, on_mains=False), 1).mode is Mode.EDGE_ONLY


def test_battery_near_the_threshold_does_not_flap() -> None:
    policy = ModePolicy(ModeSettings(confirm=1, min_dwell_s=0), mode=Mode.HYBRID)
    views = [LinkView(battery=b, on_mains=False, cloud_tps=10, hybrid_tps=30) for b in (0.19, 0.21, 0.19, 0.22, 0.2)]
    assert run(policy, views) == [Mode.CLOUD_ONLY] * 5  # inside the band: stays low
    assert policy.decide(LinkView(battery=0.3, on_mains=False, cloud_tps=10, hybrid_tps=30), 9).mode is Mode.HYBRID


def test_no_prediction_means_not_a_candidate() -> None:
    policy = ModePolicy(ModeSettings(confirm=1, min_dwell_s=0))
    assert policy.decide(LinkView(cloud_tps=10), 0).mode is Mode.CLOUD_ONLY  # hybrid unknown yet
    d = ModePolicy(ModeSettings(confirm=1, min_dwell_s=0)).decide(LinkView(), 0)
    assert d.mode is Mode.EDGE_ONLY


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        ModeSettings(confirm=0)
    with pytest.raises(ValueError):
        ModeSettings(margin=-1)
