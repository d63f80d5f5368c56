"""On-device vision features: from the first and last frame of an event clip to [S, D] floats.

Two extractors share the :class:`FeatureExtractor` protocol:

* :class:`OpenCVFeatures` — the default; no weights, deterministic, a few milliseconds on a
  CPU. It finds blobs that differ from the background, describes each blob's colour, shape
  and where it went between the two frames, and fills one slot per blob.
* :class:`HFVisionFeatures` — a Hugging Face vision encoder loaded from a local folder,
  its patch tokens pooled to S slots.

The models of the default pair (see :mod:`edgespec.train_default`) are trained on
:class:`OpenCVFeatures` with its default :class:`OpenCVFeatureConfig`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns an event clip's first and last BGR frames into float32 features [S, D]."""

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(S slots, D dims) of every array :meth:`extract` returns."""
        ...

    def extract(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Features [S, D] float32 of the clip that starts at ``first`` and ends at ``last``."""
        ...


# --- OpenCV blobs ---------------------------------------------------------------------------

# Layout of one slot of OpenCVFeatures (D = SLOT_DIMS). All values are roughly in [-1, 1].
F_PRESENT = 0  # 1 for a blob, 0 for an empty slot (the whole slot is then zero)
F_LAB = slice(1, 4)  # mean colour in CIE Lab: L/255, (a-128)/128, (b-128)/128
F_HUE = slice(4, 6)  # cos, sin of the mean hue, times the saturation
F_SAT_VAL = slice(6, 8)  # mean HSV saturation and value / 255
F_BGR = slice(8, 11)  # mean B, G, R / 255
F_AREA = 11  # sqrt(blob area / frame area) * AREA_SCALE
F_VERTICES = slice(12, 15)  # one-hot vertex count of approxPolyDP: 3, 4, 5 or more
F_CIRCULARITY = 15  # 4 pi area / perimeter^2 (1 for a disc)
F_EXTENT = 16  # area / axis-aligned bounding box area
F_SOLIDITY = 17  # area / convex hull area
F_HU = slice(18, 21)  # first three Hu moments, -log10|h| / HU_SCALE
F_FIRST = slice(21, 23)  # centroid (x, y) in the first frame, normalised 0..1
F_LAST = slice(23, 25)  # centroid (x, y) in the last frame (= first when unmatched)
F_SHIFT = slice(25, 27)  # (last - first) * SHIFT_SCALE
F_MATCHED = 27  # 1 if the blob was found in the last frame
F_ASPECT = 28  # log(width / height) of the minimum-area rectangle
F_RECT_FILL = 29  # area / minimum-area rectangle area (square 1, disc 0.79, triangle 0.5)
F_CONTRAST = 30  # colour distance from the background / 255
F_BLOB_COUNT = 31  # blobs found in the first frame / S (same in every occupied slot)
SLOT_DIMS = 32


@dataclass(frozen=True)
class OpenCVFeatureConfig:
    """Thresholds and scales of :class:`OpenCVFeatures`."""

    slots: int = 4
    work_width: int = 320  # frames are resized to this width first (aspect kept)
    border: int = 4  # pixels of frame border whose median colour is the background
    blur_kernel: int = 5  # Gaussian blur before thresholding, odd pixels
    foreground_distance: float = 45.0  # BGR Euclidean distance from the background colour
    open_kernel: int = 3  # morphological opening against specks
    min_area_fraction: float = 0.002  # smaller blobs are noise
    poly_epsilon: float = 0.04  # approxPolyDP tolerance, fraction of the perimeter
    match_max_cost: float = 3.0  # above this a first-frame blob is "unmatched"
    match_colour_scale: float = 40.0  # Lab distance that costs 1
    match_position_weight: float = 1.0  # cost per normalised unit of travel
    area_scale: float = 4.0
    hu_scale: float = 4.0
    shift_scale: float = 3.0


@dataclass(frozen=True)
class Blob:
    """One connected foreground region of a frame, with its descriptors."""

    area: float  # pixels
    centroid: tuple[float, float]  # normalised (x, y)
    lab: np.ndarray  # float [3]
    descriptor: np.ndarray  # float [SLOT_DIMS], colour and shape entries filled


class OpenCVFeatures:
    """Blob features: one slot per foreground blob, slots ordered by first-frame x.

    Steps: (1) the background is the median colour of the frame border; (2) pixels far from
    it in colour are foreground; (3) each external contour large enough is a blob, described
    by colour, area and shape; (4) blobs of the first frame are matched to blobs of the last
    frame by colour, area and distance, giving each a displacement; (5) the S largest
    first-frame blobs fill the slots left to right, the rest of the slots stay zero.
    """

    def __init__(self, config: OpenCVFeatureConfig | None = None) -> None:
        self.config = config or OpenCVFeatureConfig()

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(S, D) = (config.slots, SLOT_DIMS)."""
        return (self.config.slots, SLOT_DIMS)

    def extract(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Features [S, D] float32 from two BGR uint8 frames of the same size."""
        cfg = self.config
        first_blobs = self.blobs(first)
        last_blobs = self.blobs(last)
        matches = self._match(first_blobs, last_blobs)
        chosen = sorted(range(len(first_blobs)), key=lambda i: -first_blobs[i].area)[: cfg.slots]
        chosen.sort(key=lambda i: first_blobs[i].centroid)  # left to right, then top to bottom
        out = np.zeros(self.feature_shape, np.float32)  # [S, D]
        for slot, i in enumerate(chosen):
            blob = first_blobs[i]
            row = blob.descriptor.copy()
            x0, y0 = blob.centroid
            j = matches.get(i)
            if j is None:
                x1, y1 = x0, y0
            else:
                x1, y1 = last_blobs[j].centroid
                # Colour and shape are the same object seen twice: average the two views.
                row[F_LAB.start : F_CONTRAST + 1] = 0.5 * (
                    row[F_LAB.start : F_CONTRAST + 1]
                    + last_blobs[j].descriptor[F_LAB.start : F_CONTRAST + 1]
                )
                row[F_MATCHED] = 1.0
            row[F_PRESENT] = 1.0
            row[F_FIRST] = (x0, y0)
            row[F_LAST] = (x1, y1)
            row[F_SHIFT] = ((x1 - x0) * cfg.shift_scale, (y1 - y0) * cfg.shift_scale)
            row[F_BLOB_COUNT] = len(first_blobs) / cfg.slots
            out[slot] = row
        return out

    # -- steps ---------------------------------------------------------------------------

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """The frame as BGR uint8 at the working width (grey frames are expanded)."""
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 BGR images, got dtype {frame.dtype}")
        height, width = frame.shape[:2]
        if width != self.config.work_width:
            new_height = max(1, round(height * self.config.work_width / width))
            frame = cv2.resize(
                frame, (self.config.work_width, new_height), interpolation=cv2.INTER_AREA
            )
        return frame

    def blobs(self, frame: np.ndarray) -> list[Blob]:
        """The foreground blobs of one BGR frame, largest first."""
        cfg = self.config
        frame = self._prepare(frame)
        height, width = frame.shape[:2]
        smooth = cv2.GaussianBlur(frame, (cfg.blur_kernel, cfg.blur_kernel), 0)
        b = cfg.border
        border = np.concatenate(
            [
                smooth[:b].reshape(-1, 3),
                smooth[-b:].reshape(-1, 3),
                smooth[:, :b].reshape(-1, 3),
                smooth[:, -b:].reshape(-1, 3),
            ]
        )
        background = np.median(border, axis=0).astype(np.float32)  # [3] BGR
        diff = smooth.astype(np.float32) - background  # [H, W, 3]
        squared = np.einsum("hwc,hwc->hw", diff, diff)  # [H, W] squared colour distance
        mask = (squared > cfg.foreground_distance**2).astype(np.uint8)
        kernel = np.ones((cfg.open_kernel, cfg.open_kernel), np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        lab_frame = cv2.cvtColor(frame, cv2.COLOR_BGR2LAB)
        hsv_frame = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV_FULL)  # hue 0..255 for 0..360 degrees
        min_area = cfg.min_area_fraction * width * height
        found: list[Blob] = []
        for contour in contours:
            area = cv2.contourArea(contour)
            if area < min_area:
                continue
            blob_mask = np.zeros((height, width), np.uint8)
            cv2.drawContours(blob_mask, [contour], -1, 1, thickness=-1)
            blob_mask = cv2.erode(blob_mask, kernel)  # mean colour away from blended edges
            if not blob_mask.any():
                continue
            found.append(
                self._describe(contour, area, blob_mask, frame, lab_frame, hsv_frame, background)
            )
        found.sort(key=lambda blob: -blob.area)
        return found

    def _describe(
        self,
        contour: np.ndarray,
        area: float,
        blob_mask: np.ndarray,
        frame: np.ndarray,
        lab_frame: np.ndarray,
        hsv_frame: np.ndarray,
        background: np.ndarray,
    ) -> Blob:
        """Colour and shape descriptors of one contour (positions are filled by extract)."""
        cfg = self.config
        height, width = frame.shape[:2]
        row = np.zeros(SLOT_DIMS, np.float32)
        bgr = np.array(cv2.mean(frame, blob_mask)[:3], np.float32)
        lab = np.array(cv2.mean(lab_frame, blob_mask)[:3], np.float32)
        hue, sat, val = cv2.mean(hsv_frame, blob_mask)[:3]
        # Hue is circular; a mean over a blob is fine because a blob has one colour.
        angle = 2 * math.pi * hue / 256.0
        row[F_LAB] = (lab[0] / 255.0, (lab[1] - 128) / 128.0, (lab[2] - 128) / 128.0)
        row[F_HUE] = (sat / 255.0 * math.cos(angle), sat / 255.0 * math.sin(angle))
        row[F_SAT_VAL] = (sat / 255.0, val / 255.0)
        row[F_BGR] = bgr / 255.0
        row[F_AREA] = math.sqrt(area / (width * height)) * cfg.area_scale
        perimeter = cv2.arcLength(contour, True)
        vertices = len(cv2.approxPolyDP(contour, cfg.poly_epsilon * perimeter, True))
        row[F_VERTICES.start + min(2, max(0, vertices - 3))] = 1.0
        row[F_CIRCULARITY] = 4 * math.pi * area / max(perimeter * perimeter, 1e-6)
        _, _, bw, bh = cv2.boundingRect(contour)
        row[F_EXTENT] = area / max(bw * bh, 1)
        row[F_SOLIDITY] = area / max(cv2.contourArea(cv2.convexHull(contour)), 1e-6)
        hu = cv2.HuMoments(cv2.moments(contour)).ravel()[:3]
        row[F_HU] = -np.log10(np.abs(hu) + 1e-12) / cfg.hu_scale
        (cx, cy), (rw, rh), _ = cv2.minAreaRect(contour)
        row[F_ASPECT] = math.log(max(rw, 1.0) / max(rh, 1.0))
        row[F_RECT_FILL] = area / max(rw * rh, 1e-6)
        row[F_CONTRAST] = float(np.linalg.norm(bgr - background)) / 255.0
        m = cv2.moments(contour)
        if m["m00"] > 0:
            cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
        return Blob(area=area, centroid=(cx / width, cy / height), lab=lab, descriptor=row)

    def _match(self, first: list[Blob], last: list[Blob]) -> dict[int, int]:
        """Greedy lowest-cost matching of first-frame blobs to last-frame blobs."""
        cfg = self.config
        costs: list[tuple[float, int, int]] = []
        for i, a in enumerate(first):
            for j, b in enumerate(last):
                colour = float(np.linalg.norm(a.lab - b.lab)) / cfg.match_colour_scale
                size = abs(math.log(max(a.area, 1.0) / max(b.area, 1.0)))
                travel = math.dist(a.centroid, b.centroid) * cfg.match_position_weight
                costs.append((colour + size + travel, i, j))
        costs.sort()
        matches: dict[int, int] = {}
        used: set[int] = set()
        for cost, i, j in costs:
            if cost > cfg.match_max_cost:
                break
            if i not in matches and j not in used:
                matches[i] = j
                used.add(j)
        return matches


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

    def extract(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Features [S, 2H] float32: end-of-clip content and its change since the start."""
        a, b = self._pooled(first), self._pooled(last)
        return np.concatenate([b, b - a], axis=1).astype(np.float32)
