"""Per-device admission: a token bucket per device, BUSY told at most once a second, and a
flooding device never slows another device's messages."""

from __future__ import annotations

import os

from schemas import DraftMsg, ErrorCode, ErrorMsg, Topics, decode, encode
from verifier_node.core import VerifierConfig, VerifierCore
from verifier_node.limits import DeviceRateLimiter


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_bucket_refills_at_its_rate_and_tells_once_a_second():
    clock = Clock()
    limiter = DeviceRateLimiter(rate=8, burst=3, clock=clock)
    assert [limiter.admit("a")[0] for _ in range(3)] == [True] * 3
    assert limiter.admit("a") == (False, True)  # over budget: told
    assert limiter.admit("a") == (False, False)  # and then only counted
    assert limiter.admit("b") == (True, False)  # another device has its own budget
    clock.t += 0.125  # one message's worth
    assert limiter.admit("a") == (True, False)
    assert limiter.admit("a") == (False, False)
    clock.t += 1.0
    assert limiter.admit("a")[0]


def test_bucket_state_is_bounded():
    limiter = DeviceRateLimiter(rate=1, burst=1, max_devices=10)
    for i in range(1000):
        limiter.admit(f"spoofed-{i}")
    assert len(limiter._buckets) == 10


def test_a_flooding_device_is_dropped_and_counted_while_others_pass(loaded_pair):
    target, _ = loaded_pair
    core = VerifierCore(target, VerifierConfig(device_rate=5, device_burst=5))
    topics = Topics()
    flood = [(topics.session_up("flood", "verifier-1"), encode(DraftMsg(os.urandom(16), i, 3, [1], None)))
             for i in range(50)]
    replies = core.handle_batch(flood)
    busy = [decode(p) for t, p in replies if isinstance(decode(p), ErrorMsg) and decode(p).code == ErrorCode.BUSY]
    assert len(busy) == 1 and busy[0].session_id is None  # told once, and no session is ended by it
    assert core.rejected["busy"] == 45
    # Another device's message in the same moment is handled normally (a RESYNC for an unknown session).
    other = core.handle(topics.session_up("calm", "verifier-1"), encode(DraftMsg(os.urandom(16), 0, 3, [1], None)))
    assert len(other) == 1 and core.rejected["busy"] == 45
