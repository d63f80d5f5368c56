"""Synthetic scenes, the caption grammar and the on-device object features."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camera_node import features as F
from camera_node.capture import Frame, open_source
from camera_node.captions import (
    CAPTION_PROMPT,
    EMPTY_CAPTION,
    VOCABULARY,
    caption_for_facts,
    parse_caption,
    score_caption,
)
from camera_node.colours import COLOUR_NAMES, dominant_colour, name_histogram
from camera_node.events import MotionEvent, detect_events
from camera_node.features import FeatureExtractor, HFVisionFeatures, ObjectFeatures
from camera_node.objects import DIRECTIONS, KINDS, SIDES, ObjectFacts
from camera_node.scene import (
    KIND_COLOURS,
    MOTION_SECONDS,
    PALETTE_BGR,
    SCENE_KINDS,
    Scene,
    SceneObject,
    ground_truth,
    random_scene,
    render,
)
from edgespec.defaultpair.data import scene_frames

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "footage"
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _event(scene: Scene) -> MotionEvent:
    events = detect_events(scene_frames(scene))
    assert len(events) == 1
    return events[0]


def _one(kind: str, colour: str, direction: str, x0: float, y0: float, x1: float, y1: float,
         h0: float, h1: float | None = None, aspect: float = 1.0, stop_at: float = 1.0) -> Scene:
    obj = SceneObject(kind, colour, PALETTE_BGR[colour], direction, x0, y0, x1, y1, h0,
                      h0 if h1 is None else h1, aspect, stop_at)
    return Scene((obj,), (150, 150, 150), (100, 95, 90), seed=11)


# --- scenes ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seeds)
def test_random_scene_is_deterministic_and_valid(seed: int) -> None:
    scene = random_scene(seed)
    assert scene == random_scene(seed)
    assert 1 <= len(scene.objects) <= 3
    for obj, truth in zip(scene.objects, ground_truth(scene), strict=True):
        assert obj.kind in SCENE_KINDS and obj.colour in KIND_COLOURS[obj.kind]
        assert set(truth["direction"]) <= set(DIRECTIONS) and truth["entry"] in SIDES and truth["exit"] in SIDES
        assert 0.0 < obj.h0 < 1.0 and 0.0 < obj.h1 < 1.0


def test_render_is_deterministic_and_moves() -> None:
    scene = random_scene(7)
    first = render(scene, 0.0)
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render(scene, 0.0))
    assert render(scene, 0.0, width=160, height=120).shape == (120, 160, 3)
    assert np.abs(first.astype(int) - render(scene, MOTION_SECONDS)).max() > 100


# --- captions -------------------------------------------------------------------------------

facts_strategy = st.lists(
    st.fixed_dictionaries({
        "kind": st.sampled_from(KINDS), "colour": st.sampled_from(COLOUR_NAMES),
        "direction": st.sampled_from(DIRECTIONS), "entry": st.sampled_from(SIDES),
        "exit": st.sampled_from(SIDES), "stopped": st.booleans(),
    }), min_size=1, max_size=3)


@settings(max_examples=80, deadline=None)
@given(facts_strategy, st.integers(0, 1000))
def test_captions_say_the_facts_and_parse_back(facts: list[dict], caption_seed: int) -> None:
    for rng in (None, np.random.default_rng(caption_seed)):
        caption = caption_for_facts(facts, rng)
        assert set(caption.split()) <= set(VOCABULARY)
        mentions = parse_caption(caption)
        assert [(m.kind, m.colour, m.direction) for m in mentions] == [
            (f["kind"], f["colour"], f["direction"]) for f in facts
        ]
        assert [m.stopped for m in mentions] == [f["stopped"] and f["direction"] != "still" for f in facts]
        score = score_caption(caption, facts)
        n = len(facts)
        assert (score.kind, score.colour, score.direction, score.extra_mentions) == (n, n, n, 0)


def test_caption_wording_examples_and_scoring() -> None:
    person = {"kind": "person", "colour": "orange", "direction": "away", "entry": "bottom",
              "exit": "inside", "stopped": False}
    car = {"kind": "vehicle", "colour": "white", "direction": "right", "entry": "left",
           "exit": "right", "stopped": True}
    assert caption_for_facts([person]) == "a person in orange walks away from the camera"
    assert caption_for_facts([car]) == "a white vehicle drives from the left to the right and stops"
    assert caption_for_facts([{**car, "colour": "orange", "kind": "object", "entry": "inside"}]) == (
        "an orange object moves to the right and stops")
    assert caption_for_facts([]) == EMPTY_CAPTION
    rng = np.random.default_rng(0)
    assert len({caption_for_facts([person, car], rng) for _ in range(30)}) > 2
    # Labels may allow several words; "object" is an honest kind, a wrong kind is not.
    label = [{"kind": ["person"], "colour": ["orange", "red"], "direction": ["away", "up"]}]
    honest = score_caption("a red object moves towards the top", label)
    assert (honest.kind, honest.kind_or_unsure, honest.colour, honest.direction) == (0, 1, 1, 1)
    wrong = score_caption("a blue vehicle drives to the left", label)
    assert (wrong.kind_or_unsure, wrong.colour, wrong.direction) == (0, 0, 0)
    assert score_caption("", label).found == 0
    assert "describe" in VOCABULARY and ":" in VOCABULARY and CAPTION_PROMPT == "describe:"


# --- colours --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLOUR_NAMES)
def test_palette_colours_get_their_names(name: str) -> None:
    pixels = np.array([PALETTE_BGR[name]] * 50, np.uint8)
    assert dominant_colour(name_histogram(pixels)) == name


def test_a_vest_beats_dark_trousers_and_no_pixels_is_none() -> None:
    pixels = np.array([PALETTE_BGR["orange"]] * 30 + [PALETTE_BGR["black"]] * 70, np.uint8)
    assert dominant_colour(name_histogram(pixels)) == "orange"
    assert dominant_colour(name_histogram(np.zeros((0, 3), np.uint8))) is None


# --- object features ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scene", "kind", "colour", "direction", "entry", "exit", "stopped"),
    [
        (_one("vehicle", "red", "right", 0.1, 0.6, 0.7, 0.6, 0.22, aspect=0.5),
         "vehicle", "red", "right", "left", "inside", False),
        (_one("vehicle", "white", "left", 0.75, 0.6, 0.35, 0.6, 0.22, aspect=0.5, stop_at=0.5),
         "vehicle", "white", "left", "inside", "inside", False),  # alone: its stop ends the motion
        (_one("person", "orange", "towards", 0.5, 0.25, 0.5, 0.55, 0.25, 0.55, aspect=2.6),
         "person", "orange", "towards", "inside", "inside", False),
        (_one("person", "blue", "away", 0.4, 0.55, 0.4, 0.25, 0.55, 0.25, aspect=2.6),
         "person", "blue", "away", "inside", "inside", False),
        (_one("small object", "yellow", "down", 0.3, 0.2, 0.3, 0.8, 0.08),
         "small object", "yellow", "down", "inside", "inside", False),
        (_one("person", "green", "up", 0.6, 0.6, 0.6, 0.3, 0.4, aspect=2.6),
         "person", "green", "up", "inside", "inside", False),
    ],
)
def test_tracks_measure_rendered_objects(scene: Scene, kind: str, colour: str, direction: str,
                                         entry: str, exit: str, stopped: bool) -> None:
    truth = ground_truth(scene)[0]
    assert (truth["kind"], truth["colour"], truth["direction"][0]) == (kind, colour, direction)
    facts = ObjectFeatures().facts(_event(scene))
    assert len(facts) == 1
    f = facts[0]
    assert truth["stopped"] == stopped
    assert (f.kind, f.colour, f.direction, f.entry, f.exit, f.stopped) == (
        kind, colour, direction, truth["entry"], truth["exit"], stopped)


def test_features_encode_the_facts_and_are_deterministic() -> None:
    extractor = ObjectFeatures()
    assert isinstance(extractor, FeatureExtractor)
    for seed in range(6):
        event = _event(random_scene(seed))
        feats = extractor.extract(event)
        assert feats.shape == extractor.feature_shape == (3, F.SLOT_DIMS)
        assert feats.dtype == np.float32 and np.isfinite(feats).all()
        assert np.array_equal(feats, extractor.extract(event))
        facts = extractor.facts(event)
        decoded = F.decode_facts(feats)
        assert [d["kind"] for d in decoded] == [f.kind for f in facts]
        assert [d["direction"] for d in decoded] == [f.direction for f in facts]
        present = feats[:, F.F_PRESENT] > 0
        assert not feats[~present].any()  # empty slots are all zero
    assert feats.astype(np.float16).nbytes <= 300  # a few hundred bytes on the wire


def test_encode_decode_round_trip() -> None:
    fact = ObjectFacts("animal", "brown", "left", "right", "left", False, 0.02, 0.8, 0.4, -0.5, 0.0,
                       0.0, (0.1, 0.5), 0.0, 9)
    assert F.decode_facts(F.encode_facts([fact] * 5, 3)) == [
        {"kind": "animal", "colour": "brown", "direction": "left", "entry": "right", "exit": "left",
         "stopped": False}] * 3


def test_object_features_on_odd_input() -> None:
    extractor = ObjectFeatures()
    blank = np.full((240, 320, 3), 40, np.uint8)
    still = MotionEvent(0.0, 1.0, 0, 1, blank, blank, None, 2, 0.0, "flush")
    assert not extractor.extract(still).any()
    noise = np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    samples = tuple(Frame(noise[:, ::k].copy()[:, :60], k / 10, k) for k in (1, 2))
    odd = dataclasses.replace(still, first=noise, last=noise, samples=samples)
    feats = extractor.extract(odd)
    assert feats.shape == extractor.feature_shape and np.isfinite(feats).all()
    floats = dataclasses.replace(still, samples=(Frame(blank.astype(np.float32), 0.0, 0),))
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract(floats)


@pytest.mark.skipif(not (FOOTAGE / "worker-zone-detection.gif").is_file(), reason="no shared footage")
def test_object_features_on_real_footage() -> None:
    """The warehouse clip: a worker in an orange vest walks away from the camera."""
    with open_source(str(FOOTAGE / "worker-zone-detection.gif")) as source:
        events = detect_events(source)
    assert len(events) == 1  # motion lasts to the last frame: the flush ends it
    facts = ObjectFeatures().facts(events[0])
    assert facts[0].kind == "person" and facts[0].colour == "orange"
    assert facts[0].direction in ("away", "up")


# --- Hugging Face vision encoder ------------------------------------------------------------


def test_hf_vision_features_tiny_vit(tmp_path: Path) -> None:
    import json

    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    # What ViTImageProcessor.save_pretrained writes; written by hand because transformers'
    # image processors need Pillow and torchvision, which the project does not install.
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "size": {"height": 32, "width": 32},
            }
        )
    )

    extractor = HFVisionFeatures(tmp_path, grid=2)
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.feature_shape == (4, 32)
    event = _event(random_scene(5))
    feats = extractor.extract(event)
    assert feats.shape == (4, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.array_equal(feats, extractor.extract(event))
    unchanged = dataclasses.replace(event, last=event.first)
    assert np.allclose(extractor.extract(unchanged)[:, 16:], 0.0)  # no change, no delta


def test_a_small_thing_that_runs_into_a_larger_one_is_still_reported() -> None:
    """A small object crosses most of the view, then merges with a person's region for the
    last samples: its short track travelled too far to be a fragment of the person."""
    person = SceneObject("person", "green", PALETTE_BGR["green"], "up", 0.17, 0.8, 0.17, 0.31,
                         0.44, 0.44, 2.56, 1.0)
    ball = SceneObject("small object", "white", PALETTE_BGR["white"], "left", 0.79, 0.5, 0.07, 0.5,
                       0.084, 0.084, 0.84, 1.0)
    facts = ObjectFeatures().facts(_event(Scene((person, ball), (150, 150, 150), (100, 95, 90), seed=11)))
    assert {(f.colour, f.direction) for f in facts} == {("green", "up"), ("white", "left")}


def test_two_things_crossing_keep_their_own_directions() -> None:
    """While a person walks through a car's region the two are one region; the person's track
    goes on with its own motion and both are reported."""
    car = SceneObject("vehicle", "red", PALETTE_BGR["red"], "left", 0.75, 0.6, 0.25, 0.6,
                      0.22, 0.22, 0.5, 1.0)
    person = SceneObject("person", "blue", PALETTE_BGR["blue"], "right", 0.15, 0.62, 0.85, 0.62,
                         0.18, 0.18, 2.6, 1.0)
    facts = ObjectFeatures().facts(_event(Scene((car, person), (150, 150, 150), (100, 95, 90), seed=11)))
    assert {(f.colour, f.direction) for f in facts} == {("red", "left"), ("blue", "right")}
