"""Batched verification equals verification one session at a time."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from speculative.batch import BatchError, BatchProfile, KVPool, block_logits_batch, verify_batch
from speculative.draft import Drafter
from speculative.kvmem import kv_bytes_per_token, session_kv_bytes
from speculative.loop import EdgeGeneration, StopRule, generate_autoregressive, run_local
from speculative.models import load_lm
from speculative.sampling import (
    SamplingParams,
    SparseQ,
    make_generator,
    quantize_distribution,
    sample_weights,
    warp_probs,
)
from speculative.target import TargetSession
from tiny_models import make_lm, make_tokenizer

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=1.0, top_k=20)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the suite's other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Device:
    """One simulated camera: the drafting state machine and its session on the verifier."""

    edge: EdgeGeneration
    target: TargetSession
    joins_at: int  # the round in which it sends its first block


def make_devices(
    target, draft, prompts, gammas, budgets, joins, params, features=None, stop=()
) -> list[Device]:
    devices = []
    for i, prompt in enumerate(prompts):
        feats = None if features is None else features[i]
        drafter = Drafter(draft, params[i], seed=i)
        drafter.start(prompt, feats)
        session = TargetSession(target, params[i], seed=i)
        session.open(prompt, feats)
        edge = EdgeGeneration(drafter, prompt, gammas[i], StopRule(budgets[i], stop))
        devices.append(Device(edge, session, joins[i]))
    return devices


def drive(
    devices: list[Device], *, batched: bool, pool: KVPool | None = None, seed: int = 0
) -> list[list[int]]:
    """Run all devices to the end. Batched: each round splits the devices that have a block
    into random groups, each verified in one `verify_batch` (a group of one sometimes with
    `TargetSession.verify`); devices join late and leave when done."""
    rng = random.Random(seed)
    round_ = 0
    while not all(d.edge.done for d in devices):
        live = [d for d in devices if not d.edge.done and d.joins_at <= round_]
        round_ += 1
        blocks = {id(d): d.edge.next_block() for d in live}
        verdicts = {}
        if not batched:
            for d in live:
                verdicts[id(d)] = d.target.verify(blocks[id(d)].tokens, blocks[id(d)].q)
        else:
            rng.shuffle(live)
            while live:
                size = rng.randint(1, len(live))
                group, live = live[:size], live[size:]
                if size == 1 and rng.random() < 0.3:
                    d = group[0]
                    verdicts[id(d)] = d.target.verify(blocks[id(d)].tokens, blocks[id(d)].q)
                    continue
                group_blocks = [(blocks[id(d)].tokens, blocks[id(d)].q) for d in group]
                for d, v in zip(group, verify_batch([d.target for d in group], group_blocks, pool=pool)):
                    verdicts[id(d)] = v
        for d in devices:
            if id(d) in verdicts:
                d.edge.apply(verdicts[id(d)].n_accepted, verdicts[id(d)].next_token)
    return [d.edge.generated for d in devices]


def scenario(vocab: int, seed: int, n: int = 7):
    """Mixed prompt lengths (one of a single token: an empty target cache), mixed k incl. 0,
    mixed budgets and join rounds."""
    rng = random.Random(seed)
    prompts = [[1] + [rng.randrange(4, vocab) for _ in range(rng.randrange(0, 14))] for _ in range(n)]
    prompts[0] = [1]
    gammas = [rng.randrange(0, 6) for _ in range(n)]
    gammas[1] = 0
    budgets = [rng.randrange(4, 26) for _ in range(n)]
    joins = [rng.randrange(0, 5) for _ in range(n)]
    return prompts, gammas, budgets, joins


@pytest.mark.parametrize("use_pool", [False, True], ids=["copy", "pool"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_greedy_equals_alone(loaded_pair, seed, use_pool):
    target, draft = loaded_pair
    prompts, gammas, budgets, joins = scenario(target.vocab_size, seed)
    params = [GREEDY] * len(prompts)
    alone = drive(make_devices(target, draft, prompts, gammas, budgets, joins, params), batched=False)
    pool = KVPool(target, slots=2, positions=4) if use_pool else None  # small: it must grow
    devices = make_devices(target, draft, prompts, gammas, budgets, joins, params)
    batched = drive(devices, batched=True, pool=pool, seed=seed)
    assert batched == alone
    for prompt, budget, out in zip(prompts, budgets, alone):
        reference = generate_autoregressive(target, prompt, None, GREEDY, budget, stop_token_ids=())
        assert out == reference.token_ids
    if pool is not None:
        assert pool.slots > 2 and pool.positions > 4


def test_eager_attention_and_empty_caches(tiny_pair):
    """The additive float mask of eager attention; sessions whose caches are still empty."""
    target, draft = load_lm(tiny_pair[0]), load_lm(tiny_pair[1])
    target.model.set_attn_implementation("eager")
    prompts, gammas, budgets, joins = scenario(target.vocab_size, 9, n=5)
    prompts[1] = prompts[2] = [1]  # with prompts[0]: three empty target caches in round one
    joins = [0] * 5
    params = [GREEDY] * 5
    alone = drive(make_devices(target, draft, prompts, gammas, budgets, joins, params), batched=False)
    devices = make_devices(target, draft, prompts, gammas, budgets, joins, params)
    assert drive(devices, batched=True, seed=9) == alone
    sessions = [TargetSession(target, GREEDY) for _ in range(2)]
    for s in sessions:
        s.open([1])
    assert [v.n_accepted for v in verify_batch(sessions, [([], None), ([], None)])] == [0, 0]
    assert [s.state.length for s in sessions] == [1, 1]


def test_sampled_session_in_greedy_batch(loaded_pair):
    """Each session draws from its own generator in the same order as alone: same samples."""
    target, draft = loaded_pair
    prompts, gammas, budgets, joins = scenario(target.vocab_size, 5)
    params = [GREEDY] * len(prompts)
    params[2] = params[4] = SAMPLED
    gammas[2], gammas[4] = 3, 0
    alone = drive(make_devices(target, draft, prompts, gammas, budgets, joins, params), batched=False)
    devices = make_devices(target, draft, prompts, gammas, budgets, joins, params)
    batched = drive(devices, batched=True, seed=5)
    assert batched == alone
    reference = run_local(
        target, draft, prompts[2], None, SAMPLED, gammas[2], budgets[2], seed=2, stop_token_ids=()
    )
    assert batched[2] == reference.token_ids


def test_batch_of_one_equals_target_session_verify(loaded_pair):
    target, _ = loaded_pair
    rng = random.Random(3)
    for params in (GREEDY, SAMPLED):
        a, b = TargetSession(target, params, seed=7), TargetSession(target, params, seed=7)
        prompt = [1, 9, 12, 30]
        a.open(prompt)
        b.open(prompt)
        draft_gen = make_generator(7, 0)
        for _ in range(12):
            k = rng.randrange(0, 5)
            tokens, q = [rng.randrange(4, target.vocab_size) for _ in range(k)], None
            if not params.greedy and k:
                rows = [quantize_distribution(torch.rand(target.vocab_size), 8) for _ in range(k)]
                ids, weights = zip(*rows)
                q = SparseQ(torch.stack(ids), torch.stack(weights))
                tokens = [sample_weights(i, w, draft_gen) for i, w in zip(ids, weights)]
            (batched,) = block_logits_batch([b], [(tokens, q)])
            alone = a.block_logits(tokens)
            a.state.crop(a.state.prefix_len + len(a.committed) - 1)
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
            assert torch.equal(batched.argmax(-1), alone.argmax(-1))
            forwards = (a.forwards, b.forwards)
            assert verify_batch([b], [(tokens, q)]) == [a.verify(tokens, q)]
            assert b.committed == a.committed
            assert (a.forwards, b.forwards) == (forwards[0] + 1, forwards[1] + 1)
            for la, lb in zip(a.state.cache.layers, b.state.cache.layers):
                torch.testing.assert_close(lb.keys, la.keys, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(lb.values, la.values, atol=1e-5, rtol=1e-5)


def test_sampled_distribution_in_a_batch(tmp_path):
    """The first emitted token of a sampled session verified among greedy ones follows p."""
    tokenizer = make_tokenizer(["a", "b", "c", "d"])  # V = 8
    lm = load_lm(make_lm(tmp_path / "t", hidden=16, layers=1, seed=3, tokenizer=tokenizer, eos=False))
    vocab = lm.vocab_size
    params = SamplingParams(temperature=1.0)
    prompt = [1, 5, 6]
    sampled = [TargetSession(lm, params, seed=s) for s in range(6)]
    greedy = [TargetSession(lm, GREEDY, seed=s) for s in range(4)]
    for s in sampled + greedy:
        s.open(prompt)
    p = warp_probs(sampled[0].block_logits([])[0], params)  # p(x | prompt), [V]
    sampled[0].state.crop(len(prompt) - 1)
    # A draft distribution far from p: mass on two tokens, so both branches (accept, residual) run.
    q_ids = torch.tensor([[4, 7] + [0] * 6])
    q_weights = torch.tensor([[3, 1] + [0] * 6])
    q = SparseQ(q_ids, q_weights)
    draft_gen = make_generator(0, 0)
    counts = torch.zeros(vocab)
    rounds = 250
    for _ in range(rounds):
        tokens = [[sample_weights(q_ids[0], q_weights[0], draft_gen)] for _ in sampled]
        blocks = [(t, q) for t in tokens] + [([4], None)] * len(greedy)
        verdicts = verify_batch(sampled + greedy, blocks)
        for t, v in zip(tokens, verdicts):
            counts[t[0] if v.n_accepted else v.next_token] += 1
        for s in sampled + greedy:  # back to the prompt: every round samples the same position
            s.state.crop(len(prompt) - 1)
            s.committed = list(prompt)
    expected = p * counts.sum()
    keep = expected > 0
    chi2 = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(chi2 / 2)))
    assert p_value > 1e-3, (counts.tolist(), expected.tolist())


def test_pool_views_release_and_collection(loaded_pair):
    target, _ = loaded_pair
    pool = KVPool(target, slots=1, positions=2)
    a, b = TargetSession(target, GREEDY), TargetSession(target, GREEDY)
    a.open([1, 8, 9, 10])
    b.open([1, 11])
    verify_batch([a, b], [([12, 13], None), ([], None)], pool=pool)
    assert pool.sessions == 2 and pool.slots == 2
    slot = pool.slot_of(a)
    layer = a.state.cache.layers[0]
    assert layer.keys.untyped_storage().data_ptr() == pool.keys[0].untyped_storage().data_ptr()
    per_token = kv_bytes_per_token(target.model.config)
    assert per_token == 2 * 2 * 2 * 16 * 4  # 2 layers, 2 KV heads, head_dim 16, float32
    assert session_kv_bytes(a) == per_token * a.state.length
    before = [lay.keys.clone() for lay in a.state.cache.layers]
    pool.release(a)
    assert pool.slot_of(a) is None and pool.sessions == 1
    assert layer.keys.untyped_storage().data_ptr() != pool.keys[0].untyped_storage().data_ptr()
    assert all(torch.equal(x, lay.keys) for x, lay in zip(before, a.state.cache.layers))
    del b
    gc.collect()
    assert pool.sessions == 0
    c = TargetSession(target, GREEDY)
    c.open([1, 14])
    assert pool.admit(c) in (0, slot)  # a freed slot is reused before the pool grows
    assert pool.slots == 2


def test_a_discarded_slot_is_free_at_once_and_nothing_is_copied(loaded_pair):
    target, _ = loaded_pair
    pool = KVPool(target, slots=2, positions=8)
    a, b = TargetSession(target, GREEDY), TargetSession(target, GREEDY)
    a.open([1, 8, 9, 10])
    b.open([1, 11, 12])
    verify_batch([a, b], [([12, 13], None), ([5], None)], pool=pool)
    slot, layer = pool.slot_of(a), a.state.cache.layers[0]
    pool.discard(a)
    assert pool.slot_of(a) is None and pool.sessions == 1
    # No private copy was made: the finished session still points into the pool.
    assert layer.keys.untyped_storage().data_ptr() == pool.keys[0].untyped_storage().data_ptr()
    c = TargetSession(target, GREEDY)
    c.open([1, 14])
    assert pool.admit(c) == slot and pool.slots == 2  # its slot is the next one used
    pool.discard(a)  # twice, or for a session never admitted: nothing happens
    assert pool.slot_of(c) == slot


def test_malformed_batches_touch_nothing(loaded_pair):
    target, _ = loaded_pair
    a, b = TargetSession(target, GREEDY), TargetSession(target, SAMPLED)
    a.open([1, 8, 9])
    b.open([1, 10])
    state = (a.state.length, b.state.length, list(a.committed), list(b.committed))
    cases = [
        ([a, a], [([5], None), ([6], None)], "twice"),
        ([a, b], [([5], None), ([6], None)], "needs the draft distribution"),
        ([a], [([5], None), ([6], None)], "blocks"),
        ([a], [([target.vocab_size], None)], "vocabulary"),
    ]
    for sessions, blocks, message in cases:
        with pytest.raises(BatchError, match=message):
            verify_batch(sessions, blocks)
    assert (a.state.length, b.state.length, a.committed, b.committed) == state
    a.block_logits([5])  # computed, never settled
    with pytest.raises(BatchError, match="not settled"):
        verify_batch([a], [([5], None)])
    assert verify_batch([], []) == []


def test_profile_counts_steps(loaded_pair):
    target, _ = loaded_pair
    sessions = [TargetSession(target, GREEDY) for _ in range(3)]
    for i, s in enumerate(sessions):
        s.open([1] + [8 + i] * i)
    opened = [s.forwards for s in sessions]  # the one-token prompt needs no prefill forward
    profile = BatchProfile()
    verify_batch(sessions, [([9, 9], None), ([], None), ([10], None)], profile=profile)
    assert profile.calls == 1 and profile.sequences == 3 and profile.batch_sizes == [3]
    assert profile.total_s > 0 and [s.forwards for s in sessions] == [n + 1 for n in opened]


DEFAULT_TARGET = Path(__file__).resolve().parent.parent / "edgespec" / "default_models" / "target"


@pytest.mark.skipif(not (DEFAULT_TARGET / "config.json").is_file(), reason="default pair not trained")
@pytest.mark.parametrize("use_pool", [False, True], ids=["copy", "pool"])
def test_default_pair_batched_equals_alone(use_pool):
    """The committed vision-conditioned pair: batched == alone == the target autoregressively."""
    from camera_node.features import ObjectFeatures
    from camera_node.scene import random_scene
    from edgespec.defaultpair.data import prompt_ids, scene_features

    target, draft = load_lm(DEFAULT_TARGET), load_lm(DEFAULT_TARGET.parent / "draft")
    extractor = ObjectFeatures()
    scenes = [random_scene(seed) for seed in range(900, 908)]
    features = [scene_features(s, extractor) for s in scenes]
    prompt = prompt_ids(target.tokenizer)
    n = len(scenes)
    rng = random.Random(4)
    gammas = [rng.randrange(0, 7) for _ in range(n)]
    joins = [rng.randrange(0, 4) for _ in range(n)]
    stop = target.eos_token_ids
    setup = (target, draft, [prompt] * n, gammas, [48] * n, joins, [GREEDY] * n, features, stop)
    alone = drive(make_devices(*setup), batched=False)
    pool = KVPool(target, slots=4, positions=16) if use_pool else None
    assert drive(make_devices(*setup), batched=True, pool=pool, seed=4) == alone
    for feats, out in zip(features, alone):
        assert out == generate_autoregressive(target, prompt, feats, GREEDY, 48).token_ids


@pytest.mark.skipif(not (DEFAULT_TARGET / "config.json").is_file(), reason="default pair not trained")
def test_default_pair_kv_budget():
    from edgespec.kvmem import default_pair_report
    from speculative.kvmem import GIB, format_report

    rows = {(Path(r.model).name, r.context): r for r in default_pair_report(contexts=(96,))}
    target = rows[("target", 96)]
    assert target.bytes_per_token == 2 * 4 * 4 * 48 * 4  # 4 layers, 4 KV heads, head_dim 48, fp32
    assert target.sessions == 8 * GIB // (6144 * 96)
    assert "sessions in budget" in format_report(list(rows.values()))


def test_greedy_fast_path_equals_verify_greedy():
    """A batch judges greedy rows from one argmax over all rows: the verdicts `verify_greedy`
    gives row by row, ties (the first maximum wins) included."""
    from speculative.verify import greedy_verdict, verify_greedy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (6, 5, 11), generator=gen).float()  # many tied maxima
    choices = logits.argmax(-1).tolist()
    for row in range(6):
        for k in range(5):
            for tokens in ([], choices[row][:k], [*choices[row][:k], (choices[row][k] + 1) % 11],
                           torch.randint(0, 11, (k,), generator=gen).tolist()):
                tokens = tokens[:4]
                alone = verify_greedy(logits[row, : len(tokens) + 1], torch.tensor(tokens, dtype=torch.int64))
                assert greedy_verdict(choices[row], tokens) == alone


def test_greedy_fast_path_in_verify_batch_equals_the_full_path(loaded_pair, monkeypatch):
    """verify_batch with the greedy fast path gives what each session's own `judge` (the
    logits through `verify_block`) gives on the same forward."""
    import speculative.batch as batch_module

    target, _ = loaded_pair

    def full_path(sessions, blocks, logits):
        return [s.judge(logits[row, : len(tokens) + 1], tokens, q)
                for row, (s, (tokens, q)) in enumerate(zip(sessions, blocks))]

    results = []
    for judge in (batch_module._judge, full_path):
        monkeypatch.setattr(batch_module, "_judge", judge)
        sessions = [TargetSession(target, GREEDY, seed=i) for i in range(4)]
        for i, s in enumerate(sessions):
            s.open([1, 5 + i, 9, 12 + 2 * i][: 1 + i])
        rounds = []
        for r in range(4):
            blocks = [([(7 * r + 3 * i + j) % target.vocab_size for j in range(i % 4)], None)
                      for i in range(4)]
            rounds.append(verify_batch(sessions, blocks))
        results.append((rounds, [s.committed for s in sessions]))
    assert results[0] == results[1]


def test_grouped_query_attention_switch_gives_the_same_logits(loaded_pair):
    """The CPU switch to SDPA's grouped K/V heads (the tiny target has 2 KV heads for 4) changes
    no logit, and leaves the environment as it was."""
    import os

    from speculative.batch import grouped_query_attention

    target, _ = loaded_pair
    assert target.model.config.num_key_value_heads < target.model.config.num_attention_heads
    sessions = [TargetSession(target, GREEDY, seed=i) for i in range(3)]
    for i, s in enumerate(sessions):
        s.open([1, 9, 12, 30][: 2 + i])
    blocks = [([5, 6], None), ([7], None), ([8, 9, 10], None)]
    with_gqa = block_logits_batch(sessions, blocks)
    assert os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA") is None
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "0"  # the switch stays off: repeated K/V copies
    try:
        with grouped_query_attention(torch.device("cpu")):
            assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "0"
            without = block_logits_batch(sessions, blocks)
    finally:
        del os.environ["TRANSFORMERS_SDPA_FORCE_GQA"]
    for a, b in zip(with_gqa, without):
        assert torch.equal(a, b)
