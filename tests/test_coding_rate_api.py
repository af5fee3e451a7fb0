"""CodingRateLoss / coding_rate: settings, components, fallbacks, non-finite inputs, errors, gradcheck."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from jepa_rate import CodingRateLoss, RateReductionLoss, coding_rate, rate_reduction
from jepa_rate.losses import _rate_input
from jepa_rate.numerics import _host, gram_logdet
from jepa_rate.numerics.gram_logdet import gram_half_logdet
from reference import rate_grad_reference, rate_reference


def collapsed_at_large_scale() -> torch.Tensor:
    """Rank-1 features so large that the float32 Gram's rounding makes I + aG indefinite (d side)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(512, 1, generator=g) @ torch.randn(1, 64, generator=g) * 1e3


# ---------------------------------------------------------------- conventions of the scale


def test_eps_is_mcr2_eps_squared_and_alpha_is_direct() -> None:
    z = torch.randn(40, 24, dtype=torch.float64)
    n, d = z.shape
    eps = 0.3
    expected = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (n * eps) * z.T @ z)
    assert_close(coding_rate(z, eps=eps), expected, rtol=1e-12, atol=0)
    assert_close(coding_rate(z, alpha=d / eps), expected, rtol=1e-12, atol=0)


def test_default_eps_is_half() -> None:
    z = torch.randn(30, 10, dtype=torch.float64)
    assert_close(coding_rate(z), coding_rate(z, eps=0.5), rtol=0, atol=0)


def test_center_and_normalize_preprocess_rows() -> None:
    z = torch.randn(50, 20, dtype=torch.float64) + 3.0
    normed = torch.nn.functional.normalize(z, dim=1)
    assert_close(coding_rate(z, normalize=True), coding_rate(normed), rtol=1e-12, atol=0)
    assert_close(coding_rate(z, center=True), coding_rate(z - z.mean(0)), rtol=1e-12, atol=0)
    both = normed - normed.mean(0)
    assert_close(coding_rate(z, normalize=True, center=True), coding_rate(both), rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spread", [1e-6, 1e-8])
def test_centering_near_collapse_keeps_float32_accuracy(seed: int, spread: float) -> None:
    # Rows = a common base + a tiny rank-one spread: the rate measures the spread alone (q ~ 1e-14 and
    # below). A one-pass float32 mean is off by u·|base|, a constant row as large as the spread: 1e-2
    # relative at 1e-6, hundreds of times the rate at 1e-8.
    g = torch.Generator().manual_seed(seed)
    n = d = 512
    base = torch.rand(1, d, generator=g) * 6 - 3
    z = base + spread * torch.randn(n, 1, generator=g) * torch.randn(1, d, generator=g)
    centered = z.double() - z.double().mean(0)
    a = d / (n * 0.5)
    x = z.clone().requires_grad_()
    rate = coding_rate(x, center=True)
    rate.backward()
    assert_close(rate.double(), rate_reference(centered, a), rtol=1e-4, atol=0)
    expected = rate_grad_reference(centered, a)
    assert x.grad is not None
    assert_close(x.grad.double(), expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


@pytest.mark.parametrize("shape", [(64, 32), (16, 40), (200, 20), (3, 8, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_meta_tensors_trace_shapes(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    # Meta tensors are how models are sized without memory; the meta device has no autocast.
    z = torch.randn(shape, device="meta", dtype=dtype, requires_grad=True)
    rate = coding_rate(z, center=True)
    assert rate.device.type == "meta" and rate.shape == shape[:-2]
    assert rate.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rate.sum().backward()
    assert z.grad is not None and z.grad.shape == z.shape and z.grad.device.type == "meta"
    parts = CodingRateLoss(alpha=1.0).forward_components(z.detach())
    assert all(part.device.type == "meta" and part.shape == () for part in parts)


def test_output_dtype_follows_input() -> None:
    z = torch.randn(16, 8)
    assert coding_rate(z).dtype == torch.float32
    assert coding_rate(z.double()).dtype == torch.float64
    assert coding_rate(z.bfloat16()).dtype == torch.float32
    assert coding_rate(z, compute_dtype=torch.float64).dtype == torch.float32


# ---------------------------------------------------------------- the loss module


def test_loss_is_negative_weighted_mean_rate() -> None:
    z = torch.randn(3, 32, 16)
    loss = CodingRateLoss(weight=0.25, eps=0.2)(z)
    assert_close(loss, -0.25 * coding_rate(z, eps=0.2).mean())


def test_forward_components_are_consistent() -> None:
    z = torch.randn(2, 64, 32, dtype=torch.float64)
    loss_fn = CodingRateLoss(weight=0.5, alpha=4.0)
    parts = loss_fn.forward_components(z)
    rates = coding_rate(z, alpha=4.0)
    assert_close(parts.rate, rates.mean())
    assert_close(parts.loss, -0.5 * rates.mean())
    assert_close(parts.loss, loss_fn(z))
    assert_close(parts.scale, torch.tensor(4.0 / 64, dtype=torch.float64))
    k = 32
    r_max = 0.5 * k * torch.log1p(parts.scale * z.square().sum((-2, -1)) / k)
    assert_close(parts.normalized_rate, (rates / r_max).mean())
    assert int(parts.fallback_count) == 0


def test_normalized_rate_separates_isotropic_from_collapsed() -> None:
    loss_fn = CodingRateLoss()
    iso = loss_fn.forward_components(torch.randn(512, 16)).normalized_rate
    line = loss_fn.forward_components(torch.randn(512, 1) * torch.randn(1, 16)).normalized_rate
    zero = loss_fn.forward_components(torch.zeros(512, 16)).normalized_rate
    assert iso > 0.9 and line < 0.3 and float(zero) == 0.0


def test_normalized_rate_is_nan_for_nan_input_and_never_above_one() -> None:
    z = torch.randn(2, 6, 4)
    z[0, 0, 0] = math.nan
    parts = CodingRateLoss().forward_components(z)
    assert bool(parts.rate.isnan()) and bool(parts.normalized_rate.isnan())
    # Orthogonal rows of equal norm: R = R_max exactly, so rounding alone decides which side of 1 it lands.
    rows = torch.linalg.qr(torch.randn(256, 256, generator=torch.Generator().manual_seed(0))).Q
    assert float(CodingRateLoss().forward_components(rows).normalized_rate) <= 1.0


def test_compute_dtype_never_changes_the_output_dtype() -> None:
    z = torch.randn(8, 4, dtype=torch.float64)
    low = coding_rate(z, compute_dtype=torch.float32)
    assert low.dtype == torch.float64
    assert_close(low, coding_rate(z), rtol=1e-5, atol=0)
    assert coding_rate(z.float(), compute_dtype=torch.float64).dtype == torch.float32


def test_gram_overflow_of_finite_features_is_nan_or_a_clear_error() -> None:
    z = torch.randn(6, 4)
    z[0, 0] = 1e30  # finite, but its square overflows float32
    assert bool(coding_rate(z).isnan())
    with pytest.raises(ValueError, match=r"overflowed torch\.float32"):
        coding_rate(z, nonfinite="raise")
    assert_close(coding_rate(z, compute_dtype=torch.float64).double(), rate_reference(z, 4 / (6 * 0.5)))


def test_numeric_settings_accept_any_real_number() -> None:
    z = torch.randn(16, 8)
    assert_close(coding_rate(z, eps=np.float32(0.5)), coding_rate(z, eps=0.5))
    assert_close(CodingRateLoss(weight=np.float64(0.1))(z), CodingRateLoss(weight=0.1)(z))
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        coding_rate(z, eps=10**400)
    assert repr(CodingRateLoss()) == (
        "CodingRateLoss(weight=1.0, eps=0.5, center=False, normalize=False, compute_dtype=None, "
        "gather_distributed=False, nonfinite='propagate', fallback='zero')"
    )


def test_settings_are_checked_once_where_they_are_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module checks its settings when built, the function once per call, and neither repeats the
    # kernel's own argument checks (gram_half_logdet keeps them for its direct callers).
    loss_fn = CodingRateLoss(alpha=1.0, center=True)
    rr_loss = RateReductionLoss(eps=0.5, num_classes=2)
    calls: list[str] = []
    monkeypatch.setattr(_rate_input, "check_choice", lambda value, name, choices: calls.append(name))
    monkeypatch.setattr(gram_logdet, "_check_kernel_arguments", lambda *args: calls.append("kernel"))
    z = torch.randn(2, 16, 8)
    loss_fn(z)
    loss_fn.forward_components(z)
    rr_loss(z[0], torch.arange(16) % 2)
    assert calls == []
    coding_rate(z)
    assert calls == ["nonfinite", "fallback"]


def test_loss_module_validates_settings_at_construction() -> None:
    with pytest.raises(ValueError, match="weight"):
        CodingRateLoss(weight=-1.0)
    with pytest.raises(ValueError, match="eps"):
        CodingRateLoss(eps=0.0)
    with pytest.raises(ValueError, match="either eps or alpha"):
        CodingRateLoss(eps=0.5, alpha=2.0)
    with pytest.raises(ValueError, match="fallback"):
        CodingRateLoss(fallback="jitter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="center must be a bool"):
        CodingRateLoss(center="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonfinite"):
        CodingRateLoss(nonfinite="ignore")
    with pytest.raises(ValueError, match="compute_dtype"):
        CodingRateLoss(compute_dtype=torch.float16)
    assert "alpha=1.0" in repr(CodingRateLoss(alpha=1.0))


# ---------------------------------------------------------------- failure handling


@pytest.fixture
def device_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The route CUDA and ``torch.compile`` take, on CPU: no host reads, so the fallbacks apply.

    On CPU's own route a failed float32 factorization is redone in float64 before any fallback is needed
    (``test_failed_factorization_on_cpu_is_redone_in_float64``).
    """
    monkeypatch.setattr(_host, "decided_on_host", lambda x: False)


@pytest.mark.usefixtures("branches")
def test_sets_beyond_the_float32_contract_are_counted_where_unchecked(branches: str) -> None:
    # Rank-2 features: q ~ 0.2 at eps = 1e-2 and ~2e-5 at eps = 100; q = 0 for the zeros.
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(2, 256, 2, generator=g) @ torch.randn(2, 2, 128, generator=g)
    z = torch.cat([low_rank, torch.zeros(1, 256, 128)])
    q = 2.0**-24 * (128 / (256 * 1e-2)) * z.double().square().sum((-2, -1))
    assert bool((q[:2] > 1e-3).all())
    parts = CodingRateLoss(eps=1e-2).forward_components(z)
    exact = rate_reference(z, 128 / (256 * 1e-2)).mean()
    if branches == "device":
        assert int(parts.beyond_contract_count) == 2
    else:  # checked on the host, and redone in float64 where inaccurate
        assert int(parts.beyond_contract_count) == 0
        assert_close(parts.rate.double(), exact, rtol=1e-3, atol=0)
    assert int(CodingRateLoss(eps=100.0).forward_components(z).beyond_contract_count) == 0
    in_float64 = CodingRateLoss(eps=1e-2, compute_dtype=torch.float64).forward_components(z)
    assert int(in_float64.beyond_contract_count) == 0


def test_failed_factorization_on_cpu_is_redone_in_float64() -> None:
    z = torch.stack([collapsed_at_large_scale(), torch.randn(512, 64)]).requires_grad_()
    parts = CodingRateLoss(eps=1e-3).forward_components(z)
    assert int(parts.fallback_count) == 0
    rate = coding_rate(z, eps=1e-3)
    expected = rate_reference(z, 64 / (512 * 1e-3))
    assert_close(rate.double(), expected, rtol=1e-6, atol=0)
    rate.sum().backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())


@pytest.mark.usefixtures("device_route")
def test_failed_factorization_gives_zero_value_zero_gradient_and_is_counted() -> None:
    z = collapsed_at_large_scale().requires_grad_()
    loss_fn = CodingRateLoss(eps=1e-3)
    parts = loss_fn.forward_components(z)
    assert int(parts.fallback_count) == 1
    assert float(parts.rate.detach()) == 0.0
    loss_fn(z).backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.usefixtures("device_route")
def test_float64_fallback_recomputes_the_failed_sets() -> None:
    good = torch.randn(512, 64)
    z = torch.stack([collapsed_at_large_scale(), good]).requires_grad_()
    rate = coding_rate(z, eps=1e-3, fallback="float64")
    expected = rate_reference(z, 64 / (512 * 1e-3))
    assert_close(rate[0].double(), expected[0], rtol=1e-5, atol=0)
    assert_close(rate[1], coding_rate(good, eps=1e-3))
    rate.sum().backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all()) and bool(z.grad[0].abs().sum() > 0)


@pytest.mark.usefixtures("device_route")
def test_raise_fallback_names_the_failed_sets() -> None:
    with pytest.raises(torch.linalg.LinAlgError, match=r"failed for the matrix \(scale a=125.0\)"):
        coding_rate(collapsed_at_large_scale(), eps=1e-3, fallback="raise")
    batch = torch.stack([torch.randn(512, 64), collapsed_at_large_scale()])
    with pytest.raises(torch.linalg.LinAlgError, match=r"batch entries \[1\]"):
        coding_rate(batch, eps=1e-3, fallback="raise")


def test_nonfinite_inputs_propagate_nan_or_raise() -> None:
    z = torch.randn(2, 16, 8)
    z[1, 3, 2] = math.inf
    z.requires_grad_()
    rate = coding_rate(z)
    assert bool(torch.isfinite(rate[0])) and bool(torch.isnan(rate[1]))
    rate.sum().backward()
    assert z.grad is not None
    assert bool(torch.isfinite(z.grad[0]).all()) and bool(torch.isnan(z.grad[1]).all())
    nan_z = torch.randn(16, 8)
    nan_z[0, 0] = math.nan
    assert bool(torch.isnan(coding_rate(nan_z)))
    assert int(CodingRateLoss().forward_components(nan_z).fallback_count) == 0
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at index \(1, 3, 2\)"):
        coding_rate(z.detach(), nonfinite="raise")


@pytest.mark.usefixtures("branches")
@pytest.mark.parametrize("bad", ["overflow", "inf"])
@pytest.mark.parametrize("d", [1, 3])
def test_nonfinite_sets_get_a_nan_gradient_on_every_side(bad: str, d: int) -> None:
    # With d = 1 the factor of an overflowed (infinite) Gram "succeeds", and its inverse is a finite zero:
    # the NaN must still reach every entry of the set's gradient, in coding_rate and in rate_reduction.
    good = torch.randn(8, d)
    z = 1e20 * torch.randn(8, d) if bad == "overflow" else torch.randn(8, d)
    if bad == "inf":
        z[2, 0] = math.inf
    batch = torch.stack([good, z]).requires_grad_()
    rate = coding_rate(batch)
    rate.sum().backward()
    assert batch.grad is not None
    assert bool(rate[0].isfinite()) and bool(rate[1].isnan())
    assert bool(batch.grad[0].isfinite().all()) and bool(batch.grad[1].isnan().all())
    single = z.clone().requires_grad_()
    out = rate_reduction(single, torch.arange(8) % 2)
    out.delta.backward()
    assert single.grad is not None
    assert bool(out.delta.isnan()) and bool(single.grad.isnan().all())


# ---------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"z": [[1.0, 2.0]]}, TypeError, "torch.Tensor, got list"),
        ({"z": torch.ones(4, 3, dtype=torch.long)}, TypeError, "floating dtype.*torch.int64"),
        ({"z": torch.ones(5)}, ValueError, r"shape \(\.\.\., n, d\).*\(5,\)"),
        ({"z": torch.ones(1, 8)}, ValueError, r"n=1 in shape \(1, 8\)"),
        ({"z": torch.ones(4, 0)}, ValueError, r"d >= 1.*\(4, 0\)"),
        ({"eps": -0.1}, ValueError, "eps must be a finite number > 0, got -0.1"),
        ({"eps": math.inf}, ValueError, "eps must be a finite number > 0, got inf"),
        ({"alpha": 0.0}, ValueError, "alpha must be a finite number > 0, got 0.0"),
        ({"eps": "0.5"}, TypeError, "eps must be a real number, got str"),
        ({"eps": 0.5, "alpha": 1.0}, ValueError, "either eps or alpha"),
        ({"nonfinite": "skip"}, ValueError, "nonfinite must be one of"),
        ({"fallback": "jitter"}, ValueError, "fallback must be one of"),
        ({"compute_dtype": torch.bfloat16}, ValueError, "compute_dtype must be None"),
        # bool("no") is True: a flag that is not a bool is refused, not read by its truth value.
        ({"center": "no"}, TypeError, "center must be a bool, got str"),
        ({"normalize": 1}, TypeError, "normalize must be a bool, got int"),
        ({"gather_distributed": "false"}, TypeError, "gather_distributed must be a bool, got str"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict[str, object], error: type, pattern: str) -> None:
    z = kwargs.pop("z", torch.randn(8, 4))
    with pytest.raises(error, match=pattern):
        coding_rate(z, **kwargs)  # type: ignore[arg-type]


def test_gather_distributed_without_process_group_raises() -> None:
    with pytest.raises(RuntimeError, match=r"initialized torch\.distributed process group"):
        coding_rate(torch.randn(8, 4), gather_distributed=True)
    with pytest.raises(RuntimeError, match="process group"):
        CodingRateLoss(gather_distributed=True)(torch.randn(8, 4))


# ---------------------------------------------------------------- autograd


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (7, 7), (2, 5, 4), (3, 4, 6)])
@pytest.mark.parametrize("options", [{}, {"center": True}, {"normalize": True}, {"alpha": 2.5}])
def test_gradcheck_float64(shape: tuple[int, ...], options: dict[str, object]) -> None:
    z = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: coding_rate(t, **options), (z,))  # type: ignore[arg-type]


def test_gradcheck_tiny_scale_series_branch() -> None:
    # a·tr(G) below the series threshold: the value comes from the series, the gradient from the factor.
    z = (1e-4 * torch.randn(5, 7, dtype=torch.float64)).requires_grad_()
    assert float(gram_half_logdet(z[None].detach(), torch.ones(1, dtype=torch.float64)).scaled_trace) < 3e-5
    assert torch.autograd.gradcheck(lambda t: coding_rate(t, alpha=5.0), (z,), atol=1e-12, rtol=1e-5)


@pytest.mark.parametrize("method", ["cholesky", "qr"])
@pytest.mark.parametrize("shape", [(1, 6, 4), (2, 4, 6)])
def test_gradcheck_each_factorization_route(method: str, shape: tuple[int, ...]) -> None:
    # float32 inputs take the Cholesky route and float64 ones QR; check both backward passes in float64.
    z = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    scale = torch.full((shape[0],), 0.7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: gram_half_logdet(t, scale, method=method).rate, (z,))  # type: ignore[arg-type]
    cholesky, qr = (gram_half_logdet(z, scale, method=m).rate for m in ("cholesky", "qr"))
    assert_close(cholesky, qr, rtol=1e-12, atol=0)


def test_double_backward_is_refused_explicitly() -> None:
    z = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"first derivatives only.*create_graph=True"):
        torch.autograd.grad(coding_rate(z), z, create_graph=True)


def test_reduced_float32_matmul_precision_builds_the_gram_in_float64() -> None:
    # With TF32/bf16 matmuls allowed, a float32 Gram would be as inexact as a bf16 one, so the kernel forms
    # it in float64 and rounds once; the value then matches a float64-accumulated Gram exactly.
    from jepa_rate.numerics.precision import matmul_precision_reduced

    z = torch.randn(64, 32)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert matmul_precision_reduced(z.device)
        reduced = coding_rate(z)
    finally:
        torch.set_float32_matmul_precision(before)
    assert not matmul_precision_reduced(z.device)
    gram = (z.double().T @ z.double()).float()
    m = torch.eye(32) + 32 / (64 * 0.5) * gram
    expected = torch.linalg.cholesky(m).diagonal().log().sum()
    assert_close(reduced, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "view",
    [
        lambda z: z.mT.contiguous().mT,  # column-major (n, d)
        lambda z: z[:, ::2],  # strided columns
        lambda z: z.expand(3, *z.shape),  # a batch of one set repeated, stride 0
        lambda z: z.reshape(2, 1, 12, 16)[:, 0],  # a batch view with a size-1 dimension dropped
    ],
    ids=["column-major", "strided", "expanded batch", "batch view"],
)
def test_views_give_the_values_and_gradients_of_contiguous_copies(
    view: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    # Sets of up to 3 dimensions reach the kernel as they are (no reshape), whatever their strides.
    z = torch.randn(24, 16, dtype=torch.float64, requires_grad=True)
    copy = z.detach().clone().requires_grad_()
    rate = coding_rate(view(z), eps=0.3)
    expected = coding_rate(view(copy).contiguous(), eps=0.3)
    assert_close(rate, expected, rtol=1e-12, atol=0)
    rate.sum().backward()
    expected.sum().backward()
    assert z.grad is not None and copy.grad is not None
    assert_close(z.grad, copy.grad, rtol=1e-10, atol=1e-14)


_NEW_PRECISION_API = """
import torch
from jepa_rate import coding_rate
from jepa_rate.numerics.precision import matmul_precision_reduced as reduced

cpu, cuda = torch.device("cpu"), torch.device("cuda")
seen = []
for owner, value in [
    (torch.backends.cuda.matmul, "tf32"),
    (torch.backends.cuda.matmul, "ieee"),
    (torch.backends.mkldnn.matmul, "bf16"),
    (torch.backends.mkldnn.matmul, "none"),
    (torch, "tf32"),
]:
    (torch.backends if owner is torch else owner).fp32_precision = value
    seen.append((reduced(cpu), reduced(cuda)))
    assert torch.isfinite(coding_rate(torch.randn(64, 32)))
print(seen)
"""


def test_per_backend_fp32_precision_settings_are_read() -> None:
    # Once a per-backend fp32_precision is set, PyTorch raises on the legacy queries for the rest of the
    # process, so this runs in a fresh interpreter. "none" inherits from the level above.
    out = subprocess.run(
        [sys.executable, "-c", _NEW_PRECISION_API], capture_output=True, text=True, check=True, timeout=120
    )
    # The last global "tf32" reaches oneDNN (its settings are "none" again) but not cuBLAS, which was set
    # to "ieee" explicitly.
    expected = [(False, True), (False, False), (True, False), (False, False), (True, False)]
    assert out.stdout.strip() == str(expected)
