"""rate_reduction / RateReductionLoss against a per-class float64 loop, routes, gradients and errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from jepa_rate import RateReductionLoss, coding_rate, rate_reduction
from jepa_rate.losses.rate_reduction import _size_buckets
from jepa_rate.numerics import _host
from reference import rate_reference


def reference(z: torch.Tensor, labels: torch.Tensor, eps: float) -> tuple[float, float]:
    n, d = z.shape
    expand = float(rate_reference(z, d / (n * eps)))
    compress = 0.0
    for j in labels.unique().tolist():
        zj = z[labels == j]
        compress += zj.shape[0] / n * float(rate_reference(zj, d / (zj.shape[0] * eps)))
    return expand, compress


@given(
    n=st.integers(2, 300),
    d=st.integers(1, 64),
    classes=st.integers(1, 40),
    eps=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_per_class_reference(n: int, d: int, classes: int, eps: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    out = rate_reduction(z, labels, eps=eps)
    expand, compress = reference(z, labels, eps)
    # Float64 with the QR route on both sides of the comparison: agreement to rounding.
    assert_close(out.expand, torch.tensor(expand, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert_close(out.compress, torch.tensor(compress, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert_close(out.delta, out.expand - out.compress, rtol=0, atol=0)


def test_unbalanced_classes_mix_both_sides_and_buckets() -> None:
    # Sizes 1..300 against d = 32: small classes take the n side, large ones the d side, several buckets.
    sizes = [1, 2, 3, 5, 9, 17, 31, 33, 64, 65, 300]
    labels = torch.cat([torch.full((s,), j) for j, s in enumerate(sizes)])
    labels = labels[torch.randperm(labels.numel())]
    z = torch.randn(labels.numel(), 32, dtype=torch.float64)
    out = rate_reduction(z, labels)
    expand, compress = reference(z, labels, 0.5)
    assert_close(float(out.compress), compress, rtol=1e-10, atol=0)
    assert_close(float(out.expand), expand, rtol=1e-10, atol=0)
    assert len(_size_buckets(sizes)) == 9


def test_float32_agrees_and_gradients_flow() -> None:
    z = torch.nn.functional.normalize(torch.randn(200, 16), dim=1).requires_grad_()
    labels = torch.arange(200) % 7
    out = rate_reduction(z, labels)
    expand, compress = reference(z, labels, 0.5)
    assert_close(out.expand.item(), expand, rtol=1e-4, atol=0)
    assert_close(out.compress.item(), compress, rtol=1e-4, atol=0)
    out.delta.backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all())


def test_gradcheck() -> None:
    z = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 3, 3, 3, 3])
    assert torch.autograd.gradcheck(lambda t: rate_reduction(t, labels).delta, (z,))


def test_expand_equals_coding_rate_and_single_class_has_zero_reduction() -> None:
    z = torch.randn(50, 8, dtype=torch.float64)
    out = rate_reduction(z, torch.zeros(50, dtype=torch.long))
    assert_close(out.expand, coding_rate(z), rtol=1e-12, atol=0)
    assert_close(out.delta, torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-12)


def test_empty_classes_and_num_classes() -> None:
    z = torch.randn(30, 6, dtype=torch.float64)
    labels = torch.arange(30) % 3 * 2  # classes 0, 2, 4; 1 and 3 empty
    assert_close(rate_reduction(z, labels, num_classes=6), rate_reduction(z, labels // 2))


@pytest.mark.parametrize("largest", [5 * 10**7, 10**12, 2**62])
def test_large_label_values_are_sized_by_the_classes_present(largest: int) -> None:
    # A count array sized by the largest label took 2.2 GB at 5e7 and could not be allocated at 1e12.
    z = torch.randn(10, 4, dtype=torch.float64)
    labels = torch.tensor([0] * 6 + [largest] * 4)
    assert_close(rate_reduction(z, labels), rate_reduction(z, (labels > 0).long()), rtol=0, atol=0)
    with pytest.raises(ValueError, match=f"labels must lie in \\[0, 3\\), got min 0 and max {largest}"):
        rate_reduction(z, labels, num_classes=3)


def test_failures_are_counted_and_float32_input_of_float64_compute() -> None:
    # Rank-2 features at q far above 1: the float32 factorizations fail. On the device route (CUDA,
    # torch.compile) the fallback gives 0 and is counted; on CPU the batch is redone in float64.
    g = torch.Generator().manual_seed(0)
    huge = 1e3 * torch.randn(64, 2, generator=g) @ torch.randn(2, 32, generator=g)
    labels = torch.arange(64) % 2
    exact = rate_reduction(huge.double(), labels, eps=1e-3)
    on_cpu = rate_reduction(huge, labels, eps=1e-3)
    assert int(on_cpu.fallback_count) == 0
    assert_close(on_cpu.expand.double(), exact.expand, rtol=1e-5, atol=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_host, "decided_on_host", lambda x: False)
        on_device = rate_reduction(huge, labels, eps=1e-3)
    assert int(on_device.fallback_count) == 3  # the whole batch and both classes
    assert int(on_device.beyond_contract_count) == 3 and int(on_cpu.beyond_contract_count) == 0
    assert float(on_device.delta) == 0.0
    assert rate_reduction(huge.double(), labels, compute_dtype=torch.float32).delta.dtype == torch.float64
    assert_close(rate_reduction(huge.double(), labels, eps=None), rate_reduction(huge.double(), labels))


def test_loss_module_and_gamma() -> None:
    z = torch.randn(40, 8, dtype=torch.float64)
    labels = torch.arange(40) % 4
    parts = RateReductionLoss(eps=0.3, gamma=2.0).forward_components(z, labels)
    out = rate_reduction(z, labels, eps=0.3)
    assert_close(parts.loss, out.compress - 2.0 * out.expand)
    assert_close(RateReductionLoss(eps=0.3)(z, labels), -out.delta)


@pytest.mark.parametrize(
    ("z", "labels", "kwargs", "error", "pattern"),
    [
        (
            torch.randn(10, 4),
            torch.zeros(9, dtype=torch.long),
            {},
            ValueError,
            r"shape \(n,\) = \(10,\).*\(9,\)",
        ),
        (torch.randn(10, 4), torch.zeros(10), {}, TypeError, "integer dtype, got torch.float32"),
        (torch.randn(10, 4), [0] * 10, {}, TypeError, "torch.Tensor of class indices, got list"),
        (torch.randn(10, 4), torch.arange(10) - 1, {}, ValueError, "min -1"),
        (torch.randn(10, 4), torch.arange(10), {"num_classes": 5}, ValueError, r"\[0, 5\).*max 9"),
        (torch.randn(2, 10, 4), torch.zeros(10, dtype=torch.long), {}, ValueError, r"\(n, d\).*\(2, 10, 4\)"),
        (torch.randn(10, 4), torch.zeros(10, dtype=torch.long), {"eps": 0.0}, ValueError, "eps must be"),
        (
            torch.randn(10, 4),
            torch.zeros(10, dtype=torch.long),
            {"normalize": "no"},
            TypeError,
            "normalize must be a bool, got str",
        ),
        (
            torch.randn(10, 4),
            torch.zeros(10, dtype=torch.long),
            {"num_classes": 0},
            ValueError,
            "num_classes",
        ),
        (
            torch.randn(10, 4),
            torch.zeros(10, dtype=torch.long, device="meta"),
            {},
            ValueError,
            "labels on meta",
        ),
        (torch.randn(10, 4, device="meta"), torch.zeros(10, dtype=torch.long), {}, ValueError, "z on meta"),
    ],
)
def test_bad_arguments(
    z: torch.Tensor, labels: object, kwargs: dict[str, object], error: type, pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        rate_reduction(z, labels, **kwargs)  # type: ignore[arg-type]
