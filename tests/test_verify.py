"""The accept/reject step, from peaked logits and statistically."""

from __future__ import annotations

import pytest
import torch

from speculative.sampling import SamplingParams, SparseQ, make_generator, quantize_distribution, sample_weights
from speculative.verify import residual_distribution, verify_block, verify_greedy, verify_sampled

V = 6
HI, LO = 10.0, float("-inf")


def peaked(tokens: list[int]) -> torch.Tensor:
    """[len(tokens), V] logits that put (almost) all mass on the given tokens."""
    logits = torch.full((len(tokens), V), -10.0)
    for i, t in enumerate(tokens):
        logits[i, t] = HI
    return logits


def one_hot_q(tokens: list[int]) -> torch.Tensor:
    q = torch.zeros(len(tokens), V)
    q[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return q


@pytest.mark.parametrize(
    "target, draft, n, nxt",
    [
        ([1, 2, 3, 4], [1, 2, 3], 3, 4),  # all accepted: bonus token from position k+1
        ([5, 2, 3, 4], [1, 2, 3], 0, 5),  # first rejected: the target's token
        ([1, 2, 0, 4], [1, 2, 3], 2, 0),  # middle rejected
        ([3], [], 0, 3),  # nothing drafted: one target token
    ],
)
def test_greedy_cases(target, draft, n, nxt):
    v = verify_greedy(peaked(target), torch.tensor(draft, dtype=torch.int64))
    assert (v.n_accepted, v.next_token) == (n, nxt)
    assert v.accept_mask == tuple(i < n for i in range(len(draft)))


@pytest.mark.parametrize(
    "target, draft, n, nxt",
    [
        ([1, 2, 3, 4], [1, 2, 3], 3, 4),
        ([5, 2, 3, 4], [1, 2, 3], 0, 5),
        ([1, 2, 0, 4], [1, 2, 3], 2, 0),
    ],
)
def test_sampled_cases_with_peaked_distributions(target, draft, n, nxt):
    """p ~ one-hot: a draft equal to the target's token passes, another is replaced by it."""
    gen = make_generator(0, 1)
    logits = peaked(target)
    logits[logits == -10.0] = LO
    p = logits.softmax(-1)
    v = verify_sampled(p, torch.tensor(draft), one_hot_q(draft), gen)
    assert (v.n_accepted, v.next_token) == (n, nxt)


def test_verify_block_greedy_ignores_q():
    v = verify_block(peaked([1, 2]), torch.tensor([1]), None, SamplingParams(), make_generator(0, 1))
    assert (v.n_accepted, v.next_token) == (1, 2)


def test_sampled_without_q_is_refused():
    with pytest.raises(ValueError, match="needs the draft distribution"):
        verify_block(peaked([1, 2]), torch.tensor([1]), None, SamplingParams(temperature=1.0), make_generator(0, 1))


def test_residual_is_positive_part_normalised():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    q = torch.tensor([0.2, 0.5, 0.2, 0.1])
    assert torch.allclose(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(residual_distribution(p, p.clone()), p)


# ---------------------------------------------------------------- statistics

TRIALS = 20_000
TV_BOUND = 0.02
P = torch.tensor([0.30, 0.05, 0.20, 0.02, 0.18, 0.10, 0.10, 0.05])
Q = torch.tensor([0.05, 0.30, 0.10, 0.20, 0.05, 0.10, 0.15, 0.05])


def first_token_histogram(p: torch.Tensor, draw, q_for_verify, residual=residual_distribution) -> torch.Tensor:
    """Empirical distribution of the first emitted token with one drafted token per trial."""
    gen = make_generator(1234, 0)
    counts = torch.zeros(p.shape[0])
    p2 = torch.stack([p, p])  # [k+1, V]: position 1 and the bonus position
    for _ in range(TRIALS):
        x = draw(gen)
        v = verify_sampled(p2, torch.tensor([x]), q_for_verify, gen, residual=residual)
        counts[x if v.n_accepted else v.next_token] += 1
    return counts / TRIALS


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def test_dense_q_reproduces_p():
    hist = first_token_histogram(P, lambda g: int(torch.multinomial(Q, 1, generator=g)), Q[None])
    assert tv(hist, P) <= TV_BOUND


def test_truncated_quantized_q_reproduces_p():
    """The draft samples from the truncated, quantized q it sends; the output still follows p."""
    ids, weights = quantize_distribution(Q, q_top=4)
    sparse = SparseQ(ids[None], weights[None])
    assert int((weights > 0).sum()) == 4  # truly truncated: half the vocabulary cannot be drafted
    hist = first_token_histogram(P, lambda g: sample_weights(ids, weights, g), sparse)
    assert tv(hist, P) <= TV_BOUND


def test_negative_control_scalar_residual_fails():
    """The residual that subtracts the scalar q(x) from the whole p is measurably wrong."""
    draws = []

    def draw(g):
        x = int(torch.multinomial(Q, 1, generator=g))
        draws.append(x)
        return x

    def wrong_residual(p_row, q_row):
        x = draws[-1]
        r = (p_row - q_row[x]).clamp(min=0.0)
        return r / r.sum() if float(r.sum()) > 0 else p_row

    hist = first_token_histogram(P, draw, Q[None], residual=wrong_residual)
    assert tv(hist, P) > 3 * TV_BOUND


def test_negative_control_verifying_against_untruncated_q_fails():
    """Drafting from the truncated q but verifying against the full q is not exact."""
    ids, weights = quantize_distribution(Q, q_top=4)
    hist = first_token_histogram(P, lambda g: sample_weights(ids, weights, g), Q[None])
    assert tv(hist, P) > 3 * TV_BOUND
