"""Waiting without sleeping too long: reconnect backoff, a bounded queue get, and busy polling."""

from __future__ import annotations

import asyncio
import os

RECONNECT_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # seconds before reconnect attempt 1, 2, ...; then the last


def reconnect_delay(attempt: int, backoff: tuple[float, ...] = RECONNECT_BACKOFF_S) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based)."""
    return backoff[min(attempt, len(backoff) - 1)]


async def get_within(queue: asyncio.Queue, seconds: float):
    """`queue.get()` or asyncio.TimeoutError after `seconds`. On Python 3.11+ this waits in
    the caller's task; `asyncio.wait_for` there wraps the get in a task of its own, which costs
    a loop turn (about 10 us) before the caller sees a message."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await queue.get()
    return await asyncio.wait_for(queue.get(), seconds)


class BusyPoll:
    """Keeps an event loop polling its sockets (zero-timeout selects, yielding the CPU between
    them) for `seconds` after each `kick()`, instead of sleeping in the kernel.

    On a virtualised CPU a process that slept even 1 ms can run its next model forward about
    twice as slow as one that kept running (`edgespec bench` measures it: "hand-off"); a
    verifier kicks this after each reply, since the device's next block follows within a few
    milliseconds, and `stop()`s it when the next batch starts. It costs a core while hot; 0
    seconds turns it off.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._until = 0.0
        self._kicked = asyncio.Event()

    def kick(self) -> None:
        if self.seconds > 0:
            self._until = asyncio.get_running_loop().time() + self.seconds
            self._kicked.set()

    def stop(self) -> None:
        """Stop polling now (until the next `kick`): work is starting, and a spinning loop
        would take the CPU and the interpreter lock from it."""
        self._until = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() < self._until:
                os.sched_yield()
                await asyncio.sleep(0)
            else:
                self._kicked.clear()
                await self._kicked.wait()
