"""Verification of one drafted block: the lossless accept/reject step.

Speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative
Sampling"): accept draft token x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
rejection emit a token drawn from norm(max(0, p_i - q_i)); when all k are accepted emit a
bonus token drawn from p_{k+1}. p is the target's distribution, q the draft's. The output is
distributed exactly as tokens sampled from p alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import SamplingParams, SparseQ, sample_probs, warp_probs


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying k drafted tokens."""

    accept_mask: tuple[bool, ...]  # [k], a prefix of True then False
    n_accepted: int
    next_token: int  # the correction (after a rejection) or the bonus token (all accepted)

    @property
    def emitted(self) -> int:
        return self.n_accepted + 1


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) for [V] vectors; falls back to p when p <= q everywhere.

    The fallback is only reachable when p == q (then rejection has probability 0).
    """
    residual = (p - q).clamp_(min=0.0)
    total = residual.sum()
    if float(total) <= 0.0:
        return p
    return residual / total


def verify_greedy(target_logits: torch.Tensor, draft_tokens: torch.Tensor) -> Verdict:
    """Greedy verification: q is one-hot, accept while the draft equals the target's argmax.

    target_logits: [k+1, V]; draft_tokens: [k].
    """
    return greedy_verdict(target_logits.argmax(-1).tolist(), draft_tokens.tolist())


def greedy_verdict(choices: list[int], draft_tokens: list[int]) -> Verdict:
    """Greedy verification from the target's argmax at each of the k+1 positions (what
    `verify_greedy` computes from the logits; a batch takes all rows' argmax at once)."""
    k = len(draft_tokens)
    n = k
    for i, token in enumerate(draft_tokens):
        if choices[i] != token:
            n = i
            break
    return Verdict(tuple(i < n for i in range(k)), n, int(choices[n]))


def verify_sampled(
    p: torch.Tensor,
    draft_tokens: torch.Tensor,
    q: SparseQ | torch.Tensor,
    generator: torch.Generator,
    residual=residual_distribution,
) -> Verdict:
    """Rejection-sampling verification.

    p: [k+1, V] target probabilities (already warped); draft_tokens: [k];
    q: the exact distributions the drafts were drawn from, sparse or dense [k, V].
    `residual` is injectable only so tests can show a wrong residual fails.
    """
    k = int(draft_tokens.shape[0])
    if k:
        idx = torch.arange(k)
        p_x = p[idx, draft_tokens]  # [k]
        q_x = q.prob_of(draft_tokens) if isinstance(q, SparseQ) else q[idx, draft_tokens]
        u = torch.rand(k, generator=generator)
        # u < p/q, written without the division; q_x > 0 because x was drawn from q.
        accepted = (u * q_x < p_x).tolist()
    else:
        accepted = []
    n = k
    for i, ok in enumerate(accepted):
        if not ok:
            n = i
            break
    if n < k:
        q_row = q.dense(p.shape[-1])[n] if isinstance(q, SparseQ) else q[n]
        token = sample_probs(residual(p[n], q_row), generator)
    else:
        token = sample_probs(p[k], generator)
    return Verdict(tuple(i < n for i in range(k)), n, token)


def verify_block(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    q: SparseQ | None,
    params: SamplingParams,
    generator: torch.Generator,
) -> Verdict:
    """Verify a block from raw target logits [k+1, V] under the session's sampling params."""
    if params.greedy:
        return verify_greedy(target_logits, draft_tokens)
    k = int(draft_tokens.shape[0])
    q_or_empty: SparseQ | torch.Tensor
    if q is None:
        if k:
            raise ValueError("sampled verification needs the draft distribution q")
        q_or_empty = torch.zeros(0, target_logits.shape[-1])
    else:
        q_or_empty = q
    return verify_sampled(warp_probs(target_logits, params), draft_tokens, q_or_empty, generator)
