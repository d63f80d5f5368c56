"""Linear layers over a few rows, computed the way this CPU does them fastest.

A decode step, a verification block or a batch of sessions multiplies a few rows (1 to a few
hundred tokens) by every weight matrix of the model, and the weights come from memory each
time. PyTorch's CPU linear (``x @ W.T`` through MKL) reads them well below the memory
bandwidth there. Two ways do better, measured on the SmolLM2-135M target's 211 matrices:

* up to `FEW_ROWS` rows, the same product as ``W @ x.T`` (the rows as columns; one row given
  as two, a matrix product instead of a matrix-vector one);
* above, oneDNN's linear over a copy of the weights packed once for it
  (``torch.ops.mkldnn``; `PACK_HINT` rows), kept beside the model's own weights (a float32
  model's weights twice in memory) and packed again if a weight changes in place.

`edgespec bench-linear` measures a model's forward with them against PyTorch's; on the target
after a 64-token cache, one thread: 1 row 55 -> 44 ms, 5 rows 91 -> 50 ms, 64 rows 275 ->
210 ms; two threads: 1 row 57 -> 33 ms, 5 rows 91 -> 41 ms. A verification forward over 5
positions then costs 1.1-1.3 one-token forwards instead of 1.6-2.3.

The results are the same products to float rounding (other summation orders: logits within
about 1e-4 of the plain forward's); everything the project runs on a model (the target alone
in `generate`, assisted generation, the verifier, the drafter) goes through the same layers.
Layers computing gradients, other dtypes and devices keep PyTorch's linear, as does a torch
build without oneDNN above `FEW_ROWS` rows. ``EDGESPEC_PLAIN_LINEAR=1`` keeps it everywhere.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any

import torch
import torch.nn.functional as F

FEW_ROWS = 2  # up to this many rows: weight @ x.T (one row given as two)
PACK_HINT = 16  # the rows oneDNN lays the packed weights out for (measured best for 3-80 rows)


# Read once: the layers' forward and the drafter's run as one.
ON = os.environ.get("EDGESPEC_PLAIN_LINEAR", "") in ("", "0")

# By id of the weight tensor: (a weak reference to it, its version when packed, the packed
# copy). A weight changed in place (its version moves) is packed again; a weight no longer
# referenced drops its copy.
_PACKED: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


@functools.cache
def packing_works() -> bool:
    """Whether this torch build has oneDNN's packed linear on the CPU, giving F.linear's result."""
    try:
        w, x = torch.randn(8, 4), torch.randn(3, 4)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_HINT)
        out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(out, F.linear(x, w), rtol=1e-4, atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _packed(weight: torch.Tensor) -> torch.Tensor:
    key = id(weight)
    got = _PACKED.get(key)
    if got is not None and got[0]() is weight and got[1] == weight._version:
        return got[2]
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_HINT)
    if got is None or got[0]() is not weight:
        weakref.finalize(weight, _PACKED.pop, key, None)
    _PACKED[key] = (weakref.ref(weight), weight._version, packed)
    return packed


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [..., in]: on the CPU in float32 without gradients,
    ``weight @ x.T`` for up to `FEW_ROWS` rows and oneDNN's packed product above."""
    rows = x.numel() // max(1, x.shape[-1])
    if not ON or rows == 0 or x.device.type != "cpu" or x.dtype != torch.float32 \
            or weight.dtype != torch.float32 or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.linear(x, weight, bias)
    if rows > FEW_ROWS:
        if not packing_works():
            return F.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), _packed(weight), bias, "none", [], "")
    flat = x.reshape(rows, x.shape[-1])
    if rows == 1:
        out = (weight @ torch.cat((flat, flat)).t())[:, :1]
    else:
        out = weight @ flat.t()
    out = out.t().contiguous()
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class FewRowLinear(torch.nn.Linear):
    """`torch.nn.Linear` whose forward is `linear` (same parameters, same state dict, the
    packed copy of its weight made at its first forward over more than `FEW_ROWS` rows)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


def is_linear(module: Any) -> bool:
    """A plain linear layer, with PyTorch's forward or the few-row one."""
    return type(module) in (torch.nn.Linear, FewRowLinear)


def plain(model: Any) -> Any:
    """Give `model`'s few-row linear layers PyTorch's own forward back, in place (for code that
    converts layers by their exact type, as the quantizers do); returns it."""
    use_few_row(model, False)
    return model


def use_few_row(model: Any, on: bool = True) -> int:
    """Give every plain linear layer of `model` on the CPU in float32 the few-row forward (on)
    or PyTorch's own (off), in place: parameters and hooks stay. Returns how many it set."""
    count = 0
    for module in model.modules():
        if is_linear(module) and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32:
            module.__class__ = FewRowLinear if on else torch.nn.Linear
            count += 1
    return count


def speed_up(model: Any) -> int:
    """`use_few_row` unless ``EDGESPEC_PLAIN_LINEAR`` is set (then 0: nothing changes)."""
    return use_few_row(model) if ON else 0
