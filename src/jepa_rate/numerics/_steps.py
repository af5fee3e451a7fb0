"""The steps of the kernel's forward pass, each a function that can be run and tested alone.

Private to :mod:`jepa_rate.numerics`. :class:`jepa_rate.numerics.gram_logdet._GramHalfLogdet` runs them in
order: gather the rows, form the scaled Gram, take the series where it applies, factor, redo inaccurate
float32 sets in float64 (CPU only), and pick the value. Why each step does what it does is explained in
``docs/concepts/coding_rate.md``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from jepa_rate.numerics import _host
from jepa_rate.numerics._gram import ReduceMode, mean_shift, per_matrix, scaled_gram

__all__ = [
    "Factor",
    "Series",
    "cholesky_factor",
    "form_gram",
    "gather_rows",
    "qr_factor",
    "redo_inaccurate_float32",
    "select_value",
    "series_branch",
]


class Series(NamedTuple):
    """The two-term series ``tr(A)/2 - tr(A²)/4`` per set, where it is used, and its truncation error."""

    use: Tensor
    value: Tensor
    error: Tensor


class Factor(NamedTuple):
    """A lower-triangular factor ``L`` of ``I + a·G`` per set and what it gives.

    Attributes:
        chol: ``L`` (padded per ``_gram.padded_size`` on the Cholesky route).
        info: The factorization status (0: success).
        failed: Where the factorization failed (its factor replaced by a unit one); ``None`` when a host read
            showed that none did.
        logdet: ``Σ log |L_ii|``, in the dtype of the features.
        may_have_failed: Whether ``info`` may hold a failure (``False`` only after a host read).
        float64: Whether ``chol`` is the float64 factor of the CPU redo.
    """

    chol: Tensor
    info: Tensor
    failed: Tensor | None
    logdet: Tensor
    may_have_failed: bool = False
    float64: bool = False


def gather_rows(x: Tensor, mode: ReduceMode, group: Any) -> tuple[Tensor, int]:
    """With ``mode="gather"``, the rows of all ranks and this rank's first row in them; else ``x`` and 0.

    ``(world·B, n, d)`` is gathered and laid out as ``(B, world·n, d)``: rank ``r``'s rows sit at
    ``[r·n, (r+1)·n)``.
    """
    if mode != "gather":
        return x, 0
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    gathered = x.new_empty((world * x.shape[0], *x.shape[1:]))
    dist.all_gather_into_tensor(gathered, x.contiguous(), group=group)
    if x.ndim == 3:
        gathered = gathered.view(world, -1, *x.shape[1:]).transpose(0, 1).flatten(1, 2)
    return gathered, rank * x.shape[-2]


def form_gram(
    rows: Tensor,
    scale: Tensor | float,
    n_side: bool,
    mode: ReduceMode,
    group: Any,
    *,
    gram_in_float64: bool,
    orthogonal: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """``A = a·G`` as ``_gram.scaled_gram`` forms it (padded unless for QR), its unwritten mirror block and
    ``a·tr(G)`` per set; the ``d`` side may be summed around the row mean (``_host.split_rows``)."""
    centers = None
    if not (n_side or orthogonal or gram_in_float64) and _host.split_rows(rows, scale):
        mean, shift, weight = mean_shift(rows)
        # Where values are read on the host, a batch in which no set takes the shift skips the subtraction.
        if not _host.decided_on_host(rows) or bool(weight.any()):
            centers = (mean, shift)
    matrix, mirrored = scaled_gram(
        rows, scale, n_side, mode, group, gram_in_float64=gram_in_float64, pad=not orthogonal, centers=centers
    )
    # Padding is zero, so the trace and the norm of the padded matrix are those of a·G.
    return matrix, mirrored, matrix.diagonal(dim1=-2, dim2=-1).sum(-1)


def series_branch(matrix: Tensor, mirrored: Tensor | None, scaled_trace: Tensor, limit: float) -> Series:
    """The series per set, used where ``||A||_F < limit``; ``A`` is ``matrix`` before ``I`` is added.

    ``mirrored`` is the block whose mirror was left unwritten (see ``_gram.scaled_gram``): counted twice.
    """
    norm = torch.linalg.vector_norm(matrix, dim=(-2, -1))
    if mirrored is not None:
        norm = torch.hypot(norm, torch.linalg.vector_norm(mirrored, dim=(-2, -1)))
    use = norm < limit
    value = torch.addcmul(scaled_trace, norm, norm, value=-0.5).mul_(0.5)  # tr(A)/2 - tr(A²)/4
    return Series(use, value, torch.where(use, norm**3 / 6, -1.0))


def cholesky_factor(matrix: Tensor, *, known_regular: bool) -> Factor:
    """The Cholesky factor of ``I + matrix``, formed in place; a failed set's factor becomes a unit one.

    ``known_regular``: a host read showed finite traces above the series, so the status is read on the host
    (CPU) and the masked fill is skipped when nothing failed.
    """
    matrix.diagonal(dim1=-2, dim2=-1).add_(1.0)
    chol, info = torch.linalg.cholesky_ex(matrix)
    may_have_failed = not known_regular or _host.any_on_host(info)
    failed = None
    if may_have_failed:
        failed = info != 0
        # A failed factor holds garbage (possibly a zero pivot, on which cholesky_inverse raises). Read as
        # lower-triangular, a matrix of ones is a unit factor: log-determinant 0, the fallback value, and a
        # small finite inverse. In place, keeping the column-major layout cholesky_inverse reads.
        chol.masked_fill_(per_matrix(failed), 1.0)
    logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return Factor(chol, info, failed, logdet, may_have_failed)


def qr_factor(x: Tensor, scale: Tensor | float, n_side: bool) -> Factor:
    """The factor ``L = Rᵀ`` from a Householder QR of ``B = [√a·X_side; I_k]``, which never fails.

    ``BᵀB = I + a·G`` exactly, and the rounding of QR perturbs the singular values of ``B`` (all >= 1) by
    ``~u·√(a·||G||)``: the square root of the Gram route's error. R's diagonal may be negative;
    ``L Lᵀ = RᵀR`` holds regardless, and the log-determinant uses ``|diag|``.
    """
    side = x.mT if n_side else x
    k = side.shape[-1]
    root = per_matrix(scale.sqrt()) if isinstance(scale, Tensor) else scale**0.5
    eye = torch.eye(k, dtype=x.dtype, device=x.device).expand(*x.shape[:-2], k, k)
    chol = torch.linalg.qr(torch.cat([side * root, eye], dim=-2), mode="r").R.mT
    info = torch.zeros(x.shape[:-2], dtype=torch.int32, device=x.device)
    return Factor(chol, info, None, chol.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1))


def redo_inaccurate_float32(
    x: Tensor,
    scale: Tensor | float,
    n_side: bool,
    mode: ReduceMode,
    factor: Factor,
    series: Series | None,
    scaled_trace: Tensor,
    bounds: tuple[float, float],
) -> tuple[Factor, Tensor | None]:
    """The CPU precision policy: the float64 QR factor when a float32 set may be off by more than 1e-3.

    Runs only where values are read on the host (``bounds`` are the traces read there). The estimate is
    ``_host.check_float32``; a redo covers the whole batch and its factor serves the backward. Otherwise
    the factor is returned as it is, with ``M⁻¹`` when the estimate formed it (``None`` otherwise).
    """
    k = x.shape[-2] if n_side else x.shape[-1]
    unpadded = factor.chol if factor.chol.shape[-1] == k else factor.chol[..., :k, :k]
    rate, series_error = factor.logdet, None
    if series is not None:
        rate, series_error = torch.where(series.use, series.value, factor.logdet), series.error
    check = _host.check_float32(
        x, mode, bounds, scaled_trace, series_error, unpadded, rate, factor.info, factor.may_have_failed
    )
    if not check.redo:
        return factor, check.inverse
    redone = qr_factor(x.double(), scale.double() if isinstance(scale, Tensor) else scale, n_side)
    return redone._replace(
        info=torch.zeros_like(factor.info), logdet=redone.logdet.to(x.dtype), float64=True
    ), None


def select_value(factor: Factor, series: Series | None, scaled_trace: Tensor) -> tuple[Tensor, Tensor | None]:
    """The rate per set, and the NaN probe (``None`` when a host read showed every trace finite).

    The series replaces the factor's value where it applies, except after the float64 redo, whose factor
    beats the series at any trace. The probe is 0 for finite input and NaN otherwise: non-finite input
    comes out NaN whatever the factorization did (LAPACK flags NaN as a failure, cuSOLVER need not).
    """
    if series is None:
        return factor.logdet, None
    value = factor.logdet if factor.float64 else torch.where(series.use, series.value, factor.logdet)
    probe = scaled_trace - scaled_trace
    return value.add_(probe), probe
