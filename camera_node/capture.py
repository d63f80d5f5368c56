"""Frame sources for a camera node, selected by one string (the ``--source`` flag).

``open_source(spec, **options)`` returns a :class:`FrameSource`: a context manager and an
iterator of :class:`Frame`. The spec picks the kind of source:

=====================================  =====================================================
spec                                   source
=====================================  =====================================================
``0``, ``2``, ``/dev/video0``          a V4L2 camera device, by index or device path
``rtsp://...``, ``rtsps://...``,       a network stream; reconnects with bounded backoff
``http://...``, ``https://...``        when it drops (see ``reconnect_*`` options)
a path to a folder                     the folder's ``.jpg/.jpeg/.png/.bmp`` files, sorted
                                       by name, timestamped at ``fps`` (default 10)
any other existing path                a video file (anything OpenCV's FFmpeg reads)
``synthetic[:SEED][?key=value&...]``   built-in synthetic scenes (:mod:`camera_node.scene`)
=====================================  =====================================================

Synthetic spec keys (all optional): ``fps`` (frames per second, default 10), ``still``
(seconds the last frame is held after the motion, default 2.0), ``episodes`` (stop after
this many; default endless), ``width`` and ``height`` (default 320x240). Example:
``synthetic:7?fps=10&still=2.0``; ``lead`` (seconds of empty scene before each
episode's objects appear, default 1.5). Keys in the spec override the same options passed to
:func:`open_source`.

Time ``Frame.t`` is source time in seconds: ``index / fps`` for files, folders and synthetic
scenes (so it keeps growing when a file loops), and a monotonic clock since the source was
opened for live devices and streams.

A source that cannot be opened raises :class:`SourceError` naming what was tried and why it
failed. Live sources (devices and streams) that drop after opening are reopened up to
``reconnect_attempts`` times with exponential backoff, logging a warning per attempt; after
the last one they raise :class:`StreamLostError` (a :class:`SourceError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

if TYPE_CHECKING:  # Self is in typing only from 3.11; annotations are never evaluated
    from typing_extensions import Self

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
SYNTHETIC_PREFIX = "synthetic"
DEFAULT_SYNTHETIC_SIZE = (320, 240)  # (width, height), the scene renderer's own default
DEFAULT_TIMESTAMP_FPS = 10.0  # folders and synthetic scenes when no fps is given
SOURCE_HELP = (
    "frame source: a camera index (0) or /dev/videoN, a video file, a folder of images, "
    "an rtsp:// or http(s):// stream URL, or synthetic[:SEED][?fps=10&still=2.0&episodes=N]"
)
"""Help text for a ``--source`` command-line flag."""
_DEVICE_PATH = re.compile(r"^/dev/video(\d+)$")
_MS_PER_S = 1000.0


class SourceError(RuntimeError):
    """A frame source could not be opened or read; the message says what was tried and why."""


class StreamLostError(SourceError):
    """A live source dropped and did not come back within the configured reconnection budget."""


@dataclass(frozen=True, eq=False)  # eq=False: frames compare by identity, not by pixels
class Frame:
    """One captured frame.

    ``image`` is BGR uint8 with shape ``[H, W, 3]``; ``t`` is source time in seconds;
    ``index`` counts frames from 0 since the source was opened; ``scene`` is the ground
    truth scene for synthetic sources (``None`` elsewhere).
    """

    image: np.ndarray
    t: float
    index: int
    scene: Any = None


@dataclass(frozen=True)
class CaptureConfig:
    """Options for :func:`open_source`; each field is also accepted as a keyword argument.

    Attributes:
        max_frames: stop after this many frames (any source); ``None`` for no limit.
        loop: files and folders start again from the beginning when they end.
        fps: folders and synthetic scenes: frame rate for timestamps (default 10);
            files: overrides the rate the file reports; devices: the rate asked of the
            driver; streams: ignored.
        default_file_fps: timestamp rate for a file that reports no frame rate.
        width, height: devices: the capture size asked of the driver; synthetic scenes:
            the rendered size (default 320x240).
        still_s: synthetic scenes: seconds the last frame of each episode is held.
        lead_s: synthetic scenes: seconds of the empty scene before its objects appear.
        episodes: synthetic scenes: stop after this many episodes; ``None`` is endless.
        reconnect_attempts: live sources: reconnection tries after a drop before
            :class:`StreamLostError`.
        reconnect_backoff_s: delay before the first reconnection try.
        reconnect_backoff_factor: each further try waits this many times longer ...
        reconnect_backoff_max_s: ... up to this delay.
        reconnect_on_open: live sources: apply the same retries when the first open fails
            (for cameras that come up after the node); by default a bad URL or device fails
            at once.
        open_timeout_s, read_timeout_s: streams: FFmpeg's connection and read time-outs.
    """

    max_frames: int | None = None
    loop: bool = False
    fps: float | None = None
    default_file_fps: float = 25.0
    width: int | None = None
    height: int | None = None
    still_s: float = 2.0
    lead_s: float = 1.5
    episodes: int | None = None
    reconnect_attempts: int = 5
    reconnect_backoff_s: float = 0.5
    reconnect_backoff_factor: float = 2.0
    reconnect_backoff_max_s: float = 10.0
    reconnect_on_open: bool = False
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnection try ``attempt`` (1-based)."""
        delay = self.reconnect_backoff_s * self.reconnect_backoff_factor ** (attempt - 1)
        return min(self.reconnect_backoff_max_s, delay)


class VideoCaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the live sources use (tests substitute fakes)."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings while probing: our SourceError says it better.

    OpenCV's log level is process-wide, so this briefly quiets other threads' OpenCV too;
    FFmpeg's own messages are not affected.
    """
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class FrameSource(ABC):
    """An iterator of :class:`Frame` and a context manager; ``close()`` releases it."""

    kind: str = "source"
    fps: float | None = None  # nominal frame rate; None where unknown (live sources)

    def __init__(self, description: str, config: CaptureConfig) -> None:
        self.description = description
        self.config = config
        self._index = 0
        self._closed = False

    @abstractmethod
    def _next(self, index: int) -> Frame | None:
        """The frame with this index, or ``None`` when the source has ended."""

    def _release(self) -> None:  # noqa: B027 (optional hook: a source that holds nothing keeps it)
        """Free what the source holds (called once, by ``close``)."""

    @property
    def frames_read(self) -> int:
        """How many frames this source has produced."""
        return self._index

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Frame:
        limit = self.config.max_frames
        if self._closed or (limit is not None and self._index >= limit):
            raise StopIteration
        frame = self._next(self._index)
        if frame is None:
            raise StopIteration
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the underlying capture; iteration ends afterwards. Idempotent."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class VideoFileSource(FrameSource):
    """A video file read with OpenCV; timestamps are ``index / fps``."""

    kind = "file"
    fps: float

    def __init__(self, path: Path, config: CaptureConfig) -> None:
        super().__init__(str(path), config)
        self.path = path
        self._cap = self._open()
        reported = self._cap.get(cv2.CAP_PROP_FPS)
        if config.fps is not None:
            self.fps = config.fps
        elif reported and np.isfinite(reported) and reported > 0:
            self.fps = float(reported)
        else:
            self.fps = config.default_file_fps
        self._pending: np.ndarray | None = self._read_first()

    def _open(self) -> cv2.VideoCapture:
        with _quiet_opencv():
            cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(
                f"cannot open video file {self.path}: OpenCV found no decoder for it "
                "(is it a video file OpenCV's FFmpeg can read, and not truncated?)"
            )
        return cap

    def _read_first(self) -> np.ndarray:
        ok, image = self._cap.read()
        if not ok or image is None:
            self._cap.release()
            raise SourceError(f"video file {self.path} opens but no frame decodes from it")
        return image

    def _next(self, index: int) -> Frame | None:
        image, self._pending = self._pending, None
        if image is None:
            ok, image = self._cap.read()
            if not ok or image is None:
                if not self.config.loop:
                    return None
                self._cap.release()
                self._cap = self._open()
                image = self._read_first()
        return Frame(image=image, t=index / self.fps, index=index)

    def _release(self) -> None:
        self._cap.release()


class ImageFolderSource(FrameSource):
    """The image files of a folder in name order; timestamps are ``index / fps``."""

    kind = "folder"
    fps: float

    def __init__(self, folder: Path, config: CaptureConfig) -> None:
        super().__init__(str(folder), config)
        self.fps = config.fps if config.fps is not None else DEFAULT_TIMESTAMP_FPS
        self.paths = sorted(
            p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.paths:
            wanted = "/".join(sorted(IMAGE_EXTENSIONS))
            raise SourceError(f"image folder {folder} has no image files ({wanted})")
        self._load(self.paths[0])  # fail at open, not at the first frame

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot decode image {path} (corrupt or not an image)")
        return image

    def _next(self, index: int) -> Frame | None:
        position = index % len(self.paths) if self.config.loop else index
        if position >= len(self.paths):
            return None
        return Frame(image=self._load(self.paths[position]), t=index / self.fps, index=index)


class LiveSource(FrameSource):
    """A camera device or network stream; reconnects with bounded backoff when it drops.

    ``opener`` makes a fresh capture (a ``cv2.VideoCapture`` or anything with the same
    ``isOpened/read/release``); ``sleep`` and ``clock`` are injectable so tests run without
    waiting. Timestamps are ``clock()`` seconds since the source was opened.
    """

    def __init__(
        self,
        description: str,
        config: CaptureConfig,
        *,
        opener: Callable[[], VideoCaptureLike],
        kind: str = "stream",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(description, config)
        self.kind = kind
        self._opener = opener
        self._sleep = sleep
        self._clock = clock
        self.reconnects = 0  # successful reconnections, for health reporting
        first = self._try_open()
        if first is None and config.reconnect_on_open:
            first = self._reconnect(reason="first open failed")
        if first is None:
            raise SourceError(self._open_failure_message())
        self._cap, pending = first
        self._pending: np.ndarray | None = pending
        self._t0 = self._clock()

    def _open_failure_message(self) -> str:
        if self.kind == "device":
            return f"cannot open camera {self.description}: no frame from the device"
        return (
            f"cannot open stream {self.description}: no frame within "
            f"{self.config.open_timeout_s:g} s (check the URL, credentials and network)"
        )

    def _try_open(self) -> tuple[VideoCaptureLike, np.ndarray] | None:
        """A fresh capture and its first frame, or ``None`` if either fails."""
        with _quiet_opencv():
            cap = self._opener()
            if not cap.isOpened():
                cap.release()
                return None
            ok, image = cap.read()
        if not ok or image is None:
            cap.release()
            return None
        return cap, image

    def _reconnect(self, reason: str) -> tuple[VideoCaptureLike, np.ndarray] | None:
        attempts = self.config.reconnect_attempts
        for attempt in range(1, attempts + 1):
            delay = self.config.backoff_s(attempt)
            log.warning(
                "%s %s: %s; reconnection attempt %d/%d in %.2f s",
                self.kind, self.description, reason, attempt, attempts, delay,
            )
            self._sleep(delay)
            opened = self._try_open()
            if opened is not None:
                log.info("%s %s: reconnected on attempt %d", self.kind, self.description, attempt)
                return opened
        return None

    def _next(self, index: int) -> Frame | None:
        image, self._pending = self._pending, None
        if image is None:
            ok, image = self._cap.read()
            if not ok or image is None:
                self._cap.release()
                opened = self._reconnect(reason="no frame (stream dropped)")
                if opened is None:
                    self._closed = True
                    raise StreamLostError(
                        f"{self.kind} {self.description} dropped and did not come back after "
                        f"{self.config.reconnect_attempts} reconnection attempts"
                    )
                self.reconnects += 1
                self._cap, image = opened
        return Frame(image=image, t=self._clock() - self._t0, index=index)

    def _release(self) -> None:
        self._cap.release()


class SyntheticSource(FrameSource):
    """Episodes of synthetic scenes from :mod:`camera_node.scene`, deterministic from a seed.

    Episode ``i`` shows ``random_scene(seed + i)``: first its empty background for
    ``lead_s`` seconds (``render`` at t < 0), then frames at ``t_local = k / fps`` for every
    ``t_local`` in ``[0, MOTION_SECONDS]`` with the objects moving; the last of them is then
    held for ``still_s`` seconds; then the next episode begins. A motion detector therefore
    sees the scene change (no moving object in it), then one burst of motion per episode
    whose ``before`` frame is the empty scene, as a real camera sees things come in.

    ``scene_module`` (anything with ``random_scene``, ``render`` and ``MOTION_SECONDS``)
    defaults to :mod:`camera_node.scene`; tests may pass a stand-in.
    """

    kind = "synthetic"
    fps: float

    def __init__(self, seed: int, config: CaptureConfig, *, scene_module: Any = None) -> None:
        super().__init__(f"{SYNTHETIC_PREFIX}:{seed}", config)
        if scene_module is None:
            from camera_node import scene as scene_module
        self._scenes = scene_module
        self.seed = seed
        self.fps = config.fps if config.fps is not None else DEFAULT_TIMESTAMP_FPS
        default_w, default_h = DEFAULT_SYNTHETIC_SIZE
        self.width = config.width or default_w
        self.height = config.height or default_h
        if self.fps <= 0 or config.still_s < 0 or config.lead_s < 0:
            raise SourceError(f"synthetic source needs fps > 0, still >= 0 and lead >= 0, got {config}")
        # A small tolerance so that MOTION_SECONDS * fps = 19.999999 still counts frame 20.
        self.motion_frames = int(np.floor(scene_module.MOTION_SECONDS * self.fps + 1e-9)) + 1
        self.still_frames = round(config.still_s * self.fps)
        self.lead_frames = round(config.lead_s * self.fps)
        self.episode_frames = self.lead_frames + self.motion_frames + self.still_frames
        self._cached: tuple[int, Any] | None = None
        self._held: tuple[int, np.ndarray] | None = None

    def episode_at(self, index: int) -> int:
        """The episode number that frame ``index`` belongs to."""
        return index // self.episode_frames

    def scene_at(self, index: int) -> Any:
        """The ground-truth scene shown by frame ``index``."""
        episode = self.episode_at(index)
        if self._cached is None or self._cached[0] != episode:
            self._cached = (episode, self._scenes.random_scene(self.seed + episode))
        return self._cached[1]

    def is_moving(self, index: int) -> bool:
        """Whether frame ``index`` lies in its episode's motion part."""
        return 0 <= index % self.episode_frames - self.lead_frames < self.motion_frames

    def _render(self, scene: Any, local: int) -> np.ndarray:
        return self._scenes.render(scene, local / self.fps, width=self.width, height=self.height)

    def _next(self, index: int) -> Frame | None:
        episode = self.episode_at(index)
        if self.config.episodes is not None and episode >= self.config.episodes:
            return None
        scene = self.scene_at(index)
        local = index % self.episode_frames - self.lead_frames  # < 0: the empty lead-in
        if local < self.motion_frames:
            image = self._render(scene, local)
        else:
            if self._held is None or self._held[0] != episode:
                self._held = (episode, self._render(scene, self.motion_frames - 1))
            image = self._held[1].copy()  # each frame owns its pixels
        return Frame(image=image, t=index / self.fps, index=index, scene=scene)


_SYNTHETIC_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "fps": ("fps", float),
    "still": ("still_s", float),
    "lead": ("lead_s", float),
    "episodes": ("episodes", int),
    "width": ("width", int),
    "height": ("height", int),
}


def parse_synthetic_spec(spec: str) -> tuple[int, dict[str, Any]]:
    """``synthetic[:SEED][?key=value&...]`` -> (seed, CaptureConfig overrides)."""
    body, _, query = spec[len(SYNTHETIC_PREFIX):].partition("?")
    if body and not body.startswith(":"):
        raise SourceError(f"bad synthetic spec {spec!r}: expected synthetic[:SEED][?k=v&...]")
    seed_text = body[1:]
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise SourceError(f"bad synthetic seed {seed_text!r} in {spec!r}: not an integer") from None
    overrides: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        if not equals:
            raise SourceError(f"bad synthetic option {item!r} in {spec!r}: expected key=value")
        if key not in _SYNTHETIC_KEYS:
            raise SourceError(
                f"unknown synthetic option {key!r} in {spec!r}; known: {', '.join(_SYNTHETIC_KEYS)}"
            )
        field, convert = _SYNTHETIC_KEYS[key]
        try:
            overrides[field] = convert(value)
        except ValueError:
            raise SourceError(f"bad value {value!r} for {key!r} in {spec!r}") from None
    return seed, overrides


def _device_index(spec: str) -> int | None:
    if spec.isdigit():
        return int(spec)
    match = _DEVICE_PATH.match(spec)
    return int(match.group(1)) if match else None


def _open_device(index: int, config: CaptureConfig) -> LiveSource:
    device_path = f"/dev/video{index}"
    if sys.platform.startswith("linux") and not os.path.exists(device_path):
        raise SourceError(
            f"cannot open camera {index}: {device_path} does not exist "
            "(list cameras with `v4l2-ctl --list-devices`; in a container, pass the device in)"
        )
    backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    requests = [
        (cv2.CAP_PROP_FRAME_WIDTH, config.width),
        (cv2.CAP_PROP_FRAME_HEIGHT, config.height),
        (cv2.CAP_PROP_FPS, config.fps),
    ]

    def opener() -> cv2.VideoCapture:
        cap = cv2.VideoCapture(index, backend)
        for prop, value in requests:
            if value is not None and cap.isOpened():
                cap.set(prop, float(value))
        return cap

    return LiveSource(f"{index} ({device_path})", config, opener=opener, kind="device")


def _open_stream(url: str, config: CaptureConfig) -> LiveSource:
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(config.open_timeout_s * _MS_PER_S),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(config.read_timeout_s * _MS_PER_S),
    ]
    return LiveSource(
        redact_url(url), config,
        opener=lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params), kind="stream",
    )


def _make_config(config: CaptureConfig | None, options: dict[str, Any]) -> CaptureConfig:
    base = config or CaptureConfig()
    known = {f.name for f in dataclasses.fields(CaptureConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SourceError(f"unknown capture option(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(base, **options)


def open_source(spec: str, config: CaptureConfig | None = None, **options: Any) -> FrameSource:
    """Open the frame source that ``spec`` names (see the module docstring for the syntax).

    ``options`` are :class:`CaptureConfig` fields and override ``config``. Raises
    :class:`SourceError` when the source cannot be opened.
    """
    cfg = _make_config(config, options)
    spec = spec.strip()
    if not spec:
        raise SourceError("empty source: give a device index, file, folder, URL or 'synthetic'")
    if spec.split(":", 1)[0].split("?", 1)[0] == SYNTHETIC_PREFIX:
        seed, overrides = parse_synthetic_spec(spec)
        return SyntheticSource(seed, dataclasses.replace(cfg, **overrides))
    if urlsplit(spec).scheme.lower() in STREAM_SCHEMES:
        return _open_stream(spec, cfg)
    index = _device_index(spec)
    if index is not None:
        return _open_device(index, cfg)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, cfg)
    if path.is_file():
        return VideoFileSource(path, cfg)
    raise SourceError(
        f"no such file or folder: {path}; a source is a device index (0) or /dev/videoN, "
        "a video file, an image folder, an rtsp:// or http(s):// URL, or synthetic[:SEED]"
    )
