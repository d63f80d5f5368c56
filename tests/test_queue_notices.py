"""QUEUED notices: the verifier tells a device whose message waits behind a slow queue, and
the wire message round-trips."""

from __future__ import annotations

from schemas import Queued, Topics, decode, encode
from verifier_node.queue_notices import QueueNotices

T = Topics()
SID = [bytes([i]) * 16 for i in range(4)]


def _open(i: int) -> tuple[str, bytes]:
    from schemas import SessionOpen

    return T.open(f"cam-{i}"), encode(SessionOpen(SID[i], [1, 2]))


def test_queued_round_trips() -> None:
    assert decode(encode(Queued(SID[0], 3, 1200))) == Queued(SID[0], 3, 1200)


def test_a_fast_verifier_tells_nobody() -> None:
    notices = QueueNotices(T, max_batch=1, clock=lambda: 0.0)
    notices.took(0.01)
    assert notices.tell([_open(0)], [_open(1), _open(2)], 2) == []


def test_a_slow_queue_is_told_once_a_second_with_its_estimate() -> None:
    now = [0.0]
    notices = QueueNotices(T, max_batch=1, clock=lambda: now[0])
    notices.took(0.3)
    told = notices.tell([_open(0)], [_open(1), _open(2)], 2)
    assert [decode(p) for _, p in told] == [Queued(SID[0], 0, 300), Queued(SID[1], 1, 600), Queued(SID[2], 2, 900)]
    assert [topic for topic, _ in told] == [T.down(f"cam-{i}") for i in range(3)]
    assert notices.tell([_open(1)], [_open(2)], 1) == []  # told within the last second
    now[0] = 1.5
    assert len(notices.tell([_open(1)], [_open(2)], 1)) == 2
