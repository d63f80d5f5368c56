"""Warping, truncation/quantization of q and exact integer sampling."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speculative.sampling import (
    DEFAULT_Q_MASS,
    DEFAULT_Q_MAX,
    Q_WEIGHT_MAX,
    QRule,
    SamplingParams,
    SparseQ,
    make_generator,
    quantize_distribution,
    sample_weights,
    stack_q,
    warp_probs,
)


def test_greedy_warp_is_one_hot():
    probs = warp_probs(torch.tensor([0.1, 3.0, 2.0]), SamplingParams())
    assert probs.tolist() == [0.0, 1.0, 0.0]


def test_top_k_keeps_k_largest():
    probs = warp_probs(torch.tensor([1.0, 4.0, 3.0, 2.0]), SamplingParams(temperature=1.0, top_k=2))
    assert (probs > 0).tolist() == [False, True, True, False]
    assert abs(float(probs.sum()) - 1.0) < 1e-6


def test_top_p_keeps_smallest_prefix_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = warp_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert (probs > 0).tolist() == [True, True, False, False]
    assert torch.allclose(probs[:2], torch.tensor([0.625, 0.375]))


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 2.0])
    hot = warp_probs(logits, SamplingParams(temperature=2.0))
    cold = warp_probs(logits, SamplingParams(temperature=0.5))
    assert cold[1] > hot[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40).filter(lambda xs: sum(xs) > 1e-3),
       st.integers(1, 50))
def test_quantized_q_is_a_distribution_over_at_most_q_top(values, q_top):
    probs = torch.tensor(values) / sum(values)
    ids, weights = quantize_distribution(probs, q_top)
    assert len(ids) == min(q_top, len(values))
    assert int(weights.max()) <= Q_WEIGHT_MAX and int(weights.min()) >= 0 and int(weights.sum()) > 0
    assert len(set(ids.tolist())) == len(ids)
    dense = SparseQ(ids[None], weights[None]).dense(len(values))[0]
    assert abs(float(dense.sum()) - 1.0) < 1e-5
    # Each weight is off by at most 1/2 and their sum by at most n/2 (+1 for the kept top entry).
    top = probs[ids] / probs[ids].sum()
    n = len(ids)
    assert float((dense[ids] - top).abs().max()) <= (n + 2) / (Q_WEIGHT_MAX - n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=80).filter(lambda xs: sum(xs) > 1e-3),
       st.floats(0.05, 1.0), st.integers(1, 64))
def test_mass_sized_q_is_the_smallest_support_holding_the_mass(values, mass, max_entries):
    probs = torch.tensor(values) / sum(values)
    ids, weights = QRule(mass, max_entries).quantize(probs)
    n = len(ids)
    ordered = torch.sort(probs, descending=True).values
    smallest = int((ordered.cumsum(0) < mass).sum()) + 1  # the prefix that reaches the mass
    assert 1 <= n <= max_entries
    assert n == max(1, min(smallest, max_entries, int((probs > 0).sum())))
    assert len(set(ids.tolist())) == n and bool((probs[ids] > 0).all() or n == 1)
    assert int(weights.sum()) > 0 and int(weights.max()) <= Q_WEIGHT_MAX


def test_mass_sized_q_never_exceeds_the_sessions_top_k():
    """A flat distribution under top-k 50: q holds the 50 entries (all the mass), no more."""
    logits = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 0.1
    probs = warp_probs(logits, SamplingParams(temperature=1.0, top_k=50))
    ids, _ = QRule().quantize(probs)
    assert len(ids) == 50 and bool((probs[ids] > 0).all())
    ids, _ = QRule(mass=1.0, max_entries=64).quantize(probs)  # mass 1 never reached in float32
    assert len(ids) == 50
    ids, _ = QRule(top=16).quantize(probs)  # the fixed cut, as before
    assert torch.equal(ids, quantize_distribution(probs, 16)[0])


def test_q_rule_bounds_and_defaults():
    assert QRule().bound == DEFAULT_Q_MAX and QRule(top=16).bound == 16
    for bad in (QRule(mass=0.0), QRule(mass=1.5), QRule(max_entries=0), QRule(top=65)):
        try:
            bad.validate()
        except ValueError:
            continue
        raise AssertionError(f"{bad} validated")
    from edgespec.config import DEFAULTS

    assert (DEFAULTS.q_mass, DEFAULTS.q_max, DEFAULTS.q_top) == (DEFAULT_Q_MASS, DEFAULT_Q_MAX, None)


def test_rows_of_different_lengths_stack_with_zero_weight_padding():
    rows = [(torch.tensor([4, 2, 7]), torch.tensor([5, 3, 1])), (torch.tensor([9]), torch.tensor([2]))]
    q = stack_q([r[0] for r in rows], [r[1] for r in rows])
    assert q.ids.shape == (2, 3) and q.weights[1].tolist() == [2, 0, 0]
    dense = q.dense(10)
    assert float(dense[1, 9]) == 1.0 and float(dense[1, 0]) == 0.0
    assert torch.allclose(q.prob_of(torch.tensor([2, 9])), torch.tensor([3 / 9, 1.0]))


def test_sample_weights_never_draws_zero_weight_and_follows_weights():
    ids = torch.tensor([7, 3, 9, 4])
    weights = torch.tensor([3, 0, 1, 0])
    gen = make_generator(5, 0)
    draws = [sample_weights(ids, weights, gen) for _ in range(8000)]
    assert set(draws) <= {7, 9}
    share = draws.count(7) / len(draws)
    assert abs(share - 0.75) < 0.02


def test_generators_are_deterministic_per_seed_and_stream():
    a = torch.rand(3, generator=make_generator(1, 0))
    b = torch.rand(3, generator=make_generator(1, 0))
    c = torch.rand(3, generator=make_generator(1, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
