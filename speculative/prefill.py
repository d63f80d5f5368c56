"""Batched session opens: the prefills of many new sessions in one target forward.

Each session's input (vision prefix embeddings, then its context but the last token, as
`TargetSession.open` feeds it) becomes one row of a right-padded batch [B, L_max, H]. The
model's causal mask alone keeps every real position from seeing the padding (padding only
follows a row's real positions), and positions count from 0 in every row, so each row's keys
and values for its first L_i positions are what a prefill of that row alone computes. Those
are copied into each session's own cache; afterwards every session is where
`TargetSession.open` would have left it (checked in tests/test_prefill_batch.py).
"""

from __future__ import annotations

import torch

from .batch import BatchError, Context, _layers, _set_layer
from .target import TargetSession


@torch.inference_mode()
def open_batch(sessions: list[TargetSession], contexts: list[Context]) -> None:
    """`session.open(ids, features)` for every pair, with one forward for all of them."""
    if len(sessions) != len(contexts):
        raise BatchError(f"{len(sessions)} sessions but {len(contexts)} contexts")
    if len({id(s) for s in sessions}) != len(sessions):
        raise BatchError("a session appears twice in one batch")
    if not sessions:
        return
    lm = sessions[0].lm
    for session, (ids, _) in zip(sessions, contexts):
        if session.lm is not lm:
            raise BatchError("sessions of different target models cannot be opened together")
        if not ids:
            raise ValueError("a session needs at least one prompt token")
        if session.state.length:
            raise BatchError("open_batch takes new sessions only")
    # A context needs a forward when it has a vision prefix or more than its last token.
    needs = [i for i, (ids, features) in enumerate(contexts) if features is not None or len(ids) > 1]
    if len(needs) < 2:  # nothing to batch: the plain path
        for session, (ids, features) in zip(sessions, contexts):
            session.open(ids, features)
        return
    for session, (ids, _) in zip(sessions, contexts):
        session.committed = list(ids)
    rows = [(sessions[i], sessions[i].state.prefill_embeddings(contexts[i][0][:-1], contexts[i][1])) for i in needs]
    from transformers import DynamicCache

    longest = max(e.shape[0] for _, e in rows)
    batch = rows[0][1].new_zeros((len(rows), longest, rows[0][1].shape[1]))
    for i, (_, embeds) in enumerate(rows):
        batch[i, : embeds.shape[0]] = embeds
    cache = DynamicCache(config=lm.model.config)
    kwargs = {lm.cache_kwarg: cache}
    if lm.logits_to_keep:
        kwargs["logits_to_keep"] = 1  # an open needs the cache, not the logits
    lm.model(inputs_embeds=batch, use_cache=True, **kwargs)
    for i, (session, embeds) in enumerate(rows):
        n = embeds.shape[0]
        for mine, shared in zip(_layers(session), cache.layers):
            _set_layer(mine, shared.keys[i : i + 1, :, :n].clone(), shared.values[i : i + 1, :, :n].clone())
        session.state.forwards += 1
