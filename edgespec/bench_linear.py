"""`edgespec bench-linear`: a model's forward with PyTorch's linear against edgespec's.

The target's forward over a few new tokens after a cached prefix (a decode step is 1 row, a
verification block gamma + 1, a batch of sessions more), run with the model's linear layers
as PyTorch computes them (``x @ W.T``) and as `speculative.cpu_linear` does (``W @ x.T`` for
one or two rows, oneDNN over packed weights above), alternating, medians. The logits of the
two are compared (largest difference, same argmax).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from .config import resolve_model_dir, set_threads

ROWS = (1, 2, 5, 8, 16, 64)


def measure(lm, rows: int, reps: int, prefix: int = 64) -> dict[str, Any]:
    import torch

    from speculative import cpu_linear
    from speculative.models import CachedLM

    cache = CachedLM(lm)
    cache.prefill(list(range(100, 100 + prefix)))
    new = [200 + i for i in range(rows)]
    times: dict[bool, list[float]] = {False: [], True: []}
    logits: dict[bool, torch.Tensor] = {}
    for rep in range(reps + 1):
        for few in (False, True):
            cpu_linear.use_few_row(lm.model, few)
            started = time.perf_counter()
            out = cache.extend(new)
            elapsed = time.perf_counter() - started
            cache.crop(prefix)
            if rep:  # the first is a warm-up
                times[few].append(elapsed)
            logits[few] = out
    cpu_linear.speed_up(lm.model)
    plain_ms, few_ms = (statistics.median(times[f]) * 1000 for f in (False, True))
    return {"rows": rows, "plain_ms": round(plain_ms, 2), "edgespec_ms": round(few_ms, 2),
            "speedup": round(plain_ms / few_ms, 2),
            "max_logit_diff": float((logits[True] - logits[False]).abs().max()),
            "same_argmax": bool((logits[True].argmax(-1) == logits[False].argmax(-1)).all())}


def cmd_bench_linear(args: argparse.Namespace) -> int:
    from speculative.models import load_lm

    set_threads(args.threads)
    model_dir = resolve_model_dir(args.model, "target")
    lm = load_lm(model_dir)
    rows = [measure(lm, r, args.reps) for r in args.rows]
    print(f"{model_dir}: forward over new tokens after a 64-token cache, {args.threads} thread(s), "
          f"median of {args.reps}")
    print(f"{'rows':>5} {'plain ms':>9} {'edgespec ms':>11} {'speedup':>8} {'max |diff|':>11} {'argmax':>7}")
    for r in rows:
        print(f"{r['rows']:>5} {r['plain_ms']:>9.1f} {r['edgespec_ms']:>11.1f} {r['speedup']:>7.2f}x "
              f"{r['max_logit_diff']:>11.2e} {'same' if r['same_argmax'] else 'DIFFER':>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model_dir), "threads": args.threads,
                                               "reps": args.reps, "rows": rows}, indent=2) + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench-linear", help="a model's forward with PyTorch's linear vs edgespec's",
                       description="A model's forward over a few new tokens: PyTorch's linear "
                                   "(x @ W.T) against edgespec's (speculative/cpu_linear.py), alternating.")
    p.add_argument("--model", default="smollm2-135m", help="a model folder or name (default %(default)s)")
    p.add_argument("--rows", type=int, nargs="+", default=list(ROWS), help="new tokens per forward")
    p.add_argument("--reps", type=int, default=10, help="forwards per row count and kind")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.set_defaults(func=cmd_bench_linear)
