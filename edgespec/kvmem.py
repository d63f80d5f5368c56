"""KV memory of the default pair (`python -m edgespec.kvmem`): the figures of
`speculative.kvmem` for the models in edgespec/default_models."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from speculative.kvmem import DEFAULT_BUDGET_BYTES, GIB, KVBudget, format_report, kv_budget

from .config import DEFAULT_MODELS_DIR


def default_pair_report(
    contexts: tuple[int | None, ...] = (40, None),
    dtype: torch.dtype | str = torch.float32,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    models_dir: Path = DEFAULT_MODELS_DIR,
) -> list[KVBudget]:
    """Target (the verifier's sessions) and draft (one per device) at each context length."""
    return [
        kv_budget(models_dir / role, context=context, dtype=dtype, budget_bytes=budget_bytes)
        for role in ("target", "draft")
        for context in contexts
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="KV memory per session of the default pair.")
    parser.add_argument("--context", type=int, nargs="+", default=[40, 96], help="positions per session")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = default_pair_report(tuple(args.context), args.dtype, int(args.budget_gib * GIB))
    print(format_report(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
