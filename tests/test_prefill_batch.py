"""Batched opens: many sessions prefilled in one forward are where `TargetSession.open`
leaves each of them, and verify the same afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speculative.batch import BatchError, _layer_kv, _layers
from speculative.models import load_lm
from speculative.prefill import open_batch
from speculative.sampling import SamplingParams
from speculative.target import TargetSession
from edgespec.config import resolve_model_dir


def _contexts(lm, with_features: bool):
    rng = np.random.default_rng(3)
    prompts = ["a red circle", "hello", "the camera sees two objects on the left", "x"]
    out = []
    for text in prompts:
        ids = lm.encode(text)
        features = rng.normal(size=lm.projector.feature_shape).astype(np.float32) if with_features else None
        out.append((ids, features))
    return out


def _assert_same(lm, contexts, params=SamplingParams()):
    alone = [TargetSession(lm, params) for _ in contexts]
    for s, (ids, feats) in zip(alone, contexts):
        s.open(ids, feats)
    batched = [TargetSession(lm, params) for _ in contexts]
    open_batch(batched, contexts)
    for a, b in zip(alone, batched):
        assert a.committed == b.committed and a.state.length == b.state.length
        assert a.state.prefix_len == b.state.prefix_len and b.state.forwards == a.state.forwards
        for la, lb in zip(_layers(a), _layers(b)):
            ka, kb = _layer_kv(la), _layer_kv(lb)
            assert (ka is None) == (kb is None)
            if ka is not None:
                torch.testing.assert_close(ka[0], kb[0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(ka[1], kb[1], atol=1e-5, rtol=1e-4)
        block = [5, 6, 7]
        va, vb = a.verify(block, None), b.verify(block, None)
        assert (va.n_accepted, va.next_token) == (vb.n_accepted, vb.next_token)
        assert a.committed == b.committed


def test_batched_opens_equal_single_opens_text(loaded_pair):
    target, _ = loaded_pair
    contexts = [(target.encode(t), None) for t in ("a red circle", "hello", "the camera sees two objects", "x")]
    _assert_same(target, contexts)


def test_batched_opens_equal_single_opens_with_vision_prefix():
    lm = load_lm(resolve_model_dir("default", "target"))
    _assert_same(lm, _contexts(lm, True))


def test_batched_open_rejects_reused_sessions(loaded_pair):
    target, _ = loaded_pair
    s = TargetSession(target, SamplingParams())
    s.open(target.encode("hello world"), None)
    with pytest.raises(BatchError):
        open_batch([s], [(target.encode("hello"), None)])
    fresh = TargetSession(target, SamplingParams())
    with pytest.raises(BatchError):
        open_batch([fresh, fresh], [(target.encode("a"), None)] * 2)
