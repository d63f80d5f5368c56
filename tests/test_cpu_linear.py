"""The few-row linear (speculative/cpu_linear.py): the same product as PyTorch's linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speculative import cpu_linear
from speculative.models import CachedLM


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows", [1, 2, 4, 5, 17, 256, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_equals_torch(threads: int, rows: int, bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen)
    b = torch.randn(96, generator=gen) if bias else None
    x = torch.randn(rows, 64, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = cpu_linear.linear(x, weight, b)
    finally:
        torch.set_num_threads(before)
    assert out.shape == (rows, 96) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_batched_input_keeps_its_shape() -> None:
    x = torch.randn(3, 5, 64)
    weight = torch.randn(32, 64)
    out = cpu_linear.linear(x, weight)
    assert out.shape == (3, 5, 32)
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert cpu_linear.linear(torch.empty(0, 64), weight).shape == (0, 32)


def test_module_swap_keeps_parameters_and_hooks() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    seen: list[int] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 8)
    plain_out = model(x)
    assert cpu_linear.use_few_row(model) == 2
    assert type(model[0]) is cpu_linear.FewRowLinear and cpu_linear.is_linear(model[0])
    torch.testing.assert_close(model(x), plain_out, rtol=1e-5, atol=1e-6)
    assert seen == [3, 3]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    cpu_linear.plain(model)
    assert type(model[0]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear


def test_loaded_model_gives_the_same_greedy_tokens(default_pair) -> None:
    target = default_pair[0]
    assert any(type(m) is cpu_linear.FewRowLinear for m in target.model.modules()) == cpu_linear.ON
    cache = CachedLM(target)
    prompt = target.encode("a red car")
    few = cache.prefill(prompt)
    block = cache.extend([5, 6, 7])
    cpu_linear.use_few_row(target.model, False)
    try:
        plain_cache = CachedLM(target)
        plain = plain_cache.prefill(prompt)
        plain_block = plain_cache.extend([5, 6, 7])
    finally:
        cpu_linear.speed_up(target.model)
    torch.testing.assert_close(few, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(block, plain_block, rtol=1e-4, atol=1e-4)
    assert torch.equal(block.argmax(-1), plain_block.argmax(-1))
