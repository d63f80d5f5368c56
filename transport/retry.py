"""How a node tries again: a `RetryPolicy` (how many tries, for how long, the waits between
them, how long one try waits for its answer) and `Tries`, one run of tries under it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .reconnect import RECONNECT_BACKOFF_S, reconnect_delay


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """attempts: tries in all, the first included (None: no limit by count); within_s: no new
    try once this long has passed since the first (None: no limit by time); backoff: the wait
    before try 2, 3, ... (the last repeats); timeout_s: how long one try waits for its answer."""

    attempts: int | None = None
    within_s: float | None = None
    backoff: tuple[float, ...] = RECONNECT_BACKOFF_S
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try `attempt` (0-based)."""
        return reconnect_delay(attempt, self.backoff)

    def tries(self) -> Tries:
        """A fresh run of tries under this policy, starting now."""
        return Tries(self)


@dataclass
class Tries:
    """One run of tries: `attempt` is the 0-based number of the try being made."""

    policy: RetryPolicy
    attempt: int = 0
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())

    def out_of_attempts(self) -> bool:
        """Whether the try being made is the last the policy allows by count."""
        return self.policy.attempts is not None and self.attempt + 1 >= self.policy.attempts

    def out_of_time(self) -> bool:
        """Whether the policy's time for trying has passed."""
        within = self.policy.within_s
        return within is not None and asyncio.get_running_loop().time() - self.started > within

    def exhausted(self) -> bool:
        return self.out_of_attempts() or self.out_of_time()

    def next(self) -> None:
        """Count a failed try, without waiting."""
        self.attempt += 1

    async def wait(self) -> None:
        """Wait the backoff after the failed try, then count it."""
        await asyncio.sleep(self.policy.delay(self.attempt))
        self.attempt += 1
