"""What every frame source shares: :class:`Frame`, the :class:`FrameSource` base, its options
(:class:`CaptureConfig`) and errors. :func:`camera_node.capture.open_source` picks the source."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:  # Self is in typing only from 3.11; annotations are never evaluated
    from typing_extensions import Self

DEFAULT_TIMESTAMP_FPS = 10.0  # folders and synthetic scenes when no fps is given


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



@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
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
