"""The MCR² rate reduction ``ΔR = R(Z) - Σ_j (n_j/n) R(Z_j)`` for labelled or clustered embeddings."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from jepa_rate._validation import check_feature_tensor, check_positive
from jepa_rate.losses._rate_input import (
    DEFAULT_EPS,
    RateSettings,
    check_all_finite,
    check_gram_finite,
    output_dtype,
    to_compute_dtype,
)
from jepa_rate.numerics.gram_logdet import Fallback, beyond_float32_contract, half_logdet
from jepa_rate.numerics.precision import float32_island

__all__ = ["RateReduction", "RateReductionComponents", "RateReductionLoss", "rate_reduction"]


class RateReduction(NamedTuple):
    """Output of :func:`rate_reduction`.

    Attributes:
        delta: ``expand - compress``, the rate reduction to maximize.
        expand: ``R(Z) = 1/2 logdet(I + d/(n·eps) ZᵀZ)``, the rate of the whole batch.
        compress: ``Σ_j (n_j/n)·1/2 logdet(I + d/(n_j·eps) Z_jᵀZ_j)``, the size-weighted rate of each class.
        fallback_count: How many of the rates (the whole batch's and each class's) had a failed
            factorization and took the fallback (int64); see :func:`jepa_rate.coding_rate`.
        beyond_contract_count: How many of those rates lie beyond the float32 contract where nothing checks
            them (int64); see :class:`jepa_rate.CodingRateComponents`.
    """

    delta: Tensor
    expand: Tensor
    compress: Tensor
    fallback_count: Tensor
    beyond_contract_count: Tensor


class RateReductionComponents(NamedTuple):
    """The terms of :class:`RateReductionLoss` for logging: ``loss = compress - gamma·expand`` and the
    rest (see :class:`RateReduction`)."""

    loss: Tensor
    delta: Tensor
    expand: Tensor
    compress: Tensor
    fallback_count: Tensor
    beyond_contract_count: Tensor


def _check_num_classes(num_classes: object) -> int | None:
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise TypeError(f"num_classes must be an int or None, got {num_classes!r}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def _check_labels(labels: object, z: Tensor) -> Tensor:
    n = z.shape[0]
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape (n,) = ({n},) to match z, got shape {tuple(labels.shape)}")
    if z.is_meta or labels.is_meta:
        # The class sizes set the shapes of the computation, and a meta tensor holds no values to read them.
        raise ValueError(
            "rate_reduction reads the class sizes from the label values, which a meta tensor does not hold: "
            f"got z on {z.device} and labels on {labels.device}"
        )
    return labels


def _class_sizes(labels: Tensor, num_classes: int | None) -> tuple[Tensor, Tensor, list[int]]:
    """The labels renumbered over the classes present, their counts on the device and on the host.

    Sized by the classes present, never by the largest label value (a label of 10⁹ would otherwise size a
    count array of 10⁹). Reading the counts is the one deliberate sync: shapes depend on them.
    """
    present, compact, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    *sizes, lo_value, hi_value = torch.cat([counts, present[:1], present[-1:]]).tolist()
    if lo_value < 0 or (num_classes is not None and hi_value >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes or 'num_classes'}), got min {lo_value} and max {hi_value}"
        )
    return compact, counts, sizes


def _size_buckets(sizes: list[int]) -> list[list[int]]:
    """Groups non-empty classes whose sizes share a power-of-two range, so padding wastes at most 2x rows.

    Padding a class with zero rows leaves its rate unchanged on either side (zero rows add nothing to ZᵀZ and
    add an identity block to I + aZZᵀ), so one batched call per bucket is exact. Each bucket then factors its
    cheaper side, ``min(n_max, d)``. This is never costlier in flops than one block-diagonal ``n x n``
    factorization (``Σ_j k_j³ <= n³``) and needs at most ``log2(n) + 1`` calls instead of one per class.
    """
    buckets: dict[int, list[int]] = {}
    for j, size in enumerate(sizes):
        if size > 0:
            buckets.setdefault((size - 1).bit_length(), []).append(j)
    return [buckets[key] for key in sorted(buckets)]


def rate_reduction(
    z: Tensor,
    labels: Tensor,
    *,
    num_classes: int | None = None,
    eps: float | None = None,
    normalize: bool = False,
    compute_dtype: torch.dtype | None = None,
    nonfinite: str = "propagate",
    fallback: Fallback = "zero",
) -> RateReduction:
    """The MCR² rate reduction of embeddings ``z`` grouped by ``labels``.

    ``ΔR = R(Z) - Σ_j (n_j/n) R(Z_j)`` with ``R(Z_j) = 1/2 logdet(I + d/(n_j·eps) Z_jᵀZ_j)``, as in the MCR²
    code (``eps`` plays the role of eps²). The class terms are computed in a few batched calls (classes
    grouped by size, zero-padded, each group on its cheaper side), with no Python loop over classes and no
    ``n x n`` membership matrix. Reading the class sizes is one host sync, and a graph break under
    ``torch.compile`` (which compiles it without ``fullgraph=True``).

    Args:
        z: Embeddings, ``(n, d)``.
        labels: Class (or cluster) index of each row, integers in ``[0, num_classes)``.
        num_classes: Number of classes, checked against the labels; default: any non-negative label.
            Empty classes contribute nothing, and memory follows the classes present, not the label values.
        eps: The distortion (as eps²), > 0. Default (``None``) 0.5, MCR²'s.
        normalize: L2-normalize the rows first (MCR² normalizes its features).
        compute_dtype: See :func:`jepa_rate.coding_rate`.
        nonfinite: See :func:`jepa_rate.coding_rate`.
        fallback: See :func:`jepa_rate.coding_rate`.

    Returns:
        A :class:`RateReduction` of scalars (float32, or float64 for float64 input).

    Raises:
        TypeError: If ``z`` is not floating or ``labels`` not integer.
        ValueError: For a bad shape, labels of the wrong length or out of range, a non-positive ``eps``, or
            ``z`` or ``labels`` on the meta device (the class sizes are read from the labels).

    Shape:
        - z: ``(n, d)``
        - labels: ``(n,)``

    Examples:
        >>> z = torch.randn(100, 16)
        >>> labels = torch.arange(100) % 4
        >>> out = rate_reduction(z, labels, eps=0.5)
        >>> bool(out.delta > 0), bool(torch.isclose(out.delta, out.expand - out.compress))
        (True, True)
    """
    settings = RateSettings(
        eps=eps, normalize=normalize, compute_dtype=compute_dtype, nonfinite=nonfinite, fallback=fallback
    )
    return _rate_reduction(z, labels, _check_num_classes(num_classes), settings)


def _rate_reduction(
    z: Tensor, labels: object, num_classes: int | None, settings: RateSettings
) -> RateReduction:
    """:func:`rate_reduction` under checked settings: the checks of ``z`` and ``labels`` happen here."""
    check_feature_tensor(z)
    if z.ndim != 2:
        raise ValueError(f"z must have shape (n, d) for rate_reduction, got shape {tuple(z.shape)}")
    n, d = z.shape
    labels = _check_labels(labels, z)
    if settings.nonfinite == "raise":
        check_all_finite(z)
    compact, counts, sizes = _class_sizes(labels.to(device=z.device, dtype=torch.long), num_classes)
    order = torch.argsort(compact, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    numerator = settings.scale_numerator(d)
    fallback = settings.fallback

    with float32_island(z.device):
        x = to_compute_dtype(z, settings.compute_dtype, normalize=settings.normalize)
        whole = half_logdet(x, numerator / n, "local", None, fallback)
        expand, failures, traces = whole.rate, whole.failed.sum(), [whole.scaled_trace.reshape(1)]
        beyond = beyond_float32_contract(x, "local", whole.scaled_trace).sum()
        padded_source = torch.cat([x, x.new_zeros(1, d)])  # row n is the zero row used for padding
        compress = x.new_zeros(())
        for classes in _size_buckets(sizes):
            cls = torch.tensor(classes, device=z.device)
            width = max(sizes[j] for j in classes)
            slot = torch.arange(width, device=z.device)
            rows = order[(starts[cls, None] + slot).clamp_max(n - 1)]
            rows = torch.where(slot < counts[cls, None], rows, n)
            size = counts[cls].to(x.dtype)
            # index_select rather than advanced indexing: its backward is a plain index_add.
            members = padded_source.index_select(0, rows.flatten()).view(len(classes), width, d)
            per_class = half_logdet(members, numerator / size, "local", None, fallback)
            compress = compress + (size / n * per_class.rate).sum()
            failures = failures + per_class.failed.sum()
            beyond = beyond + beyond_float32_contract(x, "local", per_class.scaled_trace).sum()
            traces.append(per_class.scaled_trace)
    if settings.nonfinite == "raise":
        check_gram_finite(torch.cat(traces), x.dtype)
    out_dtype = output_dtype(z)
    expand, compress = expand.to(out_dtype), compress.to(out_dtype)
    return RateReduction(expand - compress, expand, compress, failures, beyond)


class RateReductionLoss(nn.Module):
    """The MCR² objective to minimize: ``compress - gamma · expand`` (``= -ΔR`` at ``gamma = 1``).

    ``gamma`` is MCR²'s ``gam2``; MCR²'s ``gam1`` (a factor inside the expand logdet) corresponds to using
    ``eps / gam1`` for the expand term and is not exposed.

    Args:
        eps: See :func:`rate_reduction`.
        gamma: Weight of the expand term, > 0.
        num_classes: See :func:`rate_reduction`.
        normalize: See :func:`rate_reduction`.
        compute_dtype: See :func:`jepa_rate.coding_rate`.
        nonfinite: See :func:`jepa_rate.coding_rate`.
        fallback: See :func:`jepa_rate.coding_rate`.

    Shape:
        - z: ``(n, d)``; labels: ``(n,)``; output: scalar.

    Examples:
        >>> loss_fn = RateReductionLoss(eps=0.5, num_classes=3)
        >>> z = torch.nn.functional.normalize(torch.randn(30, 8), dim=1).requires_grad_()
        >>> loss_fn(z, torch.arange(30) % 3).backward()
        >>> z.grad.shape
        torch.Size([30, 8])
    """

    def __init__(
        self,
        eps: float | None = None,
        *,
        gamma: float = 1.0,
        num_classes: int | None = None,
        normalize: bool = False,
        compute_dtype: torch.dtype | None = None,
        nonfinite: str = "propagate",
        fallback: Fallback = "zero",
    ) -> None:
        super().__init__()
        self.gamma = check_positive(gamma, "gamma")
        self.num_classes = _check_num_classes(num_classes)
        self.settings = RateSettings(
            eps=eps, normalize=normalize, compute_dtype=compute_dtype, nonfinite=nonfinite, fallback=fallback
        )

    def extra_repr(self) -> str:
        settings = self.settings
        return (
            f"eps={settings.eps or DEFAULT_EPS}, gamma={self.gamma}, num_classes={self.num_classes}, "
            f"normalize={settings.normalize}"
        )

    def forward_components(self, z: Tensor, labels: Tensor) -> RateReductionComponents:
        """Returns the loss with ``delta``, ``expand`` and ``compress``, from one evaluation."""
        out = _rate_reduction(z, labels, self.num_classes, self.settings)
        return RateReductionComponents(out.compress - self.gamma * out.expand, *out)

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """Returns ``compress - gamma · expand``."""
        return self.forward_components(z, labels).loss
