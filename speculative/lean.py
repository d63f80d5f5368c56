"""A lean KV-cached forward for the edge's draft model.

A draft model of the default pair's size (2 layers, 64 wide) spends almost all of a Hugging
Face forward in per-call Python: argument handling, mask construction, cache objects, output
classes. On the device that overhead is the drafting time. `LeanCachedLM` runs the same
weights through the Llama computation directly (embeddings or a vision prefix, RMSNorm,
rotary attention with a KV cache, SwiGLU, the output head) behind `CachedLM`'s interface.

Its logits match the Hugging Face forward's to float rounding (tests/test_lean.py), not bit
for bit. That is all a draft needs: the verifier only requires that each token is drawn from
the q the device sends, and the drafter computes q from these logits. The target always runs
the Hugging Face model. Models this does not cover (other architectures, rotary scaling,
other activations) get `CachedLM`: see `draft_state`.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import cpu_linear
from .models import CachedLM, LoadedLM

_linear = cpu_linear.linear


def supports(lm: LoadedLM) -> bool:
    """Whether `lm` is a plain Llama that the lean forward computes exactly as Hugging Face does."""
    cfg = lm.model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "other"
    if not (getattr(cfg, "model_type", None) == "llama" and getattr(cfg, "hidden_act", None) == "silu"
            and rope_type == "default" and getattr(cfg, "pretraining_tp", 1) == 1
            and next(lm.model.parameters()).device.type == "cpu"):
        return False
    # Plain linear layers only (a quantized or otherwise wrapped model keeps Hugging Face's forward).
    try:
        linears = [lm.model.lm_head] + [m for layer in lm.model.model.layers for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)]
    except AttributeError:
        return False
    return all(cpu_linear.is_linear(m) for m in linears)


# Per model: its weights' tensors, or None where the lean forward does not apply. A drafter
# is made per session, and reading a model's modules costs more than a short session's forwards.
_WEIGHTS: weakref.WeakKeyDictionary[Any, _Weights | None] = weakref.WeakKeyDictionary()


def draft_state(lm: LoadedLM) -> CachedLM | LeanCachedLM:
    """The cached forward a drafter uses: the lean one where it applies."""
    if lm.model not in _WEIGHTS:
        _WEIGHTS[lm.model] = _Weights(lm.model) if supports(lm) else None
    weights = _WEIGHTS[lm.model]
    return CachedLM(lm) if weights is None else LeanCachedLM(lm, weights)


class _Weights:
    """The tensors of one Llama model, read once from its modules (no copies)."""

    def __init__(self, model: Any):
        cfg = model.config
        base = model.model
        self.embed = base.embed_tokens.weight
        self.norm = base.norm.weight
        self.head = model.lm_head.weight
        self.eps = float(cfg.rms_norm_eps)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        self.layers = [
            (layer.input_layernorm.weight,
             (a.q_proj.weight, a.q_proj.bias), (a.k_proj.weight, a.k_proj.bias), (a.v_proj.weight, a.v_proj.bias),
             (a.o_proj.weight, a.o_proj.bias), layer.post_attention_layernorm.weight,
             (m.gate_proj.weight, m.gate_proj.bias), (m.up_proj.weight, m.up_proj.bias),
             (m.down_proj.weight, m.down_proj.bias))
            for layer in base.layers for a, m in [(layer.self_attn, layer.mlp)]
        ]
        self._cos = self._sin = torch.empty(0, self.head_dim)

    def rotary(self, start: int, end: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [end - start, head_dim] of positions start..end-1, from a table that
        grows (doubling) as positions are reached, so a forward computes none of it."""
        if end > self._cos.shape[0]:
            positions = torch.arange(max(end, 2 * self._cos.shape[0]), dtype=torch.float32)
            freqs = positions[:, None] * self.inv_freq[None]
            angles = torch.cat((freqs, freqs), dim=-1)
            self._cos, self._sin = angles.cos().to(dtype), angles.sin().to(dtype)
        return self._cos[start:end], self._sin[start:end]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanCachedLM:
    """`CachedLM` for a plain Llama draft: `prefill`, `extend`, `crop`, `length`, `prefix_len`,
    `forwards`, with the forward written out instead of the Hugging Face module's."""

    def __init__(self, lm: LoadedLM, weights: _Weights | None = None):
        self.lm = lm
        self.w = weights if weights is not None else _Weights(lm.model)
        self.prefix_len = 0
        self.forwards = 0
        self._keys: list[torch.Tensor | None] = [None] * len(self.w.layers)  # [kv_heads, T, D] per layer
        self._values: list[torch.Tensor | None] = [None] * len(self.w.layers)
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def crop(self, length: int) -> None:
        if length < self._length:
            self._keys = [None if k is None else k[:, :length] for k in self._keys]
            self._values = [None if v is None else v[:, :length] for v in self._values]
            self._length = length

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], features: np.ndarray | None = None, *,
                logits: bool = True, last: int = 0) -> torch.Tensor | None:
        if features is None:
            if not token_ids:
                return None
            embeds = self.w.embed[torch.tensor(token_ids)]
        else:
            if self.lm.projector is None:
                raise ValueError(f"{self.lm.path}: features given but the model has no vision projector")
            prefix = self.lm.projector(torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.w.embed.dtype))
            self.prefix_len = int(prefix.shape[0])
            embeds = torch.cat([prefix, self.w.embed[torch.tensor(token_ids)]]) if token_ids else prefix
        out = self._forward(embeds, logits=logits)
        if out is None:
            return None
        return out[-last:] if last else out

    @torch.inference_mode()
    def extend(self, token_ids: list[int]) -> torch.Tensor:
        out = self._forward(self.w.embed[torch.tensor(token_ids)])
        assert out is not None  # logits were asked for
        return out

    def _forward(self, x: torch.Tensor, *, logits: bool = True) -> torch.Tensor | None:
        """Feed embeddings x [n, H] after the cache; logits [n, V] (float32)."""
        w = self.w
        n, past = x.shape[0], self._length
        cos, sin = w.rotary(past, past + n, x.dtype)
        mask = None
        if n > 1:  # query i sees keys up to past + i
            mask = torch.ones(n, past + n, dtype=torch.bool).tril(past)
        group = w.heads // w.kv_heads
        for i, (ln1, q_p, k_p, v_p, o_p, ln2, gate, up, down) in enumerate(w.layers):
            h = _rms(x, ln1, w.eps)
            q = _linear(h, *q_p).view(n, w.heads, w.head_dim).transpose(0, 1)
            k = _linear(h, *k_p).view(n, w.kv_heads, w.head_dim).transpose(0, 1)
            v = _linear(h, *v_p).view(n, w.kv_heads, w.head_dim).transpose(0, 1)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            past_k, past_v = self._keys[i], self._values[i]
            if past_k is not None and past_v is not None:
                k = torch.cat((past_k, k), dim=1)
                v = torch.cat((past_v, v), dim=1)
            self._keys[i], self._values[i] = k, v
            if group > 1:
                k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + _linear(attn.transpose(0, 1).reshape(n, w.heads * w.head_dim), *o_p)
            h = _rms(x, ln2, w.eps)
            x = x + _linear(F.silu(_linear(h, *gate)) * _linear(h, *up), *down)
        self._length = past + n
        self.forwards += 1
        if not logits:
            return None
        return _linear(_rms(x, w.norm, w.eps), w.head).float()
