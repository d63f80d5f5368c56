"""The speculative generation loop, independent of how drafts reach the verifier.

`EdgeGeneration` is the device's state machine (draft, send, apply the verdict, stop); the
in-process driver `run_local` and the MQTT driver in camera_node both step it, so the
algorithm is written once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .draft import DraftBlock, Drafter
from .models import CachedLM, LoadedLM
from .sampling import DEFAULT_Q_RULE, QRule, SamplingParams, make_generator, sample_probs, warp_probs
from .target import TargetSession


@dataclass
class GenerationResult:
    """What one session produced and what it cost."""

    token_ids: list[int]  # generated tokens (prompt excluded)
    rounds: int = 0
    accepted_per_round: list[int] = field(default_factory=list)
    drafted_per_round: list[int] = field(default_factory=list)
    target_forwards: int = 0
    draft_forwards: int = 0
    seconds: float = 0.0
    target_seconds: float = 0.0  # in the target's verification calls (in-process runs only)

    @property
    def acceptance_rate(self) -> float:
        drafted = sum(self.drafted_per_round)
        return sum(self.accepted_per_round) / drafted if drafted else 0.0

    @property
    def evaluated_positions(self) -> int:
        """Draft positions the verifier actually judged: all k when all pass, else up to the first rejection."""
        return sum(n if n == k else n + 1 for n, k in zip(self.accepted_per_round, self.drafted_per_round))

    @property
    def position_acceptance(self) -> float:
        """Per-position acceptance probability (the a of (1 - a^(g+1)) / (1 - a)).

        `acceptance_rate` (accepted / drafted) also counts drafts behind a rejection, which
        were never judged, so it underestimates a whenever rounds stop early.
        """
        judged = self.evaluated_positions
        return sum(self.accepted_per_round) / judged if judged else 0.0

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted_per_round) / self.rounds if self.rounds else 0.0


@dataclass(frozen=True)
class StopRule:
    """Stop after `max_new_tokens` generated tokens or at the first stop token (kept)."""

    max_new_tokens: int
    stop_token_ids: tuple[int, ...] = ()

    def clip(self, generated: list[int]) -> tuple[list[int], bool]:
        """Generated tokens cut at the rule, and whether the session is finished."""
        for i, token in enumerate(generated[: self.max_new_tokens]):
            if token in self.stop_token_ids:
                return generated[: i + 1], True
        clipped = generated[: self.max_new_tokens]
        return clipped, len(clipped) >= self.max_new_tokens


class DraftSource(Protocol):
    """What `EdgeGeneration` drafts with: a `Drafter`, or a stand-in such as `RecordedDrafter`."""

    @property
    def forwards(self) -> int: ...

    def start(self, prompt_ids: list[int], features: Any = None) -> None: ...

    def propose(self, gamma: int) -> DraftBlock: ...

    def draft_ahead_step(self, next_gamma: int) -> bool: ...

    def commit(self, n_accepted: int, next_token: int) -> None: ...


class EdgeGeneration:
    """The device side of one session, one round at a time."""

    def __init__(self, drafter: DraftSource, prompt_ids: list[int], gamma: int, stop: StopRule):
        if gamma < 0:
            raise ValueError("gamma must be >= 0")
        self.drafter = drafter
        self.prompt_len = len(prompt_ids)
        self.gamma = gamma
        self.stop = stop
        self.result = GenerationResult(token_ids=[])
        self.done = stop.max_new_tokens <= 0
        self._block: DraftBlock | None = None

    @property
    def generated(self) -> list[int]:
        return self.result.token_ids

    @property
    def committed_len(self) -> int:
        return self.prompt_len + len(self.generated)

    def next_block(self) -> DraftBlock:
        """Draft the next block; never drafts past the token budget."""
        remaining = self.stop.max_new_tokens - len(self.generated)
        self._block = self.drafter.propose(max(0, min(self.gamma, remaining - 1)))
        return self._block

    @property
    def ahead_worthwhile(self) -> bool:
        """Whether drafting ahead is likely to pay: it needs every draft of the block in flight
        accepted, so bet on it only after a round that accepted all (and on the first round)."""
        r = self.result
        return not r.rounds or r.accepted_per_round[-1] == r.drafted_per_round[-1]

    def draft_ahead_step(self) -> bool:
        """One forward of drafting the next block while the current one is verified (pipelining);
        False when there is nothing (more) worth drafting ahead."""
        if self._block is None or any(t in self.stop.stop_token_ids for t in self._block.tokens):
            return False
        remaining = self.stop.max_new_tokens - len(self.generated) - (len(self._block.tokens) + 1)
        return self.drafter.draft_ahead_step(min(self.gamma, remaining - 1))

    def apply(self, n_accepted: int, next_token: int) -> list[int]:
        """Apply a verdict; returns the tokens it added to the output."""
        assert self._block is not None, "next_block() first"
        block, self._block = self._block, None
        if not 0 <= n_accepted <= len(block.tokens):
            raise ValueError(f"verdict accepts {n_accepted} of {len(block.tokens)} drafts")
        self.drafter.commit(n_accepted, next_token)
        before = len(self.generated)
        emitted = block.tokens[:n_accepted] + [next_token]
        clipped, self.done = self.stop.clip(self.generated + emitted)
        self.result.token_ids = clipped
        self.result.rounds += 1
        self.result.accepted_per_round.append(n_accepted)
        self.result.drafted_per_round.append(len(block.tokens))
        self.result.draft_forwards = self.drafter.forwards
        return clipped[before:]


def run_local(
    target: LoadedLM,
    draft: LoadedLM,
    prompt_ids: list[int],
    features: np.ndarray | None,
    sampling: SamplingParams,
    gamma: int,
    max_new_tokens: int,
    seed: int = 0,
    q_rule: QRule = DEFAULT_Q_RULE,
    stop_token_ids: tuple[int, ...] | None = None,
) -> GenerationResult:
    """Speculative decoding in one process, with no broker (the reference loop)."""
    started = time.perf_counter()
    stops = target.eos_token_ids if stop_token_ids is None else stop_token_ids
    drafter = Drafter(draft, sampling, seed=seed, q_rule=q_rule)
    drafter.start(prompt_ids, features)
    verifier = TargetSession(target, sampling, seed=seed)
    edge = EdgeGeneration(drafter, prompt_ids, gamma, StopRule(max_new_tokens, stops))
    while not edge.done:
        block = edge.next_block()
        verifying = time.perf_counter()
        if edge.result.rounds:
            verdict = verifier.verify(block.tokens, block.q)
        else:  # the first block is verified in the prefill's forward, as an OPEN carrying it is
            verdict = verifier.open_and_verify(prompt_ids, features, block.tokens, block.q)
        edge.result.target_seconds += time.perf_counter() - verifying
        edge.apply(verdict.n_accepted, verdict.next_token)
    edge.result.target_forwards = verifier.forwards
    edge.result.seconds = time.perf_counter() - started
    return edge.result


def generate_autoregressive(
    lm: LoadedLM,
    prompt_ids: list[int],
    features: np.ndarray | None,
    sampling: SamplingParams,
    max_new_tokens: int,
    seed: int = 0,
    stop_token_ids: tuple[int, ...] | None = None,
) -> GenerationResult:
    """The model alone, one token per forward with its KV cache (the cloud-only baseline)."""
    started = time.perf_counter()
    stop = StopRule(max_new_tokens, lm.eos_token_ids if stop_token_ids is None else stop_token_ids)
    state = CachedLM(lm)
    gen = make_generator(seed, 1)
    logits = state.prefill(prompt_ids, features)
    assert logits is not None
    last = logits[-1]
    out: list[int] = []
    done = max_new_tokens <= 0
    while not done:
        token = int(last.argmax()) if sampling.greedy else sample_probs(warp_probs(last, sampling), gen)
        out, done = stop.clip(out + [token])
        if not done:
            last = state.extend([token])[-1]
    return GenerationResult(token_ids=out, target_forwards=state.forwards, seconds=time.perf_counter() - started)
