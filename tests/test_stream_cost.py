"""verifier_node/stream_cost.py: a cloud-only token's cost is a one-token forward on an idle
verifier and nears a batch's time on one always busy."""

from __future__ import annotations

import pytest

from verifier_node.stream_cost import StreamCost


def test_nothing_to_tell_before_a_one_token_forward() -> None:
    cost = StreamCost()
    cost.observe_call(0.0, 0.1)
    assert cost.per_token_s() is None


def test_idle_verifier_costs_a_forward() -> None:
    cost = StreamCost()
    cost.observe_decode(0.04)
    for k in range(10):  # a 0.1 s call every 10 s
        cost.observe_call(10.0 * k, 10.0 * k + 0.1)
    assert cost.busy < 0.02
    assert cost.per_token_s() == pytest.approx(0.04, abs=0.002)


def test_busy_verifier_costs_nearly_a_batch() -> None:
    cost = StreamCost()
    cost.observe_decode(0.04)
    t = 0.0
    for _ in range(30):  # 0.2 s batches back to back, 1 ms apart
        cost.observe_call(t, t + 0.2)
        t += 0.201
    assert cost.busy > 0.99
    assert cost.per_token_s() == pytest.approx(0.2, abs=0.003)
    assert cost.call_s == pytest.approx(0.2)


def test_half_busy_is_between() -> None:
    cost = StreamCost()
    cost.observe_decode(0.05)
    t = 0.0
    for _ in range(40):  # 0.1 s calls with 0.1 s gaps
        cost.observe_call(t, t + 0.1)
        t += 0.2
    assert cost.busy == pytest.approx(0.5, abs=0.03)
    assert cost.per_token_s() == pytest.approx(0.05 + 0.5 * 0.05, abs=0.003)
