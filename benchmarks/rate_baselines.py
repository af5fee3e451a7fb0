"""Clean-room re-implementations of the coding-rate routes that public code uses.

Each function returns ``R = 1/2 logdet(I + a ZᵀZ)`` with ``a = d / (n * eps)`` (``eps`` plays the role of
eps² in the MCR² code), written the way its code family writes it, so that the benchmark times those routes
rather than an idealized version of them:

* :func:`logdet_dside`: ``torch.logdet`` of the ``d x d`` matrix ``I_d + a ZᵀZ`` (MCR², EMP-SSL, the
  seq-JEPA Step-2 formula), one matrix per call; multi-view workloads loop over views in Python.
* :func:`cholesky_dside`: ``sum(log(diag(cholesky(I_d + a ZᵀZ))))`` (SimDINO).
* :func:`cholesky_small`: the same on the ``k x k`` Gram of the smaller side, ``k = min(n, d)``
  (Sylvester's identity), differentiated by plain autograd; batched over leading dimensions.
* :func:`eigvalsh_small`: ``1/2 sum(log1p(a * eigvalsh(G)))`` of the smaller-side Gram ``G``.
* :func:`bare_small`: the algorithm of ``jepa_rate`` with nothing else: one small-side Cholesky reused by an
  analytic backward, in float32 (float64 for float64 inputs) with autocast off, without its padding,
  failure fallback, series branch, NaN propagation or mean split. Not public code: it measures what those
  safety features cost.
* :func:`grouped_mcr2_dense`: the MCR² rate reduction as the MCR² code computes it, a Python loop over
  classes with a dense ``n x n`` diagonal membership matrix ``Π_j`` per class; :func:`grouped_loop` is the
  same loop with boolean-mask gathers (cheaper than the public code).

Under autocast the public routes form their Gram in the autocast dtype, as the public code does; the
identity is float32 (float64 for float64 inputs), so type promotion factors a float32 (float64) matrix built
from the low-precision Gram.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def scale(n: int, d: int, eps: float) -> float:
    """The MCR² scale ``a = d / (n * eps)``."""
    return d / (n * eps)


def _factor_dtype(z: Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _small_gram(z: Tensor) -> Tensor:
    n, d = z.shape[-2:]
    return z @ z.mT if n <= d else z.mT @ z


def _cholesky_half_logdet(gram: Tensor, a: float) -> Tensor:
    """``sum(log(diag(cholesky(I + a·gram))))``."""
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=_factor_dtype(gram))
    factor: Tensor = torch.linalg.cholesky(eye + a * gram)
    return factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def logdet_dside(z: Tensor, eps: float) -> Tensor:
    """``1/2 torch.logdet(I_d + a ZᵀZ)`` of one ``(n, d)`` matrix."""
    n, d = z.shape
    eye = torch.eye(d, device=z.device, dtype=_factor_dtype(z))
    return 0.5 * torch.logdet(eye + scale(n, d, eps) * (z.mT @ z))


def cholesky_dside(z: Tensor, eps: float) -> Tensor:
    """``sum(log(diag(L)))``, ``L = cholesky(I_d + a ZᵀZ)``, for ``(..., n, d)`` inputs."""
    return _cholesky_half_logdet(z.mT @ z, scale(z.shape[-2], z.shape[-1], eps))


def cholesky_small(z: Tensor, eps: float) -> Tensor:
    """``sum(log(diag(L)))``, ``L = cholesky(I_k + a G)`` on the smaller side, for ``(..., n, d)`` inputs."""
    return _cholesky_half_logdet(_small_gram(z), scale(z.shape[-2], z.shape[-1], eps))


def eigvalsh_small(z: Tensor, eps: float) -> Tensor:
    """``1/2 sum(log1p(a * eigvalsh(G)))`` with ``G`` the Gram on the smaller side."""
    gram = _small_gram(z).to(_factor_dtype(z))
    return 0.5 * torch.log1p(scale(z.shape[-2], z.shape[-1], eps) * torch.linalg.eigvalsh(gram)).sum(-1)


class _BareHalfLogdet(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor, scale: float) -> Tensor:
        matrix = scale * _small_gram(z)
        matrix.diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol, _ = torch.linalg.cholesky_ex(matrix)
        ctx.save_for_backward(z, chol)
        ctx.n_side, ctx.scale = z.shape[-2] <= z.shape[-1], scale  # type: ignore[attr-defined]
        value: Tensor = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return value

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        z, chol = ctx.saved_tensors  # type: ignore[attr-defined]
        inverse = torch.cholesky_inverse(chol) * (ctx.scale * grad)[..., None, None]  # type: ignore[attr-defined]
        return (inverse @ z if ctx.n_side else z @ inverse), None  # type: ignore[attr-defined]


def bare_small(z: Tensor, eps: float) -> Tensor:
    """``sum(log(diag(L)))``, ``L = cholesky_ex(I_k + a G)``, small side, ``a·M⁻¹Z`` backward, no checks."""
    # The float32 island is part of the algorithm, not one of the checks left out: under autocast the
    # Gram of bf16 features is still formed and factored in float32.
    with torch.autocast(z.device.type, enabled=False):
        value: Tensor = _BareHalfLogdet.apply(z.to(_factor_dtype(z)), scale(z.shape[-2], z.shape[-1], eps))
    return value


def loop_over_views(route: Callable[[Tensor, float], Tensor], z: Tensor, eps: float) -> Tensor:
    """Sums ``route(z[v], eps)`` over the views of a ``(views, n, d)`` tensor in a Python loop."""
    total = route(z[0], eps)
    for v in range(1, z.shape[0]):
        total = total + route(z[v], eps)
    return total


def grouped_loop(
    route: Callable[[Tensor, float], Tensor], z: Tensor, labels: Tensor, num_classes: int, eps: float
) -> Tensor:
    """MCR² rate reduction ``R(Z) - sum_j (n_j / n) R(Z_j)``, a Python loop over boolean-mask gathers.

    ``route`` is the rate of one ``(n_j, d)`` matrix, e.g. :func:`logdet_dside`; empty classes add nothing.
    """
    n = z.shape[0]
    compress = z.new_zeros((), dtype=_factor_dtype(z))
    for j in range(num_classes):
        z_j = z[labels == j]
        if z_j.shape[0] > 0:
            compress = compress + (z_j.shape[0] / n) * route(z_j, eps)
    return route(z, eps) - compress


def grouped_mcr2_dense(z: Tensor, labels: Tensor, num_classes: int, eps: float) -> Tensor:
    """MCR² rate reduction as the MCR² code writes it (``compute_compress_loss_empirical``).

    ``W = Zᵀ`` is ``d x n``; the class term is ``trΠ_j / n · 1/2 logdet(I + d/(trΠ_j·eps) W Π_j Wᵀ)`` with
    ``trΠ_j = n_j + 1e-8`` and ``Π_j`` a dense ``n x n`` diagonal membership matrix.
    """
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
    """Float64 ``R`` of each ``(n, d)`` matrix of ``z`` from small-side eigenvalues (not a batched LU, whose
    multi-threaded CPU path is not trusted as a reference); 0 for a matrix without rows."""
    z64 = z.detach().to(torch.float64)
    n, d = z64.shape[-2:]
    if n == 0:
        return z64.new_zeros(z64.shape[:-2])
    eig = torch.linalg.eigvalsh(_small_gram(z64)).clamp_min(0.0)
    return 0.5 * torch.log1p(scale(n, d, eps) * eig).sum(-1)
