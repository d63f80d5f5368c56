"""Moving objects of one motion event, tracked and measured on the device.

From the frames an event kept (:attr:`camera_node.events.MotionEvent.samples`):

1. a background: the frame before motion began, or, for an event that began with the
   stream, the per-pixel median of the samples (an object that moves more than its own size
   drops out of it). Where a thing stood before it moved, the frame before shows it: that
   trace never moves, and things that do not move are left out of the facts;
2. per sample, a foreground mask (colour distance from the background, closed so that a
   person's head, vest and legs form one region) and its regions' boxes;
3. tracks: each region joins the track whose last box it overlaps most (or lies nearest);
4. per track, :class:`ObjectFacts`: box, area share, aspect, direction and speed of travel,
   entry and exit side, whether it stopped, colour name (of its own pixels, never the
   background's), the people detector's support, and a kind derived from all of these, with
   ``"object"`` when the measurements do not settle it.

Everything is OpenCV and numpy; nothing is downloaded. Coordinates are normalised: x and w
by the frame width, y and h by the frame height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from camera_node.colours import COLOUR_NAMES, dominant_colour, name_histogram
from camera_node.people import PeopleDetector
from camera_node.tracks import (Observation, Track, border_side, inside_share, iou, overlap_share, predict,
                                 seen_travel, travel_of)

KINDS: tuple[str, ...] = ("person", "vehicle", "small object", "animal", "object")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "towards", "away", "still")
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom", "inside")


@dataclass(frozen=True)
class TrackConfig:
    """Thresholds of the tracker and of the kind and direction rules."""

    work_width: int = 320  # frames are resized to this width first
    blur_kernel: int = 5
    foreground_distance: float = 40.0  # BGR distance from the background
    close_kernel: int = 9  # joins the parts of one object
    open_kernel: int = 3  # removes specks
    min_area: float = 0.002  # region box area share below this is noise
    min_observations: float = 0.3  # share of samples a track must appear in (at least 2)
    max_objects: int = 3
    match_distance: float = 0.25  # centroid jump (normalised) still counted as the same object
    edge_margin: float = 0.03  # a box this close to a border touches it
    still_travel: float = 0.08  # total travel below this, and little growth: still
    scale_travel: float = 0.35  # |log height ratio| from which growth decides the direction
    scale_over_travel: float = 1.5  # ... when it is this many times the travel (frame heights)
    depth_against: float = 0.05  # vertical travel (frame heights) against the depth growth says it rules out
    stop_share: float = 0.34  # the last share of observations that must be still for "stopped"
    stop_travel: float = 0.03
    secondary_observations: float = 0.6  # share of samples a track after the largest must be in
    fragment_share: float = 0.25  # ... when its box is also smaller than this share of the largest
    fragment_inside: float = 0.6  # a track lying this much inside a larger one is part of it
    fragment_travel: float = 0.15  # a short track that travelled this far is a thing of its own
    coast_inside: float = 0.6  # a lost track whose predicted box lies this much inside a region
    coast_travel: float = 0.05  # ... and that had travelled this far goes on with its own motion
    # kind rules on the median box: aspect = h / w (frame-normalised to pixels), area share
    person_aspect: float = 1.5
    person_area: float = 0.01
    vehicle_aspect: float = 0.75
    vehicle_min_aspect: float = 0.3  # flatter than a bus seen side-on: a strip, not a vehicle
    vehicle_area: float = 0.028
    small_area: float = 0.008
    animal_area: float = 0.028
    vehicle_extent: float = 0.6  # foreground pixels / box area
    animal_aspect: tuple[float, float] = (0.55, 1.3)


@dataclass(frozen=True)
class ObjectFacts:
    """What the device measured about one moving object."""

    kind: str  # one of KINDS
    colour: str  # one of COLOUR_NAMES
    direction: str  # one of DIRECTIONS
    entry: str  # one of SIDES: where it came from
    exit: str  # one of SIDES: where it went
    stopped: bool  # moved, then stood still for the last part of the event
    area: float  # median box area share of the frame
    aspect: float  # median box height / width, in pixels
    speed: float  # frame heights per second
    dx: float  # travel, first to last centre, normalised
    dy: float
    scale: float  # log(last box height / first box height)
    end: tuple[float, float]  # last centre
    people_support: float  # share of checked samples where the people detector agreed
    observations: int


def _resize(image: np.ndarray, width: int) -> np.ndarray:
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    if w == width:
        return image
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


class ObjectTracker:
    """Tracks and measures the moving objects of one event's frames."""

    def __init__(self, config: TrackConfig | None = None, people: PeopleDetector | None = None):
        self.config = config or TrackConfig()
        self.people = people if people is not None else PeopleDetector()

    def facts(self, frames: Sequence[np.ndarray], times: Sequence[float],
              before: np.ndarray | None = None) -> list[ObjectFacts]:
        """Facts of the (at most ``max_objects``) main moving objects, largest first.

        Objects that did not move are left out: they are scenery, the trace of a thing where
        it stood before it moved, or a change of the whole view. No moving object: [].
        """
        facts = [self._measure(t, frames[0].shape) for t in self.tracks(frames, times, before)]
        return [f for f in facts if f.direction != "still"][: self.config.max_objects]

    def tracks(self, frames: Sequence[np.ndarray], times: Sequence[float],
               before: np.ndarray | None = None) -> list[Track]:
        """The kept tracks of an event's frames, largest first."""
        cfg = self.config
        if len(frames) == 0:
            return []
        raw = [_resize(f, cfg.work_width) for f in frames]
        small = [cv2.GaussianBlur(f, (cfg.blur_kernel,) * 2, 0) for f in raw]
        if before is not None and before.shape == frames[0].shape:
            background = cv2.GaussianBlur(_resize(before, cfg.work_width), (cfg.blur_kernel,) * 2, 0)
        else:
            background = np.median(np.stack(small), axis=0)
        backgrounds = [background.astype(np.float32)]
        tracks: list[Track] = []
        for k, (image, sharp, t) in enumerate(zip(small, raw, times, strict=True)):
            neighbours = (small[max(0, k - 1)], small[min(len(small) - 1, k + 1)])
            observations = self._observe(image, sharp, backgrounds, neighbours, t)
            self._associate(tracks, observations)
            self._coast(tracks, observations, t)
        needed = max(2, math.ceil(cfg.min_observations * len(frames)))
        kept = [tr for tr in tracks if tr.seen >= needed or (tr.seen >= 2 and seen_travel(tr) >= cfg.fragment_travel)]
        kept.sort(key=lambda tr: -sum(o.area for o in tr.observations))
        kept = self._distinct(kept, len(frames))[: 2 * cfg.max_objects]
        self._people(kept, frames, times)
        return kept

    def _distinct(self, tracks: list[Track], samples: int) -> list[Track]:
        """Drop fragments (tracks sorted largest first): after the largest, a small track
        (under ``fragment_share`` of the largest box) seen in fewer than
        ``secondary_observations`` of the samples that did not travel ``fragment_travel``
        (a flicker, a piece of a thing that split off for a while: a small thing that
        crossed part of the view before it met a larger one is kept), or one whose box lies
        mostly inside a larger track's box (a part of the same thing: a vest apart from the
        trousers, a shadow)."""
        cfg = self.config
        needed = max(2, math.ceil(cfg.secondary_observations * samples))
        kept: list[Track] = []
        largest = 0.0
        for tr in tracks:
            size = float(np.median([o.box[2] * o.box[3] for o in tr.observations]))
            largest = largest or size
            brief = tr.seen < needed and travel_of(tr) < cfg.fragment_travel
            if kept and brief and size < cfg.fragment_share * largest:
                continue
            if any(inside_share(tr, bigger) >= cfg.fragment_inside for bigger in kept):
                continue
            kept.append(tr)
        return kept

    def _observe(self, image: np.ndarray, sharp: np.ndarray, backgrounds: list[np.ndarray],
                 neighbours: tuple[np.ndarray, np.ndarray], t: float) -> list[Observation]:
        """Regions of one sample: far from the background, or (three-frame difference)
        changed against both neighbouring samples, which finds a slow, large object that
        the median background has partly absorbed."""
        cfg = self.config
        threshold = cfg.foreground_distance
        mask = np.ones(image.shape[:2], bool)
        for background in backgrounds:
            mask &= _distance(image, background) > threshold
        if neighbours[0] is not image and neighbours[1] is not image:
            mask |= (_distance(image, neighbours[0]) > threshold) & (_distance(image, neighbours[1]) > threshold)
        mask = mask.astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((cfg.open_kernel,) * 2, np.uint8))
        solid = mask.astype(bool)  # the object's own pixels, for its colour
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((cfg.close_kernel,) * 2, np.uint8))
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        height, width = mask.shape  # type: ignore[misc]  # cv2's stub: a Mat's shape is a tuple of unknown length
        out: list[Observation] = []
        for label in range(1, count):
            x, y, w, h, pixels = (int(v) for v in stats[label])
            if w * h < cfg.min_area * width * height:
                continue
            region = (labels[y : y + h, x : x + w] == label) & solid[y : y + h, x : x + w]
            colours = name_histogram(sharp[y : y + h, x : x + w][region])
            out.append(Observation(t, (x / width, y / height, w / width, h / height),
                                   pixels / (width * height), colours))
        return out

    def _associate(self, tracks: list[Track], observations: list[Observation]) -> None:
        """Greedy: best-overlapping (then nearest) pairs first; the rest start tracks."""
        cfg = self.config
        live = [tr for tr in tracks]
        pairs: list[tuple[float, int, int]] = []
        for i, obs in enumerate(observations):
            for j, tr in enumerate(live):
                last = tr.last
                shared = iou(obs.box, last.box)
                jump = math.dist(obs.centre, last.centre)
                size = max(last.box[2], last.box[3], obs.box[2], obs.box[3])
                if shared > 0 or jump <= max(cfg.match_distance, size):
                    pairs.append((-shared + jump, i, j))
        pairs.sort()
        taken_obs: set[int] = set()
        taken_track: set[int] = set()
        for _, i, j in pairs:
            if i in taken_obs or j in taken_track:
                continue
            live[j].observations.append(observations[i])
            taken_obs.add(i)
            taken_track.add(j)
        for i, obs in enumerate(observations):
            if i not in taken_obs:
                tracks.append(Track([obs]))

    def _coast(self, tracks: list[Track], observations: list[Observation], t: float) -> None:
        """A track that found no region of its own at ``t`` while its predicted box lies inside
        another object's region has merged with it for a while (two things crossing): it
        goes on where its own motion takes it, with no colour of its own, until it separates."""
        cfg = self.config
        for tr in tracks:
            if tr.last.t >= t or tr.seen < 2 or travel_of(tr) < cfg.coast_travel:
                continue
            box = predict(tr, t)
            if any(o.t == t and overlap_share(box, o.box) >= cfg.coast_inside for o in observations):
                tr.observations.append(Observation(t, box, tr.last.area, np.zeros_like(tr.last.colours), True))

    def _people(self, tracks: list[Track], frames: Sequence[np.ndarray], times: Sequence[float]) -> None:
        """Run the people detector on up to ``checks`` samples and credit overlapping tracks."""
        if not tracks or not self.people.available:
            return
        picks = np.unique(np.linspace(0, len(frames) - 1, self.people.checks).round().astype(int))
        for k in picks:
            boxes = self.people.detect(frames[int(k)])
            if not boxes:
                continue
            for tr in tracks:
                obs = min(tr.observations, key=lambda o: abs(o.t - times[int(k)]))
                if any(overlap_share(b, obs.box) >= 0.3 for b in boxes):
                    tr.people_hits += 1

    def _measure(self, track: Track, shape: tuple[int, ...]) -> ObjectFacts:
        cfg = self.config
        obs = track.observations
        first, last = obs[0], obs[-1]
        pixel_aspect = shape[0] / shape[1]  # frame height / width in pixels
        boxes = np.array([o.box for o in obs])  # [N, 4]
        area = float(np.median(boxes[:, 2] * boxes[:, 3]))
        extent = float(np.median([o.area / max(o.box[2] * o.box[3], 1e-9) for o in obs]))
        aspect = float(np.median(boxes[:, 3] / np.maximum(boxes[:, 2], 1e-6))) * pixel_aspect
        x1, y1 = last.centre
        # Change from the first third of the track to the last third, as the median over
        # pairs: one box merged with a neighbour or a ghost does not turn the answer.
        third = max(1, len(obs) // 3)
        pairs = [(a.box, b.box) for a in obs[:third] for b in obs[-third:]]
        travels = np.array([self._travel(a, b) for a, b in pairs])  # [P, 2]
        dx, dy = (float(v) for v in np.median(travels, axis=0))
        scale = float(np.median([self._scale(a, b) for a, b in pairs]))
        duration = max(last.t - first.t, 1e-6)
        travel = math.hypot(dx / pixel_aspect, dy)  # in frame heights
        whole = all(self._side(o.box) == "inside" for o in (*obs[:third], *obs[-third:]))
        direction = self._direction(dx / pixel_aspect, dy, scale if whole else 0.0, first, last)
        entry, exit_ = self._side(first.box), self._side(last.box)
        tail = obs[-max(2, math.ceil(cfg.stop_share * len(obs))):]
        tail_travel = math.dist(tail[0].centre, tail[-1].centre)
        stopped = direction != "still" and len(obs) >= 4 and tail_travel < cfg.stop_travel
        colours = np.sum([o.colours for o in obs], axis=0)
        checks = self.people.checks if self.people.available else 0
        support = track.people_hits / checks if checks else 0.0
        return ObjectFacts(
            kind=self._kind(area, aspect, extent, track.people_hits),
            colour=dominant_colour(colours) or "grey",
            direction=direction,
            entry=entry,
            exit=exit_,
            stopped=stopped,
            area=area,
            aspect=aspect,
            speed=travel / duration,
            dx=dx,
            dy=dy,
            scale=scale,
            end=(x1, y1),
            people_support=support,
            observations=len(obs),
        )

    def _travel(self, a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float]:
        """(dx, dy) from box a to box b, measured on edges that no frame border cuts: a
        person leaving through the left border shows it by the right edge of its box
        moving left while its centre barely moves (used when both boxes touch that border)."""
        m = self.config.edge_margin

        def axis(start_a: float, size_a: float, start_b: float, size_b: float) -> float:
            low = start_a <= m and start_b <= m
            high = start_a + size_a >= 1 - m and start_b + size_b >= 1 - m
            if low and not high:  # cut at the low border: follow the far edge
                return (start_b + size_b) - (start_a + size_a)
            if high and not low:
                return start_b - start_a
            return (start_b + size_b / 2) - (start_a + size_a / 2)

        return axis(a[0], a[2], b[0], b[2]), axis(a[1], a[3], b[1], b[3])

    def _scale(self, a: tuple[float, ...], b: tuple[float, ...]) -> float:
        """log of how much the object grew from box a to box b, read from the sides that no
        frame border cuts: widths when a box touches the top or bottom, heights when it
        touches the left or right, the square root of the area otherwise."""
        m = self.config.edge_margin

        def cut(box: tuple[float, ...]) -> tuple[bool, bool]:
            x, y, w, h = box
            return (y <= m or y + h >= 1 - m, x <= m or x + w >= 1 - m)

        (va, ha), (vb, hb) = cut(a), cut(b)
        vertical, horizontal = va or vb, ha or hb
        if vertical and horizontal:
            return 0.0
        if vertical:
            return math.log(max(b[2], 1e-3) / max(a[2], 1e-3))
        if horizontal:
            return math.log(max(b[3], 1e-3) / max(a[3], 1e-3))
        return 0.5 * math.log(max(b[2] * b[3], 1e-6) / max(a[2] * a[3], 1e-6))

    def _direction(self, dx: float, dy: float, scale: float, first: Observation,
                   last: Observation) -> str:
        cfg = self.config
        travel = math.hypot(dx, dy)
        if travel < cfg.still_travel and abs(scale) < cfg.scale_travel:
            return "still"
        # Growth that outweighs sideways travel is motion along the camera's axis. Only a
        # thing seen whole at both ends says so: one cut by a border grows or shrinks in view
        # as it comes in or goes out (the caller passes scale 0 then).
        # A camera looks down on its scene: a thing coming closer also comes down the frame,
        # one going away goes up it. Growth against that (a box merging with a neighbour, a
        # thing half hidden) is not read as depth.
        along = dy > -cfg.depth_against if scale > 0 else dy < cfg.depth_against
        if abs(scale) >= cfg.scale_travel and abs(scale) >= cfg.scale_over_travel * travel and along:
            return "towards" if scale > 0 else "away"
        if abs(dx) >= abs(dy):
            return "left" if dx < 0 else "right"
        return "up" if dy < 0 else "down"

    def _side(self, box: tuple[float, float, float, float]) -> str:
        return border_side(box, self.config.edge_margin)

    def _kind(self, area: float, aspect: float, extent: float, people_hits: int) -> str:
        """The kind the measurements support: a tall upright thing the people detector
        confirms or of a person's proportions; a wide, solid, large thing (a reaching arm is
        wide but fills little of its box); small; animal-sized; else "object"."""
        cfg = self.config
        if people_hits > 0 and area >= cfg.person_area * 0.5:
            return "person"
        if area < cfg.small_area:
            return "small object"
        if aspect >= cfg.person_aspect and area >= cfg.person_area:
            return "person"
        wide = cfg.vehicle_min_aspect <= aspect <= cfg.vehicle_aspect
        if wide and area >= cfg.vehicle_area and extent >= cfg.vehicle_extent:
            return "vehicle"
        low, high = cfg.animal_aspect
        if area < cfg.animal_area and low <= aspect <= high:
            return "animal"
        return "object"


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel BGR Euclidean distance [H, W] of two images [H, W, 3]."""
    diff = a.astype(np.float32) - b
    return np.sqrt(np.einsum("hwc,hwc->hw", diff, diff))


__all__ = ["COLOUR_NAMES", "DIRECTIONS", "KINDS", "SIDES", "ObjectFacts", "ObjectTracker", "TrackConfig",
           "border_side"]
