"""The caches of a batched verification: session cache layers, the batch buffers one forward
writes into, the `KVPool` that keeps many sessions' caches in one tensor, and the gather and
scatter steps between them (the layout is described in `speculative.batch`)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from .models import LoadedLM, kv_dims
from .sampling import SparseQ
from .target import TargetSession
from .verify import Verdict

Block = tuple[list[int], SparseQ | None]  # drafted tokens [k] and their q (None when greedy)


class BatchError(ValueError):
    """A batch that cannot be verified together (mixed models, a session twice, a bad block)."""


# --- the batch during one forward ----------------------------------------------------------


class BatchLayer(DynamicLayer):
    """One layer of the batch cache: buffers [B, H_kv, P+T, D] whose past is already in place.

    `update` writes the T new entries into columns [P, P+T) and returns the whole buffers.
    """

    keys: torch.Tensor  # always set (DynamicLayer's may be None)
    values: torch.Tensor

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


# --- session caches -------------------------------------------------------------------------


def cache_layers(session: TargetSession) -> list[DynamicLayer]:
    return session.state.cache.layers


def layer_kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(keys, values) [1, H_kv, L, D] of a session's cache layer, None while it is empty."""
    if not layer.is_initialized or layer.keys is None or layer.values is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


def set_layer(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Make a session's cache layer hold exactly `keys`, `values` [1, H_kv, L, D]."""
    if not layer.is_initialized:
        layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values


def kv_shape(lm: LoadedLM) -> tuple[int, int, int, torch.dtype]:
    """(layers, kv heads, head dim, dtype) of the target's cache."""
    return (*kv_dims(lm.model.config), lm.model.dtype)


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
        self.n_layers, self.heads, self.head_dim, self.dtype = kv_shape(lm)
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
        for keys, values, layer in zip(self.keys, self.values, cache_layers(session)):
            if (kv := layer_kv(layer)) is not None:
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
            for layer in cache_layers(session):
                if (kv := layer_kv(layer)) is not None:
                    set_layer(layer, kv[0].clone(), kv[1].clone())
        self._owners[slot] = None

    @torch.inference_mode()
    def reserve(self, positions: int) -> None:
        """Make every slot hold at least `positions` cache positions."""
        if positions > self.positions:
            self._resize(self.slots, max(positions, 2 * self.positions))

    def _resident(self, session: TargetSession, slot: int) -> bool:
        """Whether every cache layer of `session` is a view of its slot (empty layers count)."""
        offset = slot * self._slot_bytes
        for layer, key_base, value_base in zip(cache_layers(session), self._key_ptrs, self._value_ptrs):
            kv = layer_kv(layer)
            if kv is None:
                continue
            if kv[0].data_ptr() != key_base + offset or kv[1].data_ptr() != value_base + offset:
                return False
        return True

    def _point(self, session: TargetSession, slot: int, length: int) -> None:
        """Make the session's cache layers views of its slot's first `length` positions."""
        if length == 0:
            return
        for layer, keys, values in zip(cache_layers(session), self._slot_keys[slot], self._slot_values[slot]):
            set_layer(layer, keys.narrow(2, 0, length), values.narrow(2, 0, length))

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


# --- gather and scatter ---------------------------------------------------------------------


def gather_copies(
    sessions: list[TargetSession], blocks: list[Block]
) -> tuple[list[BatchLayer], list[int]]:
    """Zeroed [B, H_kv, P+T, D] buffers per layer, each past copied to its row's end; starts."""
    n_layers, heads, head_dim, dtype = kv_shape(sessions[0].lm)
    device = next(sessions[0].lm.model.parameters()).device
    lengths = [s.state.length for s in sessions]
    past, width = max(lengths), max(len(tokens) for tokens, _ in blocks) + 1
    starts = [past - length for length in lengths]
    per_session = [cache_layers(s) for s in sessions]
    layers = []
    for layer_idx in range(n_layers):
        keys = torch.zeros((len(sessions), heads, past + width, head_dim), dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        for row, session_layers in enumerate(per_session):
            if (kv := layer_kv(session_layers[layer_idx])) is not None:
                keys[row, :, starts[row] : past] = kv[0][0]
                values[row, :, starts[row] : past] = kv[1][0]
        layers.append(BatchLayer(keys, values, past))
    return layers, starts


def scatter_copies(
    sessions: list[TargetSession],
    blocks: list[Block],
    verdicts: list[Verdict],
    layers: list[BatchLayer],
    starts: list[int],
) -> None:
    """Each session's row, past + kept entries, is one slice: a copy of it becomes its cache."""
    past = layers[0].past
    for row, (session, (tokens, _), verdict) in enumerate(zip(sessions, blocks, verdicts)):
        end = past + verdict.n_accepted + 1
        for layer, batch_layer in zip(cache_layers(session), layers):
            set_layer(
                layer,
                batch_layer.keys[row : row + 1, :, starts[row] : end].clone(),
                batch_layer.values[row : row + 1, :, starts[row] : end].clone(),
            )
        session.state.forwards += 1  # this session took part in one target forward
        session.settle(tokens, verdict)  # crops nothing: the rejected drafts were never written


@dataclass
class PoolRows:
    """A round's rows of a KVPool: row i is slot `slots[i]`, its past columns [0, L_i)."""

    tensor: torch.Tensor  # [2 (K, V), layers, B, H_kv, P+T, D]
    in_pool: bool  # a view of the pool's own storage (contiguous slots), not a copy
    slots: list[int]
    lengths: list[int]  # L_i
    past: int  # P = max L_i

    def layers(self) -> list[BatchLayer]:
        return [BatchLayer(k, v, self.past) for k, v in zip(self.tensor[0].unbind(0), self.tensor[1].unbind(0))]


def gather_pool(slots: list[int], lengths: list[int], width: int, pool: KVPool) -> PoolRows:
    """The rows of `slots` (in slot order), with `width` new columns after the longest past.

    Contiguous slots are a view, so the new entries land in the pool's columns [P, P+T),
    beyond every row's past; other slots are gathered with one `index_select`.
    """
    past = max(lengths)
    pool.reserve(past + width)
    assert pool.store is not None  # allocated since the pool was made
    store = pool.store.narrow(4, 0, past + width)
    in_pool = slots == list(range(slots[0], slots[0] + len(slots)))
    if in_pool:
        rows = store.narrow(2, slots[0], len(slots))
    else:
        rows = store.index_select(2, torch.tensor(slots, device=pool.device))
    return PoolRows(rows, in_pool, slots, lengths, past)


def scatter_pool(
    sessions: list[TargetSession],
    blocks: list[Block],
    verdicts: list[Verdict],
    batch: PoolRows,
    pool: KVPool,
    opening: Sequence[tuple[TargetSession, int]] = (),
) -> None:
    """Row i's kept entries move from batch columns [P, P+keep) to its slot's [L_i, L_i+keep).

    The rows after the verified ones are `opening` (session, n): all n entries are kept, at
    its slot's [0, n).
    """
    past, rows = batch.past, batch.tensor
    assert pool.store is not None  # allocated since the pool was made
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
