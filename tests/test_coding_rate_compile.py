"""``torch.compile(fullgraph=True)`` of the default coding-rate path: no graph break, same values."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from jepa_rate import CodingRateLoss, coding_rate


def rate_step(loss_fn: CodingRateLoss, layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return loss_fn(layer(x))


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
# Batched sets on either side; one set on either side, with 160 rows on the d side, where the Gram is summed
# around the row mean.
@pytest.mark.parametrize("shape", [(4, 32, 8), (4, 8, 32), (160, 8), (8, 32)])
def test_compiled_loss_matches_eager(backend: str, shape: tuple[int, ...]) -> None:
    torch._dynamo.reset()
    *rows, d = shape
    layer = torch.nn.Linear(6, d)
    loss_fn = CodingRateLoss(weight=0.1, center=True)
    x = torch.randn(*rows, 6)

    eager = rate_step(loss_fn, layer, x)
    eager.backward()
    assert layer.weight.grad is not None
    eager_grad = layer.weight.grad.clone()
    layer.zero_grad()

    compiled_step = torch.compile(rate_step, fullgraph=True, backend=backend)
    compiled = compiled_step(loss_fn, layer, x)
    compiled.backward()
    # Inductor may fuse and reorder float32 reductions: agreement to float32 rounding, not bitwise.
    assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert_close(layer.weight.grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_compiled_components_and_bf16_autocast() -> None:
    torch._dynamo.reset()
    loss_fn = CodingRateLoss(alpha=1.0)

    def step(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts = loss_fn.forward_components(z @ torch.eye(z.shape[-1]))
        return tuple(parts)

    z = torch.randn(64, 16)
    compiled = torch.compile(step, fullgraph=True, backend="eager")(z)
    for got, expected in zip(compiled, step(z), strict=True):
        assert_close(got, expected)


def test_compiled_function_inductor_smoke() -> None:
    torch._dynamo.reset()
    z = torch.randn(2, 16, 24, requires_grad=True)
    rate = torch.compile(lambda t: coding_rate(t, eps=0.2), fullgraph=True, backend="inductor")(z)
    assert_close(rate, coding_rate(z.detach(), eps=0.2), rtol=1e-5, atol=1e-6)
    rate.sum().backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())
