"""Synthetic scenes, the caption grammar and the on-device vision features."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camera_node import features as F
from camera_node.captions import (
    CAPTION_PROMPT,
    VOCABULARY,
    caption_for,
    parse_caption,
    reading_order,
    score_caption,
)
from camera_node.features import FeatureExtractor, HFVisionFeatures, OpenCVFeatures
from camera_node.scene import (
    COLOURS,
    MOTION_SECONDS,
    MOTIONS,
    SHAPES,
    Scene,
    SceneObject,
    ground_truth,
    motion_word,
    position_word,
    random_scene,
    render,
)

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "footage"
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _clip(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    return render(scene, 0.0), render(scene, MOTION_SECONDS)


# --- scenes ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seeds)
def test_random_scene_is_deterministic_and_valid(seed: int) -> None:
    scene = random_scene(seed)
    assert scene == random_scene(seed)
    assert 1 <= len(scene.objects) <= 3
    assert len({o.colour for o in scene.objects}) == len(scene.objects)  # colours are unique
    aspect = scene.width / scene.height
    for obj in scene.objects:
        assert obj.colour in COLOURS and obj.shape in SHAPES and motion_word(obj) in MOTIONS
        for t in (0.0, MOTION_SECONDS):
            x, y = obj.centre_at(t)
            assert obj.size / aspect <= x <= 1 - obj.size / aspect
            assert obj.size <= y <= 1 - obj.size


def test_render_is_deterministic_and_moves() -> None:
    scene = random_scene(7)
    first = render(scene, 0.0)
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render(scene, 0.0))
    assert render(scene, 0.0, width=160, height=120).shape == (120, 160, 3)
    moving = any(motion_word(o) != "still" for o in scene.objects)
    assert moving == (not np.array_equal(first, render(scene, MOTION_SECONDS)))


def _obj(x: float, y: float, vx: float = 0.0, vy: float = 0.0) -> SceneObject:
    return SceneObject(colour="red", shape="circle", x=x, y=y, vx=vx, vy=vy, size=0.1)


@pytest.mark.parametrize(
    ("obj", "motion", "position"),
    [
        (_obj(0.1, 0.1), "still", "top left"),
        (_obj(0.5, 0.1), "still", "top"),
        (_obj(0.5, 0.5), "still", "centre"),
        (_obj(0.9, 0.5), "still", "right"),
        (_obj(0.5, 0.5, vx=-0.3), "left", "left"),  # position is where the motion ends
        (_obj(0.5, 0.5, vy=0.3), "down", "bottom"),
        (_obj(0.2, 0.8, vy=-0.05, vx=0.4), "right", "bottom"),
    ],
)
def test_ground_truth_words(obj: SceneObject, motion: str, position: str) -> None:
    assert motion_word(obj) == motion
    assert position_word(obj) == position


# --- captions -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seeds, st.integers(0, 1000))
def test_captions_parse_back(seed: int, caption_seed: int) -> None:
    scene = random_scene(seed)
    caption = caption_for(scene, np.random.default_rng(caption_seed))
    assert set(caption.split()) <= set(VOCABULARY)
    score = score_caption(caption, scene)
    n = len(scene.objects)
    assert (score.all_three, score.position, score.extra_mentions) == (n, n, 0)
    mentions = parse_caption(caption)
    truth = [ground_truth(Scene((o,), scene.background, 0))[0] for o in reading_order(scene)]
    assert [(m.colour, m.shape, m.motion, m.position) for m in mentions] == [
        (g["colour"], g["shape"], g["motion"], g["position"]) for g in truth
    ]


def test_captions_vary_and_wrong_words_score_low() -> None:
    scene = random_scene(3)
    rng = np.random.default_rng(0)
    assert len({caption_for(scene, rng) for _ in range(30)}) > 5
    obj = scene.objects[0]
    wrong_shape = next(s for s in SHAPES if s != obj.shape)
    score = score_caption(f"a {obj.colour} {wrong_shape} sits still", Scene((obj,), (0, 0, 0), 0))
    assert score.colour == 1 and score.shape == 0 and score.all_three == 0
    assert score_caption("a violet blob", scene).colour == 0
    assert "describe" in VOCABULARY and ":" in VOCABULARY and CAPTION_PROMPT == "describe:"


# --- OpenCV features ------------------------------------------------------------------------


def test_opencv_features_shape_determinism_and_content() -> None:
    extractor = OpenCVFeatures()
    assert isinstance(extractor, FeatureExtractor)
    for seed in range(12):
        scene = random_scene(seed)
        feats = extractor.extract(*_clip(scene))
        assert feats.shape == extractor.feature_shape and feats.dtype == np.float32
        assert np.array_equal(feats, extractor.extract(*_clip(scene)))
        present = feats[:, F.F_PRESENT] > 0
        assert int(present.sum()) == len(scene.objects)
        assert not feats[~present].any()  # empty slots are all zero
        for obj, row in zip(reading_order(scene), feats, strict=False):
            assert {"triangle": 0, "square": 1, "circle": 2}[obj.shape] == int(
                np.argmax(row[F.F_VERTICES])
            )
            dx, dy = row[F.F_SHIFT] / extractor.config.shift_scale
            ex, ey = obj.centre_at(MOTION_SECONDS)
            assert math.isclose(dx, ex - obj.x, abs_tol=0.02) and math.isclose(
                dy, ey - obj.y, abs_tol=0.02
            )


def test_opencv_features_on_odd_input() -> None:
    extractor = OpenCVFeatures()
    blank = np.full((240, 320, 3), 40, np.uint8)
    assert not extractor.extract(blank, blank).any()
    noise = np.random.default_rng(0).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    grey = cv2.cvtColor(noise, cv2.COLOR_BGR2GRAY)
    for first, last in ((noise, noise[::-1].copy()), (grey, grey)):
        feats = extractor.extract(first, last)
        assert feats.shape == extractor.feature_shape and np.isfinite(feats).all()
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract(blank.astype(np.float32), blank)


@pytest.mark.skipif(not (FOOTAGE / "bottle-detection.mp4").is_file(), reason="no shared footage")
def test_opencv_features_on_real_footage() -> None:
    capture = cv2.VideoCapture(str(FOOTAGE / "bottle-detection.mp4"))
    frames = []
    for _ in range(30):
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    feats = OpenCVFeatures().extract(frames[0], frames[-1])
    assert feats.shape == (4, F.SLOT_DIMS) and np.isfinite(feats).all()
    assert np.abs(feats).max() < 50


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
    first, last = _clip(random_scene(5))
    feats = extractor.extract(first, last)
    assert feats.shape == (4, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.array_equal(feats, extractor.extract(first, last))
    assert np.allclose(extractor.extract(first, first)[:, 16:], 0.0)  # no change, no delta
