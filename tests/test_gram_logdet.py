"""The numerics kernel: padded factorization orders, failed factors, the two inverse routes, scale types, and
the two ways of choosing the rare branches (read on the host on CPU, selected on the device elsewhere)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from jepa_rate.numerics import _gram, _host, gram_logdet
from jepa_rate.numerics.gram_logdet import gram_half_logdet
from reference import rate_grad_reference, rate_reference


@pytest.mark.parametrize(
    ("k", "device", "expected"),
    [(64, "cpu", 64), (128, "cpu", 136), (256, "cpu", 264), (200, "cpu", 200), (128, "meta", 128)],
)
def test_padded_size_only_pads_multiples_of_128_on_cpu(k: int, device: str, expected: int) -> None:
    assert _gram.padded_size(k, torch.device(device)) == expected


@pytest.mark.parametrize(("n", "d"), [(128, 300), (300, 128), (256, 256), (3, 128)])
@pytest.mark.usefixtures("branches")
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
@pytest.mark.usefixtures("branches")
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
@pytest.mark.usefixtures("branches")
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
    """Wraps ``cholesky_ex`` so that the first matrix fails with a zero pivot, as LAPACK would leave it."""

    def fake(matrix: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        chol, info = real(matrix, *args, **kwargs)
        chol, info = chol.clone(), info.clone()
        first = (0,) * (chol.ndim - 2)
        chol[first][1:, 1] = 0.0  # column 1 stopped at a zero pivot
        info[first] = 2
        return chol, info

    return fake


@pytest.mark.parametrize("batched", [True, False])
def test_a_zero_pivot_gives_value_zero_and_zero_gradient_without_raising(
    monkeypatch: pytest.MonkeyPatch, branches: str, batched: bool
) -> None:
    # torch.cholesky_inverse raises on a zero pivot; the failed factor must never reach it. The device
    # route takes the fallback (value 0, zero gradient); on CPU the host route redoes the batch in float64.
    monkeypatch.setattr(torch.linalg, "cholesky_ex", _cholesky_with_a_zero_pivot(torch.linalg.cholesky_ex))
    z = torch.randn(2, 6, 10) if batched else torch.randn(6, 10)
    x = z.clone().requires_grad_()
    out = gram_half_logdet(x, 0.5)
    rate = out.rate.reshape(-1)
    rate.sum().backward()
    assert x.grad is not None
    grad = x.grad.reshape(-1, 6, 10)
    sets = z.reshape(-1, 6, 10).double()
    if branches == "host":
        assert not bool(out.failed.any())
        for i, features in enumerate(sets):
            assert_close(rate[i].double(), rate_reference(features, 0.5), rtol=1e-6, atol=0)
            assert_close(grad[i].double(), rate_grad_reference(features, 0.5), rtol=1e-4, atol=1e-6)
        return
    assert out.failed.reshape(-1).tolist() == ([True, False] if batched else [True])
    assert float(rate[0].detach()) == 0.0
    assert torch.equal(grad[0], torch.zeros_like(grad[0]))
    if batched:
        assert bool(rate[1] > 0) and bool(grad[1].abs().sum() > 0)


@pytest.mark.usefixtures("branches")
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


def _value_and_grad(z: torch.Tensor, scale: float, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = z.clone().requires_grad_()
    rate = gram_half_logdet(x, scale, method=method).rate  # type: ignore[arg-type]
    rate.sum().backward()
    assert x.grad is not None
    return rate.detach(), x.grad


def _cases() -> list[tuple[str, torch.Tensor, float, str, float]]:
    g = torch.Generator().manual_seed(7)
    regular = torch.randn(3, 20, 12, generator=g)
    mixed = regular.clone()
    mixed[1] *= 1e-4  # a·tr(G) far below the series threshold
    nonfinite = regular.clone()
    nonfinite[2, 3, 4] = float("nan")
    tall = torch.nn.functional.normalize(torch.randn(300, 40, generator=g), dim=-1)
    # The last entry is the relative tolerance: 0 where both routes run the same float operations.
    return [
        ("one matrix", torch.randn(64, 256, generator=g), 8.0, "cholesky", 0.0),
        ("batch", regular, 0.5, "cholesky", 0.0),
        ("padded", torch.randn(128, 300, generator=g), 2.0, "cholesky", 0.0),
        ("series and regular mixed", mixed, 0.5, "cholesky", 0.0),
        ("all zero", torch.zeros(2, 5, 9), 1.0, "cholesky", 0.0),
        ("non-finite entry", nonfinite, 0.5, "cholesky", 0.0),
        ("float64 QR", regular.double(), 0.5, "qr", 0.0),
        ("float64 QR, non-finite", nonfinite.double(), 0.5, "qr", 0.0),
        # q ~ 4e-6: the host read skips summing the rows around their mean, the device route does it. The two
        # Grams differ by float32 rounding only.
        ("d side, mean split on the device only", tall, 40 / 150, "cholesky", 1e-5),
        ("d side, mean split on both", 10.0 * tall, 40 / 150, "cholesky", 0.0),  # q ~ 5e-4
    ]


@pytest.mark.parametrize(
    ("z", "scale", "method", "rtol"), [c[1:] for c in _cases()], ids=[c[0] for c in _cases()]
)
def test_host_and_device_branch_choice_agree(
    monkeypatch: pytest.MonkeyPatch, z: torch.Tensor, scale: float, method: str, rtol: float
) -> None:
    # On CPU the rare branches are skipped when a host read shows they do not apply; the device route always
    # computes and selects them. Where they do not apply they add exact zeros, so the two agree bit for bit.
    host = _value_and_grad(z, scale, method)
    monkeypatch.setattr(_host, "decided_on_host", lambda x: False)
    device = _value_and_grad(z, scale, method)
    for a, b in zip(host, device, strict=True):
        assert_close(a, b, rtol=rtol, atol=rtol * 1e-2, equal_nan=True)


def _collapsed(n: int, d: int, q: float, seed: int) -> torch.Tensor:
    """``n`` copies of one random row, scaled so that ``q = 2⁻²⁴·a·tr(ZᵀZ)`` at ``a = d / (n·0.5)``."""
    row = torch.randn(1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    energy = 2.0**-24 * (d / 0.5) * float(row.square().sum())  # q at scale 1
    return (row * (q / energy) ** 0.5).expand(n, d).float()


@pytest.mark.usefixtures("branches")
@pytest.mark.parametrize("n", [64, 256, 1024, 4096])
@pytest.mark.parametrize("d", [32, 128])
def test_collapsed_features_meet_the_float32_contract(n: int, d: int) -> None:
    # Collapsed rows are the float32 Gram's worst case: every term of a sum rounds the same way. Summed
    # plainly, some of these break 1e-3 near q = 1e-3 (this test fails without the mean split).
    for q in (1e-5, 1e-4, 3e-4, 1e-3):
        for seed in range(3):
            z = _collapsed(n, d, q, seed)
            a = d / (n * 0.5)
            out = gram_half_logdet(z, a).rate
            assert_close(out.double(), rate_reference(z.double(), a), rtol=1e-3, atol=0)


def test_mean_split_gram_in_the_reduce_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    # mode="reduce" sums the d x d Gram over the ranks; with one rank the sum is the identity. Summed around
    # the row mean, the local Gram is still XᵀX.
    monkeypatch.setattr(_gram.dist, "all_reduce", lambda tensor, group=None: None)
    x = torch.randn(2, 300, 20, dtype=torch.float64) + 5.0
    for split in (False, True):
        matrix, mirrored = _gram.scaled_gram(
            x, 0.3, False, "reduce", None, gram_in_float64=False, pad=False, split=split
        )
        assert mirrored is None
        assert_close(matrix, 0.3 * x.mT @ x, rtol=1e-12, atol=1e-9)


@pytest.mark.usefixtures("branches")
@pytest.mark.parametrize("potri", [True, False])
def test_backward_inside_an_autocast_region_stays_in_float32(
    monkeypatch: pytest.MonkeyPatch, potri: bool
) -> None:
    # A backward pass runs under the autocast state around backward(), not the forward's. The triangular-solve
    # inverse (the CUDA route) contains a matmul that autocast would run in bf16.
    inverse = gram_logdet._spd_inverse
    monkeypatch.setattr(gram_logdet, "_spd_inverse", lambda chol, potri_=None: inverse(chol, potri=potri))
    z = torch.randn(3, 24, 40)
    outside = z.clone().requires_grad_()
    gram_half_logdet(outside, 0.7).rate.sum().backward()
    inside = z.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram_half_logdet(inside, 0.7).rate.sum().backward()
    assert inside.grad is not None and outside.grad is not None
    assert inside.grad.dtype == torch.float32
    assert_close(inside.grad, outside.grad, rtol=1e-6, atol=1e-7)


def _rank_one(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, generator=g) @ torch.randn(1, d, generator=g)).float()


@pytest.mark.parametrize(("n", "d"), [(392, 494), (244, 300), (128, 300), (700, 120)])
def test_inaccurate_float32_rates_are_recomputed_in_float64_on_cpu(
    monkeypatch: pytest.MonkeyPatch, n: int, d: int
) -> None:
    # Rank-one features of unit scale at eps = 0.5: q = u·a·tr(ZᵀZ) is 1e-3 to 3e-2, beyond the float32
    # contract, and the unit eigenvalues of I + aG take errors of about q. The CPU route sees it from the
    # pivots and recomputes in float64; (128, 300) is also a padded order.
    decisions: list[bool] = []
    real = _host.check_float32

    def spy(*args: Any) -> _host.Float32Check:
        check = real(*args)
        decisions.append(check.redo)
        return check

    monkeypatch.setattr(_host, "check_float32", spy)
    z = _rank_one(n, d, seed=n)
    a = d / (n * 0.5)
    x = z.clone().requires_grad_()
    rate = gram_half_logdet(x, a).rate
    rate.backward()
    assert decisions == [True]
    assert rate.dtype == torch.float32
    assert_close(rate.double(), rate_reference(z.double(), a), rtol=1e-6, atol=0)
    assert x.grad is not None and x.grad.dtype == torch.float32
    expected = rate_grad_reference(z.double(), a)
    assert_close(x.grad.double(), expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_full_rank_and_batched_features_at_large_q() -> None:
    # Full rank: every eigenvalue of I + aG is large, so q ~ 5e-2 costs no accuracy and no recompute. In a
    # batch, one rank-one set sends the whole batch to float64, and every set comes out exact.
    full = torch.randn(128, 640, generator=torch.Generator().manual_seed(0))
    factor = torch.linalg.cholesky(torch.eye(128) + 5.0 * full @ full.T)
    trace = torch.tensor(5.0 * float(full.double().square().sum()))
    rate = factor.diagonal().log().sum()
    info = torch.zeros((), dtype=torch.int32)
    bounds = (float(trace), float(trace))
    check = _host.check_float32(full, "local", bounds, trace, None, factor, rate, info, False)
    assert not check.redo
    # The check formed M⁻¹ for tr(M⁻¹); it is the inverse the backward would form.
    assert check.inverse is not None
    assert_close(check.inverse, torch.cholesky_inverse(factor))
    batch = torch.stack([_rank_one(300, 200, seed=1), torch.randn(300, 200)])
    a = 200 / (300 * 0.5)
    out = gram_half_logdet(batch, a).rate
    expected = torch.stack([rate_reference(z.double(), a) for z in batch])
    assert_close(out.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("x", "scale", "kwargs", "error", "match"),
    [
        (torch.randn(4, 3).bfloat16(), 1.0, {}, TypeError, "float32 or float64 tensor, got torch.bfloat16"),
        (torch.randn(2, 2, 4, 3), 1.0, {}, ValueError, r"\(n, d\) or \(B, n, d\), got \(2, 2, 4, 3\)"),
        (torch.randn(4, 3), 1.0, {"mode": "sum"}, ValueError, "mode must be one of"),
        (torch.randn(4, 3), 1.0, {"method": "lu"}, ValueError, "method must be one of"),
        (torch.randn(4, 3), 1.0, {"fallback": "jitter"}, ValueError, "fallback must be one of"),
        (torch.randn(4, 3), 1.0, {"method": "qr", "mode": "reduce"}, ValueError, "cannot be combined"),
        (torch.randn(4, 3), -0.5, {}, ValueError, "scale must be a finite number >= 0, got -0.5"),
        (torch.randn(2, 4, 3), torch.ones(3), {}, ValueError, r"shape \(2,\), dtype torch.float32"),
        (torch.randn(4, 3), torch.ones((), requires_grad=True), {}, ValueError, "not differentiated"),
    ],
)
def test_kernel_arguments_are_checked(
    x: torch.Tensor, scale: object, kwargs: dict[str, str], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        gram_half_logdet(x, scale, **kwargs)  # type: ignore[arg-type]


def test_float64_fallback_of_a_float64_cholesky_failure_uses_qr() -> None:
    # method="cholesky" on float64 input can fail (rank one at a huge scale); fallback="float64" must then
    # recompute by the QR route rather than keep the zero value.
    # a·||G|| ~ 1e17: past float64's Cholesky (u·a·||G|| > 1), well within QR's (u·sqrt(a·||G||) ~ 1e-8).
    z = (torch.randn(6, 1, dtype=torch.float64) @ torch.randn(1, 4, dtype=torch.float64)) * 1e3
    assert bool(gram_half_logdet(z, 1e10, method="cholesky").failed)
    out = gram_half_logdet(z, 1e10, method="cholesky", fallback="float64")
    assert_close(out.rate, rate_reference(z, 1e10), rtol=1e-6, atol=0)
