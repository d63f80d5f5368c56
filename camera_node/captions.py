"""The caption grammar of the default model pair, and the parser that scores captions.

A caption says, for each object the device tracked (largest first), what it is, its colour,
which way it went and whether it stopped, in one clause; clauses are joined by ``while``::

    a person in orange walks away from the camera
    a white vehicle drives from the left to the right and stops
    a small red object moves towards the top while a person in blue walks to the left

The words come from what the device measured (:func:`camera_node.features.decode_facts`), so
a caption never names a kind the measurements did not settle: an unsure one is an
``object``. Captions are lower-case words separated by single spaces, so a word-level
tokenizer encodes and decodes them exactly. Where there is a choice of wording the first is
the most likely and each later one half as likely (:data:`WORDING_DECAY`): greedy decoding
says the first, sampling brings out the rest. :func:`parse_caption` reads a caption back
into mentions and :func:`score_caption` compares them with ground truth.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from camera_node.colours import COLOUR_NAMES
from camera_node.objects import KINDS, SIDES

CAPTION_PROMPT = "describe:"
"""Prompt text the camera sends after the vision prefix. It tokenizes to ``describe`` ``:``."""

EMPTY_CAPTION = "something moves but no object could be followed"
JOINER = "while"
WORDING_DECAY = 0.5

SUBJECTS: dict[str, str] = {
    "person": "a person in {colour}",
    "vehicle": "{a} {colour} vehicle",
    "small object": "a small {colour} object",
    "animal": "{a} {colour} object the size of an animal",
    "object": "{a} {colour} object",
}
VERBS: dict[str, tuple[str, ...]] = {
    "person": ("walks", "goes"),
    "vehicle": ("drives", "moves"),
    "small object": ("moves", "goes"),
    "animal": ("moves", "goes"),
    "object": ("moves", "goes"),
}
STILL_PHRASES: tuple[str, ...] = ("stays still", "does not move")
# Where a direction leads, and the side it leaves from: "from the left to the right".
HEADINGS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "left"),
    "right": ("to the right", "right"),
    "up": ("towards the top", "up the frame"),
    "down": ("towards the bottom", "down the frame"),
    "towards": ("towards the camera",),
    "away": ("away from the camera",),
}
_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_SIDE_OF = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
STOP_PHRASE = "and stops"


def wording_weights(count: int) -> list[float]:
    """Probabilities of ``count`` wordings: each WORDING_DECAY times the one before."""
    raw = [WORDING_DECAY**i for i in range(count)]
    return [w / sum(raw) for w in raw]


def _choice(rng: np.random.Generator | random.Random | None, options: Sequence[str]) -> str:
    """The first option without ``rng``; else one drawn by :func:`wording_weights`."""
    if rng is None or len(options) == 1:
        return options[0]
    weights = wording_weights(len(options))
    if isinstance(rng, random.Random):
        return rng.choices(list(options), weights=weights)[0]
    return options[int(rng.choice(len(options), p=weights))]


def clause_for(fact: Mapping[str, Any], rng: np.random.Generator | random.Random | None = None) -> str:
    """One clause for one object's words (kind, colour, direction, entry, exit, stopped)."""
    kind, direction = fact["kind"], fact["direction"]
    colour = fact["colour"]
    subject = SUBJECTS[kind].format(a="an" if colour[0] in "aeiou" else "a", colour=colour)
    if direction == "still":
        return f"{subject} {_choice(rng, STILL_PHRASES)}"
    verb = _choice(rng, VERBS[kind])
    entry, exit_ = fact.get("entry", "inside"), fact.get("exit", "inside")
    side = _SIDE_OF.get(direction)
    if side is not None and exit_ == side and entry == _OPPOSITE[side]:
        link = "towards" if side in ("top", "bottom") else "to"
        path = f"from the {entry} {link} the {exit_}"
    else:
        path = _choice(rng, HEADINGS[direction])
    text = f"{subject} {verb} {path}"
    return f"{text} {STOP_PHRASE}" if fact.get("stopped") else text


def caption_for_facts(facts: Sequence[Mapping[str, Any]],
                      rng: np.random.Generator | random.Random | None = None) -> str:
    """The caption of an event's measured objects (greedy wording without ``rng``)."""
    if not facts:
        return EMPTY_CAPTION
    return f" {JOINER} ".join(clause_for(f, rng) for f in facts)


def _vocabulary() -> tuple[str, ...]:
    """Every word the grammar can produce plus the prompt's tokens, in a fixed order."""
    words: dict[str, None] = {}
    texts = [CAPTION_PROMPT.replace(":", " :"), EMPTY_CAPTION, JOINER, STOP_PHRASE, *COLOUR_NAMES]
    texts += [s.format(a="a an", colour="") for s in SUBJECTS.values()]
    texts += [w for ws in VERBS.values() for w in ws] + list(STILL_PHRASES)
    texts += [p for ps in HEADINGS.values() for p in ps]
    texts += [f"from the {a} to towards the {b}" for a in SIDES for b in SIDES]
    for text in texts:
        for word in text.split():
            words.setdefault(word, None)
    return tuple(words)


VOCABULARY: tuple[str, ...] = _vocabulary()
"""All caption and prompt words; the default tokenizer's vocabulary is these plus specials."""


# --- parsing and scoring -------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """What one clause says about one object; None where it says nothing."""

    kind: str | None
    colour: str | None
    direction: str | None
    stopped: bool = False


def _kind_of(words: list[str]) -> str | None:
    if "person" in words:
        return "person"
    if "vehicle" in words:
        return "vehicle"
    if "animal" in words:
        return "animal"
    if "small" in words:
        return "small object"
    if "object" in words:
        return "object"
    return None


def _direction_of(text: str) -> str | None:
    if "stays still" in text or "does not move" in text:
        return "still"
    if "towards the camera" in text:
        return "towards"
    if "away from the camera" in text:
        return "away"
    for a, b in (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")):
        if f"from the {a} to the {b}" in text or f"from the {a} towards the {b}" in text:
            return {"left": "left", "right": "right", "top": "up", "bottom": "down"}[b]
    for direction, phrases in HEADINGS.items():
        if any(f" {p}" in f" {text}" for p in phrases if len(p.split()) > 1):
            return direction
    words = text.split()
    for direction in ("left", "right"):
        if direction in words:
            return direction
    return None


def parse_caption(caption: str) -> list[Mention]:
    """Split a caption into clauses (at ``while``) and read each clause."""
    mentions: list[Mention] = []
    if caption.strip().lower() == EMPTY_CAPTION:
        return mentions
    for clause in caption.lower().split(f" {JOINER} "):
        words = clause.split()
        kind = _kind_of(words)
        colour = next((w for w in words if w in COLOUR_NAMES), None)
        direction = _direction_of(clause)
        if kind or colour or direction:
            mentions.append(Mention(kind, colour, direction, STOP_PHRASE in clause))
    return mentions


@dataclass
class CaptionScore:
    """How well captions describe their objects; counts are over the ground-truth objects."""

    objects: int = 0
    found: int = 0  # objects some clause could be matched to
    kind: int = 0  # ... whose kind is right
    kind_or_unsure: int = 0  # ... right, or honestly "object"
    colour: int = 0
    direction: int = 0
    extra_mentions: int = 0  # clauses matched to no object
    per_object: list[dict[str, bool]] = field(default_factory=list)

    def add(self, other: CaptionScore) -> None:
        """Accumulate another caption's counts (``per_object`` is not carried over)."""
        for name in ("objects", "found", "kind", "kind_or_unsure", "colour", "direction",
                     "extra_mentions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def shares(self) -> dict[str, Any]:
        """Each count as a share of the objects (``extra_mentions`` stays a count)."""
        n = max(1, self.objects)
        return {
            "objects": self.objects,
            "found": self.found / n,
            "kind": self.kind / n,
            "kind_or_unsure": self.kind_or_unsure / n,
            "colour": self.colour / n,
            "direction": self.direction / n,
            "extra_mentions": self.extra_mentions,
        }


def _accepts(truth: Mapping[str, Any], key: str, value: str | None) -> bool:
    """Whether ``value`` is right for ``truth[key]`` (a word, or a list of acceptable words)."""
    allowed = truth.get(key)
    if isinstance(allowed, (list, tuple)):
        return value in allowed
    return value == allowed


def score_caption(caption: str, truth: Sequence[Mapping[str, Any]]) -> CaptionScore:
    """Match clauses to ground-truth objects (greedily, most agreeing pairs first) and count.

    ``truth``: one mapping per object with ``kind``, ``colour`` and ``direction``, each a word
    or a list of acceptable words (labels of real footage allow several).
    """
    mentions = parse_caption(caption)
    pairs = []
    for i, obj in enumerate(truth):
        for j, mention in enumerate(mentions):
            agree = sum(_accepts(obj, k, getattr(mention, k)) for k in ("kind", "colour", "direction"))
            pairs.append((-agree, i, j))
    pairs.sort()
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, i, j in pairs:
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    score = CaptionScore(objects=len(truth), extra_mentions=len(mentions) - len(used))
    for i, obj in enumerate(truth):
        m = mentions[matched[i]] if i in matched else None
        row = {
            "found": m is not None,
            "kind": m is not None and _accepts(obj, "kind", m.kind),
            "colour": m is not None and _accepts(obj, "colour", m.colour),
            "direction": m is not None and _accepts(obj, "direction", m.direction),
        }
        row["kind_or_unsure"] = row["kind"] or (m is not None and m.kind == "object")
        score.per_object.append(row)
        for name, ok in row.items():
            setattr(score, name, getattr(score, name) + int(ok))
    return score


__all__ = [
    "CAPTION_PROMPT", "EMPTY_CAPTION", "KINDS", "VOCABULARY", "CaptionScore", "Mention",
    "caption_for_facts", "clause_for", "parse_caption", "score_caption",
]
