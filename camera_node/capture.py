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

import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .file_sources import IMAGE_EXTENSIONS, ImageFolderSource, VideoFileSource
from .frame_source import (DEFAULT_TIMESTAMP_FPS, CaptureConfig, Frame, FrameSource, SourceError,
                           StreamLostError)
from .live_sources import (STREAM_SCHEMES, LiveSource, VideoCaptureLike, device_index, open_device,
                           open_stream, redact_url)
from .synthetic_source import (DEFAULT_SYNTHETIC_SIZE, SYNTHETIC_PREFIX, SyntheticSource,
                               parse_synthetic_spec)

__all__ = [
    "CaptureConfig", "Frame", "FrameSource", "SourceError", "StreamLostError", "DEFAULT_TIMESTAMP_FPS",
    "IMAGE_EXTENSIONS", "ImageFolderSource", "VideoFileSource",
    "STREAM_SCHEMES", "LiveSource", "VideoCaptureLike", "redact_url",
    "DEFAULT_SYNTHETIC_SIZE", "SYNTHETIC_PREFIX", "SyntheticSource", "parse_synthetic_spec",
    "SOURCE_HELP", "open_source",
]

SOURCE_HELP = (
    "frame source: a camera index (0) or /dev/videoN, a video file, a folder of images, "
    "an rtsp:// or http(s):// stream URL, or synthetic[:SEED][?fps=10&still=2.0&episodes=N]"
)
"""Help text for a ``--source`` command-line flag."""


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
        return open_stream(spec, cfg)
    index = device_index(spec)
    if index is not None:
        return open_device(index, cfg)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, cfg)
    if path.is_file():
        return VideoFileSource(path, cfg)
    raise SourceError(
        f"no such file or folder: {path}; a source is a device index (0) or /dev/videoN, "
        "a video file, an image folder, an rtsp:// or http(s):// URL, or synthetic[:SEED]"
    )
