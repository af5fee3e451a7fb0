"""Public coding-rate conventions, each reproduced exactly by ``jepa_rate`` arguments.

Every ``_ref_*`` function below re-implements one public formula as its source writes it (the matrix side it
factors, its scale, its 1/2, its sign, its centering and its mean over views), in float64 and one matrix at a
time. Each test then checks the mapping documented in ``docs/concepts/conventions.md`` against it.

Tolerances. Both sides work in float64 on symmetric positive definite matrices ``I + a G`` whose condition
numbers stay below ~1e3 for the inputs drawn here, and both use backward-stable factorizations (LU or
Cholesky on the d x d side, possibly Cholesky on the n x n side for ours). The error of a log-determinant is
then about ``d * cond * u`` with ``u = 1.1e-16``, i.e. below 1e-11 for d <= 40. ``rtol=1e-10`` keeps a
margin over that while a wrong convention (a missing 1/2, eps against eps², n against n - 1, a missing
centering, the wrong side's identity) moves the value by at least a few percent, so every test can fail.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.multiprocessing.spawn import spawn
from torch.testing import assert_close

from jepa_rate.losses import CodingRateLoss, RateReductionLoss, coding_rate, rate_reduction

F64 = torch.float64
RTOL = 1e-10
ATOL = 1e-12

# (n, d): fewer samples than features, more samples than features, square.
SHAPES = [(8, 32), (64, 16), (24, 24)]


def _randn(*shape: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64)


def _eye(p: int) -> Tensor:
    return torch.eye(p, dtype=F64)


def _logdet(mat: Tensor) -> Tensor:
    if mat.ndim != 2:
        raise ValueError(
            f"reference log-determinants take one matrix at a time, got shape {tuple(mat.shape)}"
        )
    return torch.logdet(mat)


def _close(actual: Tensor, expected: Tensor, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert actual.dtype == F64, f"float64 input must give a float64 result, got {actual.dtype}"
    assert_close(actual, expected.to(F64), rtol=rtol, atol=atol)


# ---- Reference formulas, written the way each public source writes them. ----


def _ref_mcr2_paper(z_cols: Tensor, eps_paper: float) -> Tensor:
    """MCR² paper, eq. (4): R = 1/2 logdet(I + d / (m eps²) Z Zᵀ), Z is d x m (samples are columns)."""
    d, m = z_cols.shape
    return 0.5 * _logdet(_eye(d) + d / (m * eps_paper**2) * z_cols @ z_cols.T)


def _ref_gram_side(z: Tensor, eps: float) -> Tensor:
    """The same rate factored on the n x n side: 1/2 logdet(I_n + d / (n eps) Z Zᵀ), Z is n x d."""
    n, d = z.shape
    return 0.5 * _logdet(_eye(n) + d / (n * eps) * z @ z.T)


def _ref_mcr2_discrimn(w: Tensor, eps: float, gam1: float = 1.0) -> Tensor:
    """MCR2 loss.py, compute_discrimn_loss_empirical: W = X.T is p x m, p x p factored, gam1 inside."""
    p, m = w.shape
    scalar = p / (m * eps)
    return _logdet(_eye(p) + gam1 * scalar * w @ w.T) / 2.0


def _ref_mcr2_compress(w: Tensor, pi: Tensor, eps: float, tr_shift: float = 1e-8) -> Tensor:
    """MCR2 loss.py, compute_compress_loss_empirical: sum_j logdet(...) * tr(Pi_j) / m, then / 2."""
    p, m = w.shape
    total = torch.zeros((), dtype=F64)
    for pi_j in pi:
        tr_pi = torch.trace(pi_j) + tr_shift
        scalar = p / (tr_pi * eps)
        total = total + _logdet(_eye(p) + scalar * w @ pi_j @ w.T) * tr_pi / m
    return total / 2.0


def _ref_mcr2_total(
    x: Tensor, labels: Tensor, num_classes: int, eps: float, gam1: float, gam2: float
) -> Tensor:
    """MCR2 loss.py, MaximalCodingRateReduction.forward: gam2 * -discrimn + compress (to minimize)."""
    w = x.T
    pi = _membership(labels, num_classes)
    return gam2 * -_ref_mcr2_discrimn(w, eps, gam1) + _ref_mcr2_compress(w, pi, eps)


def _membership(labels: Tensor, num_classes: int) -> Tensor:
    """MCR2 train_func.label_to_membership: (k, m, m) diagonal 0/1 matrices."""
    m = labels.shape[0]
    pi = torch.zeros(num_classes, m, m, dtype=F64)
    for i, label in enumerate(labels.tolist()):
        pi[label, i, i] = 1.0
    return pi


def _ref_empssl_tcr(x: Tensor, eps: float) -> Tensor:
    """EMP-SSL loss.py, TotalCodingRate.forward: -logdet(I_p + p / (m eps) W Wᵀ) / 2 with W = X.T."""
    w = x.T
    p, m = w.shape
    return -(_logdet(_eye(p) + p / (m * eps) * w @ w.T) / 2.0)


def _ref_empssl_cal_tcr(z_proj: Tensor, eps: float, num_patches: int) -> Tensor:
    """EMP-SSL main.py, cal_TCR: the TCR of each patch chunk, summed and divided by the number of patches."""
    loss = torch.zeros((), dtype=F64)
    for chunk in z_proj.chunk(num_patches, dim=0):
        loss = loss + _ref_empssl_tcr(chunk, eps)
    return loss / num_patches


def _ref_lightly_tcr(z: Tensor, eps: float) -> Tensor:
    """lightly emp_ssl_loss.py, tcr_loss: 0.5 * logdet(I + dim / (batch * eps) z_vᵀ z_v), mean over views."""
    _, batch_size, dim = z.shape
    per_view = [_logdet(_eye(dim) + dim / (batch_size * eps) * z_v.T @ z_v) for z_v in z]
    return 0.5 * torch.stack(per_view).mean()


def _ref_simdino_expansion(
    per_rank_feats: list[Tensor], eps: float, reduce_cov: bool, rank: int = 0
) -> Tensor:
    """SimDINO main_dino.py, MCRLoss.calc_expansion, as seen by process ``rank`` of ``len(per_rank_feats)``.

    Each rank holds features of shape (views, m, p). With ``reduce_cov`` the per-view covariances are summed
    over ranks (dist_nn.all_reduce); either way the scale is p / (m N eps) with N the world size. Half of
    the log-determinant is read off the Cholesky diagonal, averaged over views, then multiplied by the
    balancing factor (p + N m) / (p N m).
    """
    world = len(per_rank_feats)
    feats = per_rank_feats[rank]
    num_views, m, p = feats.shape
    covs = [torch.stack([w.T @ w for w in f]) for f in per_rank_feats]
    cov = torch.stack(covs).sum(0) if reduce_cov else covs[rank]
    scalar = p / (m * world * eps)
    loss = torch.zeros((), dtype=F64)
    for i in range(num_views):
        loss = loss + torch.linalg.cholesky(_eye(p) + scalar * cov[i]).diagonal().log().sum()
    loss = loss / num_views
    return loss * (p + world * m) / (p * world * m)


def _ref_seqjepa_rate_loss(z: Tensor, alpha: float = 1.0, eps: float = 1e-4) -> Tensor:
    """seq-jepa experiments/losses/coding_rate.py, coding_rate_loss: -logdet(I + alpha C + eps I)."""
    b, d = z.shape
    z_c = z - z.mean(dim=0, keepdim=True)
    cov = (z_c.T @ z_c) / b
    return -_logdet(_eye(d) + alpha * cov + eps * _eye(d))


def _ref_seqjepa_rate_loss_stable(z: Tensor, alpha: float = 1.0, eps: float = 1e-4) -> Tensor:
    """seq-jepa coding_rate_loss_stable: -sum log(1 + alpha * max(lambda_i(C), eps))."""
    b, _ = z.shape
    z_c = z - z.mean(dim=0, keepdim=True)
    cov = (z_c.T @ z_c) / b
    eigvals = torch.clamp(torch.linalg.eigvalsh(cov), min=eps)
    return -torch.sum(torch.log(1.0 + alpha * eigvals))


# ---- MCR² paper and the matrix side ----


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("eps_paper", [0.5, 0.1])
def test_mcr2_paper_eps_squared(n: int, d: int, eps_paper: float) -> None:
    z = _randn(n, d, seed=1)
    expected = _ref_mcr2_paper(z.T, eps_paper)
    _close(coding_rate(z, eps=eps_paper**2), expected)


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_gram_side_equals_feature_side(n: int, d: int) -> None:
    z = _randn(n, d, seed=2)
    _close(coding_rate(z, eps=0.5), _ref_gram_side(z, eps=0.5))
    _close(_ref_gram_side(z, eps=0.5), _ref_mcr2_discrimn(z.T, eps=0.5))


# ---- MCR² code (Ma-Lab-Berkeley/MCR2, loss.py) ----


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("eps", [0.5, 2.0])
def test_mcr2_discrimn_empirical(n: int, d: int, eps: float) -> None:
    x = _randn(n, d, seed=3)
    _close(coding_rate(x, eps=eps), _ref_mcr2_discrimn(x.T, eps))


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_mcr2_discrimn_empirical_gam1(n: int, d: int) -> None:
    x = _randn(n, d, seed=4)
    eps, gam1 = 0.5, 20.0
    _close(coding_rate(x, alpha=gam1 * d / eps), _ref_mcr2_discrimn(x.T, eps, gam1))


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_mcr2_rows_normalized_by_network(n: int, d: int) -> None:
    # The MCR² ResNets end with F.normalize, so raw head outputs map to normalize=True.
    x = _randn(n, d, seed=5) * 3.0
    _close(coding_rate(x, eps=0.5, normalize=True), _ref_mcr2_discrimn(F.normalize(x).T, 0.5))


def _labelled_batch(n: int, d: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    x = _randn(n, d, seed=seed)
    labels = torch.arange(n) % num_classes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    return x, labels[perm]


@pytest.mark.parametrize(("n", "d"), [(30, 16), (12, 32)])
@pytest.mark.parametrize("tr_shift", [0.0, 1e-8])
def test_mcr2_compress(n: int, d: int, tr_shift: float) -> None:
    # MCR² adds 1e-8 to every class size n_j. That scales both the weight n_j / n and the coefficient
    # d / (n_j eps) by (1 + 1e-8 / n_j); d/d(log a) logdet(I + a G) <= min(n_j, d), so each class term moves
    # by at most ~1e-8 / 2 in absolute value: atol=1e-7 covers it. Without the shift the match is exact.
    x, labels = _labelled_batch(n, d, num_classes=3, seed=6)
    expected = _ref_mcr2_compress(x.T, _membership(labels, 3), eps=0.5, tr_shift=tr_shift)
    out = rate_reduction(x, labels, num_classes=3, eps=0.5).compress
    _close(out, expected, atol=1e-7 if tr_shift else ATOL)


def test_mcr2_empty_class_contributes_zero() -> None:
    # A class with no sample in the batch: MCR² gets logdet(I) * 1e-8 / m = 0 for it.
    x, labels = _labelled_batch(20, 8, num_classes=3, seed=8)
    expected = _ref_mcr2_compress(x.T, _membership(labels, 5), eps=0.5)
    out = rate_reduction(x, labels, num_classes=5, eps=0.5)
    assert torch.isfinite(out.compress), (
        f"empty classes must not make compress non-finite, got {out.compress}"
    )
    _close(out.compress, expected, atol=1e-7)


@pytest.mark.parametrize(("n", "d"), [(30, 16), (12, 32)])
def test_mcr2_rate_reduction_expand_and_delta(n: int, d: int) -> None:
    x, labels = _labelled_batch(n, d, num_classes=4, seed=9)
    w, pi = x.T, _membership(labels, 4)
    out = rate_reduction(x, labels, num_classes=4, eps=0.5)
    _close(out.expand, _ref_mcr2_discrimn(w, 0.5))
    _close(out.delta, _ref_mcr2_discrimn(w, 0.5) - _ref_mcr2_compress(w, pi, 0.5), atol=1e-7)


def test_mcr2_total_loss_with_gammas() -> None:
    # gam1 moves into alpha of the expansion term, gam2 multiplies it; the compression term is unchanged.
    x, labels = _labelled_batch(40, 16, num_classes=4, seed=11)
    eps, gam1, gam2 = 0.5, 2.0, 0.5
    d = x.shape[-1]
    ours = (
        -gam2 * coding_rate(x, alpha=gam1 * d / eps)
        + rate_reduction(x, labels, num_classes=4, eps=eps).compress
    )
    _close(ours, _ref_mcr2_total(x, labels, 4, eps=eps, gam1=gam1, gam2=gam2), atol=1e-7)


@pytest.mark.parametrize("gam2", [1.0, 0.5, 10.0])
def test_mcr2_total_loss_direction(gam2: float) -> None:
    # With gam1 = 1 the MCR² training loss gam2 * -discrimn + compress is RateReductionLoss with gamma=gam2
    # (-ΔR at the default gamma = 1).
    x, labels = _labelled_batch(40, 16, num_classes=4, seed=10)
    expected = _ref_mcr2_total(x, labels, 4, eps=0.5, gam1=1.0, gam2=gam2)
    default = RateReductionLoss(num_classes=4, eps=0.5)
    loss_fn = default if gam2 == 1.0 else RateReductionLoss(0.5, gamma=gam2, num_classes=4)
    _close(loss_fn(x, labels), expected, atol=1e-7)


# ---- EMP-SSL (tsb0601/EMP-SSL, loss.py TotalCodingRate and main.py cal_TCR) ----


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_empssl_total_coding_rate(n: int, d: int) -> None:
    x = _randn(n, d, seed=12)
    _close(-coding_rate(x, eps=0.2), _ref_empssl_tcr(x, eps=0.2))


@pytest.mark.parametrize(("bs", "d"), [(10, 32), (40, 16)])
def test_empssl_cal_tcr_over_patches(bs: int, d: int) -> None:
    num_patches = 4
    # main.py feeds torch.cat(patches) through the encoder, which ends with F.normalize.
    z_proj = F.normalize(_randn(num_patches * bs, d, seed=13))
    expected = _ref_empssl_cal_tcr(z_proj, eps=0.2, num_patches=num_patches)
    z_views = z_proj.reshape(num_patches, bs, d)
    _close(CodingRateLoss(eps=0.2)(z_views), expected)
    _close(-coding_rate(z_views, eps=0.2).mean(), expected)


# ---- lightly (lightly-ai/lightly, lightly/loss/emp_ssl_loss.py tcr_loss) ----


@pytest.mark.parametrize(("b", "d"), [(8, 32), (48, 16)])
def test_lightly_tcr_loss(b: int, d: int) -> None:
    z = _randn(3, b, d, seed=14)
    expected = _ref_lightly_tcr(z, eps=0.2)
    _close(coding_rate(z, eps=0.2).mean(), expected)
    # tcr_loss is +R, so it equals our loss with the opposite sign.
    _close(-CodingRateLoss(eps=0.2)(z), expected)


# ---- SimDINO (RobinWu218/SimDINO, simdino/main_dino.py MCRLoss.calc_expansion) ----


def _simdino_gamma(p: int, m: int, world: int = 1) -> float:
    return (p + world * m) / (p * world * m)


@pytest.mark.parametrize(("m", "p"), [(8, 32), (48, 16)])
@pytest.mark.parametrize("eps", [0.5, 0.05])
def test_simdino_expansion_single_process(m: int, p: int, eps: float) -> None:
    feats = _randn(2, m, p, seed=15)
    expected = _ref_simdino_expansion([feats], eps=eps, reduce_cov=False)
    gamma = _simdino_gamma(p, m)
    _close(gamma * coding_rate(feats, eps=eps).mean(), expected)
    # MCRLoss.forward subtracts expa_loss, i.e. it adds -gamma * R.mean().
    _close(CodingRateLoss(weight=gamma, eps=eps)(feats), -expected)


def test_simdino_expansion_expa_type_1() -> None:
    # expa_type=1 (the default) expands the mean of the student's global views and the teacher's views.
    m, p = 16, 24
    student_global = F.normalize(_randn(2, m, p, seed=16), dim=-1)
    teacher = F.normalize(_randn(2, m, p, seed=17), dim=-1)
    mixed = (student_global + teacher) / 2
    expected = _ref_simdino_expansion([mixed], eps=0.5, reduce_cov=False)
    _close(_simdino_gamma(p, m) * coding_rate(mixed, eps=0.5).mean(), expected)


@pytest.mark.parametrize("world", [2, 3])
def test_simdino_expansion_reduce_cov(world: int) -> None:
    # reduce_cov=1: covariances summed over ranks with scale p / (m N eps) is the rate of the global batch.
    m, p = 8, 16
    per_rank = [_randn(2, m, p, seed=18 + r) for r in range(world)]
    global_batch = torch.cat(per_rank, dim=1)
    gamma = _simdino_gamma(p, m, world)
    for rank in range(world):
        expected = _ref_simdino_expansion(per_rank, eps=0.5, reduce_cov=True, rank=rank)
        _close(gamma * coding_rate(global_batch, eps=0.5).mean(), expected)


@pytest.mark.parametrize("world", [2, 4])
def test_simdino_expansion_without_reduce_cov(world: int) -> None:
    # reduce_cov=0 (the default) on N processes: local covariance, but the scale still divides by N, so each
    # rank computes the rate of its own batch with eps multiplied by N.
    m, p = 8, 16
    per_rank = [_randn(2, m, p, seed=30 + r) for r in range(world)]
    gamma = _simdino_gamma(p, m, world)
    for rank in range(world):
        expected = _ref_simdino_expansion(per_rank, eps=0.5, reduce_cov=False, rank=rank)
        _close(gamma * coding_rate(per_rank[rank], eps=0.5 * world).mean(), expected)


def _simdino_gather_worker(rank: int, world: int, init_file: str, feats: Tensor, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        local = feats.chunk(world, dim=1)[rank]
        rate = coding_rate(local, eps=0.5, gather_distributed=True)
        torch.save(rate, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_simdino_expansion_reduce_cov_gather_distributed() -> None:
    world, m, p = 2, 16, 12
    feats = _randn(2, m, p, seed=40)
    per_rank = list(feats.chunk(world, dim=1))
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        out_file = os.path.join(tmp, "rate")
        spawn(_simdino_gather_worker, args=(world, init_file, feats, out_file), nprocs=world)  # type: ignore[no-untyped-call]
        gamma = _simdino_gamma(p, m // world, world)
        for rank in range(world):
            rate = torch.load(f"{out_file}.{rank}")
            expected = _ref_simdino_expansion(per_rank, eps=0.5, reduce_cov=True, rank=rank)
            _close(gamma * rate.mean(), expected)


# ---- seq-JEPA Step 2 (kaikun213/seq-jepa, experiments/losses/coding_rate.py) ----


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_seqjepa_step2_formula(n: int, d: int, alpha: float) -> None:
    # The Step 2 plan's R = logdet(I + alpha C), C = Z_cᵀ Z_c / n centered: no 1/2, alpha in place of d/eps.
    z = _randn(n, d, seed=50)
    expected = -_ref_seqjepa_rate_loss(z, alpha=alpha, eps=0.0)
    _close(2 * coding_rate(z, alpha=alpha, center=True), expected)


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("eps", [1e-4, 0.05])
def test_seqjepa_coding_rate_loss_with_jitter(n: int, d: int, eps: float) -> None:
    # logdet((1 + eps) I + alpha C) = d log(1 + eps) + logdet(I + alpha / (1 + eps) C): the added eps I is a
    # constant (no gradient) plus a rescaled alpha.
    z = _randn(n, d, seed=51)
    alpha = 1.0
    expected = _ref_seqjepa_rate_loss(z, alpha=alpha, eps=eps)
    ours = -(2 * coding_rate(z, alpha=alpha / (1 + eps), center=True) + d * math.log1p(eps))
    _close(ours, expected)


@pytest.mark.parametrize("lambda_rate", [0.01, 0.03])
def test_seqjepa_weighted_module(lambda_rate: float) -> None:
    # CodingRateLoss(lambda_rate, target="agg_out") returns lambda_rate * coding_rate_loss(agg_out).
    n, d, eps = 32, 16, 1e-4
    agg_out = _randn(n, d, seed=52)
    expected = lambda_rate * _ref_seqjepa_rate_loss(agg_out, alpha=1.0, eps=eps)
    ours = CodingRateLoss(weight=2 * lambda_rate, alpha=1.0 / (1 + eps), center=True)(agg_out)
    _close(ours - lambda_rate * d * math.log1p(eps), expected)


@pytest.mark.parametrize(("n", "d"), [(64, 16), (40, 24)])
def test_seqjepa_stable_variant_full_rank(n: int, d: int) -> None:
    # With n > d every eigenvalue of C exceeds the clamp (checked), so the clamp is inactive.
    z = _randn(n, d, seed=53)
    z_c = z - z.mean(0)
    assert torch.linalg.eigvalsh(z_c.T @ z_c / n).min() > 1e-2
    expected = _ref_seqjepa_rate_loss_stable(z, alpha=1.0, eps=1e-4)
    _close(-2 * coding_rate(z, alpha=1.0, center=True), expected)


@pytest.mark.parametrize(("n", "d"), [(8, 32), (16, 24)])
def test_seqjepa_stable_variant_rank_deficient(n: int, d: int) -> None:
    # With n <= d the centered C has d - (n - 1) zero eigenvalues; the clamp makes each log(1 + alpha eps).
    z = _randn(n, d, seed=54)
    alpha, eps = 1.0, 1e-4
    expected = _ref_seqjepa_rate_loss_stable(z, alpha=alpha, eps=eps)
    ours = -(2 * coding_rate(z, alpha=alpha, center=True) + (d - n + 1) * math.log1p(alpha * eps))
    _close(ours, expected)


# ---- Properties over random shapes and scales ----

_CONVENTIONS: dict[str, tuple[Callable[[Tensor, float], Tensor], Callable[[Tensor, float], Tensor]]] = {
    "mcr2": (lambda z, e: coding_rate(z, eps=e), lambda z, e: _ref_mcr2_discrimn(z.T, e)),
    "mcr2_paper": (lambda z, e: coding_rate(z, eps=e), lambda z, e: _ref_mcr2_paper(z.T, math.sqrt(e))),
    "empssl": (lambda z, e: -coding_rate(z, eps=e), _ref_empssl_tcr),
    "seqjepa": (
        lambda z, e: -2 * coding_rate(z, alpha=e, center=True),
        lambda z, e: _ref_seqjepa_rate_loss(z, alpha=e, eps=0.0),
    ),
}


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=40),
    d=st.integers(min_value=1, max_value=40),
    scale=st.floats(min_value=0.05, max_value=4.0),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    name=st.sampled_from(sorted(_CONVENTIONS)),
)
def test_conventions_hold_for_random_shapes(n: int, d: int, scale: float, seed: int, name: str) -> None:
    ours, reference = _CONVENTIONS[name]
    z = _randn(n, d, seed=seed)
    _close(ours(z, scale), reference(z, scale), rtol=1e-9, atol=1e-10)


# ---- The public codes train in float32 ----


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_float32_input_matches_float64_reference(n: int, d: int) -> None:
    # float32 in, float32 out. The float32 rounding of a log-determinant of a d x d matrix with condition
    # number <= ~1e3 is about d * cond * 6e-8 <= 2e-3 in absolute value for d <= 32; rtol=1e-4 on values of
    # order 10-50 plus atol=2e-3 bounds it without hiding a convention error (>= a few percent).
    z = F.normalize(_randn(n, d, seed=60))
    out = coding_rate(z.float(), eps=0.2)
    assert out.dtype == torch.float32, f"float32 input must give a float32 result, got {out.dtype}"
    assert_close(out.double(), -_ref_empssl_tcr(z, eps=0.2), rtol=1e-4, atol=2e-3)
