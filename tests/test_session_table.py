"""The verifier's session table: bounded in sessions and in KV bytes, LRU eviction, idle expiry."""

from __future__ import annotations

from types import SimpleNamespace

from verifier_node.sessions import SessionTable


def fake_session(sid: bytes, length: int, device_id: str = "cam-1"):
    target = SimpleNamespace(state=SimpleNamespace(length=length))
    return SimpleNamespace(session_id=sid, target=target, last_used=0.0, device_id=device_id)


def make(device_id: str, n: int):
    return fake_session(bytes([n]) * 16, 4, device_id)


def test_lru_eviction_by_count():
    dropped = []
    table = SessionTable(2, 60, on_drop=dropped.append)
    a, b, c = (fake_session(x, 10) for x in (b"a", b"b", b"c"))
    table.add(a)
    table.add(b)
    table.get(b"a")  # a is now the most recently used
    table.add(c)
    assert table.get(b"b") is None and table.get(b"a") is a and table.evictions == 1 and dropped == [b]


def test_eviction_by_kv_bytes():
    table = SessionTable(100, 60, max_bytes=1000, bytes_per_token=10)
    for i in range(5):
        table.add(fake_session(bytes([i]), 30))  # 300 bytes each
    assert len(table) == 3 and table.kv_bytes() == 900 and table.evictions == 2


def test_idle_expiry():
    dropped = []
    table = SessionTable(10, 5.0, on_drop=dropped.append)
    s = fake_session(b"x", 1)
    table.add(s)
    s.last_used = 100.0
    assert table.expire(now=104.0) == 0
    assert table.expire(now=106.0) == 1 and dropped == [s] and len(table) == 0


def test_a_device_at_its_quota_gives_up_its_own_oldest_session():
    dropped = []
    table = SessionTable(100, 60, on_drop=dropped.append, max_per_device=2)
    other = make("other", 1)
    table.add(other)
    mine = [make("greedy", i + 10) for i in range(5)]
    for s in mine:
        table.add(s)
    assert table.get(other.session_id) is other  # never pushed out by another device
    assert [s.session_id for s in dropped] == [s.session_id for s in mine[:3]]
    assert table.quota_evictions == 3 and len(table) == 3


def test_a_device_at_its_quota_gives_up_its_least_recently_used_session():
    dropped = []
    table = SessionTable(100, 60, on_drop=dropped.append, max_per_device=2)
    first, second, third = (make("cam", i) for i in range(3))
    table.add(first)
    table.add(second)
    table.get(first.session_id)  # first is used again: second is now the device's LRU
    table.add(third)
    assert dropped == [second] and table.get(first.session_id) is first
    table.remove(first.session_id)
    table.add(make("cam", 9))  # the quota counts only what the device still holds
    assert dropped == [second, first] and len(table) == 2


def test_the_byte_bound_counts_only_when_the_sessions_could_exceed_it():
    # 3 sessions of at most 30 positions x 10 bytes fit in 1000 bytes: nothing is counted or
    # evicted; a 4th could exceed it, so the table counts (they hold 30 each: 1200) and evicts.
    table = SessionTable(100, 60, max_bytes=1000, bytes_per_token=10, max_tokens_per_session=30)
    for i in range(3):
        table.add(fake_session(bytes([i]), 30))
    assert len(table) == 3 and table.evictions == 0
    table.add(fake_session(b"x", 30))
    assert len(table) == 3 and table.evictions == 1
