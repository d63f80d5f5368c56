"""Frame sources: spec parsing, synthetic episodes, files, folders, errors, reconnection."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from camera_node import scene as scenes
from camera_node.capture import (
    CaptureConfig,
    Frame,
    LiveSource,
    SourceError,
    StreamLostError,
    SyntheticSource,
    open_source,
    parse_synthetic_spec,
    redact_url,
)

DATA = Path(__file__).parent / "data"
GIF = DATA / "people-detection.gif"


def _pattern(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A frame whose brightness and bar position both encode ``i``."""
    image = np.full((height, width, 3), 20 + 10 * i, np.uint8)
    cv2.rectangle(image, (4 * i, 0), (4 * i + 7, height - 1), (255, 255, 255), -1)
    return image


# --- spec parsing -------------------------------------------------------------------------


def test_synthetic_spec_defaults_and_options() -> None:
    assert parse_synthetic_spec("synthetic") == (0, {})
    assert parse_synthetic_spec("synthetic:42") == (42, {})
    seed, overrides = parse_synthetic_spec("synthetic:7?fps=12.5&still=1.5&episodes=3")
    assert seed == 7
    assert overrides == {"fps": 12.5, "still_s": 1.5, "episodes": 3}
    seed, overrides = parse_synthetic_spec("synthetic?width=160&height=120")
    assert (seed, overrides) == (0, {"width": 160, "height": 120})


@pytest.mark.parametrize(
    "spec", ["synthetic:x", "synthetic:1?speed=3", "synthetic:1?fps=fast", "synthetic:1?fps"]
)
def test_bad_synthetic_spec_is_a_source_error(spec: str) -> None:
    with pytest.raises(SourceError):
        open_source(spec)


def test_spec_options_override_keyword_options() -> None:
    with open_source("synthetic:1?fps=5", fps=20.0, width=64, height=48) as src:
        frame = next(src)
    assert isinstance(src, SyntheticSource) and src.fps == 5.0
    assert frame.image.shape == (48, 64, 3)


def test_unknown_option_and_empty_spec_are_source_errors() -> None:
    with pytest.raises(SourceError, match="unknown capture option"):
        open_source("synthetic", frames_per_second=3)
    with pytest.raises(SourceError, match="empty source"):
        open_source("  ")


# --- synthetic source ----------------------------------------------------------------------


def _take(spec: str, n: int) -> list[Frame]:
    with open_source(spec) as src:
        return [frame for _, frame in zip(range(n), src)]


def test_synthetic_is_deterministic_from_the_seed() -> None:
    a, b = _take("synthetic:5", 40), _take("synthetic:5", 40)
    assert all(np.array_equal(x.image, y.image) and x.t == y.t for x, y in zip(a, b))
    c = _take("synthetic:6", 40)
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_synthetic_episode_timing_and_ground_truth() -> None:
    fps, still, lead, seed = 10.0, 2.0, 1.0, 11
    motion_frames = int(np.floor(scenes.MOTION_SECONDS * fps + 1e-9)) + 1
    lead_frames = round(lead * fps)
    episode_frames = lead_frames + motion_frames + round(still * fps)
    with open_source(f"synthetic:{seed}?fps={fps}&still={still}&lead={lead}&episodes=3") as src:
        frames = list(src)
        assert isinstance(src, SyntheticSource)
        assert src.episode_frames == episode_frames and src.motion_frames == motion_frames
    assert len(frames) == 3 * episode_frames
    for frame in frames:
        episode, local = divmod(frame.index, episode_frames)
        local -= lead_frames  # < 0: the empty scene before the objects appear
        assert frame.t == pytest.approx(frame.index / fps)
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        assert frame.scene == scenes.random_scene(seed + episode) == src.scene_at(frame.index)
        assert src.is_moving(frame.index) == (0 <= local < motion_frames)
        if local < motion_frames:
            expected = scenes.render(frame.scene, local / fps)
            assert np.array_equal(frame.image, expected)
        else:  # the still part holds the last motion frame exactly
            assert np.array_equal(frame.image, frames[frame.index - 1].image)
            assert not src.is_moving(frame.index)


def test_synthetic_frames_own_their_pixels() -> None:
    frames = _take("synthetic:2?still=1", 15)
    frames[-1].image[:] = 0
    assert frames[-2].image.any()


def test_synthetic_with_a_stand_in_scene_module() -> None:
    """The source only needs random_scene, render and MOTION_SECONDS."""
    fake = SimpleNamespace(
        MOTION_SECONDS=0.5,
        random_scene=lambda seed: {"seed": seed},
        render=lambda scene, t, width, height: np.full((height, width, 3), scene["seed"], np.uint8),
    )
    src = SyntheticSource(3, CaptureConfig(fps=4.0, still_s=0.5, lead_s=0.0, episodes=2),
                          scene_module=fake)
    frames = list(src)
    assert src.motion_frames == 3 and src.episode_frames == 5
    assert [f.scene["seed"] for f in frames] == [3] * 5 + [4] * 5


# --- video files ---------------------------------------------------------------------------


@pytest.fixture()
def avi(tmp_path: Path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 8.0, (64, 48))
    assert writer.isOpened()
    for i in range(12):
        writer.write(_pattern(i))
    writer.release()
    return path


def test_video_file_round_trip(avi: Path) -> None:
    with open_source(str(avi)) as src:
        frames = list(src)
    assert src.kind == "file" and src.fps == pytest.approx(8.0)
    assert [f.index for f in frames] == list(range(12))
    assert [f.t for f in frames] == pytest.approx([i / 8.0 for i in range(12)])
    for i, frame in enumerate(frames):
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        # MJPG is lossy: compare with the written frame within a tolerance.
        error = np.abs(frame.image.astype(int) - _pattern(i).astype(int)).mean()
        assert error < 8


def test_video_file_max_frames_and_loop(avi: Path) -> None:
    assert len(list(open_source(str(avi), max_frames=5))) == 5
    with open_source(str(avi), loop=True, max_frames=30) as src:
        frames = list(src)
    assert [f.index for f in frames] == list(range(30))
    assert np.all(np.diff([f.t for f in frames]) > 0)  # time keeps running across loops
    assert np.array_equal(frames[12].image, frames[0].image)


def test_real_footage_copy_reads_as_a_file() -> None:
    with open_source(str(GIF)) as src:
        frames = list(src)
    assert len(frames) == 23
    assert frames[0].image.shape == (270, 480, 3)
    assert src.fps == pytest.approx(12.5)


def test_close_ends_iteration(avi: Path) -> None:
    with open_source(str(avi)) as src:
        next(src)
    with pytest.raises(StopIteration):
        next(src)
    src.close()  # idempotent


# --- image folders -------------------------------------------------------------------------


def test_image_folder_in_name_order(tmp_path: Path) -> None:
    names = ["c_02.png", "a_00.bmp", "d_03.PNG", "b_01.png"]  # written out of order
    for name in names:
        cv2.imwrite(str(tmp_path / name), _pattern(int(name[2:4])))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder with an image-like name is skipped
    with open_source(str(tmp_path), fps=4.0) as src:
        frames = list(src)
    assert src.kind == "folder" and len(frames) == len(names)
    for i, frame in enumerate(frames):
        assert np.array_equal(frame.image, _pattern(i))  # PNG and BMP are lossless
    assert [f.t for f in frames] == [0.0, 0.25, 0.5, 0.75]


def test_image_folder_loop_and_default_fps(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.jpg"), _pattern(i))
    with open_source(str(tmp_path), loop=True, max_frames=7) as src:
        frames = list(src)
    assert len(frames) == 7 and frames[6].t == pytest.approx(0.6)
    assert np.array_equal(frames[3].image, frames[0].image)


# --- sources that cannot be opened ---------------------------------------------------------


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(str(tmp_path / "missing.mp4"))


def test_undecodable_file_is_a_source_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"this is not a video " * 100)
    with pytest.raises(SourceError, match="cannot open video file"):
        open_source(str(bogus))


def test_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does-not-exist"):
        open_source(str(tmp_path / "does-not-exist") + "/")


def test_empty_folder_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path))


def test_corrupt_first_image_is_a_source_error(tmp_path: Path) -> None:
    (tmp_path / "000.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(SourceError, match="cannot decode image"):
        open_source(str(tmp_path))


@pytest.mark.parametrize("spec", ["97", "/dev/video97"])
def test_bad_device_index_is_a_source_error(spec: str) -> None:
    with pytest.raises(SourceError, match="camera 97"):
        open_source(spec)


def test_unreachable_stream_is_a_source_error() -> None:
    # Port 1 on loopback refuses at once; the password must not reach the message.
    with pytest.raises(SourceError, match="cannot open stream") as info:
        open_source("rtsp://admin:hunter2@127.0.0.1:1/live", open_timeout_s=2.0)
    assert "hunter2" not in str(info.value)


def test_redact_url() -> None:
    assert redact_url("rtsp://u:p@cam.local:554/s") == "rtsp://u:***@cam.local:554/s"
    assert redact_url("http://cam.local/mjpg") == "http://cam.local/mjpg"


# --- live sources: reconnection with bounded backoff ---------------------------------------


class FakeCapture:
    """A capture that yields ``frames`` frames and then drops; ``opens`` False never opens."""

    def __init__(self, frames: int, opens: bool = True) -> None:
        self.frames, self.opens, self.released = frames, opens, False

    def isOpened(self) -> bool:
        return self.opens

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.opens or self.frames == 0:
            return False, None
        self.frames -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def release(self) -> None:
        self.released = True


class Script:
    """Hands out the scripted captures in order, and records the backoff sleeps."""

    def __init__(self, *captures: FakeCapture) -> None:
        self.captures = list(captures)
        self.sleeps: list[float] = []
        self.now = 100.0

    def open(self) -> FakeCapture:
        return self.captures.pop(0)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        self.now += 0.1
        return self.now


def _live(script: Script, **options: object) -> LiveSource:
    return LiveSource(
        "fake", CaptureConfig(**options),  # type: ignore[arg-type]
        opener=script.open, sleep=script.sleep, clock=script.clock,
    )


def test_stream_reconnects_after_a_drop(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(FakeCapture(3), FakeCapture(0, opens=False), FakeCapture(0), FakeCapture(2))
    with caplog.at_level(logging.WARNING, logger="camera_node.capture"):
        source = _live(script, reconnect_backoff_s=0.5, reconnect_attempts=4)
        frames = list(zip(range(5), source))
    assert len(frames) == 5
    assert [f.index for _, f in frames] == list(range(5))
    assert np.all(np.diff([f.t for _, f in frames]) > 0)
    assert script.sleeps == [0.5, 1.0, 2.0]  # failed open, open without a frame, success
    assert source.reconnects == 1
    retries = [r for r in caplog.records if "reconnection attempt" in r.getMessage()]
    assert [r.getMessage().split("attempt ")[1][:3] for r in retries] == ["1/4", "2/4", "3/4"]


def test_stream_gives_up_with_a_typed_error() -> None:
    script = Script(FakeCapture(1), *(FakeCapture(0, opens=False) for _ in range(4)))
    source = _live(
        script, reconnect_attempts=4, reconnect_backoff_s=1.0, reconnect_backoff_max_s=3.0
    )
    next(source)
    with pytest.raises(StreamLostError, match="after 4 reconnection attempts"):
        next(source)
    assert script.sleeps == [1.0, 2.0, 3.0, 3.0]  # doubling, capped
    with pytest.raises(StopIteration):
        next(source)


def test_first_open_fails_fast_unless_asked_to_retry() -> None:
    with pytest.raises(SourceError, match="cannot open stream"):
        _live(Script(FakeCapture(0, opens=False)))
    script = Script(FakeCapture(0, opens=False), FakeCapture(1))
    source = _live(script, reconnect_on_open=True, reconnect_backoff_s=0.25)
    assert len(list(zip(range(1), source))) == 1 and script.sleeps == [0.25]
