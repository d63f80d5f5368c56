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

from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from .batch import BatchError, Context, check_new_sessions
from .batch_cache import cache_layers, set_layer
from .target import TargetSession


@torch.inference_mode()
def open_batch(sessions: list[TargetSession], contexts: list[Context]) -> None:
    """`session.open(ids, features)` for every pair, with one forward for all of them."""
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
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    kwargs: dict[str, Any] = {lm.cache_kwarg: cache}
    if lm.logits_to_keep:
        kwargs["logits_to_keep"] = 1  # an open needs the cache, not the logits
    lm.model(inputs_embeds=pad_sequence([e for _, e in rows], batch_first=True), use_cache=True, **kwargs)
    for i, (session, embeds) in enumerate(rows):
        n = embeds.shape[0]
        for mine, shared in zip(cache_layers(session), cache.layers):
            # transformers types cache.layers as any kind of layer; a DynamicCache's hold keys and values
            set_layer(mine, shared.keys[i : i + 1, :, :n].clone(),  # type: ignore[union-attr,index]
                      shared.values[i : i + 1, :, :n].clone())  # type: ignore[union-attr,index]
        session.state.forwards += 1
