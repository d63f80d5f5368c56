"""Tracks of moving things and the box arithmetic the tracker uses.

Boxes are (x, y, w, h), normalised: x and w by the frame width, y and h by its height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    """One object in one sample: normalised box (x, y, w, h) and its pixels' colour counts."""

    t: float
    box: tuple[float, float, float, float]
    area: float  # foreground pixels / frame pixels
    colours: np.ndarray  # [len(COLOUR_NAMES)]
    coasted: bool = False  # predicted while merged with another object's region, not seen

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


@dataclass
class Track:
    """One object followed across the samples."""

    observations: list[Observation] = field(default_factory=list)
    people_hits: int = 0  # samples in which the people detector found a person on this box

    @property
    def last(self) -> Observation:
        return self.observations[-1]

    @property
    def seen(self) -> int:
        """Samples in which the object had a region of its own."""
        return sum(not o.coasted for o in self.observations)


def predict(track: Track, t: float) -> tuple[float, float, float, float]:
    """The track's last box moved on to time ``t`` at the speed of its last two samples."""
    a, b = track.observations[-2], track.observations[-1]
    step = (t - b.t) / max(b.t - a.t, 1e-6)
    x, y, w, h = b.box
    x += (b.box[0] - a.box[0]) * step
    y += (b.box[1] - a.box[1]) * step
    return (min(max(x, -w), 1.0), min(max(y, -h), 1.0), w, h)


def travel_of(track: Track) -> float:
    """How far (frame-normalised) the centre moved from the first observation to the last."""
    return math.dist(track.observations[0].centre, track.last.centre)


def seen_travel(track: Track) -> float:
    """How far the centre moved between the first and the last sample the track was seen in."""
    seen = [o for o in track.observations if not o.coasted]
    return math.dist(seen[0].centre, seen[-1].centre) if seen else 0.0


def inside_share(small: Track, big: Track) -> float:
    """Mean share of ``small``'s box inside ``big``'s box, over the samples both are in."""
    boxes = {o.t: o.box for o in big.observations}
    shares = [overlap_share(o.box, boxes[o.t]) for o in small.observations if o.t in boxes]
    return float(np.mean(shares)) if shares else 0.0


def border_side(box: tuple[float, float, float, float], margin: float) -> str:
    """The frame border a normalised (x, y, w, h) box touches within ``margin`` (the nearest
    if several), or ``inside`` (touching nothing, or three borders or more: it fills the frame)."""
    x, y, w, h = box
    gaps = {"left": x, "right": 1 - (x + w), "top": y, "bottom": 1 - (y + h)}
    touching = {side: gap for side, gap in gaps.items() if gap <= margin}
    if not touching or len(touching) >= 3:
        return "inside"
    return min(touching, key=lambda s: touching[s])


def intersection(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area of the overlap of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def overlap_share(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection of a and b as a share of a's area."""
    return intersection(a, b) / max(a[2] * a[3], 1e-9)
