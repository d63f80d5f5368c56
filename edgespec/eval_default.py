"""``edgespec eval-default``: measure the default pair on held-out scenes.

1. Caption accuracy: greedy captions of the target alone and of the draft alone, parsed
   back by :func:`camera_node.captions.score_caption`: the share of the scene's objects
   whose kind, colour and direction the caption names correctly (against the scene's ground
   truth), and how faithfully it says what the device measured. A "sensor" row scores the
   measurements themselves, worded by the grammar: what any caption could reach.
2. Speculative decoding: the project's own loop (:func:`speculative.loop.run_local`) with
   the draft proposing ``gamma`` tokens a round, at each temperature: acceptance rate
   (accepted / drafted tokens, pooled over scenes), mean accepted draft tokens per round,
   tokens per round against the formula (1 - a^(g+1)) / (1 - a), target forwards per token;
   at temperature 0 it also checks that the output equals the target's own greedy caption.
3. Feature size: bytes of the float32 features a camera sends once per session.
4. With ``--footage DIR``: labelled real clips through the camera pipeline
   (:mod:`edgespec.eval_footage`).

Scenes come from :func:`edgespec.defaultpair.data.eval_seeds`, disjoint from training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from camera_node.captions import CaptionScore, caption_for_facts, score_caption
from camera_node.features import decode_facts
from camera_node.scene import ground_truth
from edgespec.defaultpair.config import DEFAULT_MODELS_DIR, EvalConfig
from edgespec.defaultpair.data import compute_features, eval_seeds, prompt_ids
from edgespec.defaultpair.modeling import greedy_captions, parameter_count
from edgespec.model_registry import pair_dirs
from edgespec.pair_commands import add_eval_arguments
from edgespec.toolkit import expected_tokens_per_round


def caption_accuracy(
    lm: Any,
    scenes: list[Any],
    features: np.ndarray,
    prompt: list[int],
    cfg: EvalConfig,
) -> tuple[dict[str, Any], list[list[int]], list[str]]:
    """Greedy captions of one model for all scenes, scored; returns (shares, ids, texts)."""
    eos = lm.tokenizer.eos_token_id
    ids: list[list[int]] = []
    for start in range(0, len(scenes), cfg.batch_size):
        batch = torch.from_numpy(features[start : start + cfg.batch_size])  # [B, S, D]
        ids += greedy_captions(lm.model, lm.projector, batch, prompt, eos, cfg.max_new_tokens)
    texts = [lm.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return caption_shares(texts, scenes, features), ids, texts


def caption_shares(texts: list[str], scenes: list[Any], features: np.ndarray) -> dict[str, Any]:
    """Shares right against the scenes' ground truth, plus faithfulness to the features."""
    truth, said = CaptionScore(), CaptionScore()
    for text, scene, feats in zip(texts, scenes, features, strict=True):
        truth.add(score_caption(text, ground_truth(scene)))
        said.add(score_caption(text, decode_facts(feats)))
    shares = truth.shares()
    faithful = said.shares()
    shares["faithful"] = min(faithful["kind"], faithful["colour"], faithful["direction"])
    return shares


def speculative_stats(
    target: Any,
    draft: Any,
    features: np.ndarray,
    prompt: list[int],
    temperature: float,
    cfg: EvalConfig,
    greedy_reference: list[list[int]] | None,
    progress: bool,
) -> dict[str, Any]:
    """run_local over every scene at one temperature; pooled statistics."""
    from speculative.loop import run_local
    from speculative.sampling import SamplingParams

    sampling = SamplingParams(temperature=temperature)
    accepted = drafted = rounds = tokens = forwards = 0
    identical = 0
    started = time.perf_counter()
    for i in tqdm(
        range(len(features)), desc=f"speculative T={temperature}", disable=not progress, leave=False
    ):
        result = run_local(
            target,
            draft,
            prompt,
            features[i],
            sampling,
            cfg.gamma,
            cfg.max_new_tokens,
            seed=cfg.seed + i,
        )
        accepted += sum(result.accepted_per_round)
        drafted += sum(result.drafted_per_round)
        rounds += result.rounds
        tokens += len(result.token_ids)
        forwards += result.target_forwards
        if greedy_reference is not None:
            out = [t for t in result.token_ids if t not in target.eos_token_ids]
            identical += int(out == greedy_reference[i])
    rate = accepted / drafted if drafted else 0.0
    stats = {
        "temperature": temperature,
        "gamma": cfg.gamma,
        "acceptance_rate": rate,
        "accepted_per_round": accepted / max(1, rounds),
        "tokens_per_round": tokens / max(1, rounds),
        "expected_tokens_per_round": expected_tokens_per_round(rate, cfg.gamma),
        "target_forwards_per_token": forwards / max(1, tokens),
        "rounds": rounds,
        "tokens": tokens,
        "seconds": time.perf_counter() - started,
    }
    if greedy_reference is not None:
        stats["identical_to_target_greedy"] = identical / len(features)
    return stats


def evaluate(
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    cfg: EvalConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """All measurements of the module docstring, as a JSON-ready dict."""
    from speculative.models import load_lm

    cfg = cfg or EvalConfig()
    torch.set_num_threads(cfg.threads)
    target, draft = (load_lm(d) for d in pair_dirs(models_dir))
    if target.fingerprint != draft.fingerprint:
        raise ValueError(f"{models_dir}: target and draft tokenizers differ")
    scenes, features = compute_features(
        eval_seeds(cfg.scenes), progress=progress, desc="eval features", workers=cfg.threads
    )
    prompt = prompt_ids(target.tokenizer)

    report: dict[str, Any] = {"config": asdict(cfg), "models_dir": str(models_dir), "models": {}}
    greedy_ids: dict[str, list[list[int]]] = {}
    for name, lm in (("target", target), ("draft", draft)):
        shares, ids, texts = caption_accuracy(lm, scenes, features, prompt, cfg)
        greedy_ids[name] = ids
        report["models"][name] = {
            "parameters": parameter_count(*(m for m in (lm.model, lm.projector) if m is not None)),
            "accuracy": shares,
            "examples": [
                {"seed": s.seed, "caption": t} for s, t in zip(scenes[:3], texts[:3], strict=True)
            ],
        }
    sensor_texts = [caption_for_facts(decode_facts(f)) for f in features]
    report["sensor"] = caption_shares(sensor_texts, scenes, features)
    report["speculative"] = [
        speculative_stats(
            target,
            draft,
            features,
            prompt,
            t,
            cfg,
            greedy_ids["target"] if t == 0.0 else None,
            progress,
        )
        for t in cfg.temperatures
    ]
    slots, dims = features.shape[1:]
    occupied = float((features[:, :, 0] > 0).sum(1).mean())
    report["features"] = {
        "shape": [slots, dims],
        "bytes_float32": int(slots * dims * 4),
        "mean_occupied_slots": occupied,
        "mean_bytes_occupied_float32": occupied * dims * 4,
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of a report."""
    lines = [f"held-out scenes: {report['config']['scenes']}   models: {report['models_dir']}", ""]
    lines.append(
        f"{'':<8}{'params':>10}{'kind':>8}{'kind/obj':>10}{'colour':>8}{'direction':>11}"
        f"{'faithful':>10}{'extra':>7}"
    )
    rows = [(name, entry["parameters"], entry["accuracy"]) for name, entry in report["models"].items()]
    rows.append(("sensor", None, report["sensor"]))
    for name, params, a in rows:
        lines.append(
            f"{name:<8}{'' if params is None else f'{params:,}':>10}{a['kind']:>8.3f}"
            f"{a['kind_or_unsure']:>10.3f}{a['colour']:>8.3f}{a['direction']:>11.3f}"
            f"{a['faithful']:>10.3f}{a['extra_mentions']:>7}"
        )
    lines.append("(against the scenes' ground truth; faithful: says what the features say; "
                 "sensor: the measurements worded by the grammar)")
    header = (
        f"{'T':>5}{'gamma':>7}{'accept':>8}{'acc/round':>11}{'tok/round':>11}"
        f"{'formula':>9}{'tgt fwd/tok':>13}{'= greedy':>10}"
    )
    lines += ["", header]
    for s in report["speculative"]:
        same = s.get("identical_to_target_greedy")
        lines.append(
            f"{s['temperature']:>5.1f}{s['gamma']:>7}{s['acceptance_rate']:>8.3f}"
            f"{s['accepted_per_round']:>11.2f}{s['tokens_per_round']:>11.2f}"
            f"{s['expected_tokens_per_round']:>9.2f}{s['target_forwards_per_token']:>13.3f}"
            f"{'' if same is None else f'{same:.3f}':>10}"
        )
    f = report["features"]
    feature_line = (
        f"features: [{f['shape'][0]}, {f['shape'][1]}] float32 = {f['bytes_float32']} "
        f"bytes (occupied slots {f['mean_occupied_slots']:.2f} = "
        f"{f['mean_bytes_occupied_float32']:.0f} bytes)"
    )
    lines += ["", feature_line]
    examples = report["models"]["target"]["examples"]
    lines += ["", "target captions:"] + [f"  seed {e['seed']}: {e['caption']}" for e in examples]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    """The ``eval-default`` command: print the table, write JSON if asked."""
    from edgespec.eval_footage import (
        LABELS_FILE,
        FootageConfig,
        evaluate_footage,
        format_footage,
        load_labels,
    )
    from speculative.models import load_lm

    cfg = replace(EvalConfig(), scenes=args.scenes, gamma=args.gamma)
    argv = sys.argv[sys.argv.index("eval-default") + 1 :] if "eval-default" in sys.argv else []
    args.argv_echo = [a for a in argv if a != "--quiet"]
    labels = None
    if args.footage is not None:
        if not args.footage.is_dir():
            raise ValueError(f"--footage {args.footage}: not a folder")
        beside = args.footage / "labels.json"
        labels = load_labels(args.labels or (beside if beside.is_file() else LABELS_FILE))
    report = evaluate(args.models, cfg, progress=not args.quiet) if args.scenes > 0 else {}
    if report:
        print(format_report(report))
    if labels is not None:
        torch.set_num_threads(cfg.threads)
        target, draft = (load_lm(d) for d in pair_dirs(args.models))
        report["footage"] = evaluate_footage(args.footage, labels, target, draft,
                                             FootageConfig(gamma=args.gamma), keyframes=args.keyframes)
        print(("\n" if args.scenes > 0 else "") + format_footage(report["footage"]))
        if args.markdown:
            from edgespec.eval_footage import footage_markdown

            rel = None
            if args.keyframes is not None:
                rel = os.path.relpath(args.keyframes, args.markdown.parent)
            command = "edgespec eval-default " + " ".join(args.argv_echo)
            args.markdown.write_text(footage_markdown(report["footage"], rel, command) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``eval-default`` without the ``edgespec`` front end."""
    parser = argparse.ArgumentParser(
        prog="edgespec eval-default", description=__doc__.split("\n")[0]
    )
    add_eval_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
