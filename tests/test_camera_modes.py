"""The camera's mode keeping (camera_node/modes.py) on measured rates, without a network:
both hybrid and cloud-only get measured, the faster measured one is kept, and a link with
no verifier online means edge-only at once."""

from __future__ import annotations

import pytest

from camera_node.mode_policy import Mode
from camera_node.modes import CLOUD_TOKEN_OVERHEAD_S, CameraModes


class Link:
    """What CameraModes reads of an EdgeLink."""

    def __init__(self, connected: bool = True, verifiers: tuple[str, ...] = ("v-1",)):
        self.connected = connected
        self._verifiers = list(verifiers)

    def verifiers_online(self) -> list[str]:
        return self._verifiers


def test_the_other_mode_is_measured_once_then_every_so_often() -> None:
    modes = CameraModes(explore_every=5)
    assert modes.explore(Mode.HYBRID) is Mode.HYBRID  # nothing measured yet
    modes.hybrid_tps.observe(10.0)
    modes.hybrid_tps.observe(11.0)
    assert modes.explore(Mode.HYBRID) is Mode.CLOUD_ONLY  # two hybrid captions, cloud never measured
    modes.cloud_tps.observe(14.0)
    assert modes.explore(Mode.HYBRID) is Mode.HYBRID
    modes.captions += 5
    assert modes.explore(Mode.HYBRID) is Mode.CLOUD_ONLY  # measured again after explore_every captions
    assert modes.explore(Mode.EDGE_ONLY) is Mode.EDGE_ONLY  # never out of edge-only
    assert CameraModes(forced="hybrid").explore(Mode.HYBRID) is Mode.HYBRID  # a configured mode is kept


def test_the_faster_measured_mode_wins_with_hysteresis() -> None:
    now = [0.0]
    modes = CameraModes(clock=lambda: now[0])
    link = Link()
    assert modes.decide(link) is Mode.HYBRID  # starts in hybrid; cloud-only is no candidate on priors
    for _ in range(3):
        modes.hybrid_tps.observe(9.0)
        modes.cloud_tps.observe(13.0)
    decisions = []
    for _ in range(4):
        now[0] += 0.5
        decisions.append(modes.decide(link))
    assert decisions[0] is Mode.HYBRID and decisions[-1] is Mode.CLOUD_ONLY  # confirmed, then switched
    modes.hybrid_tps.observe(13.5)  # within the margin of cloud-only: no switch back
    for _ in range(4):
        now[0] += 20
        assert modes.decide(link) is Mode.CLOUD_ONLY


def test_no_verifier_online_is_edge_only_at_once() -> None:
    modes = CameraModes()
    assert modes.decide(Link(verifiers=())) is Mode.EDGE_ONLY
    assert modes.decide(Link(connected=False)) is Mode.EDGE_ONLY
    assert CameraModes(privacy=True).decide(Link()) is Mode.EDGE_ONLY


def test_a_mode_predicted_far_slower_is_not_measured_until_its_turn() -> None:
    """Cloud-only predicted from the verifier's one-token time: far below hybrid's measured
    rate, it gets no first measurement, only the periodic one; within reach, it does."""
    slow = CameraModes(explore_every=6, caption_tokens=24)
    slow.controller.observe(4, 4, wait_s=0.17, verify_s=0.14, stream_s=0.5)  # 24 tokens at 0.5 s: ~2 tok/s
    slow.hybrid_tps.observe(30.0)
    slow.hybrid_tps.observe(30.0)
    assert slow.predicted_cloud() == pytest.approx(24 / (0.03 + 24 * (0.5 + CLOUD_TOKEN_OVERHEAD_S)))
    assert slow.explore(Mode.HYBRID) is Mode.HYBRID
    slow.captions += 6
    assert slow.explore(Mode.HYBRID) is Mode.CLOUD_ONLY  # measured again every explore_every captions

    close = CameraModes(caption_tokens=24)
    close.controller.observe(4, 4, wait_s=0.17, verify_s=0.14, stream_s=0.05)  # ~20 tok/s predicted
    close.hybrid_tps.observe(30.0)
    close.hybrid_tps.observe(30.0)
    assert close.explore(Mode.HYBRID) is Mode.CLOUD_ONLY
