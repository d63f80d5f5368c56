"""Motion events: still scenes stay quiet, synthetic episodes fire once each, real footage fires."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camera_node import scene as scenes
from camera_node.capture import Frame, SyntheticSource, open_source
from camera_node.events import (
    EndReason,
    Method,
    MotionConfig,
    MotionConfigError,
    MotionDetector,
    detect_events,
)

GIF = Path(__file__).parent / "data" / "people-detection.gif"
NOISE_SIGMA = 3.0  # grey levels, like a cheap sensor


def _noisy_repeats(image: np.ndarray, count: int, fps: float, seed: int = 0) -> list[Frame]:
    """``image`` repeated ``count`` times with fresh Gaussian noise on every frame."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        noisy = image.astype(np.float32) + rng.normal(0.0, NOISE_SIGMA, image.shape)
        frames.append(Frame(np.clip(noisy, 0, 255).astype(np.uint8), t=i / fps, index=i))
    return frames


def _moving_square(count: int, fps: float = 10.0, speed_px: int = 6) -> list[Frame]:
    """A white square sliding right and wrapping around: motion that never stops."""
    frames = []
    for i in range(count):
        image = np.zeros((120, 160, 3), np.uint8)
        x = (i * speed_px) % 140
        image[40:70, x:x + 20] = 255
        frames.append(Frame(image, t=i / fps, index=i))
    return frames


def _gif_frames() -> list[Frame]:
    with open_source(str(GIF)) as src:
        return list(src)


@pytest.mark.parametrize("method", list(Method))
def test_still_scene_with_noise_has_no_event(method: Method) -> None:
    background = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(background, (160, 120), 40, (40, 180, 220), -1)
    cv2.rectangle(background, (20, 20), (90, 60), (200, 200, 200), -1)
    clip = _noisy_repeats(background, 60, fps=10.0)
    assert detect_events(clip, MotionConfig(method=method)) == []


@pytest.mark.parametrize("method", list(Method))
def test_real_first_frame_repeated_has_no_event(method: Method) -> None:
    first = _gif_frames()[0]
    clip = _noisy_repeats(first.image, 40, fps=12.5)
    assert detect_events(clip, MotionConfig(method=method)) == []


def test_real_footage_fires() -> None:
    frames = _gif_frames()
    events = detect_events(frames)
    assert len(events) >= 1
    event = events[0]
    assert event.peak_area >= MotionConfig().min_area
    assert 0 < event.start_index <= event.end_index < len(frames)
    assert event.first.shape == event.last.shape == frames[0].image.shape
    assert event.frame_count == event.end_index - event.start_index + 1


def _expected_events(source: SyntheticSource, episodes: int) -> list[int]:
    """Every episode's objects come in and move: one event each; from the second episode on
    a scene change (the new empty scene replacing the last) comes first."""
    return [e for i in range(episodes) for e in ([i] if i == 0 else [i, i])]


# Seed 11: episode 0 holds only still objects (no event); seed 10: episode 1 does (its event
# is the scene change alone).
@pytest.mark.parametrize("seed", [0, 3, 10, 11, 17])
def test_synthetic_fires_once_per_episode(seed: int) -> None:
    episodes = 5
    with open_source(f"synthetic:{seed}?fps=10&still=2&episodes={episodes}") as src:
        assert isinstance(src, SyntheticSource)
        frames = list(src)
        expected = _expected_events(src, episodes)
    events = detect_events(frames)
    assert [src.episode_at(e.start_index) for e in events] == expected
    for event in events:
        episode = src.episode_at(event.start_index)
        assert event.reason is EndReason.STILL
        assert src.episode_at(event.end_index) == episode
        assert event.scene == scenes.random_scene(seed + episode)
        if not src.is_moving(event.start_index):
            continue  # the scene change at the start of an episode
        # Things come into an empty, settled scene: `before` shows it, and the samples
        # cover the motion up to its last moving frame.
        assert event.before_settled and event.before is not None
        assert np.array_equal(event.before, frames[event.start_index - 1].image)
        assert 2 <= len(event.samples) <= MotionConfig().max_samples
        assert all(event.start_t <= f.t <= event.end_t for f in event.samples)
        if not src.is_moving(event.end_index):
            # Ended in the still part: `last` is the held final frame, the settled scene.
            held = frames[(episode + 1) * src.episode_frames - 1].image
            assert np.array_equal(event.last, held)


def test_synthetic_events_with_mog2() -> None:
    with open_source("synthetic:3?fps=10&still=3&episodes=4") as src:
        assert isinstance(src, SyntheticSource)
        frames = list(src)
        expected = _expected_events(src, 4)
    events = detect_events(frames, MotionConfig(method="mog2"))
    # MOG2 learns the new empty scene as it comes, so the scene change may not fire; every
    # episode's objects do.
    assert sorted({src.episode_at(e.start_index) for e in events}) == sorted(set(expected))
    assert all(any(src.is_moving(i) for i in range(e.start_index, e.end_index + 1)) or
               src.episode_at(e.start_index) > 0 for e in events)


def test_max_duration_and_cooldown() -> None:
    config = MotionConfig(max_event_s=1.0, cooldown_s=0.5)
    events = detect_events(_moving_square(60, fps=10.0), config)
    finished = [e for e in events if e.reason is EndReason.MAX_DURATION]
    assert len(finished) >= 3
    for event in finished:
        assert event.duration_s == pytest.approx(1.0)
    for earlier, later in pairwise(events):
        assert later.start_t >= earlier.end_t + config.cooldown_s - 1e-9


def test_flush_ends_an_open_event() -> None:
    detector = MotionDetector()
    assert detector.flush() is None
    results = [detector.feed(frame) for frame in _moving_square(12)]
    assert results == [None] * 12 and detector.in_event
    event = detector.flush()
    assert event is not None and event.reason is EndReason.FLUSH
    assert event.end_index == 11 and not detector.in_event


def test_event_images_are_copies() -> None:
    frames = _moving_square(12) + _noisy_repeats(_moving_square(12)[-1].image, 10, fps=10.0)
    frames = [Frame(f.image, t=i / 10.0, index=i) for i, f in enumerate(frames)]
    (event,) = detect_events(frames)
    frames[event.start_index].image[:] = 7
    assert not np.all(event.first == 7)


def test_a_new_frame_size_restarts_the_reference() -> None:
    detector = MotionDetector()
    small = _noisy_repeats(np.zeros((60, 80, 3), np.uint8), 5, fps=10.0)
    large = _noisy_repeats(np.zeros((240, 320, 3), np.uint8), 5, fps=10.0)
    for frame in small + [Frame(f.image, t=0.5 + f.t, index=5 + f.index) for f in large]:
        assert detector.feed(frame) is None
    assert not detector.in_event


@pytest.mark.parametrize(
    "field, value",
    [("method", "optical-flow"), ("min_area", 0.0), ("blur_kernel", 4), ("end_still_frames", 0)],
)
def test_bad_config_is_a_typed_error(field: str, value: object) -> None:
    with pytest.raises(MotionConfigError, match=field):
        MotionDetector(MotionConfig(**{field: value}))  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    moves=st.lists(st.booleans(), min_size=1, max_size=80),
    end_still_frames=st.integers(1, 6),
    cooldown_s=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_events_are_ordered_and_disjoint(
    moves: list[bool], end_still_frames: int, cooldown_s: float
) -> None:
    """Whatever the pattern of motion, events are well-formed and never overlap."""
    frames, x = [], 0
    for i, move in enumerate(moves):
        x = (x + 12) % 60 if move else x
        image = np.zeros((48, 80, 3), np.uint8)
        image[10:30, x:x + 20] = 255
        frames.append(Frame(image, t=i / 10.0, index=i))
    config = MotionConfig(reference_gap_s=0.0, end_still_frames=end_still_frames,
                          cooldown_s=cooldown_s)
    events = detect_events(frames, config)
    for event in events:
        assert 0 <= event.start_index <= event.end_index < len(frames)
        assert event.frame_count == event.end_index - event.start_index + 1
        assert 0 < event.peak_area <= 1
        if event.reason is EndReason.STILL:
            assert event.frame_count > end_still_frames
    for earlier, later in pairwise(events):
        assert later.start_t >= earlier.end_t + cooldown_s - 1e-9
    if not any(moves[1:]):
        assert events == []
