"""Synthetic camera scenes for training and evaluating the default model pair.

A :class:`Scene` is a handful of coloured shapes on a plain background, each moving in a
straight line (or standing still) for :data:`MOTION_SECONDS`. Everything is a pure function
of the seed: ``random_scene(seed)`` always builds the same scene and ``render(scene, t)``
always draws the same frame, sensor noise included, so features, captions and the trained
models are reproducible.

Coordinates are normalised: ``x`` runs 0..1 from the left edge to the right edge, ``y`` 0..1
from the top edge to the bottom edge (image convention), ``size`` is the object's radius as
a fraction of the frame *height*, velocities are normalised units per second.

Ground truth (what a caption must say about each object):

* colour word: one of :data:`COLOURS`;
* shape word: one of :data:`SHAPES`;
* motion word: one of :data:`MOTIONS` (the direction of the velocity, or ``still``);
* position word: the cell of a 3x3 grid that holds the object's centre at the *end* of the
  motion (t = MOTION_SECONDS): rows top/middle/bottom, columns left/centre/right, named
  ``"top left"``, ``"top"``, ``"top right"``, ``"left"``, ``"centre"``, ``"right"``,
  ``"bottom left"``, ``"bottom"``, ``"bottom right"`` (see :func:`position_word`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

MOTION_SECONDS = 1.0
"""How long objects move in one episode: the event clip runs from t=0 to t=MOTION_SECONDS."""

# BGR colours of the palette. Saturated and far apart in hue so a colour word is never a
# matter of taste; white only works because every background is dark.
PALETTE_BGR: dict[str, tuple[int, int, int]] = {
    "red": (40, 40, 220),
    "green": (50, 190, 40),
    "blue": (220, 90, 20),
    "yellow": (30, 225, 235),
    "purple": (170, 40, 150),
    "orange": (20, 140, 250),
    "white": (235, 235, 235),
}
COLOURS: tuple[str, ...] = tuple(PALETTE_BGR)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")

# Dark, low-saturation backgrounds (BGR), so every palette colour stands out from all of them.
BACKGROUNDS_BGR: tuple[tuple[int, int, int], ...] = (
    (25, 25, 25),
    (50, 50, 50),
    (70, 60, 55),
    (45, 55, 40),
    (30, 35, 60),
    (60, 45, 45),
)

_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
_ROW_WORDS = ("top", "middle", "bottom")
_COLUMN_WORDS = ("left", "centre", "right")


@dataclass(frozen=True)
class SceneConfig:
    """The knobs of :func:`random_scene` and :func:`render`."""

    min_objects: int = 1
    max_objects: int = 3
    min_size: float = 0.075  # radius, fraction of frame height
    max_size: float = 0.12
    min_speed: float = 0.22  # normalised units per second, along the motion axis
    max_speed: float = 0.36
    margin: float = 0.02  # clearance from the frame edges, normalised
    gap: float = 0.03  # clearance between two objects' bounding circles, normalised height
    colour_jitter: int = 12  # max per-channel offset from the palette colour, in 0..255
    noise_sigma: float = 3.0  # Gaussian sensor noise, in 0..255 grey levels
    placement_tries: int = 200
    path_checks: int = 5  # times in [0, MOTION_SECONDS] at which objects must not touch


DEFAULT_SCENE_CONFIG = SceneConfig()


@dataclass(frozen=True)
class SceneObject:
    """One shape: start centre (x, y), velocity (vx, vy), radius ``size`` (all normalised)."""

    colour: str
    shape: str
    x: float
    y: float
    vx: float
    vy: float
    size: float
    angle: float = 0.0  # rotation in degrees, constant over the episode
    bgr: tuple[int, int, int] = (0, 0, 0)  # the exact drawn colour (palette colour + jitter)

    def centre_at(self, t: float) -> tuple[float, float]:
        """Normalised centre at time ``t`` seconds: start + v * t."""
        return self.x + self.vx * t, self.y + self.vy * t

    @property
    def motion(self) -> str:
        """The motion word (see :func:`motion_word`)."""
        return motion_word(self)


@dataclass(frozen=True)
class Scene:
    """A background and 1..3 objects; ``seed`` is what built it and seeds its sensor noise."""

    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    seed: int
    width: int = 320  # the aspect ratio the scene was laid out for
    height: int = 240


def _fits(cfg: SceneConfig, aspect: float, x: float, y: float, r: float) -> bool:
    """Whether a circle of radius r (fraction of height) at (x, y) lies inside the frame."""
    rx = r / aspect  # the same radius as a fraction of the width
    return cfg.margin + rx <= x <= 1 - cfg.margin - rx and cfg.margin + r <= y <= 1 - cfg.margin - r


def _apart(cfg: SceneConfig, aspect: float, a: SceneObject, b: SceneObject) -> bool:
    """Whether a and b never touch during the episode (checked at a few times)."""
    for i in range(cfg.path_checks):
        t = MOTION_SECONDS * i / max(1, cfg.path_checks - 1)
        ax, ay = a.centre_at(t)
        bx, by = b.centre_at(t)
        distance = math.hypot((ax - bx) * aspect, ay - by)  # in units of frame height
        if distance < a.size + b.size + cfg.gap:
            return False
    return True


def random_scene(
    seed: int, width: int = 320, height: int = 240, config: SceneConfig = DEFAULT_SCENE_CONFIG
) -> Scene:
    """Build the scene of ``seed``: 1..3 objects of distinct colours that stay in the frame.

    Colours within a scene are distinct, so a colour word identifies one object and the
    first/last frame matching of features is never ambiguous.
    """
    rng = np.random.default_rng(seed)
    aspect = width / height
    background = BACKGROUNDS_BGR[int(rng.integers(len(BACKGROUNDS_BGR)))]
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    colours = rng.permutation(len(COLOURS))[:count]
    objects: list[SceneObject] = []
    for colour_index in colours:
        colour = COLOURS[int(colour_index)]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        for _ in range(config.placement_tries):
            size = float(rng.uniform(config.min_size, config.max_size))
            speed = float(rng.uniform(config.min_speed, config.max_speed))
            dx, dy = _DIRECTIONS[motion]
            # Vertical speed in height units, horizontal in width units: same pixels/second.
            vx, vy = dx * speed / aspect, dy * speed
            x, y = float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
            jitter = rng.integers(-config.colour_jitter, config.colour_jitter + 1, size=3)
            bgr = tuple(
                int(np.clip(c + j, 0, 255))
                for c, j in zip(PALETTE_BGR[colour], jitter, strict=True)
            )
            candidate = SceneObject(
                colour=colour,
                shape=shape,
                x=x,
                y=y,
                vx=vx,
                vy=vy,
                size=size,
                angle=float(rng.uniform(-30.0, 30.0)),
                bgr=bgr,  # type: ignore[arg-type]
            )
            ex, ey = candidate.centre_at(MOTION_SECONDS)
            if (
                _fits(config, aspect, x, y, size)
                and _fits(config, aspect, ex, ey, size)
                and all(_apart(config, aspect, candidate, o) for o in objects)
            ):
                objects.append(candidate)
                break
        # An object that finds no place after many tries is dropped; the first never is,
        # because an empty frame always has room.
    return Scene(
        objects=tuple(objects), background=background, seed=seed, width=width, height=height
    )


def _polygon(obj: SceneObject, cx: float, cy: float, radius: float) -> np.ndarray:
    """Vertices (int32 [N, 2], pixels) of a square or triangle inscribed in the circle."""
    corners = 4 if obj.shape == "square" else 3
    start = -90.0 if obj.shape == "triangle" else 45.0  # a triangle points up, a square sits flat
    angles = np.deg2rad(start + obj.angle + 360.0 * np.arange(corners) / corners)
    # Squares drawn inscribed look small next to circles; scale so areas are comparable.
    scale = 0.9 if obj.shape == "square" else 1.1
    points = np.stack(
        [cx + scale * radius * np.cos(angles), cy + scale * radius * np.sin(angles)], 1
    )
    return np.round(points).astype(np.int32)


def render(
    scene: Scene,
    t: float,
    width: int = 320,
    height: int = 240,
    config: SceneConfig = DEFAULT_SCENE_CONFIG,
) -> np.ndarray:
    """Draw the scene at time ``t`` seconds as a BGR uint8 frame [height, width, 3].

    Object centres are start + v * t. Light Gaussian noise imitates a sensor; it is seeded
    from (scene.seed, t), so the same call always returns the same pixels.
    """
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = scene.background
    for obj in scene.objects:
        nx, ny = obj.centre_at(t)
        cx, cy, radius = nx * width, ny * height, obj.size * height
        if obj.shape == "circle":
            cv2.circle(frame, (round(cx), round(cy)), round(radius), obj.bgr, -1, cv2.LINE_AA)
        else:
            cv2.fillPoly(frame, [_polygon(obj, cx, cy, radius)], obj.bgr, cv2.LINE_AA)
    if config.noise_sigma > 0:
        noise_seed = zlib.crc32(f"{scene.seed}:{t:.6f}".encode())
        noise = np.random.default_rng(noise_seed).standard_normal(frame.shape, dtype=np.float32)
        noise *= config.noise_sigma
        noise += frame
        frame = np.clip(noise, 0, 255, out=noise).astype(np.uint8)
    return frame


def motion_word(obj: SceneObject) -> str:
    """``left``/``right``/``up``/``down`` by the dominant velocity axis, ``still`` if none."""
    if obj.vx == 0 and obj.vy == 0:
        return "still"
    if abs(obj.vx) >= abs(obj.vy):
        return "left" if obj.vx < 0 else "right"
    return "up" if obj.vy < 0 else "down"


def position_word(obj: SceneObject, t: float = MOTION_SECONDS) -> str:
    """The 3x3 grid cell of the object's centre at time ``t`` (default: end of the motion).

    Returns ``"<row> <column>"`` with the word ``middle`` / ``centre`` left out, so the nine
    cells read ``top left``, ``top``, ``top right``, ``left``, ``centre``, ``right``,
    ``bottom left``, ``bottom``, ``bottom right``.
    """
    x, y = obj.centre_at(t)
    column = _COLUMN_WORDS[min(2, max(0, int(x * 3)))]
    row = _ROW_WORDS[min(2, max(0, int(y * 3)))]
    if row == "middle":
        return column
    return row if column == "centre" else f"{row} {column}"


def ground_truth(scene: Scene) -> list[dict[str, str]]:
    """Per object, in the scene's order: its colour, shape, motion and position words."""
    return [
        {
            "colour": o.colour,
            "shape": o.shape,
            "motion": motion_word(o),
            "position": position_word(o),
        }
        for o in scene.objects
    ]
