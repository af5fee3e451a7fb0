"""Clean-room re-implementations of the coding-rate routes that public code uses.

Each function returns the coding rate ``R = 1/2 logdet(I + a ZᵀZ)`` with ``a = d / (n * eps)`` (``eps``
plays the role of eps² in the MCR² code), written the way the corresponding public code family writes it,
so that the benchmark times those routes rather than an idealized version of them:

* :func:`logdet_dside`: ``torch.logdet`` of the ``d x d`` matrix ``I_d + a ZᵀZ`` (MCR², EMP-SSL, the
  seq-JEPA Step-2 formula), one matrix per call; multi-view workloads call it in a Python loop.
* :func:`cholesky_dside`: ``torch.linalg.cholesky`` of the same ``d x d`` matrix, then the sum of the log
  of the diagonal of the factor (SimDINO).
* :func:`cholesky_small`: Cholesky of the ``k x k`` matrix on the smaller side, ``k = min(n, d)``
  (Sylvester's identity), differentiated by plain autograd; batched over leading dimensions.
* :func:`eigvalsh_small`: ``sum(log1p(a * eigvalsh(G)))`` of the smaller-side Gram ``G``.
* :func:`bare_small`: the algorithm of ``jepa_rate`` with nothing else: one small-side Cholesky reused by an
  analytic backward, in float32 (float64 for float64 inputs) with autocast off, without its padding, failure
  fallback, series branch, NaN propagation or mean split.
  Not public code: it measures what those safety features cost.
* :func:`grouped_mcr2_dense`: the MCR² rate reduction exactly as the MCR² code computes it: a Python loop
  over classes, each class term ``logdet(I + a_j W Π_j Wᵀ)`` with a dense ``n x n`` diagonal membership
  matrix ``Π_j``.
* :func:`grouped_dside_loop`: the same loop with boolean-mask gathers instead of ``Π_j`` (cheaper than the
  public code; shown for information).

Under autocast the public routes form their Gram products in the autocast dtype, as the public code does;
the identity is kept in float32 (float64 for float64 inputs), so type promotion factors a float32 (float64)
matrix built from the low-precision Gram.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "bare_small",
    "cholesky_dside",
    "cholesky_small",
    "eigvalsh_small",
    "grouped_dside_loop",
    "grouped_loop",
    "grouped_mcr2_dense",
    "logdet_dside",
    "loop_over_views",
    "reference_rate",
    "scale",
]


def scale(n: int, d: int, eps: float) -> float:
    """Returns the MCR² scale ``a = d / (n * eps)``.

    Raises:
        ValueError: If ``n`` or ``d`` is not positive or ``eps`` is not positive.
    """
    if n < 1 or d < 1:
        raise ValueError(f"n and d must be positive, got n={n}, d={d}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return d / (n * eps)


def _factor_dtype(z: Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _check_matrix(z: Tensor, *, batched: bool) -> None:
    if not batched and z.ndim != 2:
        raise ValueError(f"expected one (n, d) matrix, got shape {tuple(z.shape)}")
    if z.ndim < 2:
        raise ValueError(f"expected a (..., n, d) tensor, got shape {tuple(z.shape)}")


def logdet_dside(z: Tensor, eps: float) -> Tensor:
    """``1/2 torch.logdet(I_d + a ZᵀZ)`` of one ``(n, d)`` matrix.

    Raises:
        ValueError: If ``z`` is not two-dimensional.
    """
    _check_matrix(z, batched=False)
    n, d = z.shape
    eye = torch.eye(d, device=z.device, dtype=_factor_dtype(z))
    return 0.5 * torch.logdet(eye + scale(n, d, eps) * (z.mT @ z))


def cholesky_dside(z: Tensor, eps: float) -> Tensor:
    """``sum(log(diag(L)))`` with ``L = cholesky(I_d + a ZᵀZ)``, for ``(..., n, d)`` inputs.

    Raises:
        ValueError: If ``z`` has fewer than two dimensions.
        torch.linalg.LinAlgError: If the matrix is not numerically positive definite.
    """
    _check_matrix(z, batched=True)
    return _cholesky_half_logdet(z.mT @ z, scale(*z.shape[-2:], eps))


def _cholesky_half_logdet(gram: Tensor, a: float) -> Tensor:
    """``sum(log(diag(cholesky(I + a·gram))))``, the identity in float32 (float64 for float64 input)."""
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=_factor_dtype(gram))
    factor: Tensor = torch.linalg.cholesky(eye + a * gram)
    return factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _small_gram(z: Tensor) -> Tensor:
    n, d = z.shape[-2:]
    return z @ z.mT if n <= d else z.mT @ z


def cholesky_small(z: Tensor, eps: float) -> Tensor:
    """``sum(log(diag(L)))`` with ``L = cholesky(I_k + a G)``, ``G`` the ``k x k`` Gram, ``k = min(n, d)``.

    Raises:
        ValueError: If ``z`` has fewer than two dimensions.
        torch.linalg.LinAlgError: If the matrix is not numerically positive definite.
    """
    _check_matrix(z, batched=True)
    return _cholesky_half_logdet(_small_gram(z), scale(*z.shape[-2:], eps))


def eigvalsh_small(z: Tensor, eps: float) -> Tensor:
    """``1/2 sum(log1p(a * eigvalsh(G)))`` with ``G`` the ``k x k`` Gram on the smaller side.

    Raises:
        ValueError: If ``z`` has fewer than two dimensions.
    """
    _check_matrix(z, batched=True)
    n, d = z.shape[-2:]
    gram = _small_gram(z).to(_factor_dtype(z))
    return 0.5 * torch.log1p(scale(n, d, eps) * torch.linalg.eigvalsh(gram)).sum(-1)


class _BareHalfLogdet(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor, scale: float) -> Tensor:
        n_side = z.shape[-2] <= z.shape[-1]
        matrix = scale * _small_gram(z)
        matrix.diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol, _ = torch.linalg.cholesky_ex(matrix)
        ctx.save_for_backward(z, chol)
        ctx.n_side, ctx.scale = n_side, scale  # type: ignore[attr-defined]
        value: Tensor = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return value

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        z, chol = ctx.saved_tensors  # type: ignore[attr-defined]
        inverse = torch.cholesky_inverse(chol) * (ctx.scale * grad)[..., None, None]  # type: ignore[attr-defined]
        return (inverse @ z if ctx.n_side else z @ inverse), None  # type: ignore[attr-defined]


def bare_small(z: Tensor, eps: float) -> Tensor:
    """``sum(log(diag(L)))`` with ``L = cholesky_ex(I_k + a G)``, small side, ``a·M⁻¹Z`` backward, no checks.

    Raises:
        ValueError: If ``z`` has fewer than two dimensions.
    """
    _check_matrix(z, batched=True)
    n, d = z.shape[-2:]
    # The float32 island is part of the algorithm, not one of the checks left out: under autocast the
    # Gram of bf16 features is still formed and factored in float32.
    with torch.autocast(z.device.type, enabled=False):
        value: Tensor = _BareHalfLogdet.apply(z.to(_factor_dtype(z)), scale(n, d, eps))
    return value


def loop_over_views(route: Callable[[Tensor, float], Tensor], z: Tensor, eps: float) -> Tensor:
    """Sums ``route(z[v], eps)`` over the views of a ``(views, n, d)`` tensor with a Python loop.

    Raises:
        ValueError: If ``z`` is not three-dimensional.
    """
    if z.ndim != 3:
        raise ValueError(f"expected a (views, n, d) tensor, got shape {tuple(z.shape)}")
    total = route(z[0], eps)
    for v in range(1, z.shape[0]):
        total = total + route(z[v], eps)
    return total


def grouped_loop(
    route: Callable[[Tensor, float], Tensor], z: Tensor, labels: Tensor, num_classes: int, eps: float
) -> Tensor:
    """MCR² rate reduction ``R(Z) - sum_j (n_j / n) R(Z_j)`` with a Python loop over classes.

    Each class is gathered with a boolean mask, which is cheaper than the dense ``n x n`` diagonal
    membership matrices of the MCR² reference code, so this baseline is, if anything, faster than the
    code it stands for. Empty classes contribute nothing.

    Args:
        route: Rate of one ``(n_j, d)`` matrix, e.g. :func:`logdet_dside`.
        z: Features of shape ``(n, d)``.
        labels: Integer class labels of shape ``(n,)``.
        num_classes: Number of classes.
        eps: The MCR² eps (eps²).

    Returns:
        The scalar rate reduction ``delta``.

    Raises:
        ValueError: If ``z`` is not ``(n, d)`` or ``labels`` is not ``(n,)``.
    """
    if z.ndim != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"expected z (n, d) and labels (n,), got {tuple(z.shape)} and {tuple(labels.shape)}")
    n = z.shape[0]
    compress = z.new_zeros((), dtype=_factor_dtype(z))
    for j in range(num_classes):
        z_j = z[labels == j]
        n_j = z_j.shape[0]
        if n_j > 0:
            compress = compress + (n_j / n) * route(z_j, eps)
    return route(z, eps) - compress


def grouped_dside_loop(z: Tensor, labels: Tensor, num_classes: int, eps: float) -> Tensor:
    """:func:`grouped_loop` with :func:`logdet_dside` for every term, as in the MCR² code."""
    return grouped_loop(logdet_dside, z, labels, num_classes, eps)


def grouped_mcr2_dense(z: Tensor, labels: Tensor, num_classes: int, eps: float) -> Tensor:
    """MCR² rate reduction written as the MCR² code writes it (``compute_compress_loss_empirical``).

    ``W = Zᵀ`` is ``d x n`` and every class has a dense ``n x n`` diagonal membership matrix ``Π_j``; the
    class term is ``trΠ_j / n · 1/2 logdet(I + d/(trΠ_j·eps) W Π_j Wᵀ)`` with ``trΠ_j = n_j + 1e-8``.

    Returns:
        The scalar rate reduction ``delta``.
    """
    if z.ndim != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"expected z (n, d) and labels (n,), got {tuple(z.shape)} and {tuple(labels.shape)}")
    n, d = z.shape
    w = z.T
    pi = torch.diag_embed(torch.nn.functional.one_hot(labels, num_classes).T.to(z.dtype))
    eye = torch.eye(d, dtype=_factor_dtype(z), device=z.device)
    compress = z.new_zeros((), dtype=_factor_dtype(z))
    for j in range(num_classes):
        tr_pi = pi[j].trace() + 1e-8
        log_det = torch.logdet(eye + d / (tr_pi * eps) * w.matmul(pi[j]).matmul(w.T))
        compress = compress + log_det * tr_pi / n
    return logdet_dside(z, eps) - compress / 2


def reference_rate(z: Tensor, eps: float) -> Tensor:
    """Float64 reference ``R`` of each ``(n, d)`` matrix of ``z``, from small-side eigenvalues.

    Eigenvalues rather than a batched LU factorization, whose multi-threaded CPU path is not trusted as a
    reference here. Zero-row matrices have rate 0.

    Returns:
        Float64 tensor of shape ``z.shape[:-2]``.
    """
    z64 = z.detach().to(torch.float64)
    n, d = z64.shape[-2:]
    if n == 0:
        return z64.new_zeros(z64.shape[:-2])
    eig = torch.linalg.eigvalsh(_small_gram(z64)).clamp_min(0.0)
    return 0.5 * torch.log1p(scale(n, d, eps) * eig).sum(-1)
