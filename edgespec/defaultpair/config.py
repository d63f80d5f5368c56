"""Every number of the default pair's training and evaluation, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import DEFAULTS

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "default_models"
"""``edgespec/default_models``: holds ``target/`` and ``draft/``."""

# Scene seeds of the two splits never overlap: training uses
# TRAIN_SEED_BASE + seed * SEED_STRIDE + i (i < SEED_STRIDE), evaluation EVAL_SEED_BASE + i.
TRAIN_SEED_BASE = 0
SEED_STRIDE = 1_000_000
EVAL_SEED_BASE = 2_000_000_000

# The most tokens an evaluation lets a caption run to, and the pair's generation_config.json
# max_new_tokens: longer than any caption the pair learns (see TrainConfig.max_positions).
CAPTION_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class LMSpec:
    """Shape of one Llama-style causal LM and its vision projector."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    projector_inner: int  # hidden width of the projector's two-layer MLP


@dataclass(frozen=True)
class TrainConfig:
    """What ``edgespec train-default`` does; the defaults are the shipped pair's recipe."""

    seed: int = 0
    train_scenes: int = 2000
    target: LMSpec = field(default_factory=lambda: LMSpec(192, 512, 4, 4, 384))
    draft: LMSpec = field(default_factory=lambda: LMSpec(64, 160, 2, 4, 128))
    max_positions: int = 96  # 3 vision slots + 2 prompt tokens + the longest caption + eos
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS  # written to generation_config.json
    bucket_batches: int = 16  # batches drawn at once and bucketed by length
    shuffled_words: float = 0.5  # share of rows whose features say other words (data.shuffle_words)
    batch_size: int = 64
    # Target: teacher forcing on ground-truth captions.
    target_steps: int = 900
    target_lr: float = 2e-3
    # Draft: distillation from the target's distributions on the same inputs.
    draft_steps: int = 1500
    draft_lr: float = 4e-3
    distil_temperature: float = 1.0  # softens both p and q in the KL
    distil_ce_weight: float = 0.1  # weight of plain cross-entropy on the ground truth
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.05  # cosine decay ends at lr * this
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.98)
    threads: int = 2
    max_minutes: float = 20.0  # hard wall-clock cap on the two training phases (see train_default)


@dataclass(frozen=True)
class EvalConfig:
    """What ``edgespec eval-default`` measures."""

    scenes: int = 500
    gamma: int = DEFAULTS.gamma  # draft tokens per speculative round
    temperatures: tuple[float, ...] = (0.0, 0.7)
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS
    seed: int = 0
    batch_size: int = 100  # scenes per batched greedy-caption call
    threads: int = 2
