"""Colour names of an object's pixels, measured on the device (OpenCV and numpy only).

Every foreground pixel of an object gets one of :data:`COLOUR_NAMES` from its HSV value;
an object's name is the most common *chromatic* name when it covers at least
``chromatic_share`` of the pixels (a person's orange vest beside dark trousers), otherwise
the most common name of all. Thresholds are OpenCV's 8-bit HSV: hue 0..179, S and V 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COLOUR_NAMES: tuple[str, ...] = (
    "white", "grey", "black", "red", "orange", "yellow", "green", "blue", "purple", "brown",
)
ACHROMATIC = frozenset({"white", "grey", "black"})
_INDEX = {name: i for i, name in enumerate(COLOUR_NAMES)}

# Upper hue bounds (exclusive) of the chromatic names, in OpenCV's 0..179 hue; red wraps.
_HUE_BANDS: tuple[tuple[int, str], ...] = (
    (5, "red"), (20, "orange"), (34, "yellow"), (85, "green"), (130, "blue"), (160, "purple"),
    (180, "red"),
)


@dataclass(frozen=True)
class ColourConfig:
    """Where one colour name ends and the next begins."""

    black_value: int = 60  # V below this: black
    grey_saturation: int = 60  # S below this: white, grey or black by V
    white_value: int = 175  # low-saturation V at or above this: white
    brown_value: int = 150  # red/orange/yellow hues darker than this read as brown
    brown_saturation: int = 200  # ... unless very saturated
    chromatic_share: float = 0.2


def pixel_names(bgr: np.ndarray, config: ColourConfig = ColourConfig()) -> np.ndarray:
    """Colour-name index [N] of each pixel of BGR uint8 pixels [N, 3]."""
    if len(bgr) == 0:
        return np.zeros(0, np.int64)
    hsv = cv2.cvtColor(bgr.reshape(-1, 1, 3), cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.int32)
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    names = np.full(len(hsv), _INDEX["grey"], np.int64)
    lower = 0
    for upper, name in _HUE_BANDS:
        names[(hue >= lower) & (hue < upper)] = _INDEX[name]
        lower = upper
    warm = (hue < 34) | (hue >= 160)
    brown = warm & (val < config.brown_value) & (sat < config.brown_saturation)
    names[brown] = _INDEX["brown"]
    grey = sat < config.grey_saturation
    names[grey & (val >= config.white_value)] = _INDEX["white"]
    names[grey & (val < config.white_value)] = _INDEX["grey"]
    names[val < config.black_value] = _INDEX["black"]
    return names


def name_histogram(bgr: np.ndarray, config: ColourConfig = ColourConfig()) -> np.ndarray:
    """Pixel counts per colour name [len(COLOUR_NAMES)] of BGR pixels [N, 3]."""
    return np.bincount(pixel_names(bgr, config), minlength=len(COLOUR_NAMES)).astype(np.float64)


def dominant_colour(histogram: np.ndarray, config: ColourConfig = ColourConfig()) -> str | None:
    """The object's colour name from its pixel histogram; ``None`` for no pixels."""
    total = float(histogram.sum())
    if total <= 0:
        return None
    shares = histogram / total
    chromatic = [i for i, name in enumerate(COLOUR_NAMES) if name not in ACHROMATIC]
    best = max(chromatic, key=lambda i: shares[i])
    if shares[best] >= config.chromatic_share:
        return COLOUR_NAMES[best]
    return COLOUR_NAMES[int(np.argmax(shares))]
