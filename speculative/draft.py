"""The drafter: the edge side of speculative decoding.

It proposes k tokens per round from the draft model's KV cache, drawing each from the
truncated, quantized q that it then sends (see sampling.py), and applies the verifier's
verdict by cropping its cache back to the accepted prefix.

Drafting ahead (pipelining): while a block is being verified, `draft_ahead_step` keeps
drafting the *next* block under the guess that every draft passes and the verifier's bonus
token is the draft's own most likely token. If the verdict confirms the guess, the next block
is already (partly) drafted; if not, the guessed positions are cropped away. Either way the
blocks sent are drawn from exactly the q they carry, so verification stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .lean import draft_state
from .models import CachedLM, LoadedLM
from .sampling import (DEFAULT_Q_RULE, QRule, SamplingParams, SparseQ, make_generator, sample_weights, stack_q,
                       warp_probs)

DRAFT_STREAM = 0


@dataclass(frozen=True)
class DraftBlock:
    """k proposed tokens and, when sampling, the exact distributions they were drawn from."""

    tokens: list[int]
    q: SparseQ | None  # None in greedy mode: q is the one-hot of each token


@dataclass
class _Partial:
    """A block being drafted: tokens so far, their q rows, the logits for the next position."""

    tokens: list[int] = field(default_factory=list)
    q_ids: list[torch.Tensor] = field(default_factory=list)
    q_weights: list[torch.Tensor] = field(default_factory=list)
    logits: torch.Tensor | None = None  # for position len(tokens); None until computed


@dataclass
class _Ahead:
    guess: int  # the bonus token the drafter bets on
    block: _Partial
    gamma: int


class Drafter:
    """KV-cached drafting for one session."""

    def __init__(self, lm: LoadedLM, params: SamplingParams, *, seed: int = 0, q_rule: QRule = DEFAULT_Q_RULE):
        self.lm = lm
        self.params = params.validate()
        self.q_rule = q_rule.validate()
        self.state = draft_state(lm)  # the lean forward where it applies (speculative/lean.py)
        # A reduced head (models.py, HEAD_VOCAB_FILE): logits over its K rows, drawn from as they
        # are and the rows mapped to token ids. q is then 0 outside the head, which verification
        # handles like any other truncation; no softmax over the whole vocabulary.
        if isinstance(self.state, CachedLM):
            self.state.full_vocab = False  # the lean forward's logits are the head's rows already
        self._gen = make_generator(seed, DRAFT_STREAM)
        self._pending: list[int] = []  # committed tokens not yet fed to the model
        self._drafted: list[int] = []  # the block out for verification
        self._next_logits: torch.Tensor | None = None
        self._ahead: _Ahead | None = None
        self._resume: _Partial | None = None  # a confirmed drafted-ahead block to continue
        self.committed: list[int] = []  # prompt + generated text tokens
        self.ahead_hits = 0
        self.ahead_misses = 0

    @property
    def forwards(self) -> int:
        return self.state.forwards

    @property
    def _base(self) -> int:
        """Cache positions of the vision prefix and the committed tokens."""
        return self.state.prefix_len + len(self.committed)

    def start(self, prompt_ids: list[int], features: np.ndarray | None = None) -> None:
        """Prefill the prompt (and the vision prefix) once per session."""
        if not prompt_ids:
            raise ValueError("a session needs at least one prompt token")
        logits = self.state.prefill(prompt_ids, features)
        assert logits is not None
        self._next_logits = logits[-1]
        self.committed = list(prompt_ids)

    # ------------------------------------------------------------------ drafting

    def _draw(self, logits: torch.Tensor, part: _Partial) -> int:
        if self.params.greedy:
            token = int(self.lm.head_token_ids(logits.argmax()))  # ascending ids: ties go as over all ids
        else:
            ids, weights = self.q_rule.quantize(warp_probs(logits, self.params))
            ids = self.lm.head_token_ids(ids)
            token = sample_weights(ids, weights, self._gen)
            part.q_ids.append(ids)
            part.q_weights.append(weights)
        part.tokens.append(token)
        return token

    def _extend(self, part: _Partial, gamma: int) -> None:
        """Draft into `part` until it holds `gamma` tokens (the last one is not fed)."""
        while len(part.tokens) < gamma:
            if part.logits is None:
                part.logits = self.state.extend([part.tokens[-1]])[-1]
            token_logits, part.logits = part.logits, None
            self._draw(token_logits, part)
            if len(part.tokens) == gamma:
                break

    def propose(self, gamma: int) -> DraftBlock:
        """Draft `gamma` tokens (gamma - 1 forwards, plus one for the tokens committed last round)."""
        part, self._resume = self._resume, None
        if part is None:
            if self._pending:
                self._next_logits = self.state.extend(self._pending)[-1]
                self._pending = []
            assert self._next_logits is not None, "start() first"
            part = _Partial(logits=self._next_logits)
        if len(part.tokens) > gamma:  # drafted ahead further than this round may send
            self.state.crop(self._base + gamma)
            part = _Partial(part.tokens[:gamma], part.q_ids[:gamma], part.q_weights[:gamma])
        self._extend(part, gamma)
        self._drafted = part.tokens
        q = stack_q(part.q_ids, part.q_weights) if part.q_ids else None
        return DraftBlock(list(part.tokens), q)

    def draft_ahead_step(self, next_gamma: int) -> bool:
        """One forward of drafting the next block while this one is verified; False when done."""
        if not self._drafted or next_gamma <= 0:
            return False
        k = len(self._drafted)
        if self._ahead is None:
            # Feed the last draft; its logits give the guess for the verifier's bonus token.
            logits = self.state.extend([self._drafted[-1]])[-1]
            guess = int(self.lm.head_token_ids(warp_probs(logits, self.params).argmax()))
            self._ahead = _Ahead(guess, _Partial(), next_gamma)
            return True
        ahead = self._ahead
        if len(ahead.block.tokens) >= ahead.gamma:
            return False
        if not ahead.block.tokens and ahead.block.logits is None:
            ahead.block.logits = self.state.extend([ahead.guess])[-1]
        self._extend(ahead.block, len(ahead.block.tokens) + 1)
        assert self.state.length <= self._base + k + 1 + len(ahead.block.tokens)
        return len(ahead.block.tokens) < ahead.gamma

    # ------------------------------------------------------------------ verdicts

    def commit(self, n_accepted: int, next_token: int) -> None:
        """Apply a verdict: keep the accepted drafts, queue (or confirm) the verifier's token."""
        k = len(self._drafted)
        accepted = self._drafted[:n_accepted]
        base = self._base
        ahead, self._ahead = self._ahead, None
        if ahead is not None and n_accepted == k and next_token == ahead.guess:
            # The guess held: the cache already holds the drafts, the bonus and the next drafts.
            self.ahead_hits += 1
            self._resume = ahead.block
            if not ahead.block.tokens and ahead.block.logits is None:
                self._pending = [next_token]
                self._resume = None
        else:
            if ahead is not None:
                self.ahead_misses += 1
            self.state.crop(base + n_accepted)
            fed_all = self.state.length >= base + n_accepted
            self._pending = [next_token] if fed_all else [self._drafted[-1], next_token]
        self.committed.extend(accepted)
        self.committed.append(next_token)
        self._drafted = []
