"""The numerics kernel: padded factorization orders, failed factors, the two inverse routes, scale types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from jepa_rate.numerics import gram_logdet
from jepa_rate.numerics.gram_logdet import gram_half_logdet
from reference import rate_grad_reference, rate_reference


@pytest.mark.parametrize(
    ("k", "device", "expected"),
    [(64, "cpu", 64), (128, "cpu", 136), (256, "cpu", 264), (200, "cpu", 200), (128, "meta", 128)],
)
def test_padded_size_only_pads_multiples_of_128_on_cpu(k: int, device: str, expected: int) -> None:
    assert gram_logdet._padded_size(k, torch.device(device)) == expected


@pytest.mark.parametrize(("n", "d"), [(128, 300), (300, 128), (256, 256), (3, 128)])
def test_padded_orders_give_the_unpadded_value_and_gradient(n: int, d: int) -> None:
    # k = min(n, d) = 128 or 256 takes the padded route; (3, 128) has k = 3 and checks the other side.
    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n + d))
    x = z[None].clone().requires_grad_()
    scale = d / (n * 0.5)
    out = gram_half_logdet(x, scale, method="cholesky")
    out.rate.sum().backward()
    assert_close(out.rate, rate_reference(z, scale)[None], rtol=1e-10, atol=0)
    assert x.grad is not None
    assert_close(x.grad[0], rate_grad_reference(z, scale), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("n", "d"), [(300, 700), (700, 300)])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_blocked_gram_gives_the_value_and_gradient(n: int, d: int, tensor_scale: bool) -> None:
    # k = 300 >= 256: the Gram's upper block is never computed, on either side, with either scale type.
    z = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    x = z[None].clone().requires_grad_()
    a = d / (n * 0.5)
    scale = torch.full((1,), a, dtype=torch.float64) if tensor_scale else a
    out = gram_half_logdet(x, scale, method="cholesky")
    out.rate.sum().backward()
    assert_close(out.rate, rate_reference(z, a)[None], rtol=1e-10, atol=0)
    assert_close(out.scaled_trace, a * z.square().sum()[None], rtol=1e-12, atol=0)
    assert x.grad is not None
    assert_close(x.grad[0], rate_grad_reference(z, a), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["cholesky", "qr"])
def test_blocked_gram_series_branch_counts_the_unwritten_block(method: str) -> None:
    # a·tr(G) ~ 1e-6 takes the series tr(A)/2 - ||A||²/4, whose norm must include the mirrored block:
    # leaving it out would shift the value by ~1e-7 relative, far above the 1e-10 asserted here.
    z = torch.randn(300, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a = 1e-6 / float(z.square().sum())
    out = gram_half_logdet(z[None], a, method=method)  # type: ignore[arg-type]
    assert float(out.scaled_trace[0]) < 3e-5
    assert_close(out.rate, rate_reference(z, a)[None], rtol=1e-10, atol=0)


def test_float_scale_equals_tensor_scale() -> None:
    z = torch.randn(3, 20, 12, dtype=torch.float64)
    as_float = gram_half_logdet(z, 0.8, method="cholesky").rate
    as_tensor = gram_half_logdet(z, torch.full((3,), 0.8, dtype=torch.float64), method="cholesky").rate
    assert_close(as_float, as_tensor, rtol=1e-14, atol=0)


@pytest.mark.parametrize("k", [1, 7, 64, 136])
@pytest.mark.parametrize("potri", [True, False])
def test_both_inverse_routes_invert_l_lt(k: int, potri: bool) -> None:
    # potri is the CPU route; the triangular solve is the sync-free route used on CUDA.
    g = torch.Generator().manual_seed(k)
    a = torch.randn(2, k, 2 * k, dtype=torch.float64, generator=g)
    m = torch.eye(k, dtype=torch.float64) + a @ a.mT / k
    chol = torch.linalg.cholesky(m)
    expected = torch.stack([torch.linalg.inv(mat) for mat in m])  # one matrix at a time, never batched LU
    assert_close(gram_logdet._spd_inverse(chol, potri=potri), expected, rtol=1e-9, atol=1e-12)


def _cholesky_with_a_zero_pivot(real: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps ``cholesky_ex`` so that batch entry 0 fails with an exactly zero pivot, as LAPACK leaves it."""

    def fake(matrix: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        chol, info = real(matrix, *args, **kwargs)
        chol = chol.clone()
        chol[0, 1:, 1] = 0.0  # column 1 of entry 0 stopped at a zero pivot
        info = info.clone()
        info[0] = 2
        return chol, info

    return fake


def test_a_zero_pivot_gives_value_zero_and_zero_gradient_without_raising(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch.cholesky_inverse raises on a zero pivot; the failed factor must never reach it.
    monkeypatch.setattr(torch.linalg, "cholesky_ex", _cholesky_with_a_zero_pivot(torch.linalg.cholesky_ex))
    z = torch.randn(2, 6, 10, requires_grad=True)
    out = gram_half_logdet(z, 0.5)
    assert out.failed.tolist() == [True, False]
    assert float(out.rate[0].detach()) == 0.0 and bool(out.rate[1] > 0)
    out.rate.sum().backward()
    assert z.grad is not None
    assert torch.equal(z.grad[0], torch.zeros_like(z.grad[0]))
    assert bool(z.grad[1].abs().sum() > 0)


def test_nonfinite_input_gives_nan_even_when_the_factorization_reports_success(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cuSOLVER need not flag NaN pivots; the value must still come out NaN, not a finite number.
    real = torch.linalg.cholesky_ex

    def no_failure_reported(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chol, info = real(matrix)
        return chol, torch.zeros_like(info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", no_failure_reported)
    z = torch.randn(1, 5, 3)
    z[0, 0, 0] = float("inf")
    z.requires_grad_()
    out = gram_half_logdet(z, 1.0)
    assert bool(torch.isnan(out.rate).all())
    out.rate.sum().backward()
    assert z.grad is not None and bool(torch.isnan(z.grad).all())
