"""The accept/reject step, from peaked logits and statistically."""

from __future__ import annotations

import pytest
import torch

from exactness_stats import chi_square
from speculative.sampling import (QRule, SamplingParams, SparseQ, make_generator, quantize_distribution,
                                  sample_weights, stack_q, warp_probs)
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


# ---------------------------------------------------------------- mass-sized q, two positions

BIGRAM_V = 24
BIGRAM = SamplingParams(temperature=1.0, top_k=12)
MASS_RULE = QRule(mass=0.9)  # cuts well inside top-k 12, and rows of different lengths
BIGRAM_TRIALS = 8_000
_tables = torch.Generator().manual_seed(7)
TARGET_LOGITS = torch.randn(BIGRAM_V, BIGRAM_V, generator=_tables) * 1.5  # row: logits after that token
DRAFT_LOGITS = TARGET_LOGITS + torch.randn(BIGRAM_V, BIGRAM_V, generator=_tables)  # a draft unlike the target
P_ROWS = warp_probs(TARGET_LOGITS, BIGRAM)
Q_ROWS = warp_probs(DRAFT_LOGITS, BIGRAM)


def first_two_tokens(verify_q: str = "sent", residual=residual_distribution) -> torch.Tensor:
    """Counts [V, V] of the first two generated tokens after token 1: bigram tables as target
    and draft, blocks of 2 drafted from mass-sized q, verified as the verifier does.
    `verify_q`: "sent" (the q the drafts were drawn from) or "untruncated" (a negative control)."""
    gen_draft, gen_verify = make_generator(99, 0), make_generator(99, 1)
    counts = torch.zeros(BIGRAM_V, BIGRAM_V)
    for _ in range(BIGRAM_TRIALS):
        out = [1]
        while len(out) < 3:
            tokens, ids, weights = [], [], []
            for _ in range(2):
                row_ids, row_weights = MASS_RULE.quantize(Q_ROWS[(tokens or out)[-1]])
                tokens.append(sample_weights(row_ids, row_weights, gen_draft))
                ids.append(row_ids)
                weights.append(row_weights)
            p = P_ROWS[torch.tensor([out[-1], *tokens])]
            q = stack_q(ids, weights) if verify_q == "sent" else Q_ROWS[torch.tensor([out[-1], tokens[0]])]
            v = verify_sampled(p, torch.tensor(tokens), q, gen_verify, residual=residual)
            out += tokens[: v.n_accepted] + [v.next_token]
        counts[out[1], out[2]] += 1
    return counts


def exact_first_two() -> torch.Tensor:
    return P_ROWS[1][:, None] * P_ROWS


@pytest.mark.parametrize("case", ["exact", "negative-control-untruncated-q", "negative-control-residual-p"])
def test_mass_sized_q_output_follows_the_target_at_the_first_positions(case):
    """The joint distribution of the first two tokens, drafted from mass-sized q (rows of 2 to
    12 entries, padded into one block), matches the target's own: chi-square at p >= 1e-3.
    Verifying against the draft's untruncated q, or drawing the correction from p instead of
    the residual, must fail it."""
    sizes = {len(MASS_RULE.quantize(row)[0]) for row in Q_ROWS}
    assert min(sizes) < max(sizes) < BIGRAM.top_k  # truly truncated, to varying sizes
    if case == "exact":
        counts = first_two_tokens()
    elif case == "negative-control-untruncated-q":
        counts = first_two_tokens(verify_q="untruncated")
    else:
        counts = first_two_tokens(residual=lambda p_row, q_row: p_row)
    stat, dof, p_value, tv_dist = chi_square(counts, exact_first_two())
    print(f"\n{case}: chi-square {stat:.1f} on {dof} dof, p = {p_value:.3g}, TV {tv_dist:.4f}")
    if case == "exact":
        assert p_value >= 1e-3
    else:
        assert p_value < 1e-6


def test_flat_self_draft_acceptance_with_mass_sized_q():
    """A draft equal to a flat target (300 tokens, T = 1, top-k 50): a fixed cut of 16 entries
    accepts only the target's mass on them; mass-sized q accepts (almost) everything."""
    logits = torch.randn(300, generator=torch.Generator().manual_seed(3)) * 0.3
    p = warp_probs(logits, SamplingParams(temperature=1.0, top_k=50))

    def acceptance(rule: QRule) -> float:  # sum over x of q(x) min(1, p(x) / q(x))
        ids, weights = rule.quantize(p)
        q = SparseQ(ids[None], weights[None]).dense(300)[0]
        return float(torch.minimum(p, q).sum())

    assert acceptance(QRule(top=16)) < 0.5
    assert acceptance(QRule()) >= 0.99
