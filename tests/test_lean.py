"""The draft's lean forward computes what the Hugging Face forward computes (to float
rounding): prefill with and without a vision prefix, extends, and crops back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgespec.config import resolve_model_dir
from speculative.draft import Drafter
from speculative.lean import LeanCachedLM, draft_state, supports
from speculative.models import CachedLM, load_lm
from speculative.sampling import SamplingParams


def _same_path(lm, features):
    hf, lean = CachedLM(lm), LeanCachedLM(lm)
    prompt = lm.encode("a red circle on the left")
    steps = [("prefill", prompt), ("extend", [5]), ("extend", [6, 7, 8]), ("crop", 2), ("extend", [9, 4]),
             ("extend", [3])]
    for op, arg in steps:
        if op == "crop":
            hf.crop(hf.length - arg)
            lean.crop(lean.length - arg)
            assert lean.length == hf.length
            continue
        a = hf.prefill(arg, features) if op == "prefill" else hf.extend(arg)
        b = lean.prefill(arg, features) if op == "prefill" else lean.extend(arg)
        assert b.shape == a.shape and lean.length == hf.length and lean.prefix_len == hf.prefix_len
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    assert lean.forwards == hf.forwards


def test_lean_forward_matches_hugging_face_text(loaded_pair):
    for lm in loaded_pair:
        assert supports(lm)
        _same_path(lm, None)


def test_lean_forward_matches_hugging_face_with_vision_prefix():
    lm = load_lm(resolve_model_dir("default", "draft"))
    assert supports(lm)
    features = np.random.default_rng(0).normal(size=lm.projector.feature_shape).astype(np.float32)
    _same_path(lm, features)


def test_drafts_are_the_same_on_either_forward(loaded_pair, monkeypatch):
    """Greedy blocks drafted through the lean forward equal those through Hugging Face's."""
    import speculative.draft as draft_module

    _, draft = loaded_pair
    prompt = draft.encode("the camera sees")

    def blocks():
        d = Drafter(draft, SamplingParams())
        d.start(prompt)
        out = []
        for n_accepted in (3, 1, 4, 0):
            block = d.propose(4)
            out.append(block.tokens)
            d.commit(n_accepted, 7)
        return out

    lean_blocks = blocks()
    monkeypatch.setattr(draft_module, "draft_state", CachedLM)
    assert blocks() == lean_blocks


def _tiny_lm(tmp_path, **config):
    from transformers import LlamaConfig, LlamaForCausalLM

    from speculative.models import LoadedLM

    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=64, **config)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedLM(model=model, tokenizer=None, projector=None, path=tmp_path, fingerprint=b"\0" * 16,
                    vocab_size=40, max_positions=64, eos_token_ids=(2,), cache_kwarg="cache")


def test_models_it_does_not_cover_get_the_hugging_face_forward(loaded_pair, tmp_path):
    _, draft = loaded_pair
    assert isinstance(draft_state(draft), LeanCachedLM)
    assert isinstance(draft_state(_tiny_lm(tmp_path, hidden_act="gelu")), CachedLM)
    scaled = _tiny_lm(tmp_path, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert not supports(scaled) and isinstance(draft_state(scaled), CachedLM)
    layer = draft.model.model.layers[0]
    plain = layer.mlp.up_proj
    try:
        layer.mlp.up_proj = torch.nn.Sequential(plain)  # e.g. a quantized or wrapped layer
        assert not supports(draft)
    finally:
        layer.mlp.up_proj = plain


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention(tmp_path, kv_heads):
    lm = _tiny_lm(tmp_path, num_key_value_heads=kv_heads)
    hf, lean = CachedLM(lm), LeanCachedLM(lm)
    torch.testing.assert_close(lean.prefill([1, 5, 9, 3]), hf.prefill([1, 5, 9, 3]), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lean.extend([7, 8]), hf.extend([7, 8]), atol=2e-5, rtol=1e-4)
