"""The drafter: the edge side of speculative decoding.

It proposes k tokens per round from the draft model's KV cache, drawing each from the
truncated, quantized q that it then sends (see sampling.py), and applies the verifier's
verdict by cropping its cache back to the accepted prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models import CachedLM, LoadedLM
from .sampling import (
    DEFAULT_Q_TOP,
    SamplingParams,
    SparseQ,
    make_generator,
    quantize_distribution,
    sample_weights,
    warp_probs,
)

DRAFT_STREAM = 0


@dataclass(frozen=True)
class DraftBlock:
    """k proposed tokens and, when sampling, the exact distributions they were drawn from."""

    tokens: list[int]
    q: SparseQ | None  # None in greedy mode: q is the one-hot of each token


class Drafter:
    """KV-cached drafting for one session."""

    def __init__(self, lm: LoadedLM, params: SamplingParams, *, seed: int = 0, q_top: int = DEFAULT_Q_TOP):
        self.lm = lm
        self.params = params.validate()
        self.q_top = q_top
        self.state = CachedLM(lm)
        self._gen = make_generator(seed, DRAFT_STREAM)
        self._pending: list[int] = []  # committed tokens not yet fed to the model
        self._drafted: list[int] = []
        self._next_logits: torch.Tensor | None = None
        self.committed: list[int] = []  # prompt + generated text tokens

    @property
    def forwards(self) -> int:
        return self.state.forwards

    def start(self, prompt_ids: list[int], features: np.ndarray | None = None) -> None:
        """Prefill the prompt (and the vision prefix) once per session."""
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        logits = self.state.prefill(prompt_ids, features)
        assert logits is not None
        self._next_logits = logits[-1]
        self.committed = list(prompt_ids)

    def propose(self, gamma: int) -> DraftBlock:
        """Draft `gamma` tokens (gamma - 1 forwards, plus one for the tokens committed last round)."""
        if self._pending:
            self._next_logits = self.state.extend(self._pending)[-1]
            self._pending = []
        assert self._next_logits is not None, "start() first"
        logits = self._next_logits
        tokens: list[int] = []
        q_ids: list[torch.Tensor] = []
        q_weights: list[torch.Tensor] = []
        for i in range(gamma):
            if self.params.greedy:
                token = int(logits.argmax())
            else:
                ids, weights = quantize_distribution(warp_probs(logits, self.params), self.q_top)
                token = sample_weights(ids, weights, self._gen)
                q_ids.append(ids)
                q_weights.append(weights)
            tokens.append(token)
            if i < gamma - 1:
                logits = self.state.extend([token])[-1]
        self._drafted = tokens
        q = SparseQ(torch.stack(q_ids), torch.stack(q_weights)) if q_ids else None
        return DraftBlock(tokens, q)

    def commit(self, n_accepted: int, next_token: int) -> None:
        """Apply a verdict: keep the accepted drafts, queue the verifier's token."""
        accepted = self._drafted[:n_accepted]
        base = self.state.prefix_len + len(self.committed)
        if n_accepted == len(self._drafted) and self._drafted:
            # The last draft token was sampled but never fed; feed it with the bonus token.
            self._pending = [self._drafted[-1], next_token]
        else:
            self.state.crop(base + n_accepted)
            self._pending = [next_token]
        self.committed.extend(accepted)
        self.committed.append(next_token)
        self._drafted = []
