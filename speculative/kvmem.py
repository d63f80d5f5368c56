"""KV-cache memory: bytes per token, per session, and how many sessions a budget holds.

A decoder layer caches one key and one value vector per KV head for every position, so a
session of L positions holds 2 x layers x kv_heads x head_dim x bytes(dtype) x L bytes. The
verifier's session limit in bytes comes from this figure (`python -m edgespec.kvmem` prints it
for the default pair).

Counted: the K/V tensors only. Not counted: Python objects per session, the transient
buffers of a batched round (one padded copy of the batch's caches), and the unused tail of
a `speculative.batch.KVPool` slot, which reserves its full capacity per session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .models import kv_dims, resolve_dtype

GIB = 1 << 30
DEFAULT_BUDGET_BYTES = 8 * GIB


def kv_bytes_per_token(model_config: Any, dtype: torch.dtype | str = torch.float32) -> int:
    """2 x layers x kv_heads x head_dim x bytes per element, for a Hugging Face decoder config."""
    layers, kv_heads, head_dim = kv_dims(model_config)
    return 2 * layers * kv_heads * head_dim * resolve_dtype(dtype).itemsize


def session_kv_bytes(session: Any) -> int:
    """Bytes of K/V a session's cache holds now (a `TargetSession`, `Drafter` or `CachedLM`).

    For a session whose cache lives in a `KVPool` this counts the positions it uses, not the
    slot's reserved capacity (`KVPool.reserved_bytes` counts that).
    """
    state = getattr(session, "state", session)  # TargetSession / Drafter hold a CachedLM
    total = 0
    for layer in state.cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass(frozen=True)
class KVBudget:
    """KV memory of one model's sessions at a context length, against a byte budget."""

    model: str
    dtype: str
    bytes_per_token: int
    context: int
    bytes_per_session: int
    budget_bytes: int
    sessions: int  # how many sessions' K/V fit in the budget


def kv_budget(
    model_dir: str | Path, *, context: int | None = None, dtype: torch.dtype | str = torch.float32,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> KVBudget:
    """KV bytes per session for the model in `model_dir` at `context` positions (default: its
    maximum, vision prefix included) and how many sessions `budget_bytes` holds."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    positions = int(context if context is not None else config.max_position_embeddings)
    per_token = kv_bytes_per_token(config, dtype)
    per_session = per_token * positions
    return KVBudget(
        model=str(model_dir),
        dtype=str(resolve_dtype(dtype)).removeprefix("torch."),
        bytes_per_token=per_token,
        context=positions,
        bytes_per_session=per_session,
        budget_bytes=budget_bytes,
        sessions=budget_bytes // per_session if per_session else 0,
    )


def format_report(rows: list[KVBudget]) -> str:
    lines = ["model                         dtype     B/token  context  KiB/session  sessions in budget"]
    for r in rows:
        name = "/".join(Path(r.model).parts[-2:])
        lines.append(
            f"{name:<29} {r.dtype:<9} {r.bytes_per_token:7d}  {r.context:7d}  "
            f"{r.bytes_per_session / 1024:11.1f}  "
            f"{r.sessions:,} in {r.budget_bytes / GIB:g} GiB"
        )
    return "\n".join(lines)
