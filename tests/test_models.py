"""Loading models: dtype and device choices, clear errors for bad folders."""

from __future__ import annotations

import pytest
import torch

from speculative.loop import run_local
from speculative.models import ModelLoadError, load_lm, resolve_device, resolve_dtype
from speculative.sampling import SamplingParams


def test_auto_device_is_cpu_without_cuda():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_dtype_names():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ModelLoadError):
        resolve_dtype("float7")


def test_bfloat16_target_still_generates(tiny_pair):
    target = load_lm(tiny_pair[0], dtype="bfloat16", device="auto")
    draft = load_lm(tiny_pair[1])
    assert next(target.model.parameters()).dtype is torch.bfloat16
    out = run_local(target, draft, target.encode("hello world"), None, SamplingParams(), 3, 12)
    assert 1 <= len(out.token_ids) <= 12


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_lm(tmp_path)
