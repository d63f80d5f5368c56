"""The person test: OpenCV's HOG people detector, shipped inside OpenCV 4 (no download).

OpenCV 5 dropped ``HOGDescriptor``; there :attr:`PeopleDetector.available` is False and the
kind rules fall back to a track's shape. HOG finds upright people walking at a distance and
misses people close to the camera, so it only ever adds evidence for "person".
"""

from __future__ import annotations

import cv2
import numpy as np


class PeopleDetector:
    """HOG + linear SVM people detector on frames resized to ``width`` pixels."""

    def __init__(self, width: int = 480, checks: int = 3, min_weight: float = 0.3) -> None:
        self.width = width
        self.checks = checks  # samples per event it looks at
        self.min_weight = min_weight
        self._hog = None
        if hasattr(cv2, "HOGDescriptor"):
            self._hog = cv2.HOGDescriptor()
            # cv2's stub calls the detector a Sequence[float]; it is the ndarray setSVMDetector takes
            self._hog.setSVMDetector(cv2.HOGDescriptor.getDefaultPeopleDetector())  # type: ignore[call-overload]

    @property
    def available(self) -> bool:
        """Whether this OpenCV build has the detector."""
        return self._hog is not None

    def detect(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Normalised (x, y, w, h) boxes of the people found in one BGR frame."""
        if self._hog is None:
            return []
        h, w = frame.shape[:2]
        scale = min(1.0, self.width / w)
        image = cv2.resize(frame, (round(w * scale), round(h * scale))) if scale < 1 else frame
        rects, weights = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        ih, iw = image.shape[:2]
        return [
            (x / iw, y / ih, bw / iw, bh / ih)
            for (x, y, bw, bh), weight in zip(rects, np.ravel(weights), strict=True)
            if weight >= self.min_weight
        ]
