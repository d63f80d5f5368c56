"""Batched session opens: the prefills of many new sessions in few target forwards.

Each session's input (vision prefix embeddings, then its context but the last token, as
`TargetSession.open` feeds it) becomes one row of a right-padded batch [B, L_max, H]. The
model's causal mask alone keeps every real position from seeing the padding (padding only
follows a row's real positions), and positions count from 0 in every row, so each row's keys
and values for its first L_i positions are what a prefill of that row alone computes. Those
are copied into each session's own cache; afterwards every session is where
`TargetSession.open` would have left it (checked in tests/test_prefill_batch.py).

On a CPU a prefill is compute-bound: its cost grows with the rows it computes, padding
included, and a forward has a fixed cost of about `FORWARD_ROWS` rows (reading the weights).
Two things cut the rows:

* *A shared prefix is computed once.* Chat prompts begin with the same template and system
  prompt (29 of SmolLM2's 52-74 prompt tokens for the loadtest's event descriptions). When the
  rows' inputs begin with the same embeddings, one forward of one row computes that prefix and
  every row continues from a copy of its keys and values: a row's positions after the prefix
  see exactly the prefix's keys and values, as in a forward of the whole row.
* *Rows are grouped by length.* The rows after the prefix, sorted by length, are split into
  the groups that minimise the rows computed plus `FORWARD_ROWS` per forward, so a few long
  prompts do not pad all the short ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.cache_utils import Cache

from .batch import BatchError, Context, check_new_sessions, grouped_query_attention
from .batch_cache import BatchLayer, cache_layers, kv_shape, set_layer
from .target import TargetSession

# The fixed cost of one forward on the CPU, in rows of a prefill: about 70 ms for SmolLM2-135M
# (the weights read once) against 2.8 ms per row on one thread. On an accelerator rows are
# nearly free and a forward is the cost, so there every group is one forward.
FORWARD_ROWS = 24


def _forward_rows(device: torch.device) -> float:
    return FORWARD_ROWS if device.type == "cpu" else float("inf")


def shared_prefix(inputs: list[torch.Tensor]) -> int:
    """How many leading rows [n_i, H] every input has in common (equal embeddings)."""
    if len(inputs) < 2:
        return 0
    shortest = min(e.shape[0] for e in inputs)
    if shortest == 0:
        return 0
    first = inputs[0][:shortest]
    same = torch.ones(shortest, dtype=torch.bool, device=first.device)
    for e in inputs[1:]:
        same &= (e[:shortest] == first).all(-1)
    differs = (~same).nonzero()
    return int(differs[0, 0]) if differs.numel() else shortest


def length_groups(lengths: list[int], overhead: float) -> list[list[int]]:
    """Indices of `lengths` in groups, each padded to its longest, that minimise the rows
    computed plus `overhead` rows per group (contiguous runs of the sorted lengths)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if overhead == float("inf"):
        return [order] if order else []
    sizes = [lengths[i] for i in order]
    # best[j]: the least cost of the first j sorted rows; cut[j]: where its last group starts.
    best = [0.0] + [float("inf")] * len(sizes)
    cut = [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        for i in range(j):
            cost = best[i] + overhead + (j - i) * sizes[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = len(sizes)
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


@torch.inference_mode()
def open_batch(sessions: list[TargetSession], contexts: list[Context], *, forward_rows: float | None = None) -> None:
    """`session.open(ids, features)` for every pair, with as few forwards as pay off.

    `forward_rows`: what one more forward costs in rows (default `FORWARD_ROWS` on a CPU, no
    extra forward elsewhere); it decides whether a shared prefix gets its own forward and how
    the rows after it are grouped."""
    if len(sessions) != len(contexts):
        raise BatchError(f"{len(sessions)} sessions but {len(contexts)} contexts")
    if not sessions:
        return
    lm = sessions[0].lm
    check_new_sessions(lm, list(zip(sessions, contexts)))
    # A context needs a forward when it has a vision prefix or more than its last token.
    if sum(features is not None or len(ids) > 1 for ids, features in contexts) < 2:
        for session, (ids, features) in zip(sessions, contexts):  # nothing to batch: the plain path
            session.open(ids, features)
        return
    rows = [(s, e) for s, (ids, features) in zip(sessions, contexts) if (e := s.open_input(ids, features)) is not None]
    device = rows[0][1].device
    overhead = _forward_rows(device) if forward_rows is None else forward_rows
    inputs = [e for _, e in rows]
    shared = shared_prefix(inputs)
    # One more forward for the prefix pays off when it saves more rows than a forward costs.
    if shared and (len(rows) - 1) * shared <= overhead:
        shared = 0
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer (K, V) [1, H_kv, shared, D]
    if shared:
        prefix = _prefill_rows([inputs[0][:shared]], [], lm)
    suffixes = [e[shared:] for e in inputs]
    filled: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * len(rows)
    for group in length_groups([s.shape[0] for s in suffixes], overhead):
        if not suffixes[group[-1]].shape[0]:  # (the longest last) these inputs are the prefix
            for i in group:
                filled[i] = prefix
            continue
        kv = _prefill_rows([suffixes[i] for i in group], prefix, lm)
        for row, i in enumerate(group):
            n = shared + suffixes[i].shape[0]
            filled[i] = [(k[row : row + 1, :, :n], v[row : row + 1, :, :n]) for k, v in kv]
    for (session, _), layers in zip(rows, filled):
        assert layers is not None  # every row is in a group
        for mine, (keys, values) in zip(cache_layers(session), layers):
            set_layer(mine, keys.clone(), values.clone())
        session.state.forwards += 1


def _prefill_rows(inputs: list[torch.Tensor], prefix: list[tuple[torch.Tensor, torch.Tensor]],
                  lm: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One forward over `inputs` (embeddings [n_i, H], right-padded) after the shared `prefix`
    (per layer K, V [1, H_kv, P, D], or none); per layer the batch's K, V [B, H_kv, P+n_max, D]."""
    model = lm.model
    embeds = pad_sequence(inputs, batch_first=True)  # zero padding: finite, after the real rows
    batch, width = embeds.shape[0], embeds.shape[1]
    kwargs: dict[str, Any] = {}
    if lm.logits_to_keep:
        kwargs["logits_to_keep"] = 1  # an open needs the cache, not the logits
    if not prefix:
        from transformers import DynamicCache

        cache: Any = DynamicCache(config=model.config)
        model(inputs_embeds=embeds, use_cache=True, **{lm.cache_kwarg: cache}, **kwargs)
        return [(layer.keys, layer.values) for layer in cache.layers]
    # The prefix's entries in place in every row, the new ones written after them (positions
    # P.. from the cache length; the model's causal mask over P + n_max columns).
    past = prefix[0][0].shape[2]
    _, heads, head_dim, dtype = kv_shape(lm)
    layers = []
    for keys, values in prefix:
        k = torch.empty((batch, heads, past + width, head_dim), dtype=dtype, device=keys.device)
        v = torch.empty_like(k)
        k[:, :, :past] = keys
        v[:, :, :past] = values
        layers.append(BatchLayer(k, v, past))
    with grouped_query_attention(embeds.device):  # the mask over the prefix is not causal's
        model(inputs_embeds=embeds, use_cache=True, **{lm.cache_kwarg: Cache(layers=[*layers])}, **kwargs)
    return [(layer.keys, layer.values) for layer in layers]
