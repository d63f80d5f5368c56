"""The caption grammar of the default model pair, and the parser that scores captions.

A caption names every object of a scene in one clause, objects ordered left to right by
their position in the first frame, clauses joined by ``and`` or ``while``. A clause says
the object's colour, shape, motion and end position (see :mod:`camera_node.scene`), worded
by one of a few templates with synonyms, for example::

    a red circle moves left at the top
    on the right a blue square stays still
    there is a green triangle in the bottom left corner that rises

Captions are lower-case words separated by single spaces, with no punctuation, so a
word-level tokenizer encodes and decodes them exactly. In every list of wordings the first
is the most likely and each later one half as likely (:data:`WORDING_DECAY`).
:func:`parse_caption` reads a caption back into (colour, shape, motion, position) mentions
and :func:`score_caption` compares them with a scene's ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from camera_node.scene import COLOURS, SHAPES, Scene, SceneObject, motion_word, position_word

CAPTION_PROMPT = "describe:"
"""Prompt text the camera sends after the vision prefix. It tokenizes to ``describe`` ``:``."""

EMPTY_CAPTION = "the scene is empty"

MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves left", "goes left", "drifts to the left", "slides left"),
    "right": ("moves right", "goes right", "drifts to the right", "slides right"),
    "up": ("moves up", "goes up", "rises", "drifts upward"),
    "down": ("moves down", "goes down", "falls", "drifts downward"),
    "still": ("stays still", "does not move", "sits still", "is not moving"),
}

_CORNER_PHRASES = ("at the {w}", "in the {w} corner", "near the {w}")
_EDGE_PHRASES = ("at the {w}", "near the {w}", "along the {w}")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    **{
        w: tuple(p.format(w=w) for p in _CORNER_PHRASES)
        for w in ("top left", "top right", "bottom left", "bottom right")
    },
    **{w: tuple(p.format(w=w) for p in _EDGE_PHRASES) for w in ("top", "bottom")},
    **{
        w: ("on the " + w, "at the " + w + " side", "near the " + w + " edge")
        for w in ("left", "right")
    },
    "centre": ("in the centre", "in the middle", "near the centre"),
}

CLAUSE_TEMPLATES: tuple[str, ...] = (
    "{a} {colour} {shape} {motion} {position}",
    "{position} {a} {colour} {shape} {motion}",
    "there is {a} {colour} {shape} {position} that {motion}",
    "the {colour} {shape} {position} {motion}",
)
JOINERS: tuple[str, ...] = ("and", "while")
WORDING_DECAY = 0.5
"""Each wording in a list above is this many times as likely as the one before it."""


def _vocabulary() -> tuple[str, ...]:
    """Every word the grammar can produce plus the prompt's tokens, in a fixed order."""
    words: dict[str, None] = {}
    texts = [CAPTION_PROMPT.replace(":", " :"), EMPTY_CAPTION, *JOINERS, *COLOURS, *SHAPES]
    texts += [
        t.format(a="a an", colour="", shape="", motion="", position="") for t in CLAUSE_TEMPLATES
    ]
    texts += [p for ps in MOTION_PHRASES.values() for p in ps]
    texts += [p for ps in POSITION_PHRASES.values() for p in ps]
    for text in texts:
        for word in text.split():
            words.setdefault(word, None)
    return tuple(words)


VOCABULARY: tuple[str, ...] = _vocabulary()
"""All caption and prompt words; the default tokenizer's vocabulary is these plus specials."""


def wording_weights(count: int) -> list[float]:
    """Probabilities of the ``count`` wordings of one list: each later one WORDING_DECAY times
    as likely as the one before, so every list has a clear favourite (what a greedy decoder
    says) and rarer variants (what sampling brings out)."""
    raw = [WORDING_DECAY**i for i in range(count)]
    return [w / sum(raw) for w in raw]


def _choice(rng: np.random.Generator | random.Random, options: Sequence[str]) -> str:
    """One of ``options`` by :func:`wording_weights` (NumPy Generator or ``random.Random``)."""
    weights = wording_weights(len(options))
    if isinstance(rng, random.Random):
        return rng.choices(list(options), weights=weights)[0]
    return options[int(rng.choice(len(options), p=weights))]


def reading_order(scene: Scene) -> list[SceneObject]:
    """Objects left to right by their first-frame centre (ties broken top to bottom)."""
    return sorted(scene.objects, key=lambda o: (o.x, o.y))


def clause_for(obj: SceneObject, rng: np.random.Generator | random.Random) -> str:
    """One clause naming ``obj``'s colour, shape, motion and end position."""
    template = _choice(rng, CLAUSE_TEMPLATES)
    return template.format(
        a="an" if obj.colour[0] in "aeiou" else "a",
        colour=obj.colour,
        shape=obj.shape,
        motion=_choice(rng, MOTION_PHRASES[motion_word(obj)]),
        position=_choice(rng, POSITION_PHRASES[position_word(obj)]),
    )


def caption_for(scene: Scene, rng: np.random.Generator | random.Random) -> str:
    """A caption of ``scene``; ``rng`` picks templates, synonyms and joiners."""
    objects = reading_order(scene)
    if not objects:
        return EMPTY_CAPTION
    parts = [clause_for(objects[0], rng)]
    for obj in objects[1:]:
        parts += [_choice(rng, JOINERS), clause_for(obj, rng)]
    return " ".join(parts)


# --- parsing and scoring -------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """What one clause of a caption says about one object; None where it says nothing."""

    colour: str | None
    shape: str | None
    motion: str | None
    position: str | None


def _phrase_table(phrases: dict[str, tuple[str, ...]]) -> list[tuple[tuple[str, ...], str]]:
    """(phrase words, value) pairs, longest phrases first so the most specific one wins."""
    table = [(tuple(p.split()), value) for value, ps in phrases.items() for p in ps]
    return sorted(table, key=lambda item: -len(item[0]))


_MOTION_TABLE = _phrase_table(MOTION_PHRASES)
_POSITION_TABLE = _phrase_table(POSITION_PHRASES)


def _take_phrase(
    words: list[str], table: list[tuple[tuple[str, ...], str]]
) -> tuple[str | None, list[str]]:
    """Find the first phrase of ``table`` in ``words``; return its value and the words left."""
    for phrase, value in table:
        n = len(phrase)
        for i in range(len(words) - n + 1):
            if tuple(words[i : i + n]) == phrase:
                return value, words[:i] + ["|"] + words[i + n :]  # "|" keeps phrases apart
    return None, words


def parse_caption(caption: str) -> list[Mention]:
    """Split a caption into clauses (at ``and`` / ``while``) and read each clause."""
    mentions: list[Mention] = []
    clause: list[str] = []
    for word in [*caption.lower().split(), JOINERS[0]]:
        if word not in JOINERS:
            clause.append(word)
            continue
        if clause:
            motion, rest = _take_phrase(clause, _MOTION_TABLE)
            position, rest = _take_phrase(rest, _POSITION_TABLE)
            colour = next((w for w in rest if w in COLOURS), None)
            shape = next((w for w in rest if w in SHAPES), None)
            if any(v is not None for v in (colour, shape, motion, position)):
                mentions.append(Mention(colour, shape, motion, position))
        clause = []
    return mentions


@dataclass
class CaptionScore:
    """How well one caption describes one scene; counts are over the scene's objects."""

    objects: int = 0
    colour: int = 0  # objects whose colour is named
    shape: int = 0  # ... named with the right shape
    motion: int = 0  # ... and the right motion
    position: int = 0  # ... and the right end position
    all_three: int = 0  # colour, shape and motion all right
    extra_mentions: int = 0  # clauses naming no object of the scene, or one named twice
    per_object: list[dict[str, bool]] = field(default_factory=list)

    def add(self, other: CaptionScore) -> None:
        """Accumulate another scene's counts (``per_object`` is not carried over)."""
        for name in (
            "objects",
            "colour",
            "shape",
            "motion",
            "position",
            "all_three",
            "extra_mentions",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def shares(self) -> dict[str, Any]:
        """Each count as a share of the objects (``extra_mentions`` stays a count)."""
        n = max(1, self.objects)
        return {
            "objects": self.objects,
            "colour": self.colour / n,
            "shape": self.shape / n,
            "motion": self.motion / n,
            "position": self.position / n,
            "colour_shape_motion": self.all_three / n,
            "extra_mentions": self.extra_mentions,
        }


def score_caption(caption: str, scene: Scene) -> CaptionScore:
    """Match each object to the clause naming its colour (colours are unique in a scene).

    An object counts as correct for shape/motion/position only if its colour is named and
    that clause has the right word; clauses naming absent colours count as extra mentions.
    """
    mentions = parse_caption(caption)
    by_colour: dict[str, Mention] = {}
    extra = 0
    for m in mentions:
        if m.colour is None or m.colour in by_colour:
            extra += 1
        else:
            by_colour[m.colour] = m
    score = CaptionScore(objects=len(scene.objects))
    present = {o.colour for o in scene.objects}
    extra += sum(1 for c in by_colour if c not in present)
    score.extra_mentions = extra
    for obj in scene.objects:
        m = by_colour.get(obj.colour)
        row = {
            "colour": m is not None,
            "shape": m is not None and m.shape == obj.shape,
            "motion": m is not None and m.motion == motion_word(obj),
            "position": m is not None and m.position == position_word(obj),
        }
        row["all_three"] = row["colour"] and row["shape"] and row["motion"]
        score.per_object.append(row)
        for name in ("colour", "shape", "motion", "position", "all_three"):
            setattr(score, name, getattr(score, name) + int(row[name]))
    return score
