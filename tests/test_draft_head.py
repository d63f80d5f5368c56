"""A draft with a reduced output head (`head_vocab.safetensors`, `edgespec train-draft --head-vocab`):
it saves and loads, its logits are the full head's on its ids and nothing elsewhere, and
speculative decoding with it stays exact, greedy and sampled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from exactness_stats import chi_square

from edgespec import model_registry as reg
from edgespec.lm_prompts import chat_ids, prompt_set
from edgespec.train_draft import Example, cut_head, head_mass, head_vocab
from edgespec.train_draft_recipe import DraftRecipe
from speculative.lean import LeanCachedLM, draft_state
from speculative.loop import generate_autoregressive, run_local
from speculative.models import HEAD_VOCAB_FILE, CachedLM, ModelLoadError, load_lm, write_head_vocab
from speculative.sampling import SamplingParams, warp_probs

PROMPT = [1, 5, 9, 12, 7]
# The real pair (read at import, before conftest points EDGESPEC_HOME at a temporary home).
REAL = "smollm2-135m"
REAL_TARGET, REAL_DRAFT = reg.model_dir(REAL), reg.pair_draft_dir(REAL)


def _head_ids(vocab: int, eos: int) -> list[int]:
    """Every third id and eos, unordered: the draft cannot propose two thirds of the vocabulary."""
    return [eos] + list(range(vocab - 1, 3, -3))


@pytest.fixture(scope="module")
def reduced(tiny_pair, tmp_path_factory) -> tuple[Path, Path]:
    """(the full-head draft folder, a copy of it with a reduced head)."""
    _, draft_dir = tiny_pair
    out = tmp_path_factory.mktemp("reduced") / "draft"
    shutil.copytree(draft_dir, out)
    full = load_lm(draft_dir)
    write_head_vocab(out, _head_ids(full.vocab_size, full.eos_token_ids[0]))
    return draft_dir, out


def test_a_reduced_head_saves_and_loads(reduced) -> None:
    from transformers import AutoModelForCausalLM

    full_dir, reduced_dir = reduced
    full, lm = load_lm(full_dir), load_lm(reduced_dir)
    ids = sorted(set(_head_ids(full.vocab_size, full.eos_token_ids[0])))
    assert lm.head_ids is not None and lm.head_ids.tolist() == ids
    assert lm.head_size == len(ids) and lm.vocab_size == full.vocab_size == full.head_size
    assert tuple(lm.model.lm_head.weight.shape) == (len(ids), lm.model.config.hidden_size)
    # untied: the input embeddings stay whole, the head holds the tied rows of its ids
    assert lm.model.get_input_embeddings().weight.shape[0] == full.vocab_size
    assert torch.equal(lm.model.lm_head.weight, full.model.lm_head.weight[lm.head_ids])
    # the folder stays a standard one: from_pretrained gives the full head
    plain = AutoModelForCausalLM.from_pretrained(reduced_dir)
    assert plain.get_output_embeddings().weight.shape[0] == full.vocab_size


def test_head_rows_of_their_own_and_bad_files(tmp_path, tiny_pair) -> None:
    _, draft_dir = tiny_pair
    out = tmp_path / "draft"
    shutil.copytree(draft_dir, out)
    full = load_lm(draft_dir)
    rows = torch.randn(3, full.model.config.hidden_size)
    write_head_vocab(out, [9, 2, 5], rows)  # rows follow their ids, stored ascending
    lm = load_lm(out)
    assert lm.head_ids is not None and lm.head_ids.tolist() == [2, 5, 9]
    assert torch.equal(lm.model.lm_head.weight, rows[[1, 2, 0]])
    write_head_vocab(out, [2, full.vocab_size])
    with pytest.raises(ModelLoadError, match="below"):
        load_lm(out)
    (out / HEAD_VOCAB_FILE).unlink()
    assert load_lm(out).head_ids is None


def test_logits_are_the_full_heads_on_its_ids_and_nothing_elsewhere(reduced) -> None:
    full_dir, reduced_dir = reduced
    full, lm = load_lm(full_dir), load_lm(reduced_dir)
    assert lm.head_ids is not None
    reference = CachedLM(full).prefill(PROMPT)
    spread = CachedLM(lm).prefill(PROMPT)  # over all ids, -inf outside the head
    assert reference is not None and spread is not None and spread.shape == reference.shape
    outside = torch.ones(lm.vocab_size, dtype=torch.bool)
    outside[lm.head_ids] = False
    torch.testing.assert_close(spread[:, lm.head_ids], reference[:, lm.head_ids])
    assert bool(torch.isneginf(spread[:, outside]).all())
    assert float(spread.softmax(-1)[:, outside].sum()) == 0.0
    with torch.no_grad():  # the model's own forward, as generate() and assisted generation call it
        own = lm.model(input_ids=torch.tensor([PROMPT])).logits[0]
    torch.testing.assert_close(own, spread)
    rows_state = CachedLM(lm, full_vocab=False)
    rows = rows_state.prefill(PROMPT)
    assert rows is not None and rows.shape == (len(PROMPT), lm.head_size)
    torch.testing.assert_close(rows, reference[:, lm.head_ids])
    torch.testing.assert_close(rows_state.extend([4]), CachedLM(full).prefill(PROMPT + [4])[-1:, lm.head_ids])
    lean = draft_state(lm)  # the drafter's forward reads the head's rows too
    assert isinstance(lean, LeanCachedLM)
    torch.testing.assert_close(lean.prefill(PROMPT), reference[:, lm.head_ids], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_speculative_output_is_the_targets(tiny_pair, reduced, gamma) -> None:
    target = load_lm(tiny_pair[0])
    lm = load_lm(reduced[1])
    greedy = SamplingParams()
    for prompt in ([1, 5, 9], PROMPT, [1, 20, 20, 31, 8, 40]):
        spec = run_local(target, lm, prompt, None, greedy, gamma, 24)
        alone = generate_autoregressive(target, prompt, None, greedy, 24)
        assert spec.token_ids == alone.token_ids
        assert lm.head_ids is not None
        assert set(spec.token_ids) - set(lm.head_ids.tolist())  # the target said ids the draft cannot


SAMPLED = SamplingParams(temperature=1.5)
TRIALS = 2000


def test_sampled_output_follows_the_target_with_a_reduced_head(tiny_pair, reduced) -> None:
    """The joint distribution of the first two tokens, speculative with the reduced-head draft
    (its q 0 on two thirds of the ids), matches the target's own: chi-square at p >= 1e-3."""
    torch.set_num_threads(1)
    target, lm = load_lm(tiny_pair[0]), load_lm(reduced[1])
    assert lm.head_ids is not None
    head = set(lm.head_ids.tolist())
    v = target.vocab_size
    state = CachedLM(target)
    first = warp_probs(state.prefill(PROMPT)[-1], SAMPLED)
    second = torch.stack([warp_probs(CachedLM(target).prefill(PROMPT + [t])[-1], SAMPLED) for t in range(v)])
    exact = first[:, None] * second
    counts = torch.zeros(v, v)
    outside = 0
    for seed in range(TRIALS):
        out = run_local(target, lm, PROMPT, None, SAMPLED, 2, 2, seed=seed, stop_token_ids=()).token_ids
        counts[out[0], out[1]] += 1
        outside += out[0] not in head
    stat, dof, p_value, tv = chi_square(counts, exact)
    print(f"\nreduced head: chi-square {stat:.1f} on {dof} dof, p = {p_value:.3g}, TV {tv:.4f}")
    assert outside > 0.1 * TRIALS  # the target's corrections reached ids outside the head
    assert p_value >= 1e-3


def test_the_head_vocabulary_follows_the_teachers_mass() -> None:
    top_ids = torch.tensor([[7, 3, 1], [7, 5, 1], [3, 7, 1]])
    top_p = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.8, 0.1, 0.1]])
    mass = head_mass([Example([0, 7, 7, 3], 1, top_ids, top_p)], 10)
    assert mass[7] == pytest.approx(1.2) and mass[0] == 0
    assert head_vocab(mass, 2) == [3, 7]
    assert head_vocab(mass, 3, keep=(9,)) == [3, 7, 9]  # the stop tokens first
    assert head_vocab(mass, 6) == [0, 1, 2, 3, 5, 7]  # then by mass, then the lowest ids
    assert head_vocab(mass, 6) == head_vocab(mass.clone(), 6)


def test_cutting_the_head_of_a_trained_draft(tiny_pair, tmp_path) -> None:
    """`train-draft --from-draft DIR --head-vocab K`: the teacher pass ranks the ids, the draft's
    weights are copied unchanged, the same seed gives the same head; 0 is the full head again."""
    target_dir, draft_dir = _templated(tiny_pair[0], tmp_path / "target"), tiny_pair[1]
    recipe = DraftRecipe(event_prompts=2, general_prompts=1, max_new_tokens=4, teacher_top=8, batch=2, threads=1,
                         head_vocab=12)
    out = tmp_path / "cut"
    report = cut_head(target_dir, draft_dir, out, recipe, progress=False)
    assert report["head_vocab"] == 12 and 0 < report["head_teacher_mass"] <= 1
    lm = load_lm(out)
    assert lm.head_ids is not None and lm.head_size == 12 and set(lm.eos_token_ids) <= set(lm.head_ids.tolist())
    again = cut_head(target_dir, draft_dir, tmp_path / "again", recipe, progress=False)
    assert again["head_teacher_mass"] == report["head_teacher_mass"]
    assert torch.equal(load_lm(tmp_path / "again").head_ids, lm.head_ids)
    assert (out / "model.safetensors").read_bytes() == (draft_dir / "model.safetensors").read_bytes()
    cut_head(target_dir, out, out, DraftRecipe(**{**recipe.__dict__, "head_vocab": 0}), progress=False)
    assert load_lm(out).head_ids is None and not (out / HEAD_VOCAB_FILE).exists()


def _templated(src: Path, out: Path) -> Path:
    """A copy of a tiny model whose tokenizer has a chat template (the prompts' form)."""
    from transformers import AutoTokenizer

    shutil.copytree(src, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(out)
    return out


def test_eval_draft_reports_the_head_and_both_forwards(tiny_pair, reduced, tmp_path) -> None:
    from edgespec.draft_eval import evaluate_draft, format_report

    target_dir, draft_dir = _templated(tiny_pair[0], tmp_path / "t"), _templated(reduced[1], tmp_path / "d")
    report = evaluate_draft(target_dir, draft_dir, events=2, general=1, max_new_tokens=8, cost_rounds=2)
    assert report["head_vocab"] == load_lm(draft_dir).head_size < report["vocab"]
    assert report["event"]["identical_to_target"] and report["general"]["identical_to_target"]
    assert report["draft_cost_share"] > 0 and report["drafter_cost_share"] > 0
    assert f"draft output head: {report['head_vocab']} of" in format_report(report)


def test_a_head_module_without_the_hook_still_gives_both_widths(reduced) -> None:
    """A head swapped for another module (as a quantizer may do) loses load_lm's hook that
    spreads its K logits over all ids; CachedLM gives the width asked for either way."""
    lm = load_lm(reduced[1])
    assert lm.head_ids is not None
    spread = CachedLM(lm).prefill(PROMPT)
    plain = torch.nn.Linear(lm.model.config.hidden_size, lm.head_size, bias=False)
    plain.weight = lm.model.lm_head.weight
    lm.model.set_output_embeddings(plain)
    torch.testing.assert_close(CachedLM(lm).prefill(PROMPT), spread)
    torch.testing.assert_close(CachedLM(lm, full_vocab=False).prefill(PROMPT), spread[:, lm.head_ids])


@pytest.mark.skipif(not (reg.is_fetched(REAL, REAL_TARGET.parent) and (REAL_DRAFT / HEAD_VOCAB_FILE).is_file()),
                    reason=f"no {REAL} pair with a reduced-head draft ({REAL_DRAFT}): `make draft` makes it")
def test_the_real_pairs_reduced_head_draft_is_exact() -> None:
    """The pair's draft as `make draft` builds it: greedy output identical to the target alone
    on held-out event descriptions, and it drafts what the target says."""
    torch.set_num_threads(1)
    target, draft = load_lm(REAL_TARGET), load_lm(REAL_DRAFT)
    assert draft.head_ids is not None and draft.head_size < draft.vocab_size == target.vocab_size
    accepted = 0
    for prompt in prompt_set("event", 2, held_out=True):
        ids = chat_ids(target.tokenizer, prompt)
        spec = run_local(target, draft, ids, None, SamplingParams(), 4, 24)
        assert spec.token_ids == generate_autoregressive(target, ids, None, SamplingParams(), 24).token_ids
        accepted += sum(spec.accepted_per_round)
    assert accepted > 10
    sampled = run_local(target, draft, ids, None, SamplingParams(temperature=0.7, top_p=0.9), 4, 16, seed=3)
    assert sampled.token_ids and sum(sampled.accepted_per_round) > 0
