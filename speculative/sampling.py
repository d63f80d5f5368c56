"""Sampling helpers shared by the draft (edge) and the target (cloud).

The draft's distribution q is truncated (by default to the smallest support holding
`q_mass` of it, at most `q_max` entries; or to a fixed `q_top` entries, see `QRule`) and
quantized to integer weights *before* a draft token is drawn from it, and exactly those
weights are sent on the wire. The verifier reconstructs q = w / sum(w) from the same
integers, so rejection sampling stays exact for any support (truncating after sampling would
not be).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from schemas.topics import PROTOCOL

Q_WEIGHT_MAX = 65535  # weights travel as uint16
DEFAULT_Q_TOP = 16  # the fixed cut of `--q-top` that `edgespec bench-q` compares with
DEFAULT_Q_MASS = 0.995  # q holds the smallest support with at least this share of the draft's mass
DEFAULT_Q_MAX = 64  # ... of at most this many entries (schemas.messages.Limits.max_q_top)
# The smallest sampled temperature (0 is greedy). Tiny ones (about 1e-36 and below for logits
# near 100) overflow logits / temperature to inf in float32: the warp gives NaN and
# torch.multinomial raises, for every session of a batch. At 0.01 even the
# largest half-precision logit stays finite (x 100); greedy decoding is temperature 0.
# The wire decoder refuses the same range (schemas.messages.MIN_TEMPERATURE).
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class SamplingParams:
    """The session's sampling settings; temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self) -> SamplingParams:
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= 100.0):
            raise ValueError(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, 100], got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        return self


def warp_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, in float32.

    logits: [..., V]. Returns [..., V] summing to 1 on the last axis. For greedy params this
    is the one-hot of the argmax (the distribution greedy decoding samples from).
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    scores = logits / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        sorted_probs = sorted_scores.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p; always keep one.
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


@dataclass(frozen=True)
class SparseQ:
    """A truncated, quantized draft distribution per drafted position.

    ids: [k, K] int64 token ids; weights: [k, K] int64 in [0, 65535]. Row i's distribution is
    weights[i] / weights[i].sum(); entries with weight 0 are padding and never drawn.
    """

    ids: torch.Tensor
    weights: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.ids.shape[0])

    def dense(self, vocab_size: int) -> torch.Tensor:
        """[k, V] float32 probabilities."""
        w = self.weights.float()
        q = torch.zeros(self.k, vocab_size)
        q.scatter_add_(1, self.ids, w)
        return q / w.sum(-1, keepdim=True)

    def prob_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """[k] float32 q_i(tokens[i])."""
        w = self.weights.float()
        hit = (self.ids == tokens[:, None]).float() * w
        return hit.sum(-1) / w.sum(-1)


@dataclass(frozen=True)
class QRule:
    """How many entries of q a drafted token sends.

    `top` None (the default): the smallest support holding at least `mass` of the draft's
    warped distribution, at most `max_entries` and never an entry of probability 0 (so never
    more than the session's top-k). `top` N: a fixed cut of the N largest entries.
    """

    mass: float = DEFAULT_Q_MASS
    max_entries: int = DEFAULT_Q_MAX
    top: int | None = None

    @property
    def bound(self) -> int:
        """The most entries a row may hold: the OPEN's `q_top`."""
        return self.top if self.top is not None else self.max_entries

    def validate(self) -> QRule:
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"q mass must be in (0, 1], got {self.mass}")
        if not 1 <= self.bound <= DEFAULT_Q_MAX:
            raise ValueError(f"q entries must be in [1, {DEFAULT_Q_MAX}], got {self.bound}")
        return self

    def quantize(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [n], weights [n]) of [V] probabilities under this rule (see quantize_distribution)."""
        if self.top is not None:
            return quantize_distribution(probs, self.top)
        top = torch.topk(probs.float(), max(1, min(self.max_entries, probs.shape[-1])))
        reached = (top.values.cumsum(0) >= self.mass).nonzero()
        n = int(reached[0]) + 1 if len(reached) else top.values.numel()
        n = max(1, min(n, int((top.values > 0).sum())))
        return _quantize_sorted(top.values[:n], top.indices[:n])


DEFAULT_Q_RULE = QRule()


def _quantize_sorted(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights = torch.round(values / values.sum() * Q_WEIGHT_MAX).to(torch.int64)
    weights = weights.clamp_(0, Q_WEIGHT_MAX)
    weights[0] = weights[0].clamp(min=1)
    return ids.to(torch.int64), weights


def quantize_distribution(probs: torch.Tensor, q_top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate [V] probabilities to the `q_top` largest and quantize to uint16 weights.

    Returns (ids [q_top], weights [q_top]); trailing entries may have weight 0. The largest
    entry always gets weight >= 1 so the row is a proper distribution.
    """
    q_top = max(1, min(q_top, probs.shape[-1]))
    top = torch.topk(probs.float(), q_top)
    return _quantize_sorted(top.values, top.indices)


def stack_q(ids: list[torch.Tensor], weights: list[torch.Tensor]) -> SparseQ:
    """Rows of different lengths as one SparseQ: shorter rows are padded with id 0, weight 0
    (padding is never drawn and adds nothing to q)."""
    width = max(int(row.numel()) for row in ids)
    pad = [width - int(row.numel()) for row in ids]
    return SparseQ(torch.stack([torch.nn.functional.pad(r, (0, n)) for r, n in zip(ids, pad)]),
                   torch.stack([torch.nn.functional.pad(w, (0, n)) for w, n in zip(weights, pad)]))


def sample_weights(ids: torch.Tensor, weights: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one id from integer weights exactly (integer arithmetic, no float rounding)."""
    cumulative = weights.cumsum(0)
    total = int(cumulative[-1])
    r = int(torch.randint(total, (1,), generator=generator))
    index = int(torch.searchsorted(cumulative, torch.tensor(r), right=True))
    return int(ids[index])


def sample_probs(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one id from a [V] float distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int, stream: int, resumed_at: int = 0) -> torch.Generator:
    """A CPU generator for one role of a session (stream 0: draft, 1: verifier).

    `resumed_at`: 0 for a session's first open; for a re-open (after a RESYNC, an eviction or
    a failover, with tokens already generated) the committed length it resumes from. A
    re-opened verifier must not draw the uniforms it drew before: the device's stream goes
    on, and uniforms used twice would bias the output. Each committed
    length gets its own stream (a hash of seed, stream and length). The committed length
    only grows with every verdict a device applies, so a stream whose draws reached the
    output never starts again; one restarted at the same length only repeats draws whose
    verdict the device never applied.
    """
    gen = torch.Generator()
    if resumed_at:
        digest = hashlib.sha256(f"{PROTOCOL} stream {int(seed)} {stream} {int(resumed_at)}".encode()).digest()
        gen.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
    else:
        gen.manual_seed((int(seed) * 1_000_003 + stream) % (2**63))
    return gen
