"""A drafter that replays a recorded continuation with injected mistakes (for load tests).

Simulated devices in `edgespec loadtest` must not spend the machine's CPU on drafting, or the
test measures the devices instead of the verifier. `RecordedDrafter` proposes the next tokens
of the target's own recorded greedy output, each replaced by a wrong token with probability
1 - `acceptance`, so the verifier sees realistic blocks and does its real work, and every
session's output must still equal the recording exactly. Greedy sessions only.
"""

from __future__ import annotations

import random

from .draft import DraftBlock


class RecordedDrafter:
    """Duck-types `Drafter` for `EdgeGeneration` (start, propose, commit, forwards)."""

    def __init__(self, reference: list[int], vocab_size: int, acceptance: float, seed: int = 0):
        if not 0.0 <= acceptance <= 1.0:
            raise ValueError("acceptance must be in [0, 1]")
        self.reference = list(reference)
        self.vocab_size = vocab_size
        self.acceptance = acceptance
        self._rng = random.Random(seed)
        self.committed: list[int] = []
        self._prompt_len = 0
        self._drafted: list[int] = []
        self.forwards = 0

    def start(self, prompt_ids: list[int], features=None) -> None:
        self.committed = list(prompt_ids)
        self._prompt_len = len(prompt_ids)

    def propose(self, gamma: int) -> DraftBlock:
        at = len(self.committed) - self._prompt_len
        tokens = []
        for i in range(gamma):
            right = self.reference[at + i] if at + i < len(self.reference) else 0
            if self._rng.random() >= self.acceptance:
                right = (right + 1 + self._rng.randrange(self.vocab_size - 1)) % self.vocab_size
            tokens.append(right)
        self._drafted = tokens
        return DraftBlock(tokens, None)

    def draft_ahead_step(self, next_gamma: int) -> bool:
        return False

    def commit(self, n_accepted: int, next_token: int) -> None:
        self.committed.extend(self._drafted[:n_accepted])
        self.committed.append(next_token)
        self._drafted = []
