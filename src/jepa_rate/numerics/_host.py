"""Branch choices the numerics kernel makes by reading values on the host, which on CPU costs no device sync.

Private to :mod:`jepa_rate.numerics`. On other devices, and while ``torch.compile`` traces, none of these
reads happen: :func:`decided_on_host` is false and the kernel computes every branch on the device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from jepa_rate.numerics._gram import ReduceMode

__all__ = [
    "FLOAT32_ROUNDOFF",
    "FLOAT64_ABOVE",
    "SPLIT_MIN_Q",
    "SPLIT_MIN_ROWS",
    "Float32Check",
    "any_on_host",
    "check_float32",
    "decided_on_host",
    "series_never_applies",
    "split_rows",
    "trace_bounds",
]


def decided_on_host(x: Tensor) -> bool:
    """Whether the rare branches (series, failed factor, non-finite input) are chosen by reading values.

    On CPU such a read is no device sync, and skipping the branches that do not apply saves a dozen small
    tensor ops, which at small sizes is most of the time of a step. On other devices, and while
    ``torch.compile`` traces (a data-dependent Python branch would break the graph), every branch is computed
    and selected on the device with :func:`torch.where`.
    """
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def trace_bounds(scaled_trace: Tensor) -> tuple[float, float]:
    """The smallest and the largest ``a·tr(G)`` of the batch (NaN if any is NaN), read in one sync."""
    if scaled_trace.numel() == 0:
        return math.inf, -math.inf
    if scaled_trace.ndim == 0:
        value = scaled_trace.item()
        return value, value
    low, high = (bound.item() for bound in torch.aminmax(scaled_trace))
    return low, high


def series_never_applies(bounds: tuple[float, float], k: int, series_below: float) -> bool:
    """Whether every trace is finite and large enough that no set's ``||A||_F`` can be below ``series_below``.

    ``||A||_F >= tr(A)/√k`` for a positive semi-definite ``k x k`` matrix, so the traces alone decide it. Then
    neither the series nor NaN propagation applies, and the kernel skips both.
    """
    low, high = bounds
    # NaN fails both comparisons.
    return low >= series_below * math.sqrt(k) and high < math.inf


# Estimated relative error of a float32 rate above which the CPU route recomputes it in float64.
FLOAT64_ABOVE = 1e-3
FLOAT32_ROUNDOFF = torch.finfo(torch.float32).eps / 2


class Float32Check(NamedTuple):
    """Outcome of :func:`check_float32`: whether to redo the call in float64, and ``M⁻¹`` if it was formed."""

    redo: bool
    inverse: Tensor | None


def check_float32(
    x: Tensor,
    mode: ReduceMode,
    bounds: tuple[float, float],
    scaled_trace: Tensor,
    series_error: Tensor | None,
    factor: Tensor,
    rate: Tensor,
    info: Tensor,
    any_failed: bool,
) -> Float32Check:
    """Whether any set's float32 factorization failed or may give a rate off by more than ``FLOAT64_ABOVE``.

    The error of each set is estimated relative to its rate ``R``. A set whose value comes from the series
    has the series' truncation error, ``series_error``. A set whose value comes from the factor has two
    rounding errors:

    * The Gram's rounding perturbs ``M = I + a·G`` by about ``q = u·a·tr(G)`` in norm, which moves
      ``log det M`` by up to ``q·tr(M⁻¹)`` (first order). That matters for the eigenvalues near 1, those of
      directions the features do not span; full-rank features keep it far below the threshold. Within the
      float32 contract (``q <= 1e-3``) it is not counted. ``tr(M⁻¹)`` needs ``M⁻¹``, which is returned so
      that the backward does not form it again.
    * Each pivot is rounded to ``u`` relative, ``k·u/2`` on ``R`` in all, which matters when ``R`` is small
      but above the series (``tests/test_gram_logdet.py`` measures it near the series threshold).

    A failed factorization of finite input counts as inaccurate. Sets with a non-finite trace (NaN to
    propagate) are not checked. Each set is judged on its own, so an odd neighbour in the batch never hides
    an inaccurate one. The rows are needed, so not after ``all_reduce``.

    Args:
        x: The features (only the dtype is read).
        mode: The reduce mode of the kernel.
        bounds: :func:`trace_bounds` of ``scaled_trace``.
        scaled_trace: ``a·tr(G)`` per set.
        series_error: Per set, ``||A||_F³/6`` where the series gives its value and a negative number
            elsewhere; ``None`` when no set takes the series.
        factor: The unpadded Cholesky factor per set, failed ones already replaced by a unit one.
        rate: The rate per set: the series where it applies, ``Σ log L_ii`` elsewhere.
        info: The factorization status per set.
        any_failed: Whether any factorization may have failed (``info`` is read only then).
    """
    if x.dtype != torch.float32 or mode == "reduce":
        return Float32Check(False, None)
    k = factor.shape[-1]
    low, high = bounds
    u = FLOAT32_ROUNDOFF
    # Host-side fast path, the common case: every q within the contract, and R >= log1p(tr)/2 (the rate of
    # a rank-one spectrum, the smallest at a given trace) large enough for the pivot rounding.
    if not any_failed and u * high <= FLOAT64_ABOVE and k * u <= FLOAT64_ABOVE * math.log1p(max(low, 0.0)):
        return Float32Check(False, None)
    checked = scaled_trace.isfinite()
    if any_failed and bool((checked & (info != 0)).any()):
        return Float32Check(True, None)
    q = u * scaled_trace
    inverse: Tensor | None = None
    gram_error = torch.zeros_like(q)
    if bool((q > FLOAT64_ABOVE).any()):
        inverse = torch.cholesky_inverse(factor)
        gram_error = torch.where(q > FLOAT64_ABOVE, q * inverse.diagonal(dim1=-2, dim2=-1).sum(-1), 0.0)
    error = gram_error + 0.5 * k * u
    if series_error is not None:
        error = torch.where(series_error >= 0, series_error, error)
    # Compared without dividing, so a zero rate with zero error passes; ``~(a <= b)`` flags NaN as well.
    return Float32Check(bool((checked & ~(error <= FLOAT64_ABOVE * rate)).any()), inverse)


# When the d-side Gram is summed around the row mean (see ``_gram.scaled_gram``): with at least this many
# rows, and, where a host read can tell, with q = u·a·tr(XᵀX) at least this large. Below either, the plain
# float32 sum keeps collapsed features within the float32 contract (``tests/test_gram_logdet.py``).
SPLIT_MIN_ROWS = 128
SPLIT_MIN_Q = 1e-4


def split_rows(x: Tensor, scale: Tensor | float) -> bool:
    """Whether the ``d``-side Gram of ``x`` may be summed around the row mean (``_gram.mean_shift`` then
    picks the sets).

    Always from ``SPLIT_MIN_ROWS`` rows on, except where a host read (CPU, see :func:`decided_on_host`)
    shows ``q < SPLIT_MIN_Q`` for every set: that costs one reduction and saves two passes over ``x``.
    """
    if x.shape[-2] < SPLIT_MIN_ROWS or x.numel() == 0:
        return False
    if not decided_on_host(x):
        return True
    largest = scale if isinstance(scale, float) else scale.max().item()
    # ||x||² over the whole batch bounds every set's tr(XᵀX).
    energy = torch.linalg.vector_norm(x).item() ** 2
    return not torch.finfo(x.dtype).eps / 2 * largest * energy < SPLIT_MIN_Q


def any_on_host(info: Tensor) -> bool:
    """Whether any factorization failed, read on the host (CPU only, see :func:`decided_on_host`)."""
    return bool(info.item()) if info.ndim == 0 else bool(info.any())
