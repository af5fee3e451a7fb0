"""The coding rate ``R(Z) = 1/2 logdet(I + d/(n·eps) ZᵀZ)`` as a function and as a loss module."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from jepa_rate._validation import check_feature_tensor, check_nonnegative
from jepa_rate.losses._rate_input import (
    RateSettings,
    center_rows,
    check_all_finite,
    check_gram_finite,
    output_dtype,
    to_compute_dtype,
)
from jepa_rate.numerics.distributed import world_size
from jepa_rate.numerics.gram_logdet import (
    Fallback,
    GramLogdet,
    ReduceMode,
    beyond_float32_contract,
    half_logdet,
)
from jepa_rate.numerics.precision import float32_island

__all__ = ["CodingRateComponents", "CodingRateLoss", "coding_rate"]


class CodingRateComponents(NamedTuple):
    """The terms of :class:`CodingRateLoss`, for logging. All are tensors: computing them syncs nothing
    (reading their values on the host does).

    Attributes:
        loss: ``-weight * rate``, the quantity to minimize.
        rate: The coding rate ``R``, averaged over leading batch dimensions.
        normalized_rate: ``R / R_max`` in ``[0, 1]``, averaged likewise, where ``R_max = k/2·log(1 +
            a·tr(ZᵀZ)/k)``
            (``k = min(n, d)``) is the AM-GM bound at the batch's own energy: 1 means an isotropic spectrum,
            ``~1/k`` a collapse onto one direction. 0 for an all-zero batch.
        scale: The effective scale ``a`` in ``I + a ZᵀZ`` (uses the global ``n`` when distributed).
        fallback_count: How many sets had a failed factorization and took the fallback (int64).
        beyond_contract_count: How many float32 sets had ``q = u·a·tr(ZᵀZ) > 1e-3`` on a route that does not
            check accuracy on the host (CUDA, ``torch.compile``, after a distributed ``all_reduce``): if
            their features are rank-deficient, their rate and gradient may be off by more than 1e-3
            (int64, counted on the device). Always 0 in float64 and in eager mode on CPU.
    """

    loss: Tensor
    rate: Tensor
    normalized_rate: Tensor
    scale: Tensor
    fallback_count: Tensor
    beyond_contract_count: Tensor


class _RateResult(NamedTuple):
    core: GramLogdet
    rows: Tensor  # what the kernel factored, for the contract count of forward_components
    mode: ReduceMode
    scale: float
    k: int


def _rate(z: Tensor, settings: RateSettings) -> _RateResult:
    """The rate of each set of ``z`` under checked ``settings``: the checks of ``z`` itself happen here."""
    check_feature_tensor(z)
    settings.require_group()
    if settings.nonfinite == "raise":
        check_all_finite(z)
    n, d = z.shape[-2], z.shape[-1]
    distributed = settings.gather_distributed
    total_n = n * world_size(settings.group) if distributed else n
    mode: ReduceMode = "local"
    if distributed:
        mode = "reduce" if d <= total_n else "gather"
    with float32_island(z.device):
        x = to_compute_dtype(z, settings.compute_dtype, normalize=settings.normalize)
        if settings.center:
            x = center_rows(x, distributed=distributed, group=settings.group)
        if x.ndim > 3:
            # One matrix or one batch dimension go through as they are: a reshape would add autograd nodes.
            x = x.reshape(-1, n, d)
        scale = settings.scale_numerator(d) / total_n
        core = half_logdet(x, scale, mode, settings.group, settings.fallback)
    if settings.nonfinite == "raise":
        check_gram_finite(core.scaled_trace, x.dtype)
    out_dtype = output_dtype(z)
    if core.rate.dtype != out_dtype:
        # compute_dtype=float64 for lower-precision input comes back as float32, compute_dtype=float32 for
        # float64 input as float64: the output follows the input.
        core = GramLogdet(core.rate.to(out_dtype), core.info, core.scaled_trace.to(out_dtype))
    return _RateResult(core, x, mode, scale, min(total_n, d))


def coding_rate(
    z: Tensor,
    *,
    eps: float | None = None,
    alpha: float | None = None,
    center: bool = False,
    normalize: bool = False,
    compute_dtype: torch.dtype | None = None,
    gather_distributed: bool = False,
    group: Any = None,
    nonfinite: str = "propagate",
    fallback: Fallback = "zero",
) -> Tensor:
    """The coding rate ``R(Z) = 1/2 logdet(I + a ZᵀZ)`` of each set of ``n`` embeddings of dimension ``d``.

    ``a = d / (n·eps)`` by default, or ``a = alpha / n`` when ``alpha`` is given. **``eps`` plays the role of
    eps² exactly as in the MCR² code** (``scalar = p / (m * eps)``), so ``alpha = d / eps``. The seq-JEPA
    "Step 2" regularizer ``logdet(I + alpha·C)``, ``C = Z_cᵀZ_c / n``, equals
    ``2 * coding_rate(z, alpha=alpha, center=True)``. ``R >= 0``; maximize it to keep embeddings from
    collapsing (:class:`CodingRateLoss` returns the quantity to minimize).

    The determinant is taken on the smaller side (``logdet(I_d + a ZᵀZ) = logdet(I_n + a ZZᵀ)``) with one
    Cholesky factorization reused by an analytic backward pass. Autocast is disabled inside: bf16/fp16
    inputs are cast to float32 and the Gram matrix is accumulated and stored in float32 (float64 with
    ``compute_dtype=torch.float64`` or float64 input). On a GPU nothing on the default path synchronizes
    with the host; on CPU, where that costs no sync, the kernel reads a few values to skip the branches that
    do not apply, and recomputes in float64 a batch in which a float32 factorization failed or a rate is
    estimated to be off by more than 1e-3 (large ``q`` with rank-deficient features, or a small rate; see
    the precision section of the docs). It works under
    ``torch.compile(fullgraph=True)``. Only first derivatives are provided (no double backward).

    Args:
        z: Embeddings, ``(..., n, d)``; leading dimensions are independent sets computed in one call.
        eps: The distortion ``eps`` (as eps²), > 0. Default 0.5 (MCR²'s). Exclusive with ``alpha``.
        alpha: Give the scale directly as ``a = alpha / n`` instead of through ``eps``, > 0.
        center: Subtract the mean over the ``n`` rows first (the global mean when distributed).
        normalize: L2-normalize each row first (before centering when both are set).
        compute_dtype: ``None`` (float32, or float64 for float64 input), ``torch.float32`` (float32 for any
            input) or ``torch.float64`` to form the Gram and factor it in float64 for full precision at any
            scale. The result is float32, or float64 for float64 input, whatever the compute dtype.
        gather_distributed: Compute the rate of the global batch over all ranks of ``group`` (every rank must
            pass the same ``n``). The ``d x d`` Gram is summed with ``all_reduce`` when ``d <= n·world``, else
            the rows are ``all_gather``-ed and the ``n·world`` side is factored; ``a`` uses the global ``n``.
            Gradient convention: each rank's backward sums the upstream gradients of all ranks, so with
            DDP's mean all-reduce the parameter gradients equal those of one process on the concatenated
            batch.
        group: The process group (``None``: the default group).
        nonfinite: ``"propagate"`` (default): NaN/Inf in ``z``, or finite features so large that their Gram
            overflows the compute dtype, give NaN rate and NaN gradient for that set, never a finite wrong
            value; ``"raise"``: ``ValueError`` naming the first bad entry, or the overflow (host syncs).
        fallback: For a set whose factorization fails on finite input (only when ``u·a·||ZᵀZ|| ≳ 1``) and
            is not redone in float64 (in eager mode on CPU it is, see above; not under ``torch.compile`` or
            after a distributed ``all_reduce``): ``"zero"`` (default): rate 0 and zero
            gradient, chosen on the device, counted by :meth:`CodingRateLoss.forward_components`;
            ``"float64"``: recompute those sets in float64 (one host sync); ``"raise"``:
            ``torch.linalg.LinAlgError`` (one host sync).

    Returns:
        The rate of each set, float32 (float64 for float64 input).

    Raises:
        TypeError: If ``z`` is not a floating tensor, a flag is not a bool, or (with
            ``gather_distributed=True``) ``group`` is not a process group.
        ValueError: For a bad shape (fewer than 2 dims, ``n < 2``), non-positive ``eps``/``alpha``, both
            given, an unknown ``nonfinite``/``fallback``, or non-finite ``z`` with ``nonfinite="raise"``.
        RuntimeError: If ``gather_distributed=True`` and no process group is initialized.

    Shape:
        - z: ``(*, n, d)``
        - output: ``(*)``

    Examples:
        >>> z = torch.randn(256, 64)
        >>> rate = coding_rate(z, eps=0.5)
        >>> rate.shape, bool(rate > 0)
        (torch.Size([]), True)
        >>> views = torch.randn(10, 100, 1024)  # EMP-SSL: 10 patches of 100 x 1024, one batched call
        >>> coding_rate(views, eps=0.2).shape
        torch.Size([10])
        >>> float(coding_rate(torch.zeros(8, 4)))
        0.0
    """
    settings = RateSettings(
        eps=eps,
        alpha=alpha,
        center=center,
        normalize=normalize,
        compute_dtype=compute_dtype,
        gather_distributed=gather_distributed,
        group=group,
        nonfinite=nonfinite,
        fallback=fallback,
    )
    rate = _rate(z, settings).core.rate
    return rate if z.ndim <= 3 else rate.reshape(z.shape[:-2])


class CodingRateLoss(nn.Module):
    """Negative coding rate ``-weight · R(Z)``, averaged over sets: minimize it to maximize the rate.

    All settings are validated here; they have the meaning given in :func:`coding_rate`.

    Args:
        weight: Multiplier of the rate in the loss, >= 0. seq-JEPA Step 2 puts ``λ = 0.01`` to ``0.03`` on
            ``logdet(I + C) = 2R`` (at ``alpha=1, center=True``), so ``weight = 2λ``: 0.02 to 0.06.
        eps: See :func:`coding_rate`.
        alpha: See :func:`coding_rate`.
        center: See :func:`coding_rate`.
        normalize: See :func:`coding_rate`.
        compute_dtype: See :func:`coding_rate`.
        gather_distributed: See :func:`coding_rate`.
        group: The process group for ``gather_distributed`` (``None``: the default group).
        nonfinite: See :func:`coding_rate`.
        fallback: See :func:`coding_rate`.

    Raises:
        TypeError: For a setting of the wrong type (a non-bool flag, a non-numeric weight), naming it.
        ValueError: For invalid settings, naming the value.

    Shape:
        - input: ``(*, n, d)``
        - output: scalar

    Examples:
        >>> loss_fn = CodingRateLoss(weight=0.02, alpha=1.0, center=True)
        >>> z = torch.randn(64, 32, requires_grad=True)
        >>> loss = loss_fn(z)
        >>> loss.backward()
        >>> parts = loss_fn.forward_components(z.detach())
        >>> bool(0 < parts.normalized_rate <= 1), int(parts.fallback_count)
        (True, 0)
    """

    def __init__(
        self,
        weight: float = 1.0,
        *,
        eps: float | None = None,
        alpha: float | None = None,
        center: bool = False,
        normalize: bool = False,
        compute_dtype: torch.dtype | None = None,
        gather_distributed: bool = False,
        group: Any = None,
        nonfinite: str = "propagate",
        fallback: Fallback = "zero",
    ) -> None:
        super().__init__()
        self.weight = check_nonnegative(weight, "weight")
        self.settings = RateSettings(
            eps=eps,
            alpha=alpha,
            center=center,
            normalize=normalize,
            compute_dtype=compute_dtype,
            gather_distributed=gather_distributed,
            group=group,
            nonfinite=nonfinite,
            fallback=fallback,
        )

    def extra_repr(self) -> str:
        return f"weight={self.weight}, {self.settings.describe()}"

    def _result(self, z: Tensor) -> _RateResult:
        return _rate(z, self.settings)

    def forward(self, z: Tensor) -> Tensor:
        """Returns ``-weight · mean(R)`` over the sets in ``z``."""
        rate = self._result(z).core.rate
        return -self.weight * (rate if rate.ndim == 0 else rate.mean())

    def forward_components(self, z: Tensor) -> CodingRateComponents:
        """Returns the loss and its terms (see :class:`CodingRateComponents`), from one evaluation."""
        result = self._result(z)
        rate = result.core.rate
        k = result.k
        r_max = 0.5 * k * torch.log1p(result.core.scaled_trace / k)
        # R <= R_max holds exactly; rounding may put the ratio a hair above 1. A NaN rate or bound stays NaN,
        # and only an all-zero set (R = R_max = 0) reads 0.
        ratio = torch.where(r_max == 0, 0.0, (rate / r_max).clamp_max(1.0))
        beyond = beyond_float32_contract(result.rows, result.mode, result.core.scaled_trace)
        mean_rate = rate.mean()
        return CodingRateComponents(
            loss=-self.weight * mean_rate,
            rate=mean_rate,
            normalized_rate=ratio.mean(),
            # A fill on the device: torch.tensor would copy from the host and synchronize on CUDA.
            scale=torch.full((), result.scale, dtype=rate.dtype, device=rate.device),
            fallback_count=result.core.failed.sum(),
            beyond_contract_count=beyond.sum(),
        )
