"""Synthetic frame sources: scenes from :mod:`camera_node.scene`, deterministic from a seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .frame_source import DEFAULT_TIMESTAMP_FPS, CaptureConfig, Frame, FrameSource, SourceError

SYNTHETIC_PREFIX = "synthetic"
DEFAULT_SYNTHETIC_SIZE = (320, 240)  # (width, height), the scene renderer's own default


class SyntheticSource(FrameSource):
    """Episodes of synthetic scenes from :mod:`camera_node.scene`, deterministic from a seed.

    Episode ``i`` shows ``random_scene(seed + i)``: first its empty background for
    ``lead_s`` seconds (``render`` at t < 0), then frames at ``t_local = k / fps`` for every
    ``t_local`` in ``[0, MOTION_SECONDS]`` with the objects moving; the last of them is then
    held for ``still_s`` seconds; then the next episode begins. A motion detector therefore
    sees the scene change (no moving object in it), then one burst of motion per episode
    whose ``before`` frame is the empty scene, as a real camera sees things come in.

    ``scene_module`` (anything with ``random_scene``, ``render`` and ``MOTION_SECONDS``)
    defaults to :mod:`camera_node.scene`; tests may pass a stand-in.
    """

    kind = "synthetic"
    fps: float

    def __init__(self, seed: int, config: CaptureConfig, *, scene_module: Any = None) -> None:
        super().__init__(f"{SYNTHETIC_PREFIX}:{seed}", config)
        if scene_module is None:
            from camera_node import scene as scene_module
        self._scenes = scene_module
        self.seed = seed
        self.fps = config.fps if config.fps is not None else DEFAULT_TIMESTAMP_FPS
        default_w, default_h = DEFAULT_SYNTHETIC_SIZE
        self.width = config.width or default_w
        self.height = config.height or default_h
        if self.fps <= 0 or config.still_s < 0 or config.lead_s < 0:
            raise SourceError(f"synthetic source needs fps > 0, still >= 0 and lead >= 0, got {config}")
        # A small tolerance so that MOTION_SECONDS * fps = 19.999999 still counts frame 20.
        self.motion_frames = int(np.floor(scene_module.MOTION_SECONDS * self.fps + 1e-9)) + 1
        self.still_frames = round(config.still_s * self.fps)
        self.lead_frames = round(config.lead_s * self.fps)
        self.episode_frames = self.lead_frames + self.motion_frames + self.still_frames
        self._cached: tuple[int, Any] | None = None
        self._held: tuple[int, np.ndarray] | None = None

    def episode_at(self, index: int) -> int:
        """The episode number that frame ``index`` belongs to."""
        return index // self.episode_frames

    def scene_at(self, index: int) -> Any:
        """The ground-truth scene shown by frame ``index``."""
        episode = self.episode_at(index)
        if self._cached is None or self._cached[0] != episode:
            self._cached = (episode, self._scenes.random_scene(self.seed + episode))
        return self._cached[1]

    def is_moving(self, index: int) -> bool:
        """Whether frame ``index`` lies in its episode's motion part."""
        return 0 <= index % self.episode_frames - self.lead_frames < self.motion_frames

    def _render(self, scene: Any, local: int) -> np.ndarray:
        return self._scenes.render(scene, local / self.fps, width=self.width, height=self.height)

    def _next(self, index: int) -> Frame | None:
        episode = self.episode_at(index)
        if self.config.episodes is not None and episode >= self.config.episodes:
            return None
        scene = self.scene_at(index)
        local = index % self.episode_frames - self.lead_frames  # < 0: the empty lead-in
        if local < self.motion_frames:
            image = self._render(scene, local)
        else:
            if self._held is None or self._held[0] != episode:
                self._held = (episode, self._render(scene, self.motion_frames - 1))
            image = self._held[1].copy()  # each frame owns its pixels
        return Frame(image=image, t=index / self.fps, index=index, scene=scene)


_SYNTHETIC_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "fps": ("fps", float),
    "still": ("still_s", float),
    "lead": ("lead_s", float),
    "episodes": ("episodes", int),
    "width": ("width", int),
    "height": ("height", int),
}


def parse_synthetic_spec(spec: str) -> tuple[int, dict[str, Any]]:
    """``synthetic[:SEED][?key=value&...]`` -> (seed, CaptureConfig overrides)."""
    body, _, query = spec[len(SYNTHETIC_PREFIX):].partition("?")
    if body and not body.startswith(":"):
        raise SourceError(f"bad synthetic spec {spec!r}: expected synthetic[:SEED][?k=v&...]")
    seed_text = body[1:]
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise SourceError(f"bad synthetic seed {seed_text!r} in {spec!r}: not an integer") from None
    overrides: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, equals, value = item.partition("=")
        if not equals:
            raise SourceError(f"bad synthetic option {item!r} in {spec!r}: expected key=value")
        if key not in _SYNTHETIC_KEYS:
            raise SourceError(
                f"unknown synthetic option {key!r} in {spec!r}; known: {', '.join(_SYNTHETIC_KEYS)}"
            )
        field, convert = _SYNTHETIC_KEYS[key]
        try:
            overrides[field] = convert(value)
        except ValueError:
            raise SourceError(f"bad value {value!r} for {key!r} in {spec!r}") from None
    return seed, overrides

