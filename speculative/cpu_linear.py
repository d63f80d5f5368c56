"""Linear layers over a few rows, computed in the layout the CPU's BLAS does fastest.

A decode step, a verification block or a batch of sessions multiplies a few rows (1 to a few
hundred tokens) by every weight matrix of the model, and the weights come from memory each
time. PyTorch's CPU linear computes ``x @ W.T``; for so few rows its kernels can read the
weights well below the memory bandwidth. The same product taken as ``W @ x.T`` (the rows as
columns; one row given as two, a matrix product instead of a matrix-vector one) is faster
there. `edgespec bench-linear` measures it on a model's forward after a cached prefix; on the
SmolLM2-135M target (2 cores) it gave, plain -> few-row: one thread, 1 row 56 -> 45 ms, 3 rows
117 -> 86 ms, 5 rows and more no faster (97 -> 99 ms at 5); two threads, 1 row 58 -> 34 ms,
5 rows 86 -> 63 ms, 64 rows 182 -> 161 ms. So the few-row product is used for up to
`FEW_ROWS` rows on one thread and up to `ROWS_MAX` on more.

The result is the same product, equal to the plain linear's to float rounding (a different
summation order, logits within about 1e-4); everything the project runs on a model (the
target alone in `generate`, assisted generation, the verifier, the drafter) goes through the
same layers. ``EDGESPEC_PLAIN_LINEAR=1`` keeps PyTorch's own linear everywhere.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

FEW_ROWS = 4  # on one thread, the few-row product up to this many rows
ROWS_MAX = 256  # on more threads, up to this many (above: a prefill of a long prompt)


def enabled() -> bool:
    return os.environ.get("EDGESPEC_PLAIN_LINEAR", "") in ("", "0")


ON = enabled()  # read once: the layers' forward and the drafter's run as one


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x [..., in] on the CPU, as ``weight @ x.T``."""
    rows = x.numel() // max(1, x.shape[-1])
    if not ON or rows == 0 or x.device.type != "cpu" or x.dtype != torch.float32 \
            or rows > (FEW_ROWS if torch.get_num_threads() == 1 else ROWS_MAX):
        return F.linear(x, weight, bias)
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
    """`torch.nn.Linear` whose forward is `linear` (same parameters, same state dict)."""

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
