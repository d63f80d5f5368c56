"""`edgespec serving`: the cost model's arithmetic, and a small run of both draft sources."""

from __future__ import annotations

import json

import pytest

from edgespec.serving import cost_model_ceiling


def test_cost_model_ceiling_arithmetic():
    # Every draft accepted: E = gamma + 1 tokens per forward of T0 + N (gamma + 1) C.
    n, t0, c = 64, 7.0, 0.045
    got = cost_model_ceiling(1.0, 4, n, t0, c)
    assert got == pytest.approx(5 * (t0 / n + c) / (t0 / n + 5 * c))
    # Nothing accepted: one token per round at a higher price than cloud-only's.
    assert cost_model_ceiling(0.0, 4, n, t0, c) == pytest.approx((t0 / n + c) / (t0 / n + 5 * c))
    # Never above (T0/N + C) / C, and rising with a.
    bound = (t0 / n + c) / c
    values = [cost_model_ceiling(a, g, n, t0, c) for a in (0.5, 0.9, 0.99) for g in (1, 4, 16, 64)]
    assert max(values) < bound
    assert cost_model_ceiling(0.9, 4, n, t0, c) < cost_model_ceiling(0.95, 4, n, t0, c)


@pytest.mark.parametrize("drafts", ["recorded", "model"])
def test_serving_run_is_exact_for_both_draft_sources(tmp_path, drafts):
    from edgespec.cli import main

    out = tmp_path / "serving.json"
    rc = main(["serving", "--devices", "2", "--tokens", "12", "--target-cost", "gpu", "--drafts", drafts,
               "--json", str(out)])
    body = json.loads(out.read_text())
    assert rc == 0
    row = body["rows"][0]
    assert row["speculative"]["exact"] == row["cloud_only"]["exact"] == 2
    assert 0.0 <= row["speculative"]["position_acceptance"] <= 1.0
    assert row["model_ceiling"] > 0 and body["drafts"] == drafts
