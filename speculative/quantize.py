"""int8 dynamic quantization of a draft model for the edge (CPU).

Two backends, both replacing the ``nn.Linear`` layers of a loaded model:

* ``rowwise`` (the default, implemented here): each weight is stored as int8 with one scale
  per output channel; each input row is quantized to int8 with its own scale when the layer
  runs, multiplied with ``torch._int_mm`` (int8 x int8 -> int32) and rescaled. Where
  ``torch._int_mm`` is missing or refuses the shapes, the layer multiplies with its
  dequantized weight instead (same figures, no speed-up). The input embedding is stored the
  same way (int8 rows, one scale per row); a model whose output layer is tied to its
  embedding keeps one int8 matrix for both.
* ``fbgemm``: ``torch.ao.quantization.quantize_dynamic`` with per-channel int8 weights (the
  input embedding as above). Its kernels are faster, but it quantizes each layer's whole input
  with one scale, which costs a model with large activation outliers (SmolLM2 among them)
  more accuracy; torch marks this API deprecated (its warnings are silenced here), and a torch
  build without it reports it as unavailable (`fbgemm_available`).

A quantized model runs through the Hugging Face forward: the lean draft forward
(speculative/lean.py) covers plain ``nn.Linear`` layers only.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_linear
from .models import LoadedLM

Backend = Literal["rowwise", "fbgemm"]
BACKENDS: tuple[Backend, ...] = ("rowwise", "fbgemm")

_MARK = "edgespec_quantized"  # attribute set on a quantized model: "int8-rowwise" or "int8-fbgemm"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], float32 scales [N]) with ``weight[i] ~= int8[i] * scale[i]`` (symmetric)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


@functools.cache
def int_mm_available() -> bool:
    """Whether ``torch._int_mm`` multiplies int8 matrices on the CPU in this torch build."""
    fn = getattr(torch, "_int_mm", None)
    if fn is None:
        return False
    try:
        a = torch.ones(3, 24, dtype=torch.int8)
        out = fn(a, torch.ones(24, 5, dtype=torch.int8))
    except (RuntimeError, NotImplementedError):
        return False
    return out.dtype == torch.int32 and int(out[0, 0]) == 24


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with W as int8 per output channel and x quantized per row when called."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.use_int_mm = int_mm_available()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q, scale = quantize_rows(linear.weight)
        return cls(q, scale, linear.bias)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).float()
        y = None
        if self.use_int_mm and rows.shape[0] > 0:
            x_scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            xq = torch.round(rows / x_scale).clamp_(-127, 127).to(torch.int8)
            try:
                y = torch._int_mm(xq, self.weight_int8.t()).float() * x_scale * self.weight_scale
            except (RuntimeError, NotImplementedError):
                self.use_int_mm = False  # this build refuses these shapes: dequantize from now on
        if y is None:
            y = rows @ self.dequantized_weight().t()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = "torch._int_mm" if self.use_int_mm else "dequantized"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel, {kernel}"


class Int8Embedding(nn.Module):
    """Embedding rows stored as int8 with one scale per row, dequantized when looked up; may
    share the int8 matrix of a tied `Int8Linear` output layer."""

    weight_int8: torch.Tensor
    weight_scale: torch.Tensor

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight_int8).float() * F.embedding(ids, self.weight_scale[:, None])
        return rows.to(self.dtype)


def _replace_linears(module: nn.Module, skip: set[int]) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear and id(child) not in skip:
            setattr(module, name, Int8Linear.from_linear(child))
        else:
            _replace_linears(child, skip)


def _is_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


@functools.cache
def fbgemm_available() -> bool:
    """Whether this torch build has ``torch.ao.quantization.quantize_dynamic`` working on the CPU."""
    try:
        probe = _fbgemm(nn.Sequential(nn.Linear(8, 4)))
        probe(torch.ones(1, 8))
    except (ImportError, AttributeError, RuntimeError, NotImplementedError, AssertionError):
        return False
    return True


def _fbgemm(model: nn.Module, skip: set[int] | None = None) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the API's deprecation notices
        if skip:  # quantize_dynamic converts by name: every nn.Linear except the skipped ones
            names = {n: per_channel_dynamic_qconfig for n, m in model.named_modules()
                     if type(m) is nn.Linear and id(m) not in skip}
            return quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def quantize_model(model: nn.Module, backend: Backend = "rowwise", *, keep_head: bool = False) -> nn.Module:
    """Quantize ``model``'s linear layers and its input embedding to int8,
    in place; returns it. ``keep_head`` leaves the output layer in float."""
    if backend not in BACKENDS:
        raise ValueError(f"quantization backend {backend!r}: one of {', '.join(BACKENDS)}")
    if not _is_cpu(model):
        raise ValueError("int8 quantization runs on the CPU: load the draft with device cpu")
    cpu_linear.plain(model)  # the converters below match layers by their exact type
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    head = get_out() if callable(get_out) else None
    embed = get_in() if callable(get_in) else None
    skip = {id(head)} if keep_head and head is not None else set()
    tied = (type(head) is nn.Linear and type(embed) is nn.Embedding
            and head.weight.data_ptr() == embed.weight.data_ptr())
    if backend == "fbgemm":
        if not fbgemm_available():
            raise ValueError("this torch build has no torch.ao.quantization.quantize_dynamic: use backend rowwise")
        if any(p.dtype != torch.float32 for p in model.parameters()):
            raise ValueError("the fbgemm backend quantizes float32 models only: load the draft as float32")
        _fbgemm(model, skip)
    else:
        _replace_linears(model, skip)
    set_in = getattr(model, "set_input_embeddings", None)
    if type(embed) is nn.Embedding and callable(set_in):
        new_head = get_out() if callable(get_out) else None
        if tied and isinstance(new_head, Int8Linear):  # one int8 matrix for both ends
            q, scale = new_head.weight_int8, new_head.weight_scale
        else:
            q, scale = quantize_rows(embed.weight)
        set_in(Int8Embedding(q, scale, embed.weight.dtype))
    setattr(model, _MARK, f"int8-{backend}")
    return model


def quantize_draft(lm: LoadedLM, backend: Backend = "rowwise", *, keep_head: bool = False) -> LoadedLM:
    """A new `LoadedLM` whose model is an int8 copy of ``lm``'s (``lm`` is left as it is); the
    tokenizer, projector (kept in float) and everything else are shared."""
    model = quantize_model(copy.deepcopy(lm.model), backend, keep_head=keep_head)
    return dataclasses.replace(lm, model=model)


def quantization_of(model: Any) -> str | None:
    """``int8-rowwise`` or ``int8-fbgemm`` for a model `quantize_model` made, else None."""
    mark = getattr(model, _MARK, None)
    return mark if isinstance(mark, str) else None


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (a tensor shared by two modules counted once;
    fbgemm's packed weights are counted at one byte per weight)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += tensor.untyped_storage().nbytes()
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if packed is not None and isinstance(n_in, int) and isinstance(n_out, int):
            total += n_in * n_out + 4 * n_out
    return total
