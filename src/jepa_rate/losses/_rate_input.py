"""What the coding-rate losses share: their settings, checked once, and the input handling of every call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_rate._validation import check_bool, check_choice, check_compute_dtype, check_positive
from jepa_rate.numerics.distributed import global_row_mean, require_process_group
from jepa_rate.numerics.gram_logdet import FALLBACKS, Fallback

__all__ = [
    "DEFAULT_EPS",
    "NONFINITE_POLICIES",
    "RateSettings",
    "center_rows",
    "check_all_finite",
    "check_gram_finite",
    "output_dtype",
    "to_compute_dtype",
]

# MCR²'s default: eps plays the role of eps² in R = 1/2 logdet(I + d/(n·eps) ZᵀZ).
DEFAULT_EPS = 0.5
NONFINITE_POLICIES = ("propagate", "raise")


@dataclass(frozen=True)
class RateSettings:
    """The settings of the coding rate (see :func:`jepa_rate.coding_rate`), checked once when built.

    :func:`~jepa_rate.coding_rate` builds one per call, :class:`~jepa_rate.CodingRateLoss` one at
    construction, and :func:`~jepa_rate.rate_reduction` shares the fields it has; the computation trusts
    them. Numbers are stored as Python floats (a NumPy scalar is accepted).

    Examples:
        >>> RateSettings(eps=0.25).scale_numerator(64)
        256.0
        >>> RateSettings(alpha=2.0, center=True).scale_numerator(64)
        2.0
    """

    eps: float | None = None
    alpha: float | None = None
    center: bool = False
    normalize: bool = False
    compute_dtype: torch.dtype | None = None
    gather_distributed: bool = False
    group: Any = None
    nonfinite: str = "propagate"
    fallback: Fallback = "zero"

    def __post_init__(self) -> None:
        if self.alpha is not None:
            if self.eps is not None:
                raise ValueError(
                    f"give either eps or alpha, not both (got eps={self.eps!r}, alpha={self.alpha!r})"
                )
            object.__setattr__(self, "alpha", check_positive(self.alpha, "alpha"))
        elif self.eps is not None:
            object.__setattr__(self, "eps", check_positive(self.eps, "eps"))
        check_bool(self.center, "center")
        check_bool(self.normalize, "normalize")
        check_compute_dtype(self.compute_dtype)
        check_bool(self.gather_distributed, "gather_distributed")
        check_choice(self.nonfinite, "nonfinite", NONFINITE_POLICIES)
        check_choice(self.fallback, "fallback", FALLBACKS)

    def scale_numerator(self, d: int) -> float:
        """``c`` such that the scale is ``a = c / n``: ``alpha``, or ``d / eps``."""
        if self.alpha is not None:
            return self.alpha
        return d / (DEFAULT_EPS if self.eps is None else self.eps)

    def describe(self) -> str:
        """The settings as ``name=value`` pairs, the scale as ``eps`` or ``alpha`` (for a module's repr)."""
        scale = f"alpha={self.alpha}" if self.alpha is not None else f"eps={self.eps or DEFAULT_EPS}"
        return (
            f"{scale}, center={self.center}, normalize={self.normalize}, compute_dtype={self.compute_dtype}, "
            f"gather_distributed={self.gather_distributed}, nonfinite={self.nonfinite!r}, "
            f"fallback={self.fallback!r}"
        )

    def require_group(self) -> None:
        """With ``gather_distributed``, checks that a process group is there (checked per call: it may be
        initialized after the loss is built)."""
        if self.gather_distributed:
            require_process_group(self.group)


def output_dtype(z: Tensor) -> torch.dtype:
    """The dtype of a rate of ``z``: float64 for float64 input, float32 for every other (fp32 island)."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def to_compute_dtype(z: Tensor, compute_dtype: torch.dtype | None, *, normalize: bool = False) -> Tensor:
    """Casts ``z`` to the compute dtype and optionally L2-normalizes its rows.

    The compute dtype is float64 when ``z`` is float64 or ``compute_dtype=torch.float64``, else float32:
    bf16/fp16 features never reach the Gram matrix in their own precision. Must be called with autocast
    disabled.
    """
    dtype = compute_dtype
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
