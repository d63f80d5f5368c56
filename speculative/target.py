"""The target side of one session: one forward over k+1 positions per drafted block."""

from __future__ import annotations

import numpy as np
import torch

from .models import CachedLM, LoadedLM
from .sampling import SamplingParams, SparseQ, make_generator
from .verify import Verdict, verify_block

VERIFIER_STREAM = 1


class TargetSession:
    """The target model's KV cache and RNG for one session.

    The cache holds every committed token but the last; each block feeds that last token plus
    the k drafts, so one forward yields p for all k drafts and for the bonus position.
    """

    def __init__(self, lm: LoadedLM, params: SamplingParams, *, seed: int = 0):
        self.lm = lm
        self.params = params.validate()
        self.state = CachedLM(lm)
        self._gen = make_generator(seed, VERIFIER_STREAM)
        self.committed: list[int] = []

    @property
    def forwards(self) -> int:
        return self.state.forwards

    def open(self, prompt_ids: list[int], features: np.ndarray | None = None) -> None:
        """Prefill everything but the last committed token."""
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        self.state.prefill(prompt_ids[:-1], features)
        self.committed = list(prompt_ids)

    def block_logits(self, tokens: list[int]) -> torch.Tensor:
        """Target logits [k+1, V] for the drafts; leaves them in the cache (see `settle`)."""
        return self.state.extend([self.committed[-1], *tokens])

    def settle(self, tokens: list[int], verdict: Verdict) -> None:
        """Crop the rejected drafts and commit the accepted ones plus the verdict's token."""
        n = verdict.n_accepted
        # Cache after block_logits: committed[:-1] + last + tokens; keep last + accepted.
        self.state.crop(self.state.prefix_len + len(self.committed) + n)
        self.committed.extend(tokens[:n])
        self.committed.append(verdict.next_token)

    def verify(self, tokens: list[int], q: SparseQ | None) -> Verdict:
        """Verify one block in a single target forward."""
        logits = self.block_logits(tokens)
        verdict = verify_block(logits, torch.tensor(tokens, dtype=torch.int64), q, self.params, self._gen)
        self.settle(tokens, verdict)
        return verdict
