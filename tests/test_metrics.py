"""Tests for the collapse metrics, against float64 references written from their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close

from jepa_rate.metrics import (
    CollapseMetrics,
    collapse_metrics,
    covariance_spectrum,
    effective_rank,
    embedding_std,
    is_collapsed,
    mean_pairwise_cosine,
    normalized_std,
)

F64 = torch.float64
# float64 results of well-conditioned decompositions / reductions of size <= 40: errors ~1e-13 relative.
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _ref_rankme(z: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe from singular values obtained through the eigenvalues of ZᵀZ or ZZᵀ (one matrix, float64)."""
    gram = z.T @ z if z.shape[0] >= z.shape[1] else z @ z.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = s / s.sum() + eps
    return torch.exp(-(p * torch.log(p)).sum())


def _ref_pairwise_cosine(z: Tensor) -> Tensor:
    u = z / z.norm(dim=1, keepdim=True)
    sims = u @ u.T
    n = z.shape[0]
    return (sims.sum() - sims.diagonal().sum()) / (n * (n - 1))


@pytest.mark.parametrize("d", [2, 4, 16])
def test_identity_has_full_effective_rank(d: int) -> None:
    # All p_i = 1/d + 1e-7: the entropy differs from log d by O(d * 1e-7 * log d), hence rtol 1e-5.
    assert_close(
        effective_rank(torch.eye(d, dtype=F64)), torch.tensor(float(d), dtype=F64), rtol=1e-5, atol=0
    )


@pytest.mark.parametrize(("n", "d"), [(10, 6), (3, 12)])
def test_rank_one_has_effective_rank_one(n: int, d: int) -> None:
    z = _randn(n, 1, seed=1) @ _randn(1, d, seed=2)
    # p = (1 + 1e-7, ~1e-7, ...): entropy ~ k * 1e-7 * 16 < 2e-5.
    assert_close(effective_rank(z), torch.tensor(1.0, dtype=F64), rtol=0, atol=2e-5)


def test_rank_k_subspace_has_effective_rank_k() -> None:
    # Orthonormal factors: 5 equal singular values, the rest 0.
    left, _ = torch.linalg.qr(_randn(20, 5, seed=3))
    right, _ = torch.linalg.qr(_randn(12, 5, seed=4))
    z = 3.0 * left @ right.T
    # Known singular values (3 five times, then seven zeros) in the RankMe formula, eps included.
    eps, p = 1e-7, 0.2 + 1e-7
    expected = math.exp(-(5 * p * math.log(p) + 7 * eps * math.log(eps)))
    assert_close(effective_rank(z), torch.tensor(expected, dtype=F64), rtol=1e-9, atol=0)
    assert abs(expected - 5.0) < 1e-4


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_effective_rank_matches_reference(n: int, d: int, seed: int) -> None:
    z = _randn(n, d, seed=seed)
    got = effective_rank(z)
    # The reference squares singular values (cond(ZᵀZ) = cond(Z)²): ~1e-12 relative error on Gaussians.
    assert_close(got, _ref_rankme(z), rtol=1e-8, atol=1e-8)
    assert 1.0 - 1e-6 <= float(got) <= min(n, d) + 1e-6


def test_effective_rank_invariances_and_batching() -> None:
    z = _randn(3, 16, 6, seed=5)
    q, _ = torch.linalg.qr(_randn(6, 6, seed=6))
    batched = effective_rank(z)
    assert batched.shape == (3,)
    for i in range(3):
        assert_close(batched[i], effective_rank(z[i]), **TIGHT)
        assert_close(effective_rank(7.5 * z[i] @ q), batched[i], **TIGHT)


def test_half_precision_computes_in_float32() -> None:
    z = _randn(32, 8, seed=7)
    for dtype in (torch.float16, torch.bfloat16):
        out = collapse_metrics(z.to(dtype))
        assert all(t.dtype in (torch.float32, torch.bool) for t in out)
        # Inputs rounded to 8 (bf16) or 11 (fp16) bits: the rank moves by ~1e-2 relative at most.
        assert_close(out.effective_rank.double(), effective_rank(z), rtol=2e-2, atol=0)
    assert effective_rank(z.float()).dtype == torch.float32


def test_covariance_spectrum_matches_reference() -> None:
    z = _randn(40, 6, seed=8) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1, 0.0], dtype=F64)
    for correction in (0, 1):
        centred = z - z.mean(0)
        expected = torch.linalg.eigvalsh(centred.T @ centred / (40 - correction)).flip(0).clamp_min(0)
        got = covariance_spectrum(z, correction=correction)
        assert_close(got, expected, **TIGHT)
        assert bool((got[:-1] >= got[1:]).all()) and bool((got >= 0).all())
    assert_close(covariance_spectrum(z).sum(), torch.cov(z.T).trace(), **TIGHT)


def test_embedding_std_and_normalized_std() -> None:
    z = _randn(50, 8, seed=9)
    u = z / z.norm(dim=1, keepdim=True)
    expected = torch.sqrt(((u - u.mean(0)) ** 2).sum(0) / 49)
    assert_close(embedding_std(z), expected, **TIGHT)
    assert_close(normalized_std(z), expected.mean() * math.sqrt(8), **TIGHT)
    collapsed = _randn(1, 8, seed=10).expand(50, 8) * _randn(50, 1, seed=11).abs()
    assert_close(normalized_std(collapsed), torch.tensor(0.0, dtype=F64), rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), d=st.integers(1, 20), shift=st.floats(0.0, 3.0), seed=st.integers(0, 10**6))
def test_mean_pairwise_cosine_matches_full_matrix(n: int, d: int, shift: float, seed: int) -> None:
    z = _randn(n, d, seed=seed) + shift
    # The O(n d) form subtracts two sums of order n²: cancellation error ~n² * 1e-16 relative to 1.
    assert_close(mean_pairwise_cosine(z), _ref_pairwise_cosine(z), rtol=1e-9, atol=1e-12)


def test_mean_pairwise_cosine_extremes() -> None:
    same = _randn(1, 5, seed=12).expand(10, 5) * torch.arange(1, 11, dtype=F64)[:, None]
    assert_close(mean_pairwise_cosine(same), torch.tensor(1.0, dtype=F64), **TIGHT)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    assert_close(mean_pairwise_cosine(opposite), torch.tensor(-1.0, dtype=F64), **TIGHT)
    with_zero_row = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=F64)
    assert_close(mean_pairwise_cosine(with_zero_row), torch.tensor(2.0 / 6.0, dtype=F64), **TIGHT)


def test_collapse_flag_threshold() -> None:
    spread = _randn(64, 16, seed=13)
    collapsed = 1.0 + 1e-3 * _randn(64, 16, seed=14)
    assert not is_collapsed(spread) and is_collapsed(collapsed)
    value = float(normalized_std(collapsed))
    assert is_collapsed(collapsed, threshold=value * 1.01) and not is_collapsed(
        collapsed, threshold=value * 0.99
    )
    with pytest.raises(ValueError, match="threshold"):
        is_collapsed(spread, threshold=0.0)


def test_bundle_matches_individual_functions() -> None:
    z = _randn(2, 30, 6, seed=15)
    m = collapse_metrics(z, threshold=0.5)
    assert isinstance(m, CollapseMetrics)
    assert_close(m.effective_rank, effective_rank(z), **TIGHT)
    assert_close(m.normalized_std, normalized_std(z), **TIGHT)
    assert_close(m.mean_cosine, mean_pairwise_cosine(z), **TIGHT)
    assert_close(m.std, embedding_std(z), **TIGHT)
    assert_close(m.spectrum, covariance_spectrum(z), **TIGHT)
    assert torch.equal(m.collapsed, m.normalized_std < 0.5)
    assert m.std.shape == (2, 6) and m.collapsed.dtype == torch.bool


def test_validation() -> None:
    with pytest.raises(TypeError, match="floating"):
        effective_rank(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_cosine(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., n, d\)"):
        embedding_std(torch.randn(5))
    with pytest.raises(ValueError, match="correction"):
        covariance_spectrum(torch.randn(5, 2), correction=2)
    with pytest.raises(ValueError, match="eps"):
        effective_rank(torch.randn(5, 2), eps=-1.0)


def test_zero_eps_and_non_finite_sets() -> None:
    # eps=0: zero singular values count as absent (0·log 0 = 0), not as NaN.
    assert float(effective_rank(torch.ones(16, 8), eps=0.0)) == pytest.approx(1.0)
    assert float(effective_rank(torch.zeros(4, 3), eps=0.0)) == 1.0
    # A NaN or Inf entry makes its own set NaN; LAPACK would raise on it, and the other sets are unaffected.
    z = torch.randn(2, 16, 4, dtype=F64)
    clean = z[1].clone()
    z[0, 0, 0] = math.nan
    assert bool(effective_rank(z)[0].isnan()) and bool(covariance_spectrum(z)[0].isnan().all())
    assert_close(effective_rank(z)[1], effective_rank(clean))
    assert_close(covariance_spectrum(z)[1], covariance_spectrum(clean))
    z[0, 0, 0] = math.inf
    assert bool(collapse_metrics(z).effective_rank[0].isnan())


def test_collapse_metrics_are_detached() -> None:
    z = torch.randn(32, 8, requires_grad=True)
    metrics = collapse_metrics(z)
    assert not any(t.requires_grad for t in metrics)
    assert effective_rank(z).requires_grad  # the individual functions stay differentiable
