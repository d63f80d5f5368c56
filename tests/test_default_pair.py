"""The vision projector, the committed default pair, and the training/eval commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from camera_node.captions import CAPTION_PROMPT, VOCABULARY, caption_for_facts, score_caption
from camera_node.features import ObjectFeatures, decode_facts
from edgespec import eval_default, pair_commands, train_default
from edgespec.defaultpair.config import DEFAULT_MODELS_DIR, LMSpec, TrainConfig
from edgespec.defaultpair.data import (
    build_tokenizer,
    compute_features,
    eval_seeds,
    prompt_ids,
    train_seeds,
)
from edgespec.defaultpair.modeling import greedy_captions, load_model_folder, parameter_count
from edgespec.toolkit import LazyCommand
from speculative.vision_prefix import (
    PROJECTOR_CONFIG_NAME,
    PROJECTOR_WEIGHTS_NAME,
    ProjectorError,
    VisionProjector,
)

TARGET_DIR = DEFAULT_MODELS_DIR / "target"
DRAFT_DIR = DEFAULT_MODELS_DIR / "draft"
needs_pair = pytest.mark.skipif(
    not (TARGET_DIR / "config.json").is_file(), reason="default pair not trained"
)


# --- projector ------------------------------------------------------------------------------


def test_projector_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    projector = VisionProjector((4, 32), hidden_size=24, inner_size=40, metadata={"k": "v"})
    features = torch.randn(4, 32)
    assert projector(features).shape == (4, 24)
    assert projector(features[None].expand(3, -1, -1)).shape == (3, 4, 24)
    projector.save_pretrained(tmp_path)
    config = json.loads((tmp_path / PROJECTOR_CONFIG_NAME).read_text())
    assert config["feature_shape"] == [4, 32] and config["hidden_size"] == 24
    assert config["architecture"] == "slot_mlp" and config["metadata"] == {"k": "v"}
    loaded = VisionProjector.from_pretrained(tmp_path)
    assert loaded is not None
    assert torch.equal(loaded(features), projector.eval()(features))


def test_projector_missing_and_broken(tmp_path: Path) -> None:
    assert VisionProjector.from_pretrained(tmp_path) is None
    VisionProjector((2, 3), hidden_size=8).save_pretrained(tmp_path)
    with pytest.raises(ProjectorError, match="do not fit"):
        VisionProjector.from_pretrained(tmp_path)(torch.zeros(3, 3))  # type: ignore[misc]
    (tmp_path / PROJECTOR_WEIGHTS_NAME).unlink()
    with pytest.raises(ProjectorError, match=r"no vision_projector\.safetensors"):
        VisionProjector.from_pretrained(tmp_path)


# --- tokenizer and seeds --------------------------------------------------------------------


def test_tokenizer_round_trips_captions() -> None:
    """Every clause the grammar can make encodes without <unk> and decodes to itself."""
    import itertools

    from camera_node.colours import COLOUR_NAMES
    from camera_node.objects import DIRECTIONS, KINDS, SIDES

    tokenizer = build_tokenizer()
    assert len(tokenizer) == 4 + len(VOCABULARY)
    ids = prompt_ids(tokenizer)
    assert ids == tokenizer(CAPTION_PROMPT)["input_ids"]  # no special tokens added either way
    assert tokenizer.unk_token_id not in ids
    rng = np.random.default_rng(0)
    for kind, colour, direction, entry, exit_, stopped in itertools.product(
        KINDS, COLOUR_NAMES, DIRECTIONS, SIDES, SIDES, (False, True)
    ):
        fact = {"kind": kind, "colour": colour, "direction": direction, "entry": entry,
                "exit": exit_, "stopped": stopped}
        for caption in (caption_for_facts([fact]), caption_for_facts([fact, fact], rng)):
            encoded = tokenizer(caption, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in encoded, caption
            assert tokenizer.decode(encoded) == caption


def test_train_and_eval_seeds_are_disjoint() -> None:
    assert not set(train_seeds(0, 5000)) & set(eval_seeds(5000))
    assert not set(train_seeds(3, 100)) & set(train_seeds(4, 100))


# --- the committed pair ---------------------------------------------------------------------


@needs_pair
def test_committed_pair_loads_with_from_pretrained() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = AutoModelForCausalLM.from_pretrained(TARGET_DIR)
    draft = AutoModelForCausalLM.from_pretrained(DRAFT_DIR)
    t_tok, d_tok = (
        AutoTokenizer.from_pretrained(TARGET_DIR),
        AutoTokenizer.from_pretrained(DRAFT_DIR),
    )
    assert t_tok.get_vocab() == d_tok.get_vocab() == build_tokenizer().get_vocab()
    assert target.generation_config.eos_token_id == t_tok.eos_token_id
    t_proj, d_proj = (
        VisionProjector.from_pretrained(TARGET_DIR),
        VisionProjector.from_pretrained(DRAFT_DIR),
    )
    assert t_proj is not None and d_proj is not None
    assert t_proj.feature_shape == d_proj.feature_shape == ObjectFeatures().feature_shape
    assert t_proj.hidden_size == target.config.hidden_size
    assert parameter_count(draft, d_proj) <= parameter_count(target, t_proj) / 10
    size = sum(f.stat().st_size for f in DEFAULT_MODELS_DIR.rglob("*") if f.is_file())
    assert size <= 20_000_000


@needs_pair
def test_committed_target_captions_held_out_scenes() -> None:
    folder = load_model_folder(TARGET_DIR)
    assert folder.projector is not None
    _, features = compute_features(eval_seeds(20), progress=False)
    ids = greedy_captions(
        folder.model,
        folder.projector,
        torch.from_numpy(features),
        prompt_ids(folder.tokenizer),
        folder.tokenizer.eos_token_id,
        64,
    )
    # The target says what the device measured: kind, colour and direction of every object.
    correct = objects = 0
    for feats, row in zip(features, ids, strict=True):
        score = score_caption(folder.tokenizer.decode(row), decode_facts(feats))
        right = min(score.kind, score.colour, score.direction)
        correct, objects = correct + right, objects + score.objects
    assert objects > 20 and correct / objects >= 0.95


@needs_pair
def test_committed_pair_speculative_is_lossless_at_t0() -> None:
    from speculative.loop import run_local
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    target, draft = load_lm(TARGET_DIR), load_lm(DRAFT_DIR)
    prompt = prompt_ids(target.tokenizer)
    _, features = compute_features(eval_seeds(3), progress=False)
    reference = greedy_captions(
        target.model,
        target.projector,
        torch.from_numpy(features),
        prompt,
        target.tokenizer.eos_token_id,
        64,
    )
    for feats, ref in zip(features, reference, strict=True):
        result = run_local(
            target, draft, prompt, feats, SamplingParams(), gamma=4, max_new_tokens=64
        )
        assert result.token_ids == ref + [target.tokenizer.eos_token_id]
        assert result.acceptance_rate > 0.5


# --- commands -------------------------------------------------------------------------------


def test_training_smoke_run_and_eval(tmp_path: Path) -> None:
    tiny = LMSpec(
        hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, projector_inner=16
    )
    cfg = replace(
        TrainConfig(),
        train_scenes=24,
        target=tiny,
        draft=tiny,
        batch_size=8,
        target_steps=4,
        draft_steps=4,
    )
    report = train_default.train_default(tmp_path, cfg, progress=False)
    assert report["target"]["steps_done"] == 4 and report["draft"]["steps_done"] == 4
    folder = load_model_folder(tmp_path / "draft")
    assert folder.projector is not None and folder.model.config.hidden_size == 16
    result = eval_default.evaluate(
        tmp_path, replace(eval_default.EvalConfig(), scenes=2, max_new_tokens=6), progress=False
    )
    assert set(result["models"]) == {"target", "draft"} and len(result["speculative"]) == 2
    assert "faithful" in eval_default.format_report(result)


def test_commands_register() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    pair_commands.register(subparsers)
    args = parser.parse_args(["train-default", "--minutes", "3", "--seed", "2", "--out", "x"])
    assert (args.minutes, args.seed, args.out) == (3.0, 2, Path("x"))
    assert args.func == LazyCommand("edgespec.train_default", "_run")
    args = parser.parse_args(["eval-default", "--scenes", "7", "--json", "r.json"])
    assert (args.scenes, args.json) == (7, Path("r.json"))
    assert args.func == LazyCommand("edgespec.eval_default", "_run")


def test_shuffled_words_redraw_only_occupied_slots() -> None:
    from camera_node import features as F
    from camera_node.objects import ObjectFacts
    from edgespec.defaultpair.data import shuffle_words

    fact = ObjectFacts("person", "orange", "away", "bottom", "inside", False, 0.1, 2.5, 0.2, 0.0, -0.2,
                       -0.5, (0.5, 0.4), 1.0, 10)
    feats = F.encode_facts([fact], 3)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        out = shuffle_words(feats, rng)
        assert not out[1:].any()  # empty slots stay empty
        for group in (F.F_KIND, F.F_COLOUR, F.F_DIRECTION, F.F_ENTRY, F.F_EXIT):
            assert out[0, group].sum() == 1.0
        (words,) = F.decode_facts(out)
        seen.add((words["kind"], words["direction"]))
    assert F.decode_facts(feats)[0]["kind"] == "person"  # the input is not changed
    assert len(seen) > 10
