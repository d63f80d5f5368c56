"""Exactness on the real model (SmolLM2-135M-Instruct, `edgespec models fetch smollm2-135m`).

Greedy: sessions through a real Mosquitto, encrypted, against a verifier process serving the
real target, must reproduce the target's own Hugging Face `generate` token for token, one
session alone and eight of different prompt lengths verified in shared batches. The draft is
`make_draft(target, (0, 1, -1))`, untrained: its acceptance is low, so nearly every token is
the verifier's correction, which is what exactness has to survive.

Sampled (T 0.7, top-p 0.9): the project's verification (speculative/verify.py) on the real
target's warped distributions at the first two positions of a chat prompt, drafted from a
different distribution over the same vocabulary, must give the target's own joint
distribution of the first two tokens (chi-square); drawing the correction from p instead of
the residual must fail the same test.

Skipped when the model is not in the models cache (`make models` fetches it at set-up).
"""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from conftest import open_links, reference, start_verifier, stop_process
from edgespec import model_registry as reg
from exactness_stats import chi_square

NAME = "smollm2-135m"
# The real models cache, read at import (collection), before conftest points EDGESPEC_HOME at a
# temporary home for the run.
REAL_DIR = reg.model_dir(NAME)
pytestmark = pytest.mark.skipif(
    not reg.is_fetched(NAME, REAL_DIR.parent),
    reason=f"{NAME} is not fetched ({REAL_DIR}): `edgespec models fetch {NAME}` (or `make models`) makes it")

PREFIX = "real/v1"
VERIFIER_ID = "verifier-real"
GAMMA = 4
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def target():
    from speculative.models import load_lm

    torch.set_num_threads(1)
    return load_lm(REAL_DIR)


@pytest.fixture(scope="module")
def cut_draft(target, tmp_path_factory):
    """The target's layers 0, 1 and its last, untrained, saved as a model folder, loaded."""
    from edgespec.train_draft import make_draft
    from speculative.models import load_lm

    folder = tmp_path_factory.mktemp("real-draft")
    make_draft(target.model, (0, 1, -1)).save_pretrained(folder)
    target.tokenizer.save_pretrained(folder)
    return load_lm(folder)


@pytest.fixture(scope="module")
def real_verifier(mosquitto):
    """A verifier process serving the real target, batching up to 8 blocks."""
    proc = start_verifier(mosquitto.url, REAL_DIR, VERIFIER_ID, "--prefix", PREFIX, "--max-batch", "8",
                          "--batch-window-ms", "5", "--threads", "1")
    yield proc
    stop_process(proc)


def prompts(target, n: int) -> list[list[int]]:
    """Chat-template prompts of held-out event descriptions and general questions, alternating."""
    from edgespec.lm_prompts import chat_ids, prompt_set

    texts = [t for pair in zip(prompt_set("event", n, held_out=True), prompt_set("general", n, held_out=True))
             for t in pair][:n]
    return [chat_ids(target.tokenizer, t) for t in texts]


def run_sessions(url: str, draft, target, prompt_ids: list[list[int]], name: str) -> list:
    """One encrypted session per prompt, each on a device link of its own, all at once."""
    from camera_node.session import EdgeRequest, run_edge_session

    async def go():
        links = await open_links(url, name, PREFIX, len(prompt_ids), timeout_s=60)
        try:
            return await asyncio.gather(*(
                run_edge_session(link, draft, EdgeRequest(ids, None, gamma=GAMMA, max_new_tokens=NEW_TOKENS,
                                                          stop_token_ids=tuple(target.eos_token_ids)))
                for link, ids in zip(links, prompt_ids)))
        finally:
            for link in links:
                await link.__aexit__(None, None, None)

    return asyncio.run(go())


@pytest.mark.broker
def test_one_session_matches_generate(mosquitto, real_verifier, target, cut_draft):
    [ids] = prompts(target, 1)
    expected = reference(target, ids, NEW_TOKENS)
    [out] = run_sessions(mosquitto.url, cut_draft, target, [ids], "real-one")
    assert out.session_id and out.verifier_id == VERIFIER_ID
    assert out.result.token_ids == expected, target.tokenizer.decode(out.result.token_ids)
    assert len(expected) >= 16  # a real answer, not an immediate stop


@pytest.mark.broker
def test_concurrent_sessions_in_shared_batches_match_generate(mosquitto, real_verifier, target, cut_draft):
    from edgespec.bench_rounds import stop_for_final_stats
    from schemas import Topics

    batch = prompts(target, 8)
    assert len({len(ids) for ids in batch}) > 1  # different prompt lengths share a batch
    expected = [reference(target, ids, NEW_TOKENS) for ids in batch]
    outs = run_sessions(mosquitto.url, cut_draft, target, batch, "real-many")
    for ids, out, ref in zip(batch, outs, expected):
        assert out.result.token_ids == ref, (len(ids), target.tokenizer.decode(out.result.token_ids))
    stats = asyncio.run(stop_for_final_stats(mosquitto.url, Topics(PREFIX).verifier_stats(VERIFIER_ID), real_verifier))
    assert stats is not None, "the verifier published no final stats"
    sizes = {int(k): v for k, v in stats["batch_sizes"].items()}
    print(f"\nverifier batch sizes: {dict(sorted(sizes.items()))}")
    assert any(k > 1 for k in sizes), f"no batch held more than one session: {sizes}"


# ---------------------------------------------------------------- sampling, first two positions

SAMPLING_PROMPT = "Give a simple recipe for a cup of tea."  # 20 first tokens under T 0.7, top-p 0.9
TRIALS = 6_000
DRAFT_WARP_T = 1.5  # the draft: the target's own logits, hotter and with top-k 40 (overlapping, unlike p)


def first_two_rows(target, ids: list[int]):
    """Warped target rows p and draft rows q: [V] after the prompt, and {t: [V]} after each
    first token t either can produce (the rows the first two positions are drawn from)."""
    from speculative.sampling import SamplingParams, warp_probs

    params, draft_params = SamplingParams(temperature=0.7, top_p=0.9), SamplingParams(DRAFT_WARP_T, top_k=40)
    with torch.inference_mode():
        logits0 = target.model(torch.tensor([ids])).logits[0, -1]
        p0, q0 = warp_probs(logits0, params), warp_probs(logits0, draft_params)
        firsts = ((p0 > 0) | (q0 > 0)).nonzero().flatten().tolist()
        logits1 = target.model(torch.tensor([ids + [t] for t in firsts])).logits[:, -1]
    p1, q1 = warp_probs(logits1, params), warp_probs(logits1, draft_params)
    return p0, q0, {t: p1[i] for i, t in enumerate(firsts)}, {t: q1[i] for i, t in enumerate(firsts)}


def sampled_first_two(rows, residual) -> tuple[torch.Tensor, list[int]]:
    """Counts over (first token, second token) of TRIALS sampled generations: blocks drafted
    from the quantized q the device sends (speculative.sampling.DEFAULT_Q_RULE), verified by
    speculative.verify.verify_sampled as the verifier does. Returns (counts [n, V], the first
    tokens the n rows stand for)."""
    from speculative.sampling import DEFAULT_Q_RULE, make_generator, sample_weights, stack_q
    from speculative.verify import verify_sampled

    p0, q0, p1, q1 = rows
    cells = sorted(p1)
    index = {t: i for i, t in enumerate(cells)}
    quantized = {(): DEFAULT_Q_RULE.quantize(q0), **{(t,): DEFAULT_Q_RULE.quantize(q1[t]) for t in cells}}
    gen_draft, gen_verify = make_generator(2024, 0), make_generator(2024, 1)
    counts = torch.zeros(len(cells), p0.shape[-1])

    def p_row(context: tuple[int, ...]) -> torch.Tensor:
        # Rows past two generated tokens only decide tokens after the second, which are not
        # counted: the last row stands in for them.
        return p0 if not context else p1[context[0]]

    for _ in range(TRIALS):
        out: list[int] = []
        while len(out) < 2:
            drafted, ids, weights = [], [], []
            for _ in range(2 - len(out)):
                row_ids, row_weights = quantized[tuple(out + drafted)]
                drafted.append(sample_weights(row_ids, row_weights, gen_draft))
                ids.append(row_ids)
                weights.append(row_weights)
            ctx = out + drafted
            p = torch.stack([p_row(tuple(ctx[:i])[:1]) for i in range(len(out), len(ctx) + 1)])
            v = verify_sampled(p, torch.tensor(drafted), stack_q(ids, weights), gen_verify, residual=residual)
            out += drafted[: v.n_accepted] + [v.next_token]
        counts[index[out[0]], out[1]] += 1  # every first token the draft or p can give has a row
    return counts, cells


@pytest.mark.parametrize("case", ["exact", "negative-control-residual-p"])
def test_sampled_first_two_tokens_follow_the_target(target, case):
    from edgespec.lm_prompts import chat_ids
    from speculative.verify import residual_distribution

    torch.set_num_threads(1)
    rows = first_two_rows(target, chat_ids(target.tokenizer, SAMPLING_PROMPT))
    p0, q0, p1, _ = rows
    acceptance = float(torch.minimum(p0, q0).sum())
    assert int((p0 > 0).sum()) >= 10 and 0.2 < acceptance < 0.95  # rejections and acceptances both common
    started = time.perf_counter()
    counts, cells = sampled_first_two(rows, residual_distribution if case == "exact" else (lambda p_row, q_row: p_row))
    exact = torch.stack([p0[t] * p1[t] for t in cells])
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-4)
    stat, dof, p_value, tv = chi_square(counts, exact / exact.sum())
    print(f"\n{case}: {TRIALS} generations in {time.perf_counter() - started:.1f} s, first-position acceptance "
          f"{acceptance:.3f}, chi-square {stat:.1f} on {dof} dof, p = {p_value:.3g}, TV {tv:.4f}")
    if case == "exact":
        assert p_value >= 1e-3
    else:
        assert p_value < 1e-6, "the negative control must fail: p instead of the residual biases the output"
