"""The recipe of `edgespec train-draft` (no torch here: the command line reads its defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class DraftRecipe:
    layers: tuple[int, ...] = (0, 1, -1)  # target layers the draft starts from (negative: from the end)
    event_prompts: int = 1600
    general_prompts: int = 18
    max_new_tokens: int = 48
    teacher_top: int = 32  # teacher entries kept per position for the soft loss
    epochs: int = 8
    batch: int = 8
    teacher_batch: int = 32  # prompts the target answers at once
    lr: float = 3e-4
    hard_weight: float = 0.5  # weight of the greedy-token loss beside the soft one
    seed: int = 0
    threads: int = 2
    head_vocab: int = 4096  # rows of the draft's reduced output head (0: the full vocabulary)
