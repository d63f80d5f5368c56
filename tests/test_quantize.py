"""int8 drafts (speculative/quantize.py): layers close to float, a quantized tiny draft close to
its original, and speculative decoding with it still exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from speculative import cpu_linear
from speculative.loop import generate_autoregressive, run_local
from speculative.models import CachedLM
from speculative.quantize import (
    Int8Embedding, Int8Linear, fbgemm_available, model_bytes, quantization_of, quantize_draft, quantize_model,
    quantize_rows,
)
from speculative.sampling import SamplingParams

PROMPT = "the camera sees a red circle near the top"


def test_quantize_rows_round_trip() -> None:
    w = torch.randn(16, 40)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("int_mm", [True, False])
def test_int8_linear_close_to_float(int_mm: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 24)
    q = Int8Linear.from_linear(linear)
    q.use_int_mm = q.use_int_mm and int_mm  # the dequantizing path as well as the int8 matmul
    x = torch.randn(2, 5, 48)
    ref, out = linear(x), q(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() / ref.abs().max() < 0.03
    assert q(torch.zeros(0, 48)).shape == (0, 24)


def test_quantized_tiny_draft_is_close_and_the_original_untouched(loaded_pair) -> None:
    _, draft = loaded_pair
    q = quantize_draft(draft)
    assert cpu_linear.is_linear(draft.model.lm_head)  # the original is left as it was
    assert quantization_of(draft.model) is None and quantization_of(q.model) == "int8-rowwise"
    assert isinstance(q.model.lm_head, Int8Linear)
    assert isinstance(q.model.get_input_embeddings(), Int8Embedding)
    ids = draft.encode(PROMPT)
    ref = CachedLM(draft).prefill(ids)
    out = CachedLM(q).prefill(ids)
    assert ref is not None and out is not None
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8  # greedy tokens mostly equal
    greedy = SamplingParams()
    a = generate_autoregressive(draft, ids, None, greedy, 12).token_ids
    b = generate_autoregressive(q, ids, None, greedy, 12).token_ids
    assert sum(x == y for x, y in zip(a, b)) >= 0.5 * len(a)


def test_speculative_decoding_with_an_int8_draft_stays_exact(loaded_pair) -> None:
    target, draft = loaded_pair
    q = quantize_draft(draft)
    ids = target.encode(PROMPT)
    greedy = SamplingParams()
    spec = run_local(target, q, ids, None, greedy, 4, 8)
    assert spec.token_ids == generate_autoregressive(target, ids, None, greedy, 8).token_ids


def test_tied_head_and_embedding_share_one_int8_matrix(default_pair) -> None:
    _, draft = default_pair
    q = quantize_draft(draft)
    head, embed = q.model.get_output_embeddings(), q.model.get_input_embeddings()
    assert head.weight_int8.data_ptr() == embed.weight_int8.data_ptr()
    assert model_bytes(q.model) < model_bytes(draft.model) / 2.5


def test_keep_head_leaves_the_output_layer_in_float(loaded_pair) -> None:
    _, draft = loaded_pair
    q = quantize_draft(draft, keep_head=True)
    assert cpu_linear.is_linear(q.model.lm_head)
    assert isinstance(q.model.model.layers[0].mlp.down_proj, Int8Linear)


@pytest.mark.skipif(not fbgemm_available(), reason="this torch build has no quantize_dynamic")
def test_fbgemm_backend(loaded_pair) -> None:
    _, draft = loaded_pair
    q = quantize_draft(draft, "fbgemm")
    assert quantization_of(q.model) == "int8-fbgemm"
    assert isinstance(q.model.get_input_embeddings(), Int8Embedding)
    ids = draft.encode(PROMPT)
    out = CachedLM(q).prefill(ids)
    assert out is not None and out.shape == (len(ids), draft.vocab_size)
    assert cpu_linear.is_linear(draft.model.lm_head)


def test_bad_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "int4")  # type: ignore[arg-type]


def test_bench_quant_on_the_default_pair() -> None:
    from edgespec.tier_commands import bench_quant, format_report

    report = bench_quant("default", backends=["rowwise"], keep_head=False, prompts=1, gamma=4, max_new_tokens=8,
                         steps=2, threads=1)
    assert set(report["variants"]) == {"fp32", "int8-rowwise"}
    for variant in report["variants"].values():
        assert variant["megabytes"] > 0 and variant["draft_ms_per_token"] > 0
        assert all(w["identical_to_target"] for w in variant["workloads"].values())
    assert "int8-rowwise" in format_report(report)
