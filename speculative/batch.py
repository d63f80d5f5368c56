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

`python -m speculative.batch` measures where the time goes (see `bench`).
"""

from __future__ import annotations

import argparse
import json
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers.cache_utils import Cache, DynamicLayer

from .models import LoadedLM, kv_dims
from .sampling import SamplingParams, SparseQ
from .target import TargetSession
from .verify import Verdict

Block = tuple[list[int], SparseQ | None]  # drafted tokens [k] and their q (None when greedy)
Context = tuple[list[int], "np.ndarray | None"]  # a new session's prompt (+ resumed) ids, vision features


class BatchError(ValueError):
    """A batch that cannot be verified together (mixed models, a session twice, a bad block)."""


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

    def as_dict(self) -> dict[str, Any]:
        steps = ("gather_s", "forward_s", "verify_s", "scatter_s")
        return {"calls": self.calls, "sequences": self.sequences, "total_s": self.total_s,
                **{name: getattr(self, name) for name in steps}}


# --- the batch during one forward ----------------------------------------------------------


class _BatchLayer(DynamicLayer):
    """One layer of the batch cache: buffers [B, H_kv, P+T, D] whose past is already in place.

    `update` writes the T new entries into columns [P, P+T) and returns the whole buffers.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, past: int):
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True
        self.past = past

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        end = self.past + key_states.shape[-2]
        self.keys[:, :, self.past : end] = key_states
        self.values[:, :, self.past : end] = value_states
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.past

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.past + query_length, 0


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
    layers: list[_BatchLayer],
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
    out = model(
        **inputs,
        position_ids=positions.to(device),
        attention_mask=mask,  # [B, 1, T, P+T]
        use_cache=True,
        **{lm.cache_kwarg: Cache(layers=layers)},
    )
    return out.logits[: len(rows)].float()  # [B, T, V]


def _judge(sessions: list[TargetSession], blocks: list[Block], logits: torch.Tensor) -> list[Verdict]:
    """Each session judges its row's k+1 logits (its own params and generator)."""
    logits = logits.cpu()
    return [session.judge(logits[row, : len(tokens) + 1], tokens, q)
            for row, (session, (tokens, q)) in enumerate(zip(sessions, blocks))]


# --- session caches -------------------------------------------------------------------------


def _layers(session: TargetSession) -> list[DynamicLayer]:
    return session.state.cache.layers


def _layer_kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(keys, values) [1, H_kv, L, D] of a session's cache layer, None while it is empty."""
    if not layer.is_initialized or layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def _set_layer(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Make a session's cache layer hold exactly `keys`, `values` [1, H_kv, L, D]."""
    if not layer.is_initialized:
        layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def _kv_shape(lm: LoadedLM) -> tuple[int, int, int, torch.dtype]:
    """(layers, kv heads, head dim, dtype) of the target's cache."""
    return (*kv_dims(lm.model.config), lm.model.dtype)


def _check(sessions: list[TargetSession], blocks: list[Block]) -> None:
    if len(sessions) != len(blocks):
        raise BatchError(f"{len(sessions)} sessions but {len(blocks)} blocks")
    if len({id(s) for s in sessions}) != len(sessions):
        raise BatchError("a session appears twice in one batch; verify its blocks in successive rounds")
    lm = sessions[0].lm
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
    if any(getattr(layer, "is_sliding", False) for layer in _layers(sessions[0])):
        raise BatchError("sliding-window caches are not supported by batched verification")


# --- the pool: caches resident in one tensor per layer --------------------------------------


class KVPool:
    """Resident KV storage for the sessions of one target: one tensor [2, layers, slots, H_kv,
    C, D] holding K and V of every layer (`keys[i]`, `values[i]`: per-layer views [slots, H_kv, C, D]).

    An admitted session's cache tensors are views of its slot's first L positions. Slots
    double when sessions join and C (positions) doubles when a row needs more; a slot is freed
    by `release` or when its session is garbage-collected. The pool reserves slots x C
    positions (`reserved_bytes`). Its tensors are inference tensors, like the sessions' caches.
    """

    def __init__(self, lm: LoadedLM, *, slots: int = 8, positions: int = 64):
        self.lm = lm
        self.n_layers, self.heads, self.head_dim, self.dtype = _kv_shape(lm)
        self.device = next(lm.model.parameters()).device
        # One tensor [2 (K, V), layers, slots, H_kv, C, D], so a round gathers and writes back
        # every layer with one indexed copy each; keys[i] / values[i] are its per-layer views.
        self.store: torch.Tensor | None = None
        self.keys: list[torch.Tensor] = []  # per layer [slots, H_kv, C, D]
        self.values: list[torch.Tensor] = []
        self._owners: list[weakref.ref[TargetSession] | None] = []
        self._slot: weakref.WeakKeyDictionary[TargetSession, int] = weakref.WeakKeyDictionary()
        self._resize(max(1, slots), max(1, positions))

    @property
    def slots(self) -> int:
        return len(self._owners)

    @property
    def positions(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def reserved_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    @property
    def sessions(self) -> int:
        return sum(1 for owner in self._owners if owner is not None and owner() is not None)

    def slot_of(self, session: TargetSession) -> int | None:
        return self._slot.get(session)

    @torch.inference_mode()
    def admit(self, session: TargetSession) -> int:
        """The session's slot, allocated and filled from its cache when it is not resident."""
        if session.lm is not self.lm:
            raise BatchError("this pool holds caches of another target model")
        slot = self._slot.get(session)
        if slot is not None and self._resident(session, slot):
            return slot
        if slot is None:
            free = [i for i, owner in enumerate(self._owners) if owner is None or owner() is None]
            slot = free[0] if free else self.slots
            if not free:
                self._resize(2 * self.slots, self.positions)
            self._owners[slot] = weakref.ref(session)
            self._slot[session] = slot
        length = session.state.length
        self.reserve(length)
        for keys, values, layer in zip(self.keys, self.values, _layers(session)):
            if (kv := _layer_kv(layer)) is not None:
                keys[slot, :, :length] = kv[0][0]
                values[slot, :, :length] = kv[1][0]
        self._point(session, slot, length)
        return slot

    def discard(self, session: TargetSession) -> None:
        """Give the slot of a session that is done with its cache back, without copying the
        cache out (`release` keeps it usable). The session must not verify again."""
        slot = self._slot.pop(session, None)
        if slot is not None:
            self._owners[slot] = None

    @torch.inference_mode()
    def release(self, session: TargetSession) -> None:
        """Give a session's slot back; its cache becomes private tensors again."""
        slot = self._slot.pop(session, None)
        if slot is None:
            return
        if self._resident(session, slot):
            for layer in _layers(session):
                if (kv := _layer_kv(layer)) is not None:
                    _set_layer(layer, kv[0].clone(), kv[1].clone())
        self._owners[slot] = None

    @torch.inference_mode()
    def reserve(self, positions: int) -> None:
        """Make every slot hold at least `positions` cache positions."""
        if positions > self.positions:
            self._resize(self.slots, max(positions, 2 * self.positions))

    def _resident(self, session: TargetSession, slot: int) -> bool:
        """Whether every cache layer of `session` is a view of its slot (empty layers count)."""
        offset = slot * self._slot_bytes
        for layer, key_base, value_base in zip(_layers(session), self._key_ptrs, self._value_ptrs):
            kv = _layer_kv(layer)
            if kv is None:
                continue
            if kv[0].data_ptr() != key_base + offset or kv[1].data_ptr() != value_base + offset:
                return False
        return True

    def _point(self, session: TargetSession, slot: int, length: int) -> None:
        """Make the session's cache layers views of its slot's first `length` positions."""
        if length == 0:
            return
        for layer, keys, values in zip(_layers(session), self._slot_keys[slot], self._slot_values[slot]):
            _set_layer(layer, keys.narrow(2, 0, length), values.narrow(2, 0, length))

    @torch.inference_mode()
    def _resize(self, slots: int, positions: int) -> None:
        """Reallocate to (slots, positions), keeping contents and re-pointing resident sessions."""
        resident = [(s, slot) for s, slot in list(self._slot.items()) if self._resident(s, slot)]
        shape = (2, self.n_layers, slots, self.heads, positions, self.head_dim)
        old_slots, old_positions = (self.slots, self.positions) if self.keys else (0, 0)
        store = torch.zeros(shape, dtype=self.dtype, device=self.device)  # padding must be finite
        if self.store is not None:
            store[:, :, :old_slots, :, :old_positions] = self.store
        self.store = store
        self.keys = list(store[0].unbind(0))
        self.values = list(store[1].unbind(0))
        self._owners += [None] * (slots - old_slots)
        # Per-slot views [1, H_kv, C, D] and base pointers, made once: a round touches every
        # session's layers, and plain tensor indexing costs about a microsecond a call.
        self._slot_keys = [[k[s : s + 1] for k in self.keys] for s in range(slots)]
        self._slot_values = [[v[s : s + 1] for v in self.values] for s in range(slots)]
        self._key_ptrs = [k.data_ptr() for k in self.keys]
        self._value_ptrs = [v.data_ptr() for v in self.values]
        self._slot_bytes = self.keys[0].stride(0) * self.keys[0].element_size()
        for session, slot in resident:
            self._point(session, slot, session.state.length)


# --- verification ---------------------------------------------------------------------------


def _gather_copies(
    sessions: list[TargetSession], blocks: list[Block]
) -> tuple[list[_BatchLayer], list[int]]:
    """Zeroed [B, H_kv, P+T, D] buffers per layer, each past copied to its row's end; starts."""
    n_layers, heads, head_dim, dtype = _kv_shape(sessions[0].lm)
    device = next(sessions[0].lm.model.parameters()).device
    lengths = [s.state.length for s in sessions]
    past, width = max(lengths), max(len(tokens) for tokens, _ in blocks) + 1
    starts = [past - length for length in lengths]
    per_session = [_layers(s) for s in sessions]
    layers = []
    for layer_idx in range(n_layers):
        keys = torch.zeros((len(sessions), heads, past + width, head_dim), dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        for row, session_layers in enumerate(per_session):
            if (kv := _layer_kv(session_layers[layer_idx])) is not None:
                keys[row, :, starts[row] : past] = kv[0][0]
                values[row, :, starts[row] : past] = kv[1][0]
        layers.append(_BatchLayer(keys, values, past))
    return layers, starts


def _scatter_copies(
    sessions: list[TargetSession],
    blocks: list[Block],
    verdicts: list[Verdict],
    layers: list[_BatchLayer],
    starts: list[int],
) -> None:
    """Each session's row, past + kept entries, is one slice: a copy of it becomes its cache."""
    past = layers[0].past
    for row, (session, (tokens, _), verdict) in enumerate(zip(sessions, blocks, verdicts)):
        end = past + verdict.n_accepted + 1
        for layer, batch_layer in zip(_layers(session), layers):
            _set_layer(
                layer,
                batch_layer.keys[row : row + 1, :, starts[row] : end].clone(),
                batch_layer.values[row : row + 1, :, starts[row] : end].clone(),
            )
        session.state.forwards += 1  # this session took part in one target forward
        session.settle(tokens, verdict)  # crops nothing: the rejected drafts were never written


@dataclass
class _PoolRows:
    """A round's rows of a KVPool: row i is slot `slots[i]`, its past columns [0, L_i)."""

    tensor: torch.Tensor  # [2 (K, V), layers, B, H_kv, P+T, D]
    in_pool: bool  # a view of the pool's own storage (contiguous slots), not a copy
    slots: list[int]
    lengths: list[int]  # L_i
    past: int  # P = max L_i

    def layers(self) -> list[_BatchLayer]:
        return [_BatchLayer(k, v, self.past) for k, v in zip(self.tensor[0].unbind(0), self.tensor[1].unbind(0))]


def _gather_pool(slots: list[int], lengths: list[int], width: int, pool: KVPool) -> _PoolRows:
    """The rows of `slots` (in slot order), with `width` new columns after the longest past.

    Contiguous slots are a view, so the new entries land in the pool's columns [P, P+T),
    beyond every row's past; other slots are gathered with one `index_select`.
    """
    past = max(lengths)
    pool.reserve(past + width)
    store = pool.store.narrow(4, 0, past + width)
    in_pool = slots == list(range(slots[0], slots[0] + len(slots)))
    if in_pool:
        rows = store.narrow(2, slots[0], len(slots))
    else:
        rows = store.index_select(2, torch.tensor(slots, device=pool.device))
    return _PoolRows(rows, in_pool, slots, lengths, past)


def _scatter_pool(
    sessions: list[TargetSession],
    blocks: list[Block],
    verdicts: list[Verdict],
    batch: _PoolRows,
    pool: KVPool,
    opening: list[tuple[TargetSession, int]] = (),  # type: ignore[assignment]
) -> None:
    """Row i's kept entries move from batch columns [P, P+keep) to its slot's [L_i, L_i+keep).

    The rows after the verified ones are `opening` (session, n): all n entries are kept, at
    its slot's [0, n).
    """
    past, rows = batch.past, batch.tensor
    keeps = [v.n_accepted + 1 for v in verdicts] + [n for _, n in opening]
    # Per row, one copy of its kept columns for every layer's K and V (a row keeps one run of
    # columns; on the CPU this is cheaper than one advanced-indexing assignment for all rows).
    # When `rows` is a view of the pool, a row's source [P, P+keep) and target [L_i, L_i+keep)
    # are in the same slot and may overlap (then the source is copied first); rows never share
    # a slot, and there a row with L_i = P is in place already.
    for row, (slot, length, keep) in enumerate(zip(batch.slots, batch.lengths, keeps)):
        if not (batch.in_pool and length == past):
            source = rows[:, :, row, :, past : past + keep]
            if length + keep > past:
                source = source.clone()
            pool.store[:, :, slot, :, length : length + keep] = source
    for session, slot, length, (tokens, _), verdict in zip(sessions, batch.slots, batch.lengths, blocks, verdicts):
        pool._point(session, slot, length + verdict.n_accepted + 1)
        session.state.forwards += 1
        session.settle(tokens, verdict)
    for (session, n), slot in zip(opening, batch.slots[len(sessions):]):
        pool._point(session, slot, n)
        session.state.forwards += 1


@torch.inference_mode()
def block_logits_batch(sessions: list[TargetSession], blocks: list[Block]) -> list[torch.Tensor]:
    """Target logits [k_i+1, V] per session from one batched forward; touches no session.

    The batched counterpart of `TargetSession.block_logits` (which also leaves the drafts in
    the cache); used to compare batched and unbatched logits.
    """
    if not sessions:
        return []
    _check(sessions, blocks)
    layers, starts = _gather_copies(sessions, blocks)
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
    _check(sessions, blocks)
    lm = sessions[0].lm
    if opening:
        if pool is None:
            raise BatchError("sessions are opened inside a verified batch only with a KVPool")
        check_new_sessions(lm, opening, sessions)
    started = time.perf_counter()
    # 1. Gather the caches side by side.
    if pool is None:
        layers, starts = _gather_copies(sessions, blocks)
        order = list(range(len(sessions)))
        prefills: list[tuple[TargetSession, torch.Tensor, int]] = []
    else:
        if pool.lm is not lm:
            raise BatchError("the pool holds caches of another target model")
        slots = [pool.admit(s) for s in sessions]
        order = sorted(range(len(sessions)), key=slots.__getitem__)  # contiguous slots: no copy
        sessions, blocks = [sessions[i] for i in order], [blocks[i] for i in order]
        prefills = _opening_rows(opening, pool)
        width = max([len(tokens) + 1 for tokens, _ in blocks] + [e.shape[0] for _, e, _ in prefills])
        batch = _gather_pool([slots[i] for i in order] + [slot for _, _, slot in prefills],
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
        _scatter_copies(sessions, blocks, verdicts, layers, starts)
    else:
        _scatter_pool(sessions, blocks, verdicts, batch, pool, [(s, e.shape[0]) for s, e, _ in prefills])
    if profile is not None:
        profile.calls += 1
        profile.sequences += len(sessions)
        profile.batch_sizes.append(len(sessions))
        profile.gather_s += gathered - started
        profile.forward_s += forwarded - gathered
        profile.verify_s += verified - forwarded
        profile.scatter_s += time.perf_counter() - verified
    in_order: list[Verdict] = list(verdicts)
    for position, original in enumerate(order):
        in_order[original] = verdicts[position]
    return in_order


# --- benchmark ------------------------------------------------------------------------------


def _bench_sessions(
    lm: LoadedLM, count: int, context: int, k: int, seed: int
) -> tuple[list[TargetSession], list[Block]]:
    """`count` greedy sessions with `context` cache positions each (random vision features and
    filler tokens) and, per session, the k drafts its target accepts (its greedy continuation)."""
    import numpy as np

    gen = torch.Generator().manual_seed(seed)
    sessions, blocks = [], []
    for i in range(count):
        session = TargetSession(lm, SamplingParams(), seed=seed + i)
        features = None
        if lm.projector is not None:
            features = torch.rand(lm.projector.feature_shape, generator=gen).numpy().astype(np.float32)
        bos = lm.tokenizer.bos_token_id if lm.tokenizer.bos_token_id is not None else 1
        session.open([bos, bos], features)
        count_filler = max(1, context - session.state.length)
        filler = torch.randint(4, lm.vocab_size, (count_filler,), generator=gen).tolist()
        session.state.extend([session.committed[-1], *filler[:-1]])
        session.committed += filler
        base, committed = session.state.length, list(session.committed)
        drafts: list[int] = []
        logits = session.state.extend([session.committed[-1]])[-1]
        for _ in range(k):
            drafts.append(int(logits.argmax()))
            logits = session.state.extend([drafts[-1]])[-1]
        session.state.crop(base)
        session.committed = committed
        sessions.append(session)
        blocks.append((drafts, None))
    return sessions, blocks


def bench(
    lm: LoadedLM,
    batch_sizes: tuple[int, ...] = (1, 8, 64),
    k: int = 4,
    context: int = 40,
    reps: int = 15,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time one round of B sessions x (k+1) tokens: B `TargetSession.verify` calls, one
    `verify_batch` copying caches, one with a `KVPool` (contiguous slots, and every other slot).

    Every draft is accepted (the most write-back). Medians over `reps`, methods interleaved so
    that a busy machine slows them alike; each rep starts from the same cache state.
    """
    import statistics

    rows = []
    for batch in batch_sizes:
        sessions, blocks = _bench_sessions(lm, 2 * batch, context, k, seed)
        snapshot = [(s.state.length, list(s.committed)) for s in sessions]

        def restore() -> None:
            for session, (length, committed) in zip(sessions, snapshot):
                session.state.crop(length)
                session.committed = list(committed)

        pool = KVPool(lm, slots=2 * batch, positions=context + k + 1)
        every_other = sessions[::2]
        for session in sessions:  # slot order = session order, so sessions[:batch] are contiguous
            pool.admit(session)
        group, group_blocks = sessions[:batch], blocks[:batch]
        spread_blocks = blocks[::2]
        times: dict[str, list[float]] = {"unbatched": [], "copy": [], "pool": [], "pool_spread": []}
        profiles = {name: BatchProfile() for name in ("copy", "pool", "pool_spread")}
        for rep in range(reps + 2):  # two warm-up reps
            started = time.perf_counter()
            for session, (tokens, q) in zip(group, group_blocks):
                session.verify(tokens, q)
            elapsed = {"unbatched": time.perf_counter() - started}
            restore()
            for session in sessions:  # the unbatched calls moved caches out; the pool reads them back
                pool.admit(session)
            for name, members, member_blocks, use_pool in (
                ("copy", group, group_blocks, None),
                ("pool", group, group_blocks, pool),
                ("pool_spread", every_other, spread_blocks, pool),
            ):
                profile = BatchProfile() if rep < 2 else profiles[name]
                started = time.perf_counter()
                verdicts = verify_batch(members, member_blocks, pool=use_pool, profile=profile)
                elapsed[name] = time.perf_counter() - started
                assert all(v.n_accepted == k for v in verdicts)
                restore()
                if name == "copy":
                    for session in members:
                        pool.admit(session)
            if rep >= 2:
                for name, seconds in elapsed.items():
                    times[name].append(seconds)
        row: dict[str, Any] = {"batch": batch, "k": k, "context": context}
        for name, values in times.items():
            row[f"{name}_ms"] = 1e3 * statistics.median(values)
        for name, profile in profiles.items():
            calls = max(1, profile.calls)
            for step in ("gather", "forward", "verify", "scatter"):
                row[f"{name}_{step}_ms"] = 1e3 * getattr(profile, f"{step}_s") / calls
        for name in ("copy", "pool", "pool_spread"):
            row[f"{name}_speedup"] = row["unbatched_ms"] / row[f"{name}_ms"]
        rows.append(row)
    return rows


def format_bench(rows: list[dict[str, Any]]) -> str:
    """The table `python -m speculative.batch` prints (ms per round; x = unbatched / batched)."""
    steps = ("gather", "forward", "verify", "scatter")
    header = ["B", "unbatched"]
    for name in ("copy", "pool", "pool_spread"):
        header += [f"{name}", *(f"{step[:4]}" for step in steps), "x"]
    lines = [
        "ms per round of B sessions x (k+1) tokens. copy: no pool; pool: KVPool, contiguous slots;",
        "pool_spread: KVPool, every other slot (index_select gather). Step columns are means.",
        " ".join(f"{h:>11}" if i == 2 or h in ("copy", "pool", "pool_spread") else f"{h:>7}"
                 for i, h in enumerate(header)),
    ]
    for r in rows:
        cells = [f"{r['batch']:>7}", f"{r['unbatched_ms']:>7.2f}"]
        for name in ("copy", "pool", "pool_spread"):
            cells.append(f"{r[f'{name}_ms']:>11.2f}")
            cells += [f"{r[f'{name}_{step}_ms']:>7.2f}" for step in steps]
            cells.append(f"{r[f'{name}_speedup']:>7.1f}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from .models import load_lm

    parser = argparse.ArgumentParser(description="Batched vs unbatched verification on one target.")
    default_target = Path(__file__).resolve().parent.parent / "edgespec" / "default_models" / "target"
    parser.add_argument("--target-model", type=Path, default=default_target)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--context", type=int, default=40, help="cache positions per session")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (verifier default 1)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    lm = load_lm(args.target_model)
    rows = bench(lm, tuple(args.batch), k=args.k, context=args.context, reps=args.reps)
    print(f"target {args.target_model} ({lm.num_parameters:,} parameters), {args.threads} thread(s)")
    print(format_bench(rows))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
