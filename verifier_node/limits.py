"""Per-device admission: a token bucket of uplink messages for every device id.

A device that floods the verifier is slowed to its own budget instead of stalling every other
device's rounds: messages over budget are dropped before any decoding and counted (reason
`busy`), and the device is told with an ERROR (code BUSY) at most once per second, so the
answers cannot become a flood of their own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    told: float = float("-inf")  # when the device was last sent a BUSY


class DeviceRateLimiter:
    """`rate` messages per second per device, in bursts of up to `burst`; state is kept for at
    most `max_devices` device ids (least recently seen forgotten first)."""

    def __init__(self, rate: float, burst: float, *, max_devices: int = 100_000, clock=time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_devices = max_devices
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, device_id: str) -> tuple[bool, bool]:
        """(allowed, tell): whether to process the message, and, when not, whether to answer
        it with a BUSY (once per second per device)."""
        now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = self._buckets[device_id] = _Bucket(self.burst, now)
            while len(self._buckets) > self.max_devices:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device_id)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, False
        tell = now - bucket.told >= 1.0
        if tell:
            bucket.told = now
        return False, tell
