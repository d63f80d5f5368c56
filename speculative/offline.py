"""Edge-only generation now, verification later.

A device without a verifier (its link is down, or its policy says edge-only) still
generates: `generate_edge_only` drafts with the draft model alone and keeps, beside each
token, the exact q it was drawn from. That `OfflineDraft` is the draft model's own caption,
unverified.

Once a verifier is reachable again, `ReplayDrafter` offers the recorded tokens as the draft
blocks of an ordinary session (the first block in the OPEN, so the verifier scores up to
`gamma` of them in the prefill's forward). Each recorded token was drawn from q given exactly
the context the verifier now holds, so accepting or rejecting it is the usual exact test:
the verified output is distributed as the target's own (greedy: token-identical to it). At
the first token the verifier replaces, or when the recording runs out, the drafter starts the
live draft model on the committed context and the session carries on as any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .draft import DraftBlock, Drafter
from .loop import StopRule
from .sampling import SparseQ, stack_q


@dataclass
class OfflineDraft:
    """Tokens the draft model generated alone, with the q each was drawn from (None: greedy)."""

    tokens: list[int] = field(default_factory=list)
    q_ids: list[torch.Tensor] | None = None
    q_weights: list[torch.Tensor] | None = None
    forwards: int = 0

    def block(self, start: int, stop: int) -> DraftBlock:
        """Recorded tokens [start, stop) as a draft block."""
        q: SparseQ | None = None
        if self.q_ids is not None and self.q_weights is not None and stop > start:
            q = stack_q(self.q_ids[start:stop], self.q_weights[start:stop])
        return DraftBlock(self.tokens[start:stop], q)


def generate_edge_only(drafter: Drafter, prompt_ids: list[int], features: np.ndarray | None,
                       stop: StopRule, chunk: int = 8) -> OfflineDraft:
    """The draft model alone, sampling as the session would: each block of `chunk` drafts is
    kept whole, its last token standing in for a verifier's token (it was drawn from q too)."""
    drafter.start(list(prompt_ids), features)
    out = OfflineDraft(q_ids=None if drafter.params.greedy else [], q_weights=None if drafter.params.greedy else [])
    done = stop.max_new_tokens <= 0
    while not done:
        block = drafter.propose(max(1, min(chunk, stop.max_new_tokens - len(out.tokens))))
        tokens, done = stop.clip(out.tokens + block.tokens)
        kept = len(tokens) - len(out.tokens)
        if out.q_ids is not None and out.q_weights is not None and block.q is not None:
            for i in range(kept):
                live = block.q.weights[i] > 0
                out.q_ids.append(block.q.ids[i][live])
                out.q_weights.append(block.q.weights[i][live])
        out.tokens = tokens
        if not done:
            drafter.commit(len(block.tokens) - 1, block.tokens[-1])
    out.forwards = drafter.forwards
    return out


class ReplayDrafter:
    """A `DraftSource` that proposes a recorded `OfflineDraft` while the verifier agrees with
    it, then drafts live with the draft model made by `live()` (started on the committed
    context: one prefill on the device)."""

    def __init__(self, recording: OfflineDraft, live: Callable[[], Drafter], live_gamma: int | None = None):
        self.recording = recording
        self._make_live = live
        self.live_gamma = live_gamma  # the block length once live (None: as asked)
        self._live: Drafter | None = None
        self._features: Any = None
        self.committed: list[int] = []
        self._prompt_len = 0
        self._at = 0  # next recorded token to offer
        self._drafted: list[int] = []
        self.replayed_accepted = 0  # recorded tokens the verifier kept

    @property
    def replaying(self) -> bool:
        return self._live is None

    @property
    def forwards(self) -> int:
        return self._live.forwards if self._live is not None else 0

    def start(self, prompt_ids: list[int], features: Any = None) -> None:
        self.committed = list(prompt_ids)
        self._prompt_len = len(prompt_ids)
        self._features = features

    def propose(self, gamma: int) -> DraftBlock:
        if self._live is None and self._at >= len(self.recording.tokens):
            self._go_live()
        if self._live is not None:
            return self._live.propose(gamma if self.live_gamma is None else min(gamma, self.live_gamma))
        block = self.recording.block(self._at, min(self._at + gamma, len(self.recording.tokens)))
        self._drafted = block.tokens
        return block

    def draft_ahead_step(self, next_gamma: int) -> bool:
        if self._live is None:
            return False
        return self._live.draft_ahead_step(next_gamma if self.live_gamma is None else min(next_gamma, self.live_gamma))

    def commit(self, n_accepted: int, next_token: int) -> None:
        if self._live is not None:
            self._live.commit(n_accepted, next_token)
            self.committed = self._live.committed
            return
        self.committed += self._drafted[:n_accepted] + [next_token]
        self.replayed_accepted += n_accepted
        self._at += n_accepted
        rec = self.recording.tokens
        if n_accepted == len(self._drafted) and self._at < len(rec) and rec[self._at] == next_token:
            self._at += 1  # the verifier's token is the recording's next one: keep replaying
            self.replayed_accepted += 1
        else:
            self._at = len(rec)  # the recording no longer applies
        self._drafted = []

    def _go_live(self) -> None:
        live = self._make_live()
        live.start(list(self.committed), self._features)
        self._live = live


__all__ = ["OfflineDraft", "ReplayDrafter", "generate_edge_only"]
