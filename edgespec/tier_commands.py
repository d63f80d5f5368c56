"""`edgespec tier` and `edgespec bench-quant`: flags only; the work imports torch when run.

`tier` prints what camera_node/device_tier.py detects (memory, cores, accelerator, battery),
the tier that gives, and the draft a list of drafts picks for it (``--drafts FILE.toml``, else
`BUILTIN_DRAFTS`).

`bench-quant` compares a pair's draft in float32 with its int8 versions
(speculative/quantize.py) on the pair's own held-out prompts: greedy speculative decoding in
one process (`speculative.loop.run_local`) against the target, per-position acceptance and
tokens per round, every output checked token for token against the target alone; and the
draft's time per token as the drafter runs it (a one-token forward with the KV cache, the lean
forward where it applies), and its size in memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from .config import DEFAULTS, resolve_model_dir, set_threads

# The drafts `edgespec tier` picks from without --drafts: the real pair's draft where the device
# can hold it (int8 on a small device), the built-in tiny draft below that.
BUILTIN_DRAFTS: list[dict[str, str]] = [
    {"tier": "accelerated", "model": "smollm2-135m", "quantize": "none"},
    {"tier": "standard", "model": "smollm2-135m", "quantize": "none"},
    {"tier": "small", "model": "smollm2-135m", "quantize": "int8"},
    {"tier": "micro", "model": "default", "quantize": "none"},
]

DRAFTS_HELP = ("a TOML file of [[drafts]] tables (tier = micro|small|standard|accelerated, model = a draft "
               "folder, `default`, or a known model's name for its paired draft, quantize = none|int8)")


def register(sub) -> None:
    t = sub.add_parser("tier", help="this device's tier (memory, cores, accelerator, battery) and the draft it picks")
    t.add_argument("--drafts", metavar="FILE.toml", help=DRAFTS_HELP + "; default: the built-in list")
    t.add_argument("--battery", type=float, metavar="FRACTION",
                   help="the battery's charge (0..1) where the kernel reports none")
    t.add_argument("--on-battery", action="store_true", help="with --battery: running on it, not on mains")
    t.add_argument("--root", default="/", help=argparse.SUPPRESS)  # a fake /proc and /sys tree (tests)
    t.set_defaults(func=cmd_tier)

    q = sub.add_parser("bench-quant", help="an int8-quantized draft against its fp32 original: acceptance and speed")
    q.add_argument("--pair", default="default",
                   help="`default` (the built-in pair, the default) or a known model's name (with its paired draft)")
    q.add_argument("--backend", choices=("all", "rowwise", "fbgemm"), default="all",
                   help="int8 backends to compare with float32 (default: every one this torch has)")
    q.add_argument("--keep-head", action="store_true", help="leave the output layer in float32")
    q.add_argument("--prompts", type=int, default=8, help="held-out prompts per workload (default %(default)s)")
    q.add_argument("--gamma", type=int, default=DEFAULTS.gamma)
    q.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    q.add_argument("--steps", type=int, default=32, help="one-token forwards timed per draft (default %(default)s)")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--json", metavar="FILE", help="also write the report as JSON here")
    q.set_defaults(func=cmd_bench_quant)


def read_drafts_file(path: str | Path) -> list[Any]:
    """The entries of a drafts TOML file (checked), one-line `DraftConfigError` otherwise."""
    import tomllib

    from camera_node.device_tier import DraftConfigError, parse_drafts

    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except OSError as exc:
        raise DraftConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DraftConfigError(f"{path}: not valid TOML: {exc}") from None
    if "drafts" not in doc:
        raise DraftConfigError(f"{path}: no [[drafts]] tables")
    try:
        return parse_drafts(doc["drafts"])
    except DraftConfigError as exc:
        raise DraftConfigError(f"{path}: {exc}") from None


def draft_dir(model: str) -> Path | None:
    """Where a drafts entry's model is, or None when it is not there."""
    from .model_registry import REGISTRY, pair_draft_dir

    if model in REGISTRY:
        folder = pair_draft_dir(model)
        return folder if (folder / "config.json").is_file() else None
    try:
        return resolve_model_dir(model, "draft")
    except FileNotFoundError:
        return None


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def cmd_tier(args: argparse.Namespace) -> int:
    from camera_node.device_tier import Battery, classify, detect_device, parse_drafts, pick_draft

    configured = None
    if args.battery is not None:
        if not 0 <= args.battery <= 1:
            raise ValueError(f"--battery {args.battery}: a fraction from 0 to 1")
        configured = Battery(args.battery, on_mains=not args.on_battery)
    entries = read_drafts_file(args.drafts) if args.drafts else parse_drafts(BUILTIN_DRAFTS)
    info = detect_device(args.root, configured_battery=configured)
    tier = classify(info)
    battery = "none (on mains)"
    if info.battery is not None:
        battery = (f"{info.battery.fraction:.0%}, {'on mains' if info.battery.on_mains else 'on battery'} "
                   f"({info.battery_source})")
    print(f"memory       {_gib(info.memory_bytes)}")
    print(f"cores        {info.cores}")
    print(f"accelerator  {info.accelerator or 'none'}")
    print(f"battery      {battery}")
    print(f"tier         {tier.value}")
    entry = pick_draft(tier, entries)
    if entry is None:
        print(f"draft        none: no entry of tier {tier.value} or below in "
              f"{args.drafts or 'the built-in list'}")
        return 0
    folder = draft_dir(entry.model)
    where = str(folder) if folder is not None else "not present on this device"
    print(f"draft        {entry.model} ({entry.quantize}, an entry of tier {entry.tier.value}): {where}")
    return 0


def pair_dirs(pair: str) -> tuple[Path, Path]:
    """(target folder, draft folder) of `--pair`."""
    from .model_registry import pair_model_dirs

    if pair == "default":
        return resolve_model_dir("default", "target"), resolve_model_dir("default", "draft")
    return pair_model_dirs(pair)


def pair_workloads(target, prompts: int) -> dict[str, list[Any]]:
    """The pair's own held-out prompts: event descriptions and general questions for a chat
    model, else caption prompts with scene features (if the target takes them) and text."""
    from .workloads import chat_cases, has_chat_template, text_cases, vision_cases

    if has_chat_template(target):
        return {kind: chat_cases(target, kind, prompts) for kind in ("event", "general")}
    workloads = {"vision": vision_cases(target, prompts)} if target.projector is not None else {}
    workloads["text"] = text_cases(target, prompts)
    return workloads


def seconds_per_token(lm, case, steps: int, *, as_draft: bool = True) -> float:
    """Median seconds of a one-token forward after the case's prompt, with the KV cache: as
    the drafter runs it (the lean forward where it applies), or as the verifier runs a target
    (the Hugging Face forward)."""
    import torch

    from speculative.lean import draft_state
    from speculative.models import CachedLM

    state = draft_state(lm) if as_draft else CachedLM(lm)
    logits = state.prefill(case.prompt_ids, case.features)
    token = int(logits[-1].argmax()) if logits is not None else case.prompt_ids[-1]
    times = []
    with torch.inference_mode():
        for _ in range(steps):
            started = time.perf_counter()
            out = state.extend([token])
            times.append(time.perf_counter() - started)
            token = int(out[-1].argmax())
    return statistics.median(times)


def measure_variant(target, draft, workloads: dict[str, list[Any]], references: dict[str, list[list[int]]],
                    gamma: int, max_new_tokens: int) -> dict[str, Any]:
    from speculative.loop import run_local
    from speculative.sampling import SamplingParams

    rows: dict[str, Any] = {}
    for name, cases in workloads.items():
        accepted = drafted = judged = rounds = tokens = 0
        identical = True
        for case, reference in zip(cases, references[name]):
            r = run_local(target, draft, case.prompt_ids, case.features, SamplingParams(), gamma, max_new_tokens)
            identical &= r.token_ids == reference
            accepted += sum(r.accepted_per_round)
            drafted += sum(r.drafted_per_round)
            judged += r.evaluated_positions
            rounds += r.rounds
            tokens += len(r.token_ids)
        rows[name] = {"prompts": len(cases), "position_acceptance": round(accepted / max(judged, 1), 4),
                      "acceptance": round(accepted / max(drafted, 1), 4),
                      "tokens_per_round": round(tokens / max(rounds, 1), 3), "identical_to_target": identical}
    return rows


def bench_quant(pair: str, *, backends: Sequence[str], keep_head: bool, prompts: int, gamma: int,
                max_new_tokens: int, steps: int, threads: int) -> dict[str, Any]:
    import torch

    from speculative.models import load_lm
    from speculative.quantize import model_bytes, quantize_draft

    from .workloads import references as target_references

    set_threads(threads)
    target_dir, draft_dir_ = pair_dirs(pair)
    target, draft = load_lm(target_dir), load_lm(draft_dir_)
    workloads = pair_workloads(target, prompts)
    references = {name: target_references(target, cases, max_new_tokens) for name, cases in workloads.items()}
    probe = next(iter(workloads.values()))[0]
    variants = {"fp32": draft} | {f"int8-{b}": quantize_draft(draft, b, keep_head=keep_head)  # type: ignore[arg-type]
                                  for b in backends}
    report: dict[str, Any] = {
        "pair": pair, "target": str(target.path), "draft": str(draft.path), "gamma": gamma,
        "max_new_tokens": max_new_tokens, "threads": threads, "keep_head": keep_head, "torch": torch.__version__,
        "target_ms_per_token": round(seconds_per_token(target, probe, steps, as_draft=False) * 1000, 3), "variants": {},
    }
    for name, lm in variants.items():
        report["variants"][name] = {
            "draft_ms_per_token": round(seconds_per_token(lm, probe, steps) * 1000, 3),
            "megabytes": round(model_bytes(lm.model) / 1e6, 2),
            "workloads": measure_variant(target, lm, workloads, references, gamma, max_new_tokens),
        }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [(f"pair {report['pair']}: gamma {report['gamma']}, {report['max_new_tokens']} tokens, greedy, "
              f"{report['threads']} thread(s); target {report['target_ms_per_token']} ms/token"),
             (f"{'draft':14s} {'MB':>7s} {'ms/tok':>7s} {'workload':9s} {'n':>3s} {'a':>6s} {'accept':>7s} "
              f"{'tok/rnd':>8s}  same as target")]
    for name, v in report["variants"].items():
        for i, (workload, r) in enumerate(v["workloads"].items()):
            head = f"{name:14s} {v['megabytes']:7.1f} {v['draft_ms_per_token']:7.2f}" if i == 0 else " " * 30
            lines.append(f"{head} {workload:9s} {r['prompts']:3d} {r['position_acceptance']:6.3f} "
                         f"{r['acceptance']:7.3f} {r['tokens_per_round']:8.2f}  "
                         f"{'yes' if r['identical_to_target'] else 'NO'}")
    return "\n".join(lines)


def cmd_bench_quant(args: argparse.Namespace) -> int:
    from speculative.quantize import BACKENDS, fbgemm_available

    if args.backend == "all":
        backends = [b for b in BACKENDS if b != "fbgemm" or fbgemm_available()]
    else:
        backends = [args.backend]
    report = bench_quant(args.pair, backends=backends, keep_head=args.keep_head, prompts=args.prompts,
                         gamma=args.gamma, max_new_tokens=args.max_new_tokens, steps=args.steps,
                         threads=args.threads)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def draft_for_this_device(drafts_file: str | None = None, root: str = "/") -> tuple[Path, str, str]:
    """(draft folder, quantize, description) the device's tier picks: the best entry its tier
    allows whose model is present here, trying lower tiers when it is not; a one-line
    `DraftConfigError` when none is."""
    from camera_node.device_tier import DraftConfigError, classify, detect_device, parse_drafts

    entries = read_drafts_file(drafts_file) if drafts_file else parse_drafts(BUILTIN_DRAFTS)
    tier = classify(detect_device(root))
    allowed = sorted((e for e in entries if e.tier.rank <= tier.rank), key=lambda e: -e.tier.rank)
    for entry in allowed:  # a stable sort: the first listed of a tier first
        folder = draft_dir(entry.model)
        if folder is not None:
            return folder, entry.quantize, f"tier {tier.value}: {entry.model} ({entry.quantize})"
    where = drafts_file or "the built-in list"
    raise DraftConfigError(f"no draft of tier {tier.value} or below from {where} is present on this device")
