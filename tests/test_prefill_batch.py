"""Batched opens: many sessions prefilled in one forward are where `TargetSession.open`
leaves each of them, and verify the same afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgespec.config import resolve_model_dir
from speculative.batch import BatchError
from speculative.batch_cache import cache_layers, layer_kv
from speculative.models import load_lm
from speculative.prefill import open_batch
from speculative.sampling import SamplingParams
from speculative.target import TargetSession


def _contexts(lm, with_features: bool):
    rng = np.random.default_rng(3)
    prompts = ["a red circle", "hello", "the camera sees two objects on the left", "x"]
    out = []
    for text in prompts:
        ids = lm.encode(text)
        features = rng.normal(size=lm.projector.feature_shape).astype(np.float32) if with_features else None
        out.append((ids, features))
    return out


def _open_sessions(lm, contexts, params):
    sessions = [TargetSession(lm, params, seed=10 + i) for i in range(len(contexts))]
    for s, (ids, feats) in zip(sessions, contexts):
        s.open(ids, feats)
    return sessions


def _same_cache(a, b):
    assert a.committed == b.committed and a.state.length == b.state.length
    assert a.state.prefix_len == b.state.prefix_len and a.state.forwards == b.state.forwards
    for la, lb in zip(cache_layers(a), cache_layers(b)):
        ka, kb = layer_kv(la), layer_kv(lb)
        assert (ka is None) == (kb is None)
        if ka is not None:
            torch.testing.assert_close(ka[0], kb[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(ka[1], kb[1], atol=1e-5, rtol=1e-4)


def _assert_same(lm, contexts, params=SamplingParams()):
    alone = _open_sessions(lm, contexts, params)
    batched = [TargetSession(lm, params, seed=10 + i) for i in range(len(contexts))]
    open_batch(batched, contexts)
    for a, b in zip(alone, batched):
        _same_cache(a, b)
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


# --- opens riding a verified batch ---------------------------------------------------------


def _assert_riding_equals_alone(lm, running_contexts, new_contexts):
    """Sessions opened as extra rows of a verified batch end where open() leaves them, the
    batch's verdicts are unchanged, and both kinds verify alike afterwards."""
    from speculative.batch import KVPool, verify_batch

    params = SamplingParams()  # greedy blocks: q is None
    blocks = [([5, 6, 7], None), ([9], None), ([4, 4, 8, 3], None)][: len(running_contexts)]
    alone = _open_sessions(lm, running_contexts, params)
    verdicts_alone = [s.verify(*b) for s, b in zip(alone, blocks)]
    new_alone = _open_sessions(lm, new_contexts, params)

    pool = KVPool(lm, slots=2)
    running = _open_sessions(lm, running_contexts, params)
    new = [TargetSession(lm, params, seed=10 + i) for i in range(len(new_contexts))]
    verdicts = verify_batch(running, blocks, pool=pool, opening=list(zip(new, new_contexts)))
    assert [(v.n_accepted, v.next_token, v.accept_mask) for v in verdicts] == \
        [(v.n_accepted, v.next_token, v.accept_mask) for v in verdicts_alone]
    for a, b in zip(alone + new_alone, running + new):
        _same_cache(a, b)
    # The next round: every session, old and new, in one batch against each alone.
    later = [([3, 5], None)] * (len(alone) + len(new_alone))
    expected = [s.verify(*b) for s, b in zip(alone + new_alone, later)]
    got = verify_batch(running + new, later, pool=pool)
    assert [(v.n_accepted, v.next_token) for v in got] == [(v.n_accepted, v.next_token) for v in expected]
    for a, b in zip(alone + new_alone, running + new):
        assert a.committed == b.committed


def test_opens_riding_a_verified_batch_text(loaded_pair):
    target, _ = loaded_pair
    enc = target.encode
    running = [(enc("a red circle"), None), (enc("hello"), None), (enc("two"), None)]
    # A short prompt, a one-token prompt (no prefill at all), and one longer than the blocks.
    new = [(enc("hi there"), None), (enc("x")[:1], None), (enc("the camera sees two objects on the left"), None)]
    _assert_riding_equals_alone(target, running, new)


def test_opens_riding_a_verified_batch_with_vision_prefix():
    lm = load_lm(resolve_model_dir("default", "target"))
    contexts = _contexts(lm, True)
    _assert_riding_equals_alone(lm, contexts[:2], contexts[2:])


def test_riding_opens_are_checked_before_anything_moves(loaded_pair):
    from speculative.batch import KVPool, verify_batch

    target, _ = loaded_pair
    running = _open_sessions(target, [(target.encode("a red circle"), None)], SamplingParams())
    length = running[0].state.length
    pool = KVPool(target, slots=2)
    used = _open_sessions(target, [(target.encode("hello world"), None)], SamplingParams())[0]
    assert used.state.length > 0
    fresh = TargetSession(target, SamplingParams())
    for opening, kwargs in (
        ([(used, (target.encode("hello"), None))], {"pool": pool}),  # already open
        ([(fresh, (target.encode("hello"), None))], {}),  # no pool
        ([(running[0], (target.encode("hello"), None))], {"pool": pool}),  # verified and opened
        ([(fresh, (target.encode("a"), None))] * 2, {"pool": pool}),  # twice
    ):
        with pytest.raises(BatchError):
            verify_batch(running, [([5], None)], opening=opening, **kwargs)
    assert running[0].state.length == length and fresh.state.length == 0 and not fresh.committed
    with pytest.raises(BatchError):
        verify_batch([], [], pool=pool, opening=[(fresh, (target.encode("hello"), None))])


def _assert_open_and_verify_equals_open_then_verify(lm, contexts, params):
    from speculative.sampling import SparseQ

    def q_for(block):
        if params.greedy or not block:
            return None
        return SparseQ(torch.tensor([[t, t + 1] for t in block]), torch.tensor([[3, 1]] * len(block)))

    for i, (ids, feats) in enumerate(contexts):
        for block in ([], [5], [5, 6, 7]):
            q = q_for(block)
            two = TargetSession(lm, params, seed=i)
            two.open(ids, feats)
            v2 = two.verify(block, q)
            one = TargetSession(lm, params, seed=i)
            v1 = one.open_and_verify(ids, feats, block, q)
            assert (v1.n_accepted, v1.next_token, list(v1.accept_mask)) == (v2.n_accepted, v2.next_token,
                                                                            list(v2.accept_mask))
            assert one.forwards == 1 and two.forwards == (2 if feats is not None or len(ids) > 1 else 1)
            one.state.forwards = two.state.forwards
            _same_cache(one, two)
            # And the next block sees the same cache.
            assert one.verify([8, 9], q_for([8, 9])) == two.verify([8, 9], q_for([8, 9]))


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.9)])
def test_open_and_verify_equals_open_then_verify_text(loaded_pair, params):
    target, _ = loaded_pair
    contexts = [(target.encode(t), None) for t in ("a red circle", "the camera sees two objects")]
    contexts.append((target.encode("x")[:1], None))  # one token: nothing to prefill alone
    _assert_open_and_verify_equals_open_then_verify(target, contexts, params)


def test_open_and_verify_equals_open_then_verify_with_vision_prefix():
    lm = load_lm(resolve_model_dir("default", "target"))
    _assert_open_and_verify_equals_open_then_verify(lm, _contexts(lm, True), SamplingParams())


# --- a shared prefix computed once, rows grouped by length ---------------------------------


def test_shared_prefix_and_length_groups():
    from speculative.prefill import length_groups, shared_prefix

    a, b = torch.arange(12.0).reshape(6, 2), torch.arange(12.0).reshape(6, 2)
    b[4] += 1
    assert shared_prefix([a, b]) == 4 and shared_prefix([a, a[:3]]) == 3 and shared_prefix([a]) == 0
    assert shared_prefix([a, b + 1]) == 0
    lengths = [9, 2, 3, 30, 2, 31, 0]
    assert length_groups(lengths, float("inf")) == [[6, 1, 4, 2, 0, 3, 5]]
    assert length_groups(lengths, 0) == [[6], [1, 4], [2], [0], [3], [5]]

    def cost(groups, overhead):
        return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)

    # The dynamic programme's grouping is the cheapest contiguous split of the sorted lengths.
    import itertools

    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for overhead in (1, 5, 24, 100):
        best = min(
            cost([order[i:j] for i, j in zip((0, *cuts), (*cuts, len(order)))], overhead)
            for r in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), r)
        )
        groups = length_groups(lengths, overhead)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert cost(groups, overhead) == best


def _count_forwards(lm):
    calls = []
    handle = lm.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("forward_rows", [0, 3, float("inf")])
def test_batched_opens_with_a_shared_prefix_equal_single_opens(loaded_pair, forward_rows):
    """Chat-like prompts (a long common start, then different questions, one of them ending
    right after the common start) open where `open` leaves them, with the shared prefix
    computed once and the rest in length groups, or all in one forward."""
    target, _ = loaded_pair
    system = target.encode("the camera sees two objects on the left and a red circle")
    tails = ["hello", "a red circle on the left", "x", "two objects", "the camera sees"]
    contexts = [(system + target.encode(t)[1:], None) for t in tails]
    contexts.append((system + [system[-1]], None))  # its input is the shared prefix alone
    calls, handle = _count_forwards(target)
    try:
        batched = [TargetSession(target, SamplingParams(), seed=10 + i) for i in range(len(contexts))]
        open_batch(batched, contexts, forward_rows=forward_rows)
    finally:
        handle.remove()
    if forward_rows == float("inf"):
        assert len(calls) == 1
    else:  # the prefix, then more than one group of rows after it
        assert len(calls) >= 3
    alone = _open_sessions(target, contexts, SamplingParams())
    for a, b in zip(alone, batched):
        _same_cache(a, b)
        va, vb = a.verify([5, 6, 7], None), b.verify([5, 6, 7], None)
        assert (va.n_accepted, va.next_token) == (vb.n_accepted, vb.next_token)


def test_shared_vision_prefix_opens_equal_single_opens():
    """Sessions with the same features (the same vision prefix) share it as a prefix."""
    lm = load_lm(resolve_model_dir("default", "target"))
    contexts = _contexts(lm, True)
    same = [(ids, contexts[0][1]) for ids, _ in contexts]
    alone = _open_sessions(lm, same, SamplingParams())
    batched = [TargetSession(lm, SamplingParams(), seed=10 + i) for i in range(len(same))]
    open_batch(batched, same, forward_rows=0)
    for a, b in zip(alone, batched):
        _same_cache(a, b)
        va, vb = a.verify([5, 6], None), b.verify([5, 6], None)
        assert (va.n_accepted, va.next_token) == (vb.n_accepted, vb.next_token)
