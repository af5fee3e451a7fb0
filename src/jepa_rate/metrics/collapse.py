"""Representation-collapse diagnostics for embeddings ``(..., n, d)``.

All functions are pure and return tensors; only :func:`is_collapsed` reads a value on the host (it returns
a Python ``bool``) on purpose. :func:`effective_rank`, :func:`covariance_spectrum` and
:func:`collapse_metrics` call :func:`torch.linalg.svdvals` / :func:`torch.linalg.eigvalsh`, which on CUDA
synchronise with the host, as PyTorch documents; the other metrics do not. Half-precision inputs are
computed in float32, float64 inputs in float64. A set with a NaN or Inf entry gives NaN, never an error.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_rate._validation import check_feature_tensor, check_nonnegative, check_positive

__all__ = [
    "DEFAULT_COLLAPSE_THRESHOLD",
    "CollapseMetrics",
    "collapse_metrics",
    "covariance_spectrum",
    "effective_rank",
    "embedding_std",
    "is_collapsed",
    "mean_pairwise_cosine",
    "normalized_std",
]

DEFAULT_COLLAPSE_THRESHOLD = 0.1
"""Default threshold on :func:`normalized_std` below which embeddings count as collapsed."""


def _as_float(z: Tensor) -> Tensor:
    check_feature_tensor(z)
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _finite_sets(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` with its non-finite sets zeroed, since LAPACK raises on them, and which sets were finite."""
    finite = x.isfinite().flatten(-2).all(-1)
    return torch.where(finite[..., None, None], x, 0.0), finite


def effective_rank(z: Tensor, *, eps: float = 1e-7) -> Tensor:
    """RankMe effective rank (Garrido et al., ICML 2023) of the embedding matrix.

    Exactly: with singular values ``s_1..s_k`` of ``z`` (not centred), ``k = min(n, d)``,
    ``p_i = s_i / sum_j s_j + eps`` (no renormalisation after adding ``eps``, as in the paper) and the
    result is ``exp(-sum_i p_i log p_i)``. It lies in about ``[1, k]``: ``k`` for equal singular values
    (e.g. an identity), 1 for a rank-1 matrix. An all-zero matrix gives ``~1``.

    Args:
        z: Embeddings ``(..., n, d)``.
        eps: The paper's ``epsilon`` (``1e-7``), which keeps ``log`` finite for zero singular values.

    Returns:
        Effective rank of shape ``z.shape[:-2]``.

    Raises:
        TypeError: If ``z`` is not a floating tensor.
        ValueError: If ``z`` has fewer than 2 dims or rows, or ``eps < 0``.

    Examples:
        >>> effective_rank(torch.eye(8))
        tensor(8.0000)
        >>> effective_rank(torch.ones(16, 8))
        tensor(1.0000)
    """
    eps = check_nonnegative(eps, "eps")
    x, finite = _finite_sets(_as_float(z))
    s = torch.linalg.svdvals(x)
    p = s / s.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny) + eps
    # xlogy: 0·log 0 = 0, so eps=0 counts zero singular values as absent instead of giving NaN.
    rank = torch.exp(-torch.special.xlogy(p, p).sum(dim=-1))
    return torch.where(finite, rank, math.nan)


def covariance_spectrum(z: Tensor, *, correction: int = 1) -> Tensor:
    """Eigenvalues of the covariance of the embeddings, in descending order.

    The covariance is ``(z - mean)ᵀ (z - mean) / (n - correction)`` (``torch.cov`` convention);
    eigenvalues are clamped at 0 to remove round-off negatives. A healthy spectrum decays slowly;
    dimensional collapse shows as a cliff to ~0.

    Args:
        z: Embeddings ``(..., n, d)``.
        correction: Bessel correction, ``0`` or ``1``.

    Returns:
        ``(..., d)`` eigenvalues, largest first.

    Raises:
        TypeError: If ``z`` is not a floating tensor.
        ValueError: If ``z`` has fewer than 2 dims or rows, or ``correction`` is not 0 or 1.

    Examples:
        >>> z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
        >>> covariance_spectrum(z, correction=0)
        tensor([0.5000, 0.1250])
    """
    if correction not in (0, 1) or isinstance(correction, bool):
        raise ValueError(f"correction must be 0 or 1, got {correction!r}")
    x, finite = _finite_sets(_as_float(z))
    x = x - x.mean(dim=-2, keepdim=True)
    cov = x.mT @ x / (x.shape[-2] - correction)
    eigenvalues: Tensor = torch.linalg.eigvalsh(cov)
    return torch.where(finite[..., None], eigenvalues.flip(-1).clamp_min(0.0), math.nan)


def embedding_std(z: Tensor) -> Tensor:
    """Per-dimension standard deviation (over the ``n`` rows) of the L2-normalised embeddings.

    The SimSiam collapse monitor: for embeddings spread isotropically it is about ``1/sqrt(d)`` in every
    dimension; under complete collapse it is 0. Uses the unbiased (``n - 1``) estimator.

    Args:
        z: Embeddings ``(..., n, d)``.

    Returns:
        ``(..., d)`` standard deviations.

    Raises:
        TypeError: If ``z`` is not a floating tensor.
        ValueError: If ``z`` has fewer than 2 dims or rows.

    Examples:
        >>> embedding_std(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        tensor([1.4142, 0.0000])
    """
    return F.normalize(_as_float(z), dim=-1).std(dim=-2)


def normalized_std(z: Tensor) -> Tensor:
    """Mean of :func:`embedding_std` times ``sqrt(d)``: about 1 for isotropic embeddings, 0 when collapsed.

    Args:
        z: Embeddings ``(..., n, d)``.

    Returns:
        Tensor of shape ``z.shape[:-2]``.

    Examples:
        >>> normalized_std(torch.ones(10, 4))
        tensor(0.)
    """
    return embedding_std(z).mean(dim=-1) * math.sqrt(z.shape[-1])


def mean_pairwise_cosine(z: Tensor) -> Tensor:
    """Mean cosine similarity over all pairs of distinct rows, without forming the ``n x n`` matrix.

    With unit rows ``u_i`` the sum over ``i != j`` of ``u_i·u_j`` is ``|sum_i u_i|² - sum_i |u_i|²``, so the
    cost is ``O(n d)``. Zero rows count as cosine 0 with everything. 1 means all embeddings point the same
    way; about 0 for isotropic embeddings.

    Args:
        z: Embeddings ``(..., n, d)``.

    Returns:
        Tensor of shape ``z.shape[:-2]``.

    Raises:
        TypeError: If ``z`` is not a floating tensor.
        ValueError: If ``z`` has fewer than 2 dims or rows.

    Examples:
        >>> mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        tensor(0.4714)
    """
    u = F.normalize(_as_float(z), dim=-1)
    n = u.shape[-2]
    total = u.sum(dim=-2).square().sum(dim=-1)
    diagonal = u.square().sum(dim=(-2, -1))
    return (total - diagonal) / (n * (n - 1))


def is_collapsed(z: Tensor, *, threshold: float = DEFAULT_COLLAPSE_THRESHOLD) -> bool:
    """Whether the embeddings have collapsed: ``normalized_std(z) < threshold`` (for every set in ``...``).

    The default threshold ``0.1`` means the normalised embeddings vary ten times less than isotropic ones
    would. Returns a Python ``bool``, so it synchronises with the device.

    Args:
        z: Embeddings ``(..., n, d)``.
        threshold: Collapse threshold on :func:`normalized_std`, ``> 0``.

    Returns:
        ``True`` if collapsed.

    Raises:
        TypeError: If ``z`` is not a floating tensor.
        ValueError: If ``z`` has fewer than 2 dims or rows, or ``threshold <= 0``.

    Examples:
        >>> is_collapsed(torch.ones(32, 8) + 1e-4 * torch.randn(32, 8)), is_collapsed(torch.randn(32, 8))
        (True, False)
    """
    threshold = check_positive(threshold, "threshold")
    return bool((normalized_std(z) < threshold).all())


class CollapseMetrics(NamedTuple):
    """All collapse diagnostics of one batch of embeddings (tensors; reading them syncs).

    Attributes:
        effective_rank: RankMe effective rank, shape ``(...)``.
        normalized_std: ``sqrt(d) *`` mean per-dim std of normalised embeddings, shape ``(...)``.
        mean_cosine: Mean pairwise cosine similarity, shape ``(...)``.
        std: Per-dimension std of normalised embeddings, shape ``(..., d)``.
        spectrum: Covariance eigenvalues, descending, shape ``(..., d)``.
        collapsed: ``normalized_std < threshold``, bool, shape ``(...)``.
    """

    effective_rank: Tensor
    normalized_std: Tensor
    mean_cosine: Tensor
    std: Tensor
    spectrum: Tensor
    collapsed: Tensor


def collapse_metrics(
    z: Tensor, *, threshold: float = DEFAULT_COLLAPSE_THRESHOLD, eps: float = 1e-7
) -> CollapseMetrics:
    """Computes every collapse diagnostic at once, for logging.

    The diagnostics are taken from ``z.detach()``: logged values that kept the autograd graph would keep
    the whole step's activations alive. Use the individual functions for a differentiable metric.

    Args:
        z: Embeddings ``(..., n, d)``.
        threshold: Collapse threshold on ``normalized_std``.
        eps: RankMe epsilon.

    Returns:
        :class:`CollapseMetrics`.

    Raises:
        TypeError: If ``z`` is not a floating tensor.
        ValueError: If ``z`` has fewer than 2 dims or rows, or an option is out of range.

    Examples:
        >>> m = collapse_metrics(torch.randn(64, 8))
        >>> m.spectrum.shape, bool(m.collapsed), 6 < float(m.effective_rank) <= 8
        (torch.Size([8]), False, True)
    """
    threshold = check_positive(threshold, "threshold")
    check_feature_tensor(z)
    z = z.detach()
    std = embedding_std(z)
    norm_std = std.mean(dim=-1) * math.sqrt(z.shape[-1])
    return CollapseMetrics(
        effective_rank=effective_rank(z, eps=eps),
        normalized_std=norm_std,
        mean_cosine=mean_pairwise_cosine(z),
        std=std,
        spectrum=covariance_spectrum(z),
        collapsed=norm_std < threshold,
    )
