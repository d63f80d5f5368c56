"""On-device vision features: from one motion event to [S, D] floats sent once per session.

Two extractors share the :class:`FeatureExtractor` protocol:

* :class:`ObjectFeatures` — the default; no weights, deterministic, OpenCV and numpy only.
  It tracks the event's moving objects (:mod:`camera_node.objects`) and fills one slot per
  object with what the device measured: kind, colour name, direction, entry and exit side,
  whether it stopped, and the raw measurements behind them.
* :class:`HFVisionFeatures` — a Hugging Face vision encoder loaded from a local folder,
  its patch tokens of the first and last frame pooled to S slots.

The models of the default pair (see :mod:`edgespec.train_default`) are trained on
:class:`ObjectFeatures`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import cv2
import numpy as np

from camera_node.colours import COLOUR_NAMES
from camera_node.objects import DIRECTIONS, KINDS, SIDES, ObjectFacts, ObjectTracker

if TYPE_CHECKING:
    from camera_node.events import MotionEvent


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns a motion event into float32 features [S, D]."""

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(S slots, D dims) of every array :meth:`extract` returns."""
        ...

    def extract(self, event: MotionEvent) -> np.ndarray:
        """Features [S, D] float32 of one event."""
        ...


# --- tracked objects ------------------------------------------------------------------------

# Layout of one slot of ObjectFeatures (D = SLOT_DIMS): one-hot words, then measurements.
F_PRESENT = 0
F_KIND = slice(1, 1 + len(KINDS))
F_COLOUR = slice(F_KIND.stop, F_KIND.stop + len(COLOUR_NAMES))
F_DIRECTION = slice(F_COLOUR.stop, F_COLOUR.stop + len(DIRECTIONS))
F_ENTRY = slice(F_DIRECTION.stop, F_DIRECTION.stop + len(SIDES))
F_EXIT = slice(F_ENTRY.stop, F_ENTRY.stop + len(SIDES))
F_STOPPED = F_EXIT.stop
F_MEASURED = slice(F_STOPPED + 1, F_STOPPED + 11)  # area, aspect, speed, dx, dy, scale, end x/y,
# people support, observations
SLOT_DIMS = F_MEASURED.stop


def encode_facts(facts: list[ObjectFacts], slots: int) -> np.ndarray:
    """Features [slots, SLOT_DIMS] of up to ``slots`` objects (the rest stay zero)."""
    out = np.zeros((slots, SLOT_DIMS), np.float32)
    for row, f in zip(out, facts[:slots], strict=False):
        row[F_PRESENT] = 1.0
        row[F_KIND.start + KINDS.index(f.kind)] = 1.0
        row[F_COLOUR.start + COLOUR_NAMES.index(f.colour)] = 1.0
        row[F_DIRECTION.start + DIRECTIONS.index(f.direction)] = 1.0
        row[F_ENTRY.start + SIDES.index(f.entry)] = 1.0
        row[F_EXIT.start + SIDES.index(f.exit)] = 1.0
        row[F_STOPPED] = float(f.stopped)
        row[F_MEASURED] = (
            math.sqrt(f.area) * 2, math.log(max(f.aspect, 1e-3)), min(f.speed, 3.0), f.dx, f.dy,
            max(-2.0, min(2.0, f.scale)), f.end[0], f.end[1], f.people_support,
            min(f.observations, 16) / 16,
        )
    return out


def decode_facts(features: np.ndarray) -> list[dict[str, Any]]:
    """The words of each occupied slot of [S, SLOT_DIMS] features: what a caption should say."""
    out = []
    for row in np.asarray(features, np.float32):
        if row[F_PRESENT] < 0.5:
            continue
        out.append({
            "kind": KINDS[int(np.argmax(row[F_KIND]))],
            "colour": COLOUR_NAMES[int(np.argmax(row[F_COLOUR]))],
            "direction": DIRECTIONS[int(np.argmax(row[F_DIRECTION]))],
            "entry": SIDES[int(np.argmax(row[F_ENTRY]))],
            "exit": SIDES[int(np.argmax(row[F_EXIT]))],
            "stopped": bool(row[F_STOPPED] > 0.5),
        })
    return out


class ObjectFeatures:
    """One slot per tracked moving object of the event, largest first (see module doc)."""

    def __init__(self, slots: int = 3, tracker: ObjectTracker | None = None) -> None:
        self.slots = slots
        self.tracker = tracker or ObjectTracker()

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(S, D) = (slots, SLOT_DIMS)."""
        return (self.slots, SLOT_DIMS)

    def facts(self, event: MotionEvent) -> list[ObjectFacts]:
        """The measured objects of one event."""
        clip = event.clip()
        for frame in clip:
            if frame.image.dtype != np.uint8:
                raise ValueError(f"frames must be uint8 BGR images, got dtype {frame.image.dtype}")
        before = event.before if event.before_settled else None  # else it may show the movers
        return self.tracker.facts([f.image for f in clip], [f.t for f in clip], before)

    def extract(self, event: MotionEvent) -> np.ndarray:
        """Features [S, D] float32 of one event."""
        return encode_facts(self.facts(event), self.slots)


# --- Hugging Face vision encoder ------------------------------------------------------------


MAX_LEADING_TOKENS = 8  # CLS and register tokens an encoder may put before its patch tokens


class ConfigImagePreprocessor:
    """Resize, rescale and normalise as ``preprocessor_config.json`` says, with cv2 only.

    The fallback when transformers' image processors cannot load (they need Pillow and, in
    transformers 5, torchvision). Reads ``size`` (``height``/``width`` or ``shortest_edge``),
    ``do_resize``, ``do_rescale``, ``rescale_factor``, ``do_normalize``, ``image_mean`` and
    ``image_std``; missing keys fall back to the model's ``image_size`` and mean/std 0.5.
    """

    def __init__(self, model_dir: str | Path, image_size: int | None = None) -> None:
        path = Path(model_dir) / "preprocessor_config.json"
        cfg = json.loads(path.read_text()) if path.is_file() else {}
        size = cfg.get("size") or {}
        side = int(size.get("shortest_edge") or image_size or 224)
        self.height = int(size.get("height", side))
        self.width = int(size.get("width", side))
        self.do_resize = bool(cfg.get("do_resize", True))
        self.scale = (
            float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        )
        normalise = cfg.get("do_normalize", True)
        self.mean = np.array(
            cfg.get("image_mean", [0.5] * 3) if normalise else [0.0] * 3, np.float32
        )
        self.std = np.array(cfg.get("image_std", [0.5] * 3) if normalise else [1.0] * 3, np.float32)

    def __call__(self, rgb: np.ndarray) -> dict[str, Any]:
        """``{"pixel_values": tensor [1, 3, height, width]}`` for one RGB uint8 image."""
        import torch

        if self.do_resize:
            rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        pixels = (rgb.astype(np.float32) * self.scale - self.mean) / self.std  # [h, w, 3]
        return {"pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]}


class HFVisionFeatures:
    """A local Hugging Face vision encoder; its patch tokens pooled to S slots.

    Each slot is one cell of a grid over the image (``grid`` rows x ``grid`` columns, S =
    grid^2) and holds ``[pooled(last), pooled(last) - pooled(first)]``: what is there at the
    end, and what changed. D = 2 x the encoder's hidden size. Works with encoders whose
    ``last_hidden_state`` is tokens [1, T, H] (ViT-like; leading CLS/register tokens are
    dropped) or a feature map [1, H, h, w] (CNN-like). Images are prepared by the folder's
    ``AutoImageProcessor`` where it loads, otherwise by :class:`ConfigImagePreprocessor`.
    """

    def __init__(self, model_dir: str | Path, grid: int = 2, device: str = "cpu") -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self._torch = torch
        self.model = AutoModel.from_pretrained(str(model_dir)).to(device).eval()
        config = self.model.config
        try:
            processor = AutoImageProcessor.from_pretrained(str(model_dir))
            self._prepare: Any = lambda rgb: processor(images=rgb, return_tensors="pt")
        except (ImportError, OSError, ValueError):  # no Pillow/torchvision, or no processor file
            self._prepare = ConfigImagePreprocessor(model_dir, getattr(config, "image_size", None))
        self.device = device
        self.grid = grid
        hidden = getattr(config, "hidden_size", None) or getattr(config, "hidden_sizes", [None])[-1]
        if hidden is None:
            raise ValueError(f"{model_dir}: cannot tell the encoder's hidden size from its config")
        self._hidden = int(hidden)

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(grid^2, 2 x hidden size)."""
        return (self.grid * self.grid, 2 * self._hidden)

    def _pooled(self, frame: np.ndarray) -> np.ndarray:
        """Pooled encoder output of one BGR frame: [S, hidden]."""
        torch = self._torch
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        pixels = self._prepare(rgb)["pixel_values"].to(self.device)
        with torch.no_grad():
            hidden = self.model(pixel_values=pixels).last_hidden_state[0]  # [T, H] or [H, h, w]
        if hidden.dim() == 2:
            tokens = hidden.shape[0]
            # Patch tokens form a square grid after up to MAX_LEADING_TOKENS CLS/register tokens.
            side = next(
                (
                    math.isqrt(tokens - k)
                    for k in range(min(tokens, MAX_LEADING_TOKENS + 1))
                    if math.isqrt(tokens - k) ** 2 == tokens - k and tokens - k > 0
                ),
                None,
            )
            if side is None:  # no square grid of patches: pool along the sequence
                pooled = torch.nn.functional.adaptive_avg_pool1d(hidden.T[None], self.grid**2)[0]
                return pooled.T.float().cpu().numpy()
            grid_map = hidden[tokens - side * side :].T.reshape(-1, side, side)  # [H, h, w]
        else:
            grid_map = hidden
        pooled = torch.nn.functional.adaptive_avg_pool2d(grid_map[None], self.grid)[0]  # [H, g, g]
        return pooled.flatten(1).T.float().cpu().numpy()  # [S, H]

    def extract(self, event: MotionEvent) -> np.ndarray:
        """Features [S, 2H] float32: end-of-clip content and its change since the start."""
        a, b = self._pooled(event.first), self._pooled(event.last)
        return np.concatenate([b, b - a], axis=1).astype(np.float32)
