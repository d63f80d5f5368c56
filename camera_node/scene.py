"""Synthetic camera scenes for training and evaluating the default model pair.

A :class:`Scene` is a textured background (floor, wall, tiles, blotches, lighting gradient)
with one to three moving things of the kinds a camera meets: people (head, shirt or vest,
trousers, swinging legs), vehicles (body, windows, wheels), small objects and animal-sized
ones. Each moves in a straight line for part of :data:`MOTION_SECONDS` (left, right, up,
down, or towards / away from the camera by growing or shrinking), may enter or leave
through a border, and may stop before the end. Everything is a pure function of the seed:
``random_scene(seed)`` always builds the same scene and ``render(scene, t)`` always draws the
same frame, sensor noise included.

Coordinates are normalised: ``x`` 0..1 left to right, ``y`` 0..1 top to bottom; an object's
``height`` is a fraction of the frame height and ``aspect`` its height / width in pixels.

Ground truth (what a caption should say about each object, :func:`ground_truth`): its kind,
colour name (a person's: the shirt's), direction (the words that are true of it: a thing
that comes closer also moves down the frame), entry and exit side (the border its box
touches at the start and the end, or ``inside``), and whether it stopped.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from camera_node.objects import DIRECTIONS, KINDS, TrackConfig, border_side

MOTION_SECONDS = 2.0
"""How long an episode's motion lasts: the event clip runs from t=0 to t=MOTION_SECONDS."""

# BGR of each colour name, with a spread the renderer jitters within.
PALETTE_BGR: dict[str, tuple[int, int, int]] = {
    "white": (232, 234, 236),
    "grey": (128, 128, 128),
    "black": (28, 28, 30),
    "red": (35, 30, 200),
    "orange": (20, 120, 245),
    "yellow": (30, 215, 235),
    "green": (50, 160, 40),
    "blue": (190, 80, 25),
    "purple": (150, 40, 130),
    "brown": (40, 70, 115),
}
COLOURS: tuple[str, ...] = tuple(PALETTE_BGR)
KIND_COLOURS: dict[str, tuple[str, ...]] = {
    "person": COLOURS,
    "vehicle": ("white", "grey", "black", "red", "blue", "yellow", "green", "orange"),
    "small object": ("red", "orange", "yellow", "green", "blue", "purple", "white"),
    "animal": ("brown", "black", "white", "grey", "orange"),
}
SCENE_KINDS: tuple[str, ...] = KINDS[:4]  # every kind but the unsure "object"
MOVES: tuple[str, ...] = DIRECTIONS[:6]  # every direction but "still"
_ALSO = {"towards": ("down",), "away": ("up",)}
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_SIZES = {  # (min height, max height, min aspect, max aspect) per kind
    "person": (0.3, 0.6, 2.3, 3.0),
    "vehicle": (0.2, 0.32, 0.42, 0.6),
    "small object": (0.065, 0.09, 0.8, 1.3),
    "animal": (0.12, 0.15, 0.65, 0.85),
}


@dataclass(frozen=True)
class SceneObject:
    """One moving thing: centre (x0, y0) -> (x1, y1) and height h0 -> h1 over its motion,
    reached at ``stop_at`` x MOTION_SECONDS and held after that."""

    kind: str
    colour: str
    bgr: tuple[int, int, int]
    direction: str
    x0: float
    y0: float
    x1: float
    y1: float
    h0: float
    h1: float
    aspect: float  # height / width in pixels
    stop_at: float = 1.0  # share of MOTION_SECONDS after which it stands still
    second_bgr: tuple[int, int, int] = (40, 40, 40)  # trousers, windows

    def at(self, t: float) -> tuple[float, float, float]:
        """Centre x, y and height at ``t`` seconds."""
        s = min(1.0, max(0.0, t / (MOTION_SECONDS * self.stop_at)))
        return (self.x0 + (self.x1 - self.x0) * s, self.y0 + (self.y1 - self.y0) * s,
                self.h0 + (self.h1 - self.h0) * s)

    @property
    def stops_early(self) -> bool:
        return self.stop_at < 0.75


@dataclass(frozen=True)
class Scene:
    """A background texture seed, its base colours and the objects; ``seed`` built it."""

    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    floor: tuple[int, int, int]
    seed: int
    width: int = 320
    height: int = 240


def _box(obj: SceneObject, t: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised (x, y, w, h) of ``obj`` at ``t``, unclipped."""
    x, y, h = obj.at(t)
    w = h * height / obj.aspect / width
    return x - w / 2, y - h / 2, w, h


def random_scene(seed: int, width: int = 320, height: int = 240) -> Scene:
    """The scene of ``seed``: 1..3 objects of distinct kinds or colours, apart in the frame."""
    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(60, 200, 3))
    floor = tuple(int(v) for v in rng.integers(40, 170, 3))
    count = int(rng.choice([1, 1, 2, 2, 3]))
    objects: list[SceneObject] = []
    lanes = rng.permutation(3)  # objects keep to separate horizontal bands
    for i in range(count):
        kind = SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
        colour = KIND_COLOURS[kind][int(rng.integers(len(KIND_COLOURS[kind])))]
        hmin, hmax, amin, amax = _SIZES[kind]
        crowded = count > 1 and kind in ("person", "vehicle")  # big things share the frame
        h = float(rng.uniform(hmin, hmax)) / (1.3 if crowded else 1.0)
        aspect = float(rng.uniform(amin, amax))
        direction = MOVES[int(rng.integers(len(MOVES)))]
        if kind == "small object" and direction in ("towards", "away"):
            direction = ("left", "right")[int(rng.integers(2))]
        band = (lanes[i] + 0.5) / 3 if count > 1 else float(rng.uniform(0.35, 0.65))
        w = h * height / aspect / width
        if direction in _STEP:
            sx, sy = _STEP[direction]
            span = float(rng.uniform(0.4, 0.75))
            if sx:
                low = w / 2 - 0.1
                start = float(rng.uniform(low, max(low, 1 - span - w / 2 + 0.05)))
                x0, x1 = (start, start + span) if sx > 0 else (1 - start, 1 - start - span)
                y0 = y1 = float(np.clip(band, h / 2 + 0.02, 1 - h / 2 - 0.02))
            else:
                span *= 0.8
                start = float(rng.uniform(h / 2 - 0.05, max(h / 2, 1 - span - h / 2)))
                y0, y1 = (start, start + span) if sy > 0 else (1 - start, 1 - start - span)
                x0 = x1 = float(np.clip(band, w / 2 + 0.02, 1 - w / 2 - 0.02))
            h0 = h1 = h
        else:
            grow = float(rng.uniform(1.8, 2.4))
            small_h, big_h = h / 1.4, min(0.9, h / 1.4 * grow)
            h0, h1 = (small_h, big_h) if direction == "towards" else (big_h, small_h)
            x0 = float(np.clip(band, 0.15, 0.85))
            x1 = x0 + float(rng.uniform(-0.04, 0.04))
            # Seen from above, a thing coming closer also comes down the frame.
            y_small = float(rng.uniform(0.22, 0.3))
            y_big = min(1 - big_h / 2 - 0.02, y_small + float(rng.uniform(0.25, 0.35)))
            y0, y1 = (y_small, y_big) if direction == "towards" else (y_big, y_small)
        stop_at = float(rng.uniform(0.45, 0.6)) if rng.random() < 0.25 else 1.0
        jitter = rng.integers(-14, 15, size=3)
        bgr = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(PALETTE_BGR[colour], jitter, strict=True))
        dark = int(rng.integers(20, 70))
        second = (dark + int(rng.integers(0, 12)), dark, dark)  # dark trousers, tinted windows
        objects.append(SceneObject(kind, colour, bgr, direction, x0, y0, x1, y1, h0, h1, aspect,  # type: ignore[arg-type]
                                   stop_at, second))
    return Scene(tuple(objects), background, floor, seed, width, height)  # type: ignore[arg-type]


def _texture(scene: Scene, width: int, height: int) -> np.ndarray:
    """The static background: wall above, floor below, tiles, blotches, a light gradient."""
    rng = np.random.default_rng(scene.seed ^ 0x5EED)
    frame = np.empty((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.2, 0.45))
    frame[:horizon] = scene.background
    frame[horizon:] = scene.floor
    small = rng.normal(0, 18, (6, 8, 3)).astype(np.float32)  # low-frequency blotches
    frame += cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    spacing = int(rng.integers(24, 60))
    line = tuple(float(c) * 0.75 for c in scene.floor)
    for x in range(int(rng.integers(0, spacing)), width, spacing):
        cv2.line(frame, (x, horizon), (int(width / 2 + (x - width / 2) * 2.2), height), line, 1)
    gradient = np.linspace(0.85, 1.15, width, dtype=np.float32)[None, :, None]
    return np.clip(frame * gradient, 0, 255)


def _draw(frame: np.ndarray, obj: SceneObject, t: float, width: int, height: int) -> None:
    x, y, w, h = _box(obj, t, width, height)
    px, py, pw, ph = x * width, y * height, w * width, h * height
    colour = tuple(float(c) for c in obj.bgr)
    second = tuple(float(c) for c in obj.second_bgr)

    def rect(x0: float, y0: float, x1: float, y1: float, c: tuple[float, ...]) -> None:
        cv2.rectangle(frame, (round(px + x0 * pw), round(py + y0 * ph)),
                      (round(px + x1 * pw), round(py + y1 * ph)), c, -1, cv2.LINE_AA)

    if obj.kind == "person":
        swing = 0.12 * math.sin(t * 9.0) if t < MOTION_SECONDS * obj.stop_at else 0.0
        cv2.circle(frame, (round(px + pw / 2), round(py + 0.09 * ph)), max(1, round(0.09 * ph)),
                   (120, 150, 200), -1, cv2.LINE_AA)  # head
        rect(0.08, 0.17, 0.92, 0.58, colour)  # shirt or vest
        rect(0.2 + swing, 0.56, 0.48 + swing, 1.0, second)  # legs
        rect(0.52 - swing, 0.56, 0.8 - swing, 1.0, second)
    elif obj.kind == "vehicle":
        rect(0.0, 0.3, 1.0, 0.85, colour)  # body
        rect(0.18, 0.0, 0.82, 0.35, colour)  # cabin
        rect(0.25, 0.06, 0.75, 0.3, second)  # windows
        for cx in (0.22, 0.78):
            cv2.circle(frame, (round(px + cx * pw), round(py + 0.85 * ph)), max(1, round(0.15 * ph)),
                       (20, 20, 20), -1, cv2.LINE_AA)
    elif obj.kind == "animal":
        cv2.ellipse(frame, (round(px + 0.45 * pw), round(py + 0.45 * ph)),
                    (max(1, round(0.4 * pw)), max(1, round(0.25 * ph))), 0, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.circle(frame, (round(px + 0.85 * pw), round(py + 0.25 * ph)), max(1, round(0.18 * ph)),
                   colour, -1, cv2.LINE_AA)
        for lx in (0.15, 0.3, 0.6, 0.72):
            rect(lx, 0.55, lx + 0.08, 1.0, colour)
    else:
        rect(0.0, 0.0, 1.0, 1.0, colour)


def render(scene: Scene, t: float, width: int = 320, height: int = 240) -> np.ndarray:
    """The scene at ``t`` seconds as a BGR uint8 frame [height, width, 3], sensor noise
    included (seeded from the scene and ``t``, so the same call gives the same pixels).
    Before t = 0 the scene is empty: its objects appear at t = 0."""
    frame = _texture(scene, width, height)
    shown = scene.objects if t >= 0 else ()
    for obj in sorted(shown, key=lambda o: o.at(t)[1] + o.at(t)[2] / 2):  # far first
        _draw(frame, obj, t, width, height)
    noise_seed = zlib.crc32(f"{scene.seed}:{t:.6f}".encode())
    rng = np.random.default_rng(noise_seed)
    frame *= float(rng.uniform(0.97, 1.03))  # exposure flicker
    frame += rng.standard_normal(frame.shape, dtype=np.float32) * 4.0
    return np.clip(frame, 0, 255).astype(np.uint8)


def ground_truth(scene: Scene) -> list[dict[str, object]]:
    """Per object, in the scene's order: kind, colour, direction, entry, exit, stopped."""
    margin = TrackConfig().edge_margin
    out = []
    for o in scene.objects:
        out.append({
            "kind": o.kind,
            "colour": o.colour,
            # Coming closer also moves a thing down the frame here: both words are true.
            "direction": [o.direction, *_ALSO.get(o.direction, ())],
            "entry": border_side(_box(o, 0.0, scene.width, scene.height), margin),
            "exit": border_side(_box(o, MOTION_SECONDS, scene.width, scene.height), margin),
            # A stop shows while something else still moves (after the last motion the
            # camera sees only stillness, and every thing "stops").
            "stopped": o.stops_early and any(not p.stops_early for p in scene.objects),
        })
    return out
