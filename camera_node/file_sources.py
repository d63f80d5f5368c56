"""Sources that read stored footage: a video file and a folder of images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .frame_source import DEFAULT_TIMESTAMP_FPS, CaptureConfig, Frame, FrameSource, SourceError, quiet_opencv

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


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
        with quiet_opencv():
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
