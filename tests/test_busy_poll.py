"""transport.reconnect.BusyPoll: spins the event loop after a kick, until the time is up or it
is stopped (a batch starting: spinning would take the CPU and the interpreter lock from it)."""

from __future__ import annotations

import asyncio
import time

from transport.reconnect import BusyPoll


def test_kick_polls_and_stop_ends_it_at_once() -> None:
    async def main() -> tuple[bool, bool, bool]:
        poller = BusyPoll(5.0)
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(0)
        idle = asyncio.get_running_loop().time() < poller._until  # not kicked: not polling
        poller.kick()
        await asyncio.sleep(0.01)
        polling = asyncio.get_running_loop().time() < poller._until
        poller.stop()
        await asyncio.sleep(0.01)
        stopped = not poller._kicked.is_set() and asyncio.get_running_loop().time() >= poller._until
        task.cancel()
        return idle, polling, stopped

    idle, polling, stopped = asyncio.run(main())
    assert not idle and polling and stopped


def test_stopped_poller_leaves_the_cpu_alone() -> None:
    async def cpu_over(poller: BusyPoll, seconds: float) -> float:
        cpu = time.process_time()
        await asyncio.sleep(seconds)
        return time.process_time() - cpu

    async def main() -> tuple[float, float]:
        poller = BusyPoll(5.0)
        task = asyncio.create_task(poller.run())
        poller.kick()
        spinning = await cpu_over(poller, 0.2)
        poller.stop()
        await asyncio.sleep(0.01)
        stopped = await cpu_over(poller, 0.2)
        task.cancel()
        return spinning, stopped

    spinning, stopped = asyncio.run(main())
    assert spinning > 0.05  # polling: the loop keeps a core busy
    assert stopped < 0.05
