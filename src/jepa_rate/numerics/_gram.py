"""The scaled Gram matrix ``a·G`` that the numerics kernel factors, formed on the cheaper side.

Private to :mod:`jepa_rate.numerics`: :func:`jepa_rate.numerics.gram_logdet.gram_half_logdet` is the public
entry point.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "BLOCKED_GRAM_MIN_ORDER",
    "SPLIT_MIN_MEAN_SHARE",
    "ReduceMode",
    "mean_shift",
    "padded_size",
    "per_matrix",
    "product_into",
    "scaled_gram",
]

# Where the Gram comes from: this process only, summed over the group (d x d), or the gathered rows (n x n).
ReduceMode = Literal["local", "reduce", "gather"]


def padded_size(k: int, device: torch.device) -> int:
    """The order at which the ``k x k`` matrix ``M`` is factored, as ``blockdiag(M, I)`` when that is faster.

    CPU LAPACK factors a matrix whose order is a multiple of 128 much more slowly than a slightly larger one
    (see ``benchmarks/logdet.py``). ``blockdiag(M, I)`` has ``M``'s factor and inverse in its leading block
    and the same determinant, so the padding changes the speed and nothing else.
    """
    return k + 8 if device.type == "cpu" and k >= 128 and k % 128 == 0 else k


# Order from which the Gram is formed as three GEMMs of its lower blocks (3/4 of the flops) instead of one.
BLOCKED_GRAM_MIN_ORDER = 256


def per_matrix(t: Tensor) -> Tensor:
    """A per-set tensor of shape ``batch`` viewed to broadcast against ``(*batch, k, k)``."""
    return t if t.ndim == 0 else t[..., None, None]


def product_into(
    out: Tensor, left: Tensor, right: Tensor, alpha: float, *, accumulate: bool = False
) -> Tensor:
    """``out = alpha·left @ right`` (``+=`` with ``accumulate``) in place, for one matrix or a batch."""
    beta = 1.0 if accumulate else 0.0
    if out.ndim == 2:
        return out.addmm_(left, right, beta=beta, alpha=alpha)
    return out.baddbmm_(left, right, beta=beta, alpha=alpha)


def scaled_gram(
    x: Tensor,
    scale: Tensor | float,
    n_side: bool,
    mode: ReduceMode,
    group: Any,
    *,
    gram_in_float64: bool,
    pad: bool,
    split: bool = False,
    centers: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``A = a·G`` (``G = XXᵀ`` or ``XᵀX``) in ``x``'s dtype, and the block of it whose mirror is unwritten.

    The matrix is zero-padded per :func:`padded_size`, and the Gram is written into it directly rather than
    copied. Only the lower triangle is read by the factorization, so from order ``BLOCKED_GRAM_MIN_ORDER``
    on the upper off-diagonal block is left at zero and never computed; ``||A||_F`` then needs the returned
    block counted twice. The second result is ``None`` when all of ``A`` was written.

    ``split`` (``d`` side only) sums the ``n`` rows around their mean ``μ``: ``XᵀX = X_cᵀX_c + n·μμᵀ``,
    for the sets :func:`mean_shift` picks; ``centers`` passes its mean and shift when already computed.
    Collapsing embeddings share one row, and a float32 sum of nearly equal terms rounds them all the same
    way. In ``XᵀX`` that error falls outside the shared row's direction, where it moves the unit eigenvalues
    of ``I + aXᵀX``. ``tests/test_gram_logdet.py`` holds collapsed features to the float32 contract with it.
    """
    batch, k = x.shape[:-2], x.shape[-2] if n_side else x.shape[-1]
    padded = padded_size(k, x.device) if pad else k
    if centers is None and split and not n_side:
        centers = mean_shift(x)[:2]
    mean = shift = None
    if centers is not None:
        mean, shift = centers
        x = x - shift
    rows = float(x.shape[-2])
    if gram_in_float64 or mode == "reduce":
        left, right = (x, x.mT) if n_side else (x.mT, x)
        gram = (left.double() @ right.double()).to(x.dtype) if gram_in_float64 else left @ right
        if mean is not None and shift is not None:
            product_into(gram, shift.mT, mean, rows, accumulate=True)
        if mode == "reduce":
            dist.all_reduce(gram, group=group)
        if padded != k:
            gram = torch.nn.functional.pad(gram, (0, padded - k, 0, padded - k))
        gram.mul_(per_matrix(scale) if isinstance(scale, Tensor) else scale)
        return gram, None
    blocked = k >= BLOCKED_GRAM_MIN_ORDER
    matrix = x.new_zeros(*batch, padded, padded) if padded != k or blocked else x.new_empty(*batch, k, k)
    # beta=0 ignores the (uninitialized) contents; a float scale rides on the GEMM.
    alpha = 1.0 if isinstance(scale, Tensor) else scale
    side = x if n_side else x.mT
    # The correction n·w·μμᵀ is the product of the shift w·μ (left) and the mean μ (right).
    left_mean = None if shift is None else shift.mT
    right_mean = None if mean is None else mean.mT
    mirrored = None
    if blocked:
        half = k // 2
        top, bottom = side[..., :half, :], side[..., half:, :]
        lt, lb = _halves(left_mean, half)
        rt, rb = _halves(right_mean, half)
        _block(matrix[..., :half, :half], top, top, lt, rt, alpha, rows)
        mirrored = _block(matrix[..., half:k, :half], bottom, top, lb, rt, alpha, rows)
        _block(matrix[..., half:k, half:k], bottom, bottom, lb, rb, alpha, rows)
    else:
        _block(matrix if padded == k else matrix[..., :k, :k], side, side, left_mean, right_mean, alpha, rows)
    if isinstance(scale, Tensor):
        matrix.mul_(per_matrix(scale))
    return matrix, mirrored


# The share of ``tr(XᵀX)`` that ``n·|μ|²`` must carry for the Gram to be summed around the mean.
SPLIT_MIN_MEAN_SHARE = 0.5


def mean_shift(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The row mean ``μ`` of each set, the shift ``w·μ`` its rows are summed around, and ``w`` (0 or 1).

    The split ``XᵀX = (X - μ)ᵀ(X - μ) + n·μμᵀ`` helps where the mean carries the energy (collapsed rows:
    the centered terms are small). Where it does not, centering makes terms that were zero or distinct
    into copies of ``-μ``, each rounded the same way against the few large ones: a set of a few non-zero
    rows loses percents. So each set is shifted (``w = 1``) only when ``n·|μ|²`` is at least
    ``SPLIT_MIN_MEAN_SHARE`` of ``tr(XᵀX)``, a choice made on the device (no host sync).
    """
    mean = x.mean(dim=-2, keepdim=True)
    mean_energy = mean.square().sum(dim=-1, keepdim=True) * x.shape[-2]
    energy = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).square()  # fused: no x² in memory
    weight = (mean_energy >= SPLIT_MIN_MEAN_SHARE * energy).to(x.dtype)
    return mean, mean * weight, weight


def _halves(mean: Tensor | None, half: int) -> tuple[Tensor | None, Tensor | None]:
    """The leading ``half`` entries of a ``(..., k, 1)`` mean column and the rest."""
    return (None, None) if mean is None else (mean[..., :half, :], mean[..., half:, :])


def _block(
    target: Tensor,
    left: Tensor,
    right: Tensor,
    left_mean: Tensor | None,
    right_mean: Tensor | None,
    alpha: float,
    rows: float,
) -> Tensor:
    """One block of ``a·G`` from the rows of ``X`` summed around their mean when the means are given."""
    product_into(target, left, right.mT, alpha)
    if left_mean is not None and right_mean is not None:
        product_into(target, left_mean, right_mean.mT, alpha * rows, accumulate=True)
    return target
