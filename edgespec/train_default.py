"""``edgespec train-default``: train the built-in target/draft pair from nothing.

Steps (all deterministic from ``--seed``):

1. build the shared word-level tokenizer from the caption grammar;
2. draw ``train_scenes`` synthetic scenes, render each as a camera would see it and compute
   its ObjectFeatures once (motion detector, object tracks), kept in memory;
3. train the target (Llama, ~1.8 M parameters) with teacher forcing on freshly drawn
   captions of what each scene's features say, in the run-time layout ``[vision prefix][prompt][caption][eos]``;
4. distil the draft (~0.1 M parameters, its own projector) from the target's next-token
   distributions on the same inputs (KL on soft targets, plus a little cross-entropy);
5. save ``OUT/target`` and ``OUT/draft`` (HF folders + projector files) and
   ``OUT/train_report.json``.

The recipe is fixed steps, so two runs with the same seed give the same weights on the same
machine and thread count. ``--minutes`` is a hard cap on the two training phases (features
are computed first and do not count; ``--features-cache FILE`` keeps them for the next run):
if the machine is too slow to finish the steps in time, training stops early (and says so,
exit 2), which makes the result depend on speed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from camera_node.captions import CAPTION_PROMPT
from camera_node.features import ObjectFeatures
from camera_node.scene import random_scene
from edgespec.defaultpair.config import DEFAULT_MODELS_DIR, TrainConfig
from edgespec.defaultpair.data import CaptionBatches, build_tokenizer, compute_features, train_seeds
from edgespec.defaultpair.modeling import (
    build_lm,
    build_projector,
    parameter_count,
    save_model_folder,
    token_logits,
)
from edgespec.pair_commands import add_train_arguments

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

    from speculative.vision_prefix import VisionProjector

# Share of the wall-clock cap the target phase may use; the draft phase gets the rest.
TARGET_TIME_SHARE = 0.65


@dataclass
class PhaseResult:
    """How one training phase ended."""

    steps_done: int
    steps_planned: int
    seconds: float
    final_loss: float
    final_token_accuracy: float  # share of predicted tokens equal to the reference (greedy)
    stopped_by_deadline: bool


def learning_rate(step: int, total: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``base * min_lr_fraction``."""
    warmup = max(1, int(total * cfg.warmup_fraction))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = base * cfg.min_lr_fraction
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(params: list[torch.nn.Parameter], lr: float, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)


def _shifted_targets(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Next-token targets [B, T]: ids shifted left by one, padded at the end."""
    return torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], pad_id)], dim=1)


def train_target(
    model: LlamaForCausalLM,
    projector: VisionProjector,
    batches: CaptionBatches,
    cfg: TrainConfig,
    deadline: float,
    progress: bool,
) -> PhaseResult:
    """Teacher forcing: cross-entropy on caption tokens and eos."""
    params = [*model.parameters(), *projector.parameters()]
    opt = _optimizer(params, cfg.target_lr, cfg)
    model.train()
    projector.train()
    pad = batches.tokenizer.pad_token_id
    start = time.monotonic()
    loss_value, accuracy, step = float("nan"), float("nan"), 0
    bar = tqdm(total=cfg.target_steps, desc="target", disable=not progress)
    for step in range(cfg.target_steps):
        if time.monotonic() > deadline:
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.target_steps, cfg.target_lr, cfg)
        features, ids, mask = next(batches)  # [B, S, D], [B, T], [B, T]
        logits = token_logits(model, projector, features, ids)  # [B, T, V]
        targets = _shifted_targets(ids, pad)
        loss = F.cross_entropy(logits[mask], targets[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        loss_value = float(loss.detach())
        accuracy = float((logits[mask].argmax(-1) == targets[mask]).float().mean())
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{accuracy:.3f}")
    else:
        step = cfg.target_steps
    bar.close()
    model.eval()
    projector.eval()
    return PhaseResult(
        step,
        cfg.target_steps,
        time.monotonic() - start,
        loss_value,
        accuracy,
        step < cfg.target_steps,
    )


def distil_draft(
    draft: LlamaForCausalLM,
    draft_projector: VisionProjector,
    target: LlamaForCausalLM,
    target_projector: VisionProjector,
    batches: CaptionBatches,
    cfg: TrainConfig,
    deadline: float,
    progress: bool,
) -> PhaseResult:
    """Distillation: KL(p_target || q_draft) on soft targets at ``distil_temperature``.

    ``final_token_accuracy`` here is the share of positions where the draft's argmax equals
    the target's, i.e. the greedy acceptance the draft would get on these prefixes.
    """
    params = [*draft.parameters(), *draft_projector.parameters()]
    opt = _optimizer(params, cfg.draft_lr, cfg)
    draft.train()
    draft_projector.train()
    pad = batches.tokenizer.pad_token_id
    temperature = cfg.distil_temperature
    start = time.monotonic()
    loss_value, agreement, step = float("nan"), float("nan"), 0
    bar = tqdm(total=cfg.draft_steps, desc="draft", disable=not progress)
    for step in range(cfg.draft_steps):
        if time.monotonic() > deadline:
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.draft_steps, cfg.draft_lr, cfg)
        features, ids, mask = next(batches)
        with torch.no_grad():
            p_logits = token_logits(target, target_projector, features, ids)[mask]  # [N, V]
        q_logits = token_logits(draft, draft_projector, features, ids)[mask]  # [N, V]
        p = F.softmax(p_logits / temperature, dim=-1)
        log_q = F.log_softmax(q_logits / temperature, dim=-1)
        kl = F.kl_div(log_q, p, reduction="batchmean") * temperature**2
        ce = F.cross_entropy(q_logits, _shifted_targets(ids, pad)[mask])
        loss = kl + cfg.distil_ce_weight * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        loss_value = float(kl.detach())
        agreement = float((q_logits.argmax(-1) == p_logits.argmax(-1)).float().mean())
        bar.update(1)
        bar.set_postfix(kl=f"{loss_value:.4f}", agree=f"{agreement:.3f}")
    else:
        step = cfg.draft_steps
    bar.close()
    draft.eval()
    draft_projector.eval()
    return PhaseResult(
        step,
        cfg.draft_steps,
        time.monotonic() - start,
        loss_value,
        agreement,
        step < cfg.draft_steps,
    )


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def train_default(
    out_dir: str | Path = DEFAULT_MODELS_DIR, cfg: TrainConfig | None = None, progress: bool = True,
    features_cache: Path | None = None,
) -> dict[str, Any]:
    """Run the whole recipe and write ``out_dir/{target,draft}``; returns the report dict."""
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    started = time.monotonic()

    tokenizer = build_tokenizer()
    extractor = ObjectFeatures()
    seeds = train_seeds(cfg.seed, cfg.train_scenes)
    scenes, features = None, None
    if features_cache is not None and features_cache.is_file():
        cached = np.load(features_cache)
        if cached["seeds"].tolist() == seeds and cached["features"].shape[1:] == extractor.feature_shape:
            scenes, features = [random_scene(s) for s in seeds], cached["features"]
    if features is None:
        scenes, features = compute_features(seeds, None, progress, workers=cfg.threads)
        if features_cache is not None:
            np.savez_compressed(features_cache, seeds=np.array(seeds), features=features)
    assert scenes is not None  # read with the cached features, or computed with them
    feature_seconds = time.monotonic() - started
    # The cap counts from here: how long features took (or a cache hit) does not eat into
    # the models' share.
    deadline = time.monotonic() + cfg.max_minutes * 60.0
    metadata = {
        "feature_extractor": "camera_node.features.ObjectFeatures",
        "caption_prompt": CAPTION_PROMPT,
    }

    torch.manual_seed(cfg.seed)
    target = build_lm(cfg.target, tokenizer, cfg.max_positions)
    target_projector = build_projector(extractor.feature_shape, cfg.target, metadata)
    target_batches = CaptionBatches(
        scenes, features, tokenizer, cfg.batch_size, cfg.seed, cfg.bucket_batches,
        cfg.shuffled_words,
    )
    phase_start = time.monotonic()
    target_deadline = phase_start + (deadline - phase_start) * TARGET_TIME_SHARE
    target_result = train_target(
        target, target_projector, target_batches, cfg, target_deadline, progress
    )

    torch.manual_seed(cfg.seed + 1)
    draft = build_lm(cfg.draft, tokenizer, cfg.max_positions)
    draft_projector = build_projector(extractor.feature_shape, cfg.draft, metadata)
    draft_batches = CaptionBatches(
        scenes, features, tokenizer, cfg.batch_size, cfg.seed + 1, cfg.bucket_batches,
        cfg.shuffled_words,
    )
    draft_result = distil_draft(
        draft, draft_projector, target, target_projector, draft_batches, cfg, deadline, progress
    )

    save_model_folder(out_dir / "target", target, target_projector, tokenizer, cfg.max_new_tokens)
    save_model_folder(out_dir / "draft", draft, draft_projector, tokenizer, cfg.max_new_tokens)
    report = {
        "config": asdict(cfg),
        "seconds": {
            "features": round(feature_seconds, 1),
            "target": round(target_result.seconds, 1),
            "draft": round(draft_result.seconds, 1),
            "total": round(time.monotonic() - started, 1),
        },
        "parameters": {
            "target": parameter_count(target, target_projector),
            "target_projector": parameter_count(target_projector),
            "draft": parameter_count(draft, draft_projector),
            "draft_projector": parameter_count(draft_projector),
        },
        "target": asdict(target_result),
        "draft": asdict(draft_result),
        "folder_bytes": {
            "target": _folder_bytes(out_dir / "target"),
            "draft": _folder_bytes(out_dir / "draft"),
        },
        "feature_shape": list(extractor.feature_shape),
    }
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _run(args: argparse.Namespace) -> int:
    """The ``train-default`` command: train, print a summary, exit 0 (2 if cut short)."""
    cfg = replace(TrainConfig(), seed=args.seed, max_minutes=args.minutes)
    report = train_default(args.out, cfg, progress=not args.quiet, features_cache=args.features_cache)
    seconds, params, sizes = report["seconds"], report["parameters"], report["folder_bytes"]
    print(
        f"wrote {args.out}/target and {args.out}/draft in {seconds['total']:.0f} s "
        f"(features {seconds['features']:.0f} s, target {seconds['target']:.0f} s, "
        f"draft {seconds['draft']:.0f} s)"
    )
    print(
        f"parameters: target {params['target']:,}  draft {params['draft']:,}  "
        f"(draft/target {params['draft'] / params['target']:.3f})"
    )
    print(
        f"folder sizes: target {sizes['target'] / 1e6:.2f} MB  draft {sizes['draft'] / 1e6:.2f} MB"
    )
    print(
        f"target token accuracy {report['target']['final_token_accuracy']:.3f}, "
        f"draft/target argmax agreement {report['draft']['final_token_accuracy']:.3f}"
    )
    cut = [name for name in ("target", "draft") if report[name]["stopped_by_deadline"]]
    if cut:
        print(
            f"warning: the --minutes cap cut short: {', '.join(cut)}; "
            "the result depends on machine speed"
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``train-default`` without the ``edgespec`` front end."""
    parser = argparse.ArgumentParser(
        prog="edgespec train-default", description=__doc__.split("\n")[0]
    )
    add_train_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
