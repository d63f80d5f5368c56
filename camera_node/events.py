"""On-device motion events: turn a stream of frames into finished :class:`MotionEvent` s.

A :class:`MotionDetector` looks at a small, blurred copy of each frame and measures the
*changed area*: the fraction of its pixels whose colour differs from a reference by more than
``pixel_threshold`` levels in some channel. Two references are available (``MotionConfig.method``):

* ``"diff"`` (default): the frame ``reference_gap_s`` seconds earlier. A gap of a few frames
  rather than one lets slow movers (a person crossing a hallway at 12 fps) add up to a
  visible change, and the change vanishes ``reference_gap_s`` after motion stops, so events
  end promptly. Deterministic and cheap.
* ``"mog2"``: OpenCV's MOG2 background subtractor, which tolerates flicker and swaying
  texture better but reports a stopped object as foreground until it learns it.

A frame *moves* when its changed area is at least ``min_area``. An event starts at the first
moving frame (after any cool-down) and ends at the ``end_still_frames``-th consecutive still
frame, or when it has lasted ``max_event_s``. ``feed`` returns the event on the frame that
ends it; ``flush`` ends one still open when the stream ends.

Which frames an event carries: ``first`` is the first *moving* frame, ``before`` the frame
just before it (the scene before motion began, ``None`` at the start of a stream), and
``last`` the frame that *ended* the event: after a still end it shows the settled scene.
``samples`` holds at most ``max_samples`` frames spread evenly over the moving part of the
event (its first and last moving frame included), from which the device tracks objects (:mod:`camera_node.objects`): the
detector keeps every ``stride``-th frame and, when the list is full, drops every other one
and doubles the stride, so memory stays bounded however long the event runs.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from camera_node.capture import Frame

# Source times are sums and quotients of floats (index / fps): compare them with this slack,
# so that an event of exactly max_event_s ends on the frame that reaches it.
TIME_TOLERANCE_S = 1e-9


class MotionConfigError(ValueError):
    """A :class:`MotionConfig` value is out of range; the message names the field."""


class Method(str, enum.Enum):
    """How the changed area is measured."""

    DIFF = "diff"
    MOG2 = "mog2"


class EndReason(str, enum.Enum):
    """Why an event ended."""

    STILL = "still"  # end_still_frames consecutive still frames
    MAX_DURATION = "max_duration"  # it lasted max_event_s
    FLUSH = "flush"  # the stream ended (MotionDetector.flush)


@dataclass(frozen=True)
class MotionConfig:
    """Motion-detector settings; the defaults suit 5-30 fps cameras at any resolution.

    Attributes:
        method: ``"diff"`` (frame ``reference_gap_s`` earlier) or ``"mog2"``.
        process_width: frames are shrunk to this width (aspect kept, never enlarged)
            before measuring: cheaper, and sensor noise averages out.
        blur_kernel: side of the Gaussian blur on the small grey image (odd pixels).
        pixel_threshold: difference (0..255) in any colour channel at which a pixel counts as changed.
        min_area: changed fraction of the frame (0..1) at which a frame counts as moving.
        reference_gap_s: ``diff``: seconds between a frame and the frame it is compared with.
        end_still_frames: an event ends at this many consecutive still frames.
        max_event_s: an event ends when it has lasted this many seconds of source time.
        cooldown_s: after an event ends, no new one starts for this many seconds.
        mog2_history: ``mog2``: frames the background model remembers.
        mog2_var_threshold: ``mog2``: squared Mahalanobis distance for foreground.
        mog2_warmup_frames: ``mog2``: the first frames only train the model (the very
            first frame is all foreground to a fresh model).
        max_samples: most frames an event keeps for object tracking (``MotionEvent.samples``).
        settle_frames: still frames seen before an event for its ``before`` frame to count
            as the settled scene (``MotionEvent.before_settled``).
    """

    method: Method | str = Method.DIFF
    process_width: int = 160
    blur_kernel: int = 5
    pixel_threshold: int = 20
    min_area: float = 0.002
    reference_gap_s: float = 0.25
    end_still_frames: int = 8
    max_event_s: float = 30.0
    cooldown_s: float = 0.5
    mog2_history: int = 100
    mog2_var_threshold: float = 16.0
    mog2_warmup_frames: int = 3
    max_samples: int = 16
    settle_frames: int = 3

    def validate(self) -> MotionConfig:
        """Raise :class:`MotionConfigError` for an impossible value; return ``self``."""
        try:
            Method(self.method)
        except ValueError:
            raise MotionConfigError(
                f"method must be one of {[m.value for m in Method]}, got {self.method!r}"
            ) from None
        checks = {
            "process_width": self.process_width >= 8,
            "blur_kernel": self.blur_kernel >= 1 and self.blur_kernel % 2 == 1,
            "pixel_threshold": 0 <= self.pixel_threshold < 255,
            "min_area": 0.0 < self.min_area <= 1.0,
            "reference_gap_s": self.reference_gap_s >= 0.0,
            "end_still_frames": self.end_still_frames >= 1,
            "max_event_s": self.max_event_s > 0.0,
            "cooldown_s": self.cooldown_s >= 0.0,
            "mog2_history": self.mog2_history >= 1,
            "mog2_warmup_frames": self.mog2_warmup_frames >= 0,
            "max_samples": self.max_samples >= 2,
            "settle_frames": self.settle_frames >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                value = getattr(self, name)
                raise MotionConfigError(f"MotionConfig.{name} out of range: {value!r}")
        return self


@dataclass(frozen=True, eq=False)  # compared by identity: it holds images
class MotionEvent:
    """One finished motion event.

    ``first`` is the first moving frame, ``before`` the frame just before it (``None`` when
    motion began on the stream's first compared frame), ``last`` the frame that ended the
    event; all BGR uint8 copies. ``frame_count`` counts frames from ``first`` to ``last``
    inclusive; ``peak_area`` is the largest changed fraction (0..1) seen; ``scene`` is the
    ground-truth scene of ``last`` for synthetic sources.
    """

    start_t: float
    end_t: float
    start_index: int
    end_index: int
    first: np.ndarray
    last: np.ndarray
    before: np.ndarray | None
    frame_count: int
    peak_area: float
    reason: EndReason
    scene: Any = None
    samples: tuple[Frame, ...] = ()
    before_settled: bool = False  # the scene was still for a while before: `before` shows it

    def clip(self) -> tuple[Frame, ...]:
        """Frames to track objects in: ``samples``, or ``first`` and ``last`` without them."""
        if self.samples:
            return self.samples
        return (Frame(self.first, self.start_t, self.start_index), Frame(self.last, self.end_t, self.end_index))

    @property
    def duration_s(self) -> float:
        """Source-time seconds from the first to the last frame."""
        return self.end_t - self.start_t


@dataclass
class _OpenEvent:
    first: Frame
    before: Frame | None
    latest: Frame
    frame_count: int
    peak_area: float
    still_run: int = 0
    samples: list[Frame] = field(default_factory=list)
    stride: int = 1
    last_moving: Frame | None = None
    settled: bool = False

    def sample(self, frame: Frame, limit: int) -> None:
        """Keep every ``stride``-th frame; when ``limit`` is passed halve the list, double
        the stride. The first frame always stays."""
        if (self.frame_count - 1) % self.stride:
            return
        self.samples.append(frame)
        if len(self.samples) > limit - 1:  # one place is left for the last frame
            self.samples = self.samples[::2]
            self.stride *= 2


class MotionDetector:
    """Feed frames in order; get a :class:`MotionEvent` back on the frame that ends one."""

    def __init__(self, config: MotionConfig | None = None) -> None:
        self.config = (config or MotionConfig()).validate()
        self._method = Method(self.config.method)
        self.reset()

    def reset(self) -> None:
        """Forget all history (use when the source changes); any open event is dropped."""
        self._history: deque[tuple[float, np.ndarray]] = deque()  # (t, small grey image)
        self._mog2: cv2.BackgroundSubtractorMOG2 | None = None
        self._mog2_frames = 0
        self._shape: tuple[int, ...] | None = None
        self._previous: Frame | None = None
        self._still_run = 0  # consecutive still frames outside events
        self._open: _OpenEvent | None = None
        self._cooldown_until = float("-inf")
        self.changed_area = 0.0  # of the last frame fed, for diagnostics and tuning

    @property
    def in_event(self) -> bool:
        """Whether an event has started and not yet ended."""
        return self._open is not None

    def feed(self, frame: Frame) -> MotionEvent | None:
        """Measure one frame; return the event this frame ends, if any."""
        area = self._measure(frame)
        self.changed_area = area
        moving = area >= self.config.min_area
        finished: MotionEvent | None = None
        event = self._open
        if event is None:
            if moving and frame.t >= self._cooldown_until - TIME_TOLERANCE_S:
                self._open = _OpenEvent(
                    first=frame, before=self._previous, latest=frame, frame_count=1, peak_area=area,
                    settled=self._still_run >= self.config.settle_frames,
                )
                self._open.sample(frame, self.config.max_samples)
        else:
            event.latest = frame
            event.frame_count += 1
            event.sample(frame, self.config.max_samples)
            event.peak_area = max(event.peak_area, area)
            event.still_run = 0 if moving else event.still_run + 1
            if moving:
                event.last_moving = frame
            if event.still_run >= self.config.end_still_frames:
                finished = self._finish(EndReason.STILL)
            elif frame.t - event.first.t >= self.config.max_event_s - TIME_TOLERANCE_S:
                finished = self._finish(EndReason.MAX_DURATION)
        self._still_run = 0 if moving or self._open is not None else self._still_run + 1
        self._previous = frame
        return finished

    def flush(self) -> MotionEvent | None:
        """End the open event, if any, at the last frame fed (call when the stream ends)."""
        return self._finish(EndReason.FLUSH) if self._open is not None else None

    def _finish(self, reason: EndReason) -> MotionEvent:
        event = self._open
        assert event is not None
        self._open = None
        self._cooldown_until = event.latest.t + self.config.cooldown_s
        # Track objects over the moving part only: the still frames that end an event would
        # make every object look as if it stopped.
        moving_end = (event.last_moving or event.first).t
        samples = [f for f in event.samples if f.t <= moving_end + TIME_TOLERANCE_S]
        tail = event.last_moving or event.first
        if samples[-1] is not tail:
            samples.append(tail)
        return MotionEvent(
            start_t=event.first.t,
            end_t=event.latest.t,
            start_index=event.first.index,
            end_index=event.latest.index,
            first=event.first.image.copy(),
            last=event.latest.image.copy(),
            before=None if event.before is None else event.before.image.copy(),
            frame_count=event.frame_count,
            peak_area=event.peak_area,
            reason=reason,
            scene=event.latest.scene,
            samples=tuple(Frame(f.image.copy(), f.t, f.index, f.scene) for f in samples),
            before_settled=event.settled and event.before is not None,
        )

    def _small(self, image: np.ndarray) -> np.ndarray:
        """The frame shrunk and blurred, in colour (a red car on a grey road of the same
        brightness differs in colour, not in grey level)."""
        height, width = image.shape[:2]
        target = min(width, self.config.process_width)
        size = (target, max(1, round(height * target / width)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if target < width else image
        kernel = self.config.blur_kernel
        return cv2.GaussianBlur(small, (kernel, kernel), 0) if kernel > 1 else small

    def _measure(self, frame: Frame) -> float:
        """Changed fraction of ``frame`` (0..1); updates the reference history or model."""
        grey = self._small(frame.image)
        restarted = self._history and frame.t < self._history[-1][0]
        if grey.shape != self._shape or restarted:
            # A new camera, size or clock: old references mean nothing; keep any open event.
            self._history.clear()
            self._mog2 = None
            self._mog2_frames = 0
            self._shape = grey.shape
        if self._method is Method.MOG2:
            return self._measure_mog2(grey)
        return self._measure_diff(frame.t, grey)

    def _measure_diff(self, t: float, grey: np.ndarray) -> float:
        history = self._history
        cutoff = t - self.config.reference_gap_s
        # Keep the newest frame at least the gap old at the left; drop everything older.
        while len(history) >= 2 and history[1][0] <= cutoff:
            history.popleft()
        area = 0.0
        if history:
            reference = history[0][1]
            diff = cv2.absdiff(grey, reference)
            if diff.ndim == 3:
                diff = diff.max(axis=2)  # the channel that changed most
            changed = diff > self.config.pixel_threshold
            area = float(np.count_nonzero(changed)) / changed.size
        history.append((t, grey))
        return area

    def _measure_mog2(self, grey: np.ndarray) -> float:
        if self._mog2 is None:
            self._mog2 = cv2.createBackgroundSubtractorMOG2(
                history=self.config.mog2_history,
                varThreshold=self.config.mog2_var_threshold,
                detectShadows=False,
            )
        mask = self._mog2.apply(cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY) if grey.ndim == 3 else grey)
        self._mog2_frames += 1
        if self._mog2_frames <= self.config.mog2_warmup_frames:
            return 0.0
        return float(np.count_nonzero(mask)) / mask.size


def detect_events(frames: Any, config: MotionConfig | None = None) -> list[MotionEvent]:
    """All events in an iterable of frames, including one still open at the end."""
    detector = MotionDetector(config)
    events = [event for frame in frames if (event := detector.feed(frame)) is not None]
    tail = detector.flush()
    return events + ([tail] if tail is not None else [])
