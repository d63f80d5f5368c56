"""Live sources: camera devices and network streams, reconnecting with bounded backoff."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from .frame_source import CaptureConfig, Frame, FrameSource, SourceError, StreamLostError, quiet_opencv

# Reconnection warnings are logged under the name of the module that opens sources.
log = logging.getLogger("camera_node.capture")

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
_DEVICE_PATH = re.compile(r"^/dev/video(\d+)$")
_MS_PER_S = 1000.0


class VideoCaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the live sources use (tests substitute fakes)."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


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
        with quiet_opencv():
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


def device_index(spec: str) -> int | None:
    if spec.isdigit():
        return int(spec)
    match = _DEVICE_PATH.match(spec)
    return int(match.group(1)) if match else None


def open_device(index: int, config: CaptureConfig) -> LiveSource:
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


def open_stream(url: str, config: CaptureConfig) -> LiveSource:
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(config.open_timeout_s * _MS_PER_S),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(config.read_timeout_s * _MS_PER_S),
    ]
    return LiveSource(
        redact_url(url), config,
        opener=lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params), kind="stream",
    )

