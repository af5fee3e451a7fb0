"""Input handling shared by the coding-rate losses: checks, the float32 island and preprocessing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_rate._validation import check_compute_dtype, check_positive
from jepa_rate.numerics.distributed import global_row_mean

__all__ = [
    "DEFAULT_EPS",
    "NONFINITE_POLICIES",
    "center_rows",
    "check_all_finite",
    "check_gram_finite",
    "output_dtype",
    "rate_scale_numerator",
    "to_compute_dtype",
]

# MCR²'s default: eps plays the role of eps² in R = 1/2 logdet(I + d/(n·eps) ZᵀZ).
DEFAULT_EPS = 0.5
NONFINITE_POLICIES = ("propagate", "raise")


def rate_scale_numerator(eps: float | None, alpha: float | None, d: int) -> float:
    """Returns ``c`` such that the scale is ``a = c / n``: ``d / eps``, or ``alpha`` when it is given.

    Raises:
        ValueError: When both ``eps`` and ``alpha`` are given, or either is not a finite positive number.
    """
    if alpha is not None:
        if eps is not None:
            raise ValueError(f"give either eps or alpha, not both (got eps={eps!r}, alpha={alpha!r})")
        return check_positive(alpha, "alpha")
    return d / check_positive(DEFAULT_EPS if eps is None else eps, "eps")


def output_dtype(z: Tensor) -> torch.dtype:
    """The dtype of a rate of ``z``: float64 for float64 input, float32 for every other (fp32 island)."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def to_compute_dtype(z: Tensor, compute_dtype: torch.dtype | None, *, normalize: bool = False) -> Tensor:
    """Casts ``z`` to the compute dtype and optionally L2-normalizes its rows.

    The compute dtype is float64 when ``z`` is float64 or ``compute_dtype=torch.float64``, else float32:
    bf16/fp16 features never reach the Gram matrix in their own precision. Must be called with autocast
    disabled.
    """
    dtype = check_compute_dtype(compute_dtype)
    if dtype is None:
        dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    x = z.to(dtype)
    if normalize:
        x = F.normalize(x, dim=-1)
    return x


def center_rows(x: Tensor, *, distributed: bool = False, group: Any = None) -> Tensor:
    """``x`` minus the mean of its rows (over all ranks when ``distributed``), in two passes.

    Near collapse the rows share a large common part: a one-pass float32 mean is off by ``u`` times that
    part, and every centered row carries the same error, a rank-one term as large as the spread it should
    measure (1e-2 relative on the rate seen at ``q ~ 1e-14``). Subtracting a first mean (a constant shift,
    no gradient) first leaves rows of the spread's size, whose mean the second pass takes accurately.
    """
    with torch.no_grad():
        shift = global_row_mean(x, group) if distributed else x.mean(dim=-2, keepdim=True)
    shifted = x - shift
    mean = global_row_mean(shifted, group) if distributed else shifted.mean(dim=-2, keepdim=True)
    return shifted - mean


def check_gram_finite(scaled_trace: Tensor, dtype: torch.dtype) -> None:
    """Raises ``ValueError`` if finite features overflowed the Gram matrix (for ``nonfinite="raise"``).

    Costs one device-to-host sync.
    """
    if not bool(scaled_trace.isfinite().all()):
        raise ValueError(
            f"the Gram matrix of the (finite) features overflowed {dtype}: their entries are too large for "
            "this dtype; pass compute_dtype=torch.float64, normalize=True or rescale the features"
        )


def check_all_finite(z: Tensor, name: str = "z") -> None:
    """Raises ``ValueError`` if ``z`` holds NaN or Inf. Costs one device-to-host sync."""
    finite = torch.isfinite(z)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ValueError(
            f"{name} contains NaN or Inf (first at index {tuple(bad)}, value {z[tuple(bad)].item()!r}); "
            "pass nonfinite='propagate' to get NaN out instead of this error"
        )
