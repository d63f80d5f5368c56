"""Edge-only captions, verified later (speculative/offline.py).

A recording made by the draft alone, replayed as the draft blocks of a session, must give
exactly the target's output: greedy token-identical; sampled, distributed as the target's own
(chi-square against the enumerated distribution), while the unverified recordings themselves
fail that test (the negative control that shows the test can tell).
"""

from __future__ import annotations

import pytest
import torch

from exactness_stats import chi_square
from speculative.draft import Drafter
from speculative.loop import EdgeGeneration, StopRule, run_local
from speculative.offline import ReplayDrafter, generate_edge_only
from speculative.sampling import SamplingParams
from speculative.target import TargetSession
from test_reopen_exactness import exact_distribution
from tiny_models import make_lm, make_tokenizer

TOKENS = 2
SAMPLING = SamplingParams(temperature=1.5)


def verify_recording(target, draft, recording, prompt, params, gamma, n, seed=0, stops=None):
    """A session whose draft blocks are the recording, then the live draft; the verifier
    scores the first block in the prefill's forward, as an OPEN carrying it."""
    replay = ReplayDrafter(recording, lambda: Drafter(draft, params, seed=seed + 1))
    replay.start(prompt)
    verifier = TargetSession(target, params, seed=seed)
    stop = StopRule(n, target.eos_token_ids if stops is None else stops)
    edge = EdgeGeneration(replay, prompt, gamma, stop)
    forwards = 0
    while not edge.done:
        block = edge.next_block()
        if edge.result.rounds:
            v = verifier.verify(block.tokens, block.q)
        else:
            v = verifier.open_and_verify(prompt, None, block.tokens, block.q)
        forwards += 1
        edge.apply(v.n_accepted, v.next_token)
    return edge.generated, replay, forwards


@pytest.mark.parametrize("text", ["a red circle", "hello world", "the camera"])
def test_verified_later_is_the_target_greedy_output(loaded_pair, text):
    target, draft = loaded_pair
    prompt = target.encode(text)
    stop = StopRule(30, target.eos_token_ids)
    recording = generate_edge_only(Drafter(draft, SamplingParams()), prompt, None, stop)
    assert 1 <= len(recording.tokens) <= 30 and recording.q_ids is None
    reference = run_local(target, draft, prompt, None, SamplingParams(), 4, 30).token_ids
    out, replay, _ = verify_recording(target, draft, recording, prompt, SamplingParams(), 32, 30)
    assert out == reference
    assert replay.replayed_accepted <= len(recording.tokens)


def test_a_recording_the_target_agrees_with_is_verified_in_one_forward(loaded_pair):
    """The target's own greedy caption, recorded, is all accepted in the prefill's forward."""
    target, _ = loaded_pair
    prompt = target.encode("a red circle")
    recording = generate_edge_only(Drafter(target, SamplingParams()), prompt, None,
                                   StopRule(20, target.eos_token_ids))
    out, replay, forwards = verify_recording(target, target, recording, prompt, SamplingParams(), 32, 20)
    assert out == recording.tokens
    assert replay.replaying and forwards == 1


def test_edge_only_output_is_the_draft_alone(loaded_pair):
    _, draft = loaded_pair
    prompt = draft.encode("hello world")
    recording = generate_edge_only(Drafter(draft, SamplingParams()), prompt, None, StopRule(25, draft.eos_token_ids))
    alone = run_local(draft, draft, prompt, None, SamplingParams(), 4, 25).token_ids
    assert recording.tokens == alone


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """A target and a different draft over a 6-token vocabulary (outcomes enumerable)."""
    from speculative.models import load_lm

    tok = make_tokenizer(["x", "y"])
    target = load_lm(make_lm(tmp_path_factory.mktemp("t"), hidden=32, layers=1, seed=11, tokenizer=tok))
    draft = load_lm(make_lm(tmp_path_factory.mktemp("d"), hidden=32, layers=1, seed=5, tokenizer=tok))
    return target, draft


def test_sampled_verified_later_follows_the_target_and_unverified_does_not(small_pair):
    target, draft = small_pair
    prompt = target.encode("x")
    vocab = target.vocab_size
    exact = exact_distribution(target, prompt, SAMPLING, TOKENS)
    verified = torch.zeros([vocab] * TOKENS)
    unverified = torch.zeros([vocab] * TOKENS)
    stop = StopRule(TOKENS, ())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny forwards: threads only add overhead
    try:
        verified, unverified = sample_both(target, draft, prompt, stop, verified, unverified)
    finally:
        torch.set_num_threads(threads)
    *_, p_verified, tv = chi_square(verified, exact)
    *_, p_unverified, _ = chi_square(unverified, exact)
    assert p_verified > 1e-3, (p_verified, tv)
    assert p_unverified < 1e-6, p_unverified


def sample_both(target, draft, prompt, stop, verified, unverified):
    """Counts of the first tokens: recorded by the draft alone, and those verified later."""
    for i in range(2000):
        recording = generate_edge_only(Drafter(draft, SAMPLING, seed=10_000 + i), prompt, None, stop)
        assert len(recording.tokens) == TOKENS and recording.q_ids is not None
        unverified[tuple(recording.tokens)] += 1
        out, _, _ = verify_recording(target, draft, recording, prompt, SAMPLING, 4, TOKENS, seed=i, stops=())
        verified[tuple(out)] += 1
    return verified, unverified
