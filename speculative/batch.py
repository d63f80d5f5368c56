"""Batched verification: the drafted blocks of many sessions in one target forward.

Each `TargetSession` keeps its own `DynamicCache` (one sequence, its own length). A round
puts those caches side by side in one padded batch, runs the target once over [B, T] new
tokens (T = max(k) + 1), splits the logits back per session, judges every block with
`verify_block` under that session's params and generator, and writes back to each session's
cache only the KV entries of the tokens it keeps (the last committed token and the accepted
drafts). Afterwards every session is where `TargetSession.verify` would have left it.

Layout of the batch, per layer (P = longest cache in the batch, L_i = row i's cache length):

    columns [start_i, start_i + L_i): row i's past     columns [P, P + k_i]: last + drafts
    every other column: padding (finite, never attended to)

A column index is not a position: Llama applies RoPE to keys *before* caching them, so cached
keys carry their true positions wherever they sit, and the new tokens get theirs from explicit
`position_ids` (L_i + j). A 4D mask lets query j of row i see its own past and new tokens
0..j; the pad tokens after a short block come later, so no real query sees them. All new
tokens share the columns [P, P + T), so the model's cache update is one slice assignment into
preallocated buffers (no concatenation that would copy the past once more).

Two ways to hold the caches between rounds, same results:

* no pool (default): each round copies every past into left-padded buffers (start_i =
  P - L_i), and each session gets a private copy of its row back. No shared state, but two
  small copies per session, layer and K/V: at B = 64 that per-tensor overhead, not the
  bytes, is most of the time spent outside the forward.
* `KVPool`: the sessions' cache tensors are views into one tensor [2, layers, slots, H_kv,
  C, D] (start_i = 0). A round gathers its rows with one `index_select` for every layer's K
  and V (none when its slots are contiguous) and writes back only the kept entries, one copy
  per session for all layers. A session's cache is still an ordinary `DynamicCache`: unbatched calls, crops and
  prefills work on it as before (a cache that moved out is copied back at its next round).

The caches, the pool and the gather and scatter steps are in `speculative.batch_cache`;
`edgespec bench-batch` measures where the time goes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers.cache_utils import Cache

from .batch_cache import (
    BatchError,
    BatchLayer,
    Block,
    KVPool,
    cache_layers,
    gather_copies,
    gather_pool,
    scatter_copies,
    scatter_pool,
)
from .models import LoadedLM
from .target import TargetSession
from .verify import Verdict, greedy_verdict

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BatchError", "BatchProfile", "Block", "Context", "KVPool", "block_logits_batch", "check_new_sessions",
           "verify_batch"]

Context = tuple[list[int], "np.ndarray | None"]  # a new session's prompt (+ resumed) ids, vision features


@dataclass
class BatchProfile:
    """Seconds spent in each step of `verify_batch`, summed over the calls it was passed to."""

    calls: int = 0
    sequences: int = 0
    gather_s: float = 0.0  # put the sessions' caches side by side (copies, or pool rows)
    forward_s: float = 0.0  # inputs, mask and the one target forward
    verify_s: float = 0.0  # verify_block per session (accept/reject, sampling)
    scatter_s: float = 0.0  # write the kept KV entries back, settle each session
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.gather_s + self.forward_s + self.verify_s + self.scatter_s

    def add(self, sequences: int, started: float, gathered: float, forwarded: float, verified: float,
            finished: float) -> None:
        """Count one call of `sequences` sessions from the times its steps ended."""
        self.calls += 1
        self.sequences += sequences
        self.batch_sizes.append(sequences)
        self.gather_s += gathered - started
        self.forward_s += forwarded - gathered
        self.verify_s += verified - forwarded
        self.scatter_s += finished - verified

    def as_dict(self) -> dict[str, Any]:
        steps = ("gather_s", "forward_s", "verify_s", "scatter_s")
        return {"calls": self.calls, "sequences": self.sequences, "total_s": self.total_s,
                **{name: getattr(self, name) for name in steps}}


# transformers' SDPA attention repeats a grouped-query model's K and V per query head (a copy of
# every layer's [B, H, P+T, D]) whenever a mask is passed, as CUDA kernels need; this switch
# makes it pass `enable_gqa` to torch instead, which the CPU kernels support with a mask and
# which gives the same outputs, bit for bit.
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def grouped_query_attention(device: torch.device) -> Iterator[None]:
    """Inside: SDPA attends with grouped K/V heads instead of repeated copies (CPU only)."""
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


def _attention_mask(allowed: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask [B, 1, T, P+T] in the form the model's attention implementation reads."""
    if implementation == "sdpa":
        return allowed  # bool, True = attend
    if implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)  # added to the scores
    raise BatchError(
        "batched verification needs attn_implementation 'sdpa' or 'eager', "
        f"the target uses {implementation!r}"
    )


def _forward(
    lm: LoadedLM,
    layers: list[BatchLayer],
    sessions: list[TargetSession],
    blocks: list[Block],
    starts: list[int],
    lengths: list[int],
    opening: list[torch.Tensor] = (),  # type: ignore[assignment]
) -> torch.Tensor:
    """One target forward over the batch; returns the verified rows' logits [B, T, V] (float32).

    Rows follow `sessions` (last committed token + drafts after its past of `lengths[i]`
    positions), then one row per tensor in `opening`: the prefill embeddings [n, H] of a
    session being opened, no past (its logits are not wanted).
    """
    model = lm.model
    device = layers[0].keys.device
    past = layers[0].past
    ks = [len(tokens) for tokens, _ in blocks]
    width = max([k + 1 for k in ks] + [e.shape[0] for e in opening])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    rows = [
        [session.committed[-1], *tokens] + [pad] * (width - 1 - k)
        for session, (tokens, _), k in zip(sessions, blocks, ks)
    ]
    input_ids = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), width)  # [B_v, T]
    offsets = torch.arange(width)  # [T]
    # Per row: the last real offset and the cache length (an opening row has no past).
    last_col = torch.tensor(ks + [e.shape[0] - 1 for e in opening])[:, None]  # [B, 1]
    length_col = torch.tensor(list(lengths) + [0] * len(opening))[:, None]  # [B, 1]
    # True positions L_i + j; padded columns repeat the last real one (masked, any RoPE will do).
    positions = length_col + torch.minimum(offsets[None, :], last_col)  # [B, T]
    column = torch.arange(past)
    start_col = torch.tensor(list(starts) + [0] * len(opening))[:, None]
    past_allowed = (column >= start_col) & (column < start_col + length_col)  # [B, P]
    # Among the new tokens, causal is enough: a row's pad tokens come after its real ones, so
    # only pad queries (whose logits are dropped) could see them.
    n_rows = len(rows) + len(opening)
    causal = (offsets[:, None] >= offsets[None, :]).expand(n_rows, -1, -1)  # [B, T, T]
    allowed = torch.cat([past_allowed[:, None, :].expand(-1, width, -1), causal], -1)  # [B, T, P+T]
    mask = _attention_mask(allowed[:, None].to(device), model.config._attn_implementation, model.dtype)
    if opening:  # embeddings for every row: the lookup the model would do, then the prefills
        embeds = model.get_input_embeddings()(input_ids.to(device))
        extra = pad_sequence(list(opening), batch_first=True)  # zero padding: finite, masked
        extra = F.pad(extra, (0, 0, 0, width - extra.shape[1]))
        inputs = {"inputs_embeds": torch.cat([embeds, extra], 0)}
    else:
        inputs = {"input_ids": input_ids.to(device)}
    with grouped_query_attention(device):
        out = model(
            **inputs,
            position_ids=positions.to(device),
            attention_mask=mask,  # [B, 1, T, P+T]
            use_cache=True,
            **{lm.cache_kwarg: Cache(layers=[*layers])},
        )
    return out.logits[: len(rows)].float()  # [B, T, V]


def _judge(sessions: list[TargetSession], blocks: list[Block], logits: torch.Tensor) -> list[Verdict]:
    """Each session judges its row's k+1 logits (its own params and generator). Greedy rows
    need only the argmax at each position: one argmax over every row, as `verify_greedy`
    takes it row by row (the first maximum), and no copy of their logits."""
    choices = logits.argmax(-1).tolist() if any(s.params.greedy for s in sessions) else []  # [B, T]
    logits = logits.cpu()
    return [greedy_verdict(choices[row], tokens) if session.params.greedy
            else session.judge(logits[row, : len(tokens) + 1], tokens, q)
            for row, (session, (tokens, q)) in enumerate(zip(sessions, blocks))]


def _check(sessions: list[TargetSession], blocks: list[Block], pool: KVPool | None = None,
           opening: list[tuple[TargetSession, Context]] = ()) -> None:  # type: ignore[assignment]
    """Raise `BatchError` unless the blocks of `sessions` (and the `opening` rows, which need
    a pool) can be verified together in one forward."""
    lm = sessions[0].lm
    if opening:
        if pool is None:
            raise BatchError("sessions are opened inside a verified batch only with a KVPool")
        check_new_sessions(lm, opening, sessions)
    if pool is not None and pool.lm is not lm:
        raise BatchError("the pool holds caches of another target model")
    if len(sessions) != len(blocks):
        raise BatchError(f"{len(sessions)} sessions but {len(blocks)} blocks")
    if len({id(s) for s in sessions}) != len(sessions):
        raise BatchError("a session appears twice in one batch; verify its blocks in successive rounds")
    for i, (session, (tokens, q)) in enumerate(zip(sessions, blocks)):
        if session.lm is not lm:
            raise BatchError(f"session {i} runs another target model; a batch shares one model")
        if not session.committed:
            raise BatchError(f"session {i} is not open")
        expected = session.state.prefix_len + len(session.committed) - 1
        if session.state.length != expected:
            raise BatchError(
                f"session {i} holds {session.state.length} cache positions, expected {expected}: "
                "a previous block was computed but not settled"
            )
        if any(not 0 <= t < lm.vocab_size for t in tokens):
            raise BatchError(f"session {i}: a drafted token lies outside the vocabulary ({lm.vocab_size})")
        if not session.params.greedy and tokens:
            if q is None:
                raise BatchError(f"session {i} samples and needs the draft distribution q")
            if q.k != len(tokens):
                raise BatchError(f"session {i}: q has {q.k} rows for {len(tokens)} drafted tokens")
    if any(getattr(layer, "is_sliding", False) for layer in cache_layers(sessions[0])):
        raise BatchError("sliding-window caches are not supported by batched verification")


# --- verification ---------------------------------------------------------------------------


@torch.inference_mode()
def block_logits_batch(sessions: list[TargetSession], blocks: list[Block]) -> list[torch.Tensor]:
    """Target logits [k_i+1, V] per session from one batched forward; touches no session.

    The batched counterpart of `TargetSession.block_logits` (which also leaves the drafts in
    the cache); used to compare batched and unbatched logits.
    """
    if not sessions:
        return []
    _check(sessions, blocks)
    layers, starts = gather_copies(sessions, blocks)
    logits = _forward(sessions[0].lm, layers, sessions, blocks, starts, [s.state.length for s in sessions])
    return [logits[row, : len(tokens) + 1].cpu() for row, (tokens, _) in enumerate(blocks)]


def check_new_sessions(lm: LoadedLM, opening: list[tuple[TargetSession, Context]],
                       verified: list[TargetSession] = ()) -> None:  # type: ignore[assignment]
    """Raise before anything moves unless every (session, context) can be opened in one
    forward with `lm`, beside the `verified` sessions of the same batch."""
    ids_seen = {id(s) for s in verified}
    if len({id(s) for s, _ in opening} | ids_seen) != len(ids_seen) + len(opening):
        raise BatchError("a session appears twice in one batch")
    for session, (ids, _) in opening:
        if session.lm is not lm:
            raise BatchError("sessions of different target models cannot be opened together")
        if not ids:
            raise ValueError("a session needs at least one prompt token")
        if session.state.length:
            raise BatchError("only new sessions can be opened in a batch")


def _opening_rows(opening: list[tuple[TargetSession, Context]],
                  pool: KVPool) -> list[tuple[TargetSession, torch.Tensor, int]]:
    """(session, prefill embeddings [n, H], pool slot) for the new sessions that have
    something to prefill; the others (one token, no features) are open already."""
    rows = []
    for session, (ids, features) in opening:
        embeds = session.open_input(ids, features)
        if embeds is not None:
            rows.append((session, embeds, pool.admit(session)))
    return rows


@torch.inference_mode()
def verify_batch(
    sessions: list[TargetSession],
    blocks: list[Block],
    *,
    pool: KVPool | None = None,
    profile: BatchProfile | None = None,
    opening: list[tuple[TargetSession, Context]] = (),  # type: ignore[assignment]
) -> list[Verdict]:
    """Verify one drafted block per session in a single target forward.

    blocks[i] = (tokens [k_i], q_i) for sessions[i]; k_i may differ and may be 0, and greedy
    and sampled sessions may share a batch. Returns one `Verdict` per session, in order, and
    settles every session (accepted drafts committed, rejected ones never enter its cache) as
    `sessions[i].verify(*blocks[i])` would. Each session draws from its own generator in the
    same order as alone, so sampled outputs match too. With `pool`, the sessions' caches live
    in that `KVPool` (admitted on first use). Raises `BatchError` before touching any session
    when the batch is malformed.

    `opening` (with a pool): new sessions and their (prompt ids, features), prefilled as extra
    rows of the same forward, each left where `session.open(ids, features)` would leave it; a
    session open costs a row instead of a forward of its own. Best when a prefill is about as
    long as a block (a vision prefix and a short prompt), since rows are padded to the longest.
    """
    if not sessions:
        if opening:
            raise BatchError("opening rows ride along verified blocks; open_batch opens sessions alone")
        return []
    _check(sessions, blocks, pool, opening)
    lm = sessions[0].lm
    started = time.perf_counter()
    # 1. Gather the caches side by side.
    if pool is None:
        layers, starts = gather_copies(sessions, blocks)
        order = list(range(len(sessions)))
        prefills: list[tuple[TargetSession, torch.Tensor, int]] = []
    else:
        slots = [pool.admit(s) for s in sessions]
        order = sorted(range(len(sessions)), key=slots.__getitem__)  # contiguous slots: no copy
        sessions, blocks = [sessions[i] for i in order], [blocks[i] for i in order]
        prefills = _opening_rows(opening, pool)
        width = max([len(tokens) + 1 for tokens, _ in blocks] + [e.shape[0] for _, e, _ in prefills])
        batch = gather_pool([slots[i] for i in order] + [slot for _, _, slot in prefills],
                             [s.state.length for s in sessions] + [0] * len(prefills), width, pool)
        layers, starts = batch.layers(), [0] * len(sessions)
    gathered = time.perf_counter()
    # 2. One forward; 3. each block judged on its own rows.
    lengths = [s.state.length for s in sessions] if pool is None else batch.lengths[: len(sessions)]
    logits = _forward(lm, layers, sessions, blocks, starts, lengths, [e for _, e, _ in prefills])
    forwarded = time.perf_counter()
    verdicts = _judge(sessions, blocks, logits)
    verified = time.perf_counter()
    # 4. Write back the kept entries, settle.
    if pool is None:
        scatter_copies(sessions, blocks, verdicts, layers, starts)
    else:
        scatter_pool(sessions, blocks, verdicts, batch, pool, [(s, e.shape[0]) for s, e, _ in prefills])
    if profile is not None:
        profile.add(len(sessions), started, gathered, forwarded, verified, time.perf_counter())
    return [verdicts[position] for position in sorted(range(len(order)), key=order.__getitem__)]

