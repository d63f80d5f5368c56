"""`edgespec bench-q`'s flat self-draft: mass-sized q accepts a draft equal to the target."""

from __future__ import annotations

from edgespec.bench_q import FLAT_TOP_K, flat_lm, measure
from edgespec.workloads import Case
from speculative.models import load_lm
from speculative.sampling import QRule, SamplingParams


def test_flat_self_draft_mass_sized_q_accepts_what_a_fixed_cut_rejects(tmp_path):
    lm = load_lm(flat_lm(tmp_path / "flat", seed=0))
    cases = [Case([1, 5]), Case([1, 9])]
    params = SamplingParams(1.0, FLAT_TOP_K)
    fixed = measure(lm, lm, cases, params, QRule(top=16), gamma=4, tokens=12, seed=0)
    sized = measure(lm, lm, cases, params, QRule(), gamma=4, tokens=12, seed=0)
    assert fixed["position_acceptance"] < 0.6
    assert sized["position_acceptance"] >= 0.97
    assert sized["q_entries_per_drafted"] == FLAT_TOP_K  # all of top-k, never more
    assert sized["generated"] == fixed["generated"] == 24
