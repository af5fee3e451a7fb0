"""``torch.compile(fullgraph=True)`` of the default coding-rate path: no graph break, same values."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.testing import assert_close

from jepa_rate import CodingRateLoss, coding_rate, rate_reduction


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


def _entry(name: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """A scalar function of the features through one public entry point, and whether it compiles fully.

    ``rate_reduction`` reads the class sizes on the host (its shapes depend on them), a graph break.
    """
    if name == "coding_rate":
        return lambda z: coding_rate(z, center=True).sum(), True
    if name == "CodingRateLoss":
        loss_fn = CodingRateLoss(alpha=1.0, center=True)
        return lambda z: loss_fn.forward_components(z).loss, True
    return lambda z: rate_reduction(z, torch.arange(z.shape[0]) % 3, eps=0.5).delta, False


# Changing n and d (n >= 128 takes the mean split on the d side; n < d the n side), and a batch.
SHAPES = [(64, 32), (48, 32), (48, 20), (160, 20), (12, 40)]


@pytest.mark.parametrize("entry", ["coding_rate", "CodingRateLoss", "rate_reduction"])
@pytest.mark.parametrize(
    ("backend", "dynamic", "shapes"),
    [
        ("eager", None, SHAPES),
        ("eager", True, SHAPES),
        pytest.param("inductor", True, [(40, 12), (24, 16)], marks=pytest.mark.slow),
    ],
)
def test_compiled_entry_points_follow_changing_shapes(
    entry: str, backend: str, dynamic: bool | None, shapes: list[tuple[int, int]]
) -> None:
    torch._dynamo.reset()
    function, fullgraph = _entry(entry)
    compiled = torch.compile(function, fullgraph=fullgraph, backend=backend, dynamic=dynamic)
    for shape in shapes:
        z = torch.randn(shape)
        eager_z, compiled_z = z.clone().requires_grad_(), z.clone().requires_grad_()
        expected, got = function(eager_z), compiled(compiled_z)
        expected.backward()
        got.backward()
        assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert_close(compiled_z.grad, eager_z.grad, rtol=1e-4, atol=1e-6)
