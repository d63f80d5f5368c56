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

    def __init__(self, lm: LoadedLM, params: SamplingParams, *, seed: int = 0, resumed_at: int = 0):
        """`resumed_at`: for a session re-opened with generated tokens, its committed length
        (prompt + generated); its generator then continues with fresh randomness instead of
        starting the seed's stream again (see `make_generator`)."""
        self.lm = lm
        self.params = params.validate()
        self.state = CachedLM(lm)
        self._gen = make_generator(seed, VERIFIER_STREAM, resumed_at)
        self.committed: list[int] = []

    @property
    def forwards(self) -> int:
        return self.state.forwards

    def open(self, prompt_ids: list[int], features: np.ndarray | None = None) -> None:
        """Prefill everything but the last committed token."""
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        self.state.prefill(prompt_ids[:-1], features, logits=False)
        self.committed = list(prompt_ids)

    def open_input(self, prompt_ids: list[int], features: np.ndarray | None = None) -> torch.Tensor | None:
        """For a batched open: commit `prompt_ids` and return the embeddings [n, H] that
        `open` would feed, or None when it feeds nothing (one token, no features)."""
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        self.committed = list(prompt_ids)
        if features is None and len(prompt_ids) == 1:
            return None
        return self.state.prefill_embeddings(prompt_ids[:-1], features)

    def open_and_verify(self, prompt_ids: list[int], features: np.ndarray | None, tokens: list[int],
                        q: SparseQ | None) -> Verdict:
        """`open(prompt_ids, features)` then `verify(tokens, q)` in one forward: the prefill's
        positions and the block's k+1 run together, and the logits of the last k+1 judge it."""
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        logits = self.state.prefill([*prompt_ids, *tokens], features, last=len(tokens) + 1)
        assert logits is not None  # there were tokens to feed
        self.committed = list(prompt_ids)
        verdict = self.judge(logits, tokens, q)
        self.settle(tokens, verdict)
        return verdict

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
        verdict = self.judge(self.block_logits(tokens), tokens, q)
        self.settle(tokens, verdict)
        return verdict

    def judge(self, logits: torch.Tensor, tokens: list[int], q: SparseQ | None) -> Verdict:
        """`verify_block` on the block's k+1 target logits, with this session's sampling
        parameters and verifier generator; touches neither cache nor committed tokens."""
        return verify_block(logits, torch.tensor(tokens, dtype=torch.int64), q, self.params, self._gen)
