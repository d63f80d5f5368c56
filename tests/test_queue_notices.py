"""QUEUED notices: the verifier tells a device whose message waits behind a slow queue, and
the wire message round-trips."""

from __future__ import annotations

from schemas import Queued, Topics, decode, encode
from verifier_node.queue_notices import QueueNotices

T = Topics()
SID = [bytes([i]) * 16 for i in range(4)]


def _open(i: int) -> tuple[str, bytes]:
    from schemas import SessionOpen

    # A fixed send time: the same message is the same bytes however often it is built (the
    # notices know a waiting message by its bytes, as a queued one keeps them).
    return T.open(f"cam-{i}"), encode(SessionOpen(SID[i], [1, 2], sent_at_ms=1_700_000_000_000))


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


def test_a_running_batch_is_expected_to_take_twice_what_it_has_so_far() -> None:
    """A first batch has no history: while it runs, its messages and those behind it are told
    from its running time alone."""
    notices = QueueNotices(T, max_batch=1, clock=lambda: 0.0)
    assert notices.tell([_open(0)], [_open(1)], 1) == []  # no history, not running yet: nothing known
    assert notices.tell([_open(0)], [_open(1)], 1, running_s=0.1) == []  # 0.2 s to go at most: soon enough
    told = notices.tell([_open(0)], [_open(1)], 1, running_s=0.4)
    assert [decode(p) for _, p in told] == [Queued(SID[0], 0, 400), Queued(SID[1], 1, 800)]


def test_a_running_batch_longer_than_the_recent_ones_raises_the_estimate() -> None:
    notices = QueueNotices(T, max_batch=1, clock=lambda: 0.0)
    notices.took(0.3)
    # 0.1 s into a batch like the last: 0.2 s left, then 0.3 s for the one behind it.
    assert [decode(p) for _, p in notices.tell([_open(0)], [_open(1)], 1, running_s=0.1)] == [Queued(SID[1], 1, 500)]
    # 2 s into it (a long prefill): 2 s more, then 2 s for the next.
    told = notices.tell([_open(2)], [_open(3)], 1, running_s=2.0)
    assert [decode(p) for _, p in told] == [Queued(SID[2], 0, 2000), Queued(SID[3], 1, 4000)]


def test_each_waiting_message_is_told_not_each_session() -> None:
    """A session's next block, sent as the verdict of the last one came, is told at once."""
    from schemas import DraftMsg

    now = [0.0]
    notices = QueueNotices(T, max_batch=1, clock=lambda: now[0])
    notices.took(0.5)
    block = [(T.session_up("cam-0", "v1"), encode(DraftMsg(SID[0], seq, 2, [5, 6]))) for seq in (1, 2)]
    assert len(notices.tell([block[0]], [], 0)) == 1
    now[0] = 0.1
    assert notices.tell([block[0]], [], 0) == []  # the same message: told 0.1 s ago
    assert len(notices.tell([block[1]], [], 0)) == 1
    now[0] = 0.7
    assert len(notices.tell([block[1]], [], 0)) == 1  # still waiting, 0.6 s later: told again
