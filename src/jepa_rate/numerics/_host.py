"""Branch choices the numerics kernel makes by reading values on the host, which on CPU costs no device sync.

Private to :mod:`jepa_rate.numerics`. On other devices, and while ``torch.compile`` traces, none of these
reads happen: :func:`decided_on_host` is false and the kernel computes every branch on the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from jepa_rate.numerics._gram import ReduceMode

__all__ = [
    "FLOAT64_ABOVE",
    "SPLIT_MIN_Q",
    "SPLIT_MIN_ROWS",
    "any_on_host",
    "decided_on_host",
    "needs_float64",
    "regular_on_host",
    "split_rows",
]


def decided_on_host(x: Tensor) -> bool:
    """Whether the rare branches (series, failed factor, non-finite input) are chosen by reading values.

    On CPU such a read is no device sync, and skipping the branches that do not apply saves a dozen small
    tensor ops, which at small sizes is most of the time of a step. On other devices, and while
    ``torch.compile`` traces (a data-dependent Python branch would break the graph), every branch is computed
    and selected on the device with :func:`torch.where`.
    """
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def regular_on_host(scaled_trace: Tensor, threshold: float) -> float | None:
    """The largest ``a·tr(G)`` when every one is finite and at least ``threshold`` (no series, no NaN to
    propagate), else ``None``."""
    if scaled_trace.numel() == 0:
        return 0.0
    if scaled_trace.ndim == 0:
        low = high = scaled_trace.item()
    else:
        low, high = (bound.item() for bound in torch.aminmax(scaled_trace))
    # NaN fails both comparisons.
    return high if low >= threshold and high < math.inf else None


# Estimated relative error of a float32 rate above which the CPU route recomputes it in float64.
FLOAT64_ABOVE = 1e-3
_FLOAT32_ROUNDOFF = torch.finfo(torch.float32).eps / 2


def needs_float64(x: Tensor, mode: ReduceMode, largest_trace: float, pivots: Tensor, rate: Tensor) -> bool:
    """Whether a successful float32 factorization may still give a rate off by more than ``FLOAT64_ABOVE``.

    The float32 Gram's rounding moves each eigenvalue of ``I + a·G`` by up to about ``q = u·a·tr(G)``, which
    matters for the eigenvalues near 1, those of directions the features do not span. ``Σ 1/L_ii²`` (a lower
    bound of ``tr(M⁻¹)``) counts them, so ``q·Σ 1/L_ii² / R`` estimates the relative error. It is a bound,
    not a measurement: on rank-deficient features it overestimates the error severalfold, so some sets are
    recomputed that were accurate enough; full-rank features keep it far below the threshold. Within the
    float32 contract (``q <= 1e-3``) nothing is checked. The rows are needed, so not after ``all_reduce``.
    """
    q = _FLOAT32_ROUNDOFF * largest_trace
    if x.dtype != torch.float32 or mode == "reduce" or q <= FLOAT64_ABOVE:
        return False
    # sqrt(Σ 1/L_ii²) in two ops; the rest on the host, where the few values cost nothing to combine.
    spread = torch.linalg.vector_norm(pivots.reciprocal(), dim=-1)
    if spread.ndim == 0:
        return bool(q * spread.item() ** 2 > FLOAT64_ABOVE * rate.item())
    return bool(q * spread.square_().div_(rate).max().item() > FLOAT64_ABOVE)


# When the d-side Gram is summed around the row mean (see ``_gram.scaled_gram``): with at least this many
# rows, and, where a host read can tell, with q = u·a·tr(XᵀX) at least this large. Below either, the plain
# float32 sum keeps collapsed features within the float32 contract (``tests/test_gram_logdet.py``).
SPLIT_MIN_ROWS = 128
SPLIT_MIN_Q = 1e-4


def split_rows(x: Tensor, scale: Tensor | float) -> bool:
    """Whether the ``d``-side Gram of ``x`` is summed around the row mean.

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
