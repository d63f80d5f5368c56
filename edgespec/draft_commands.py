"""`edgespec train-draft` and `edgespec eval-draft`: flags only; the work imports torch when run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import resolve_model_dir

MODEL_HELP = "a model folder or a fetched model's name (edgespec models list)"


def register(sub) -> None:
    from .train_draft_recipe import DraftRecipe

    defaults = DraftRecipe()
    p = sub.add_parser("train-draft", help="distil a small draft for a target language model (self-distillation)")
    p.add_argument("--target", required=True, help=f"the target: {MODEL_HELP}")
    p.add_argument("--out", help="folder to write the draft to (default for a fetched model's name: the "
                                 "pair's draft folder, ~/.edgespec/models/NAME-draft)")
    p.add_argument("--layers", default=",".join(map(str, defaults.layers)),
                   help="target layers the draft starts from, negative from the end (default %(default)s)")
    p.add_argument("--event-prompts", type=int, default=defaults.event_prompts,
                   help="camera event descriptions the target answers (default %(default)s)")
    p.add_argument("--general-prompts", type=int, default=defaults.general_prompts,
                   help="general questions the target answers (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed, help="same seed, same draft")
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--head-vocab", type=int, default=defaults.head_vocab, metavar="K",
                   help="a reduced output head over the K ids the target's answers put the most mass on "
                        "(stop tokens included); 0: the full vocabulary (default %(default)s)")
    p.add_argument("--from-draft", metavar="DIR",
                   help="no training: give the draft in DIR the --head-vocab head (the teacher pass ranks the "
                        "ids), written to --out (may be DIR itself)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_draft)

    e = sub.add_parser("eval-draft", help="greedy acceptance and cost per token of a draft for its target")
    e.add_argument("--target", required=True, help=f"the target: {MODEL_HELP}")
    e.add_argument("--draft", required=True, help=f"the draft: {MODEL_HELP}")
    e.add_argument("--events", type=int, default=12, help="held-out event prompts (default %(default)s)")
    e.add_argument("--general", type=int, default=6, help="held-out general prompts (default %(default)s)")
    e.add_argument("--gamma", type=int, default=4)
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--cost-rounds", type=int, default=7,
                   help="rounds of timing target and draft back to back; the median ratio (default %(default)s)")
    e.add_argument("--json", metavar="FILE", help="also write the report as JSON here")
    e.set_defaults(func=cmd_eval_draft)


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--layers {text!r}: comma-separated layer numbers, e.g. 0,1,-1") from None


def cmd_train_draft(args: argparse.Namespace) -> int:
    from .train_draft import cut_head, train_draft
    from .train_draft_recipe import DraftRecipe

    if args.head_vocab < 0:
        raise ValueError(f"--head-vocab {args.head_vocab}: a number of ids, or 0 for the full vocabulary")
    recipe = DraftRecipe(layers=_layers(args.layers), event_prompts=args.event_prompts,
                         general_prompts=args.general_prompts, max_new_tokens=args.max_new_tokens,
                         epochs=args.epochs, lr=args.lr, seed=args.seed, threads=args.threads,
                         head_vocab=args.head_vocab)
    out = Path(args.out) if args.out else _pair_draft(args.target)
    target = resolve_model_dir(args.target, "target")
    if args.from_draft:
        report = cut_head(target, resolve_model_dir(args.from_draft, "draft"), out, recipe, progress=not args.quiet)
    else:
        report = train_draft(target, out, recipe, progress=not args.quiet)
    print(json.dumps(report, indent=2))
    print(f"draft written to {out}; measure it: edgespec eval-draft --target {args.target} --draft {out}")
    return 0


def _pair_draft(target: str) -> Path:
    from .model_registry import REGISTRY, pair_draft_dir

    if target not in REGISTRY:
        raise ValueError(f"--target {target}: give --out (a draft folder) for a target that is not a known model")
    return pair_draft_dir(target)


def cmd_eval_draft(args: argparse.Namespace) -> int:
    from .draft_eval import evaluate_draft, format_report

    report = evaluate_draft(resolve_model_dir(args.target, "target"), resolve_model_dir(args.draft, "draft"),
                            events=args.events, general=args.general, gamma=args.gamma,
                            max_new_tokens=args.max_new_tokens, threads=args.threads,
                            cost_rounds=max(1, args.cost_rounds))
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
