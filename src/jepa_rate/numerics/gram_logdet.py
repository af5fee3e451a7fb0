"""Half log-determinant of ``I + a·G`` for a Gram matrix ``G`` of features: the numerics core of the library.

For a batch of feature matrices ``X`` of shape ``(n, d)`` this computes
``1/2 logdet(I_d + a XᵀX) = 1/2 logdet(I_n + a XXᵀ)`` (Sylvester's identity) on the smaller side, from one
Cholesky factor in float32 (a QR factor in float64) that the analytic backward reuses:
``dR/dX = a X M⁻¹`` with ``M = I + a·G``. The steps are in ``jepa_rate.numerics._steps``; why each choice
is made (the float32 Gram, the mean split, the series, the CPU float64 redo, padding, failure handling, no
host syncs off CPU) is in ``docs/concepts/coding_rate.md``, "How the kernel computes it".
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx

from jepa_rate._validation import check_choice, check_nonnegative
from jepa_rate.numerics import _host, _steps
from jepa_rate.numerics._gram import ReduceMode, per_matrix, product_into
from jepa_rate.numerics.precision import autocast_enabled, float32_island, matmul_precision_reduced

__all__ = [
    "FALLBACKS",
    "Fallback",
    "GramLogdet",
    "Method",
    "ReduceMode",
    "gram_half_logdet",
]

Method = Literal["auto", "cholesky", "qr"]
Fallback = Literal["zero", "float64", "raise"]
FALLBACKS: tuple[str, ...] = ("zero", "float64", "raise")


def series_below(k: int, dtype: torch.dtype) -> float:
    """``||a·G||_F`` below which the two-term series is more accurate than the Cholesky factor of order ``k``.

    The series ``tr(A)/2 - tr(A²)/4`` leaves out ``Σ λ³/6 <= ||A||_F³/6`` of the rate, a bound that is tight
    for a rank-one spectrum. The factor rounds each of its ``k`` pivots to ``u`` relative: measured just above
    the series, its error is about ``k·u/2`` on the rate for isotropic features and under half that for
    low-rank ones. Deciding on ``||A||_F`` rather than ``tr(A)`` sends spread spectra (series exact to
    ``||A||_F³``, factor at its worst) to the series and keeps rank-one spectra (the reverse) on the factor,
    so the crossover is set for low-rank spectra: ``||A||_F³/6 = k·u/4``.
    """
    return float((1.5 * k * torch.finfo(dtype).eps / 2) ** (1.0 / 3.0))


class GramLogdet(NamedTuple):
    """Result of :func:`gram_half_logdet`, one entry per batch element.

    Attributes:
        rate: ``1/2 logdet(I + a G)``, differentiable with respect to the features.
        info: The factorization status (0: success), as returned by :func:`torch.linalg.cholesky_ex`.
        scaled_trace: ``a·tr(G)``, not differentiable; the energy used by the AM-GM bound.
    """

    rate: Tensor
    info: Tensor
    scaled_trace: Tensor

    @property
    def failed(self) -> Tensor:
        """``True`` where the factorization failed on finite input and the fallback value was used."""
        return (self.info != 0) & self.scaled_trace.isfinite()


def _spd_inverse(chol: Tensor, *, potri: bool | None = None) -> Tensor:
    """``(L Lᵀ)⁻¹`` from a lower-triangular ``L`` with a nonzero diagonal, without a host sync.

    ``potri=None`` picks by device. On CPU, LAPACK's potri (:func:`torch.cholesky_inverse`): ``2k³/3`` flops,
    about twice as fast as two triangular solves with the ``m`` right-hand sides of the gradient, and
    ``k x k``, never the larger side. Elsewhere :func:`torch.cholesky_inverse` checks its status on the host
    (a device sync), so ``L⁻¹`` comes from a triangular solve and ``M⁻¹ = L⁻ᵀL⁻¹`` from one GEMM.
    """
    if potri if potri is not None else chol.device.type == "cpu":
        return torch.cholesky_inverse(chol)
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
    inv_chol = torch.linalg.solve_triangular(chol, eye, upper=False)
    inverse: Tensor = inv_chol.mT @ inv_chol
    return inverse


def beyond_float32_contract(x: Tensor, mode: ReduceMode, scaled_trace: Tensor) -> Tensor:
    """Per set, whether a float32 rate lies beyond the float32 contract and was not checked on the host.

    True where ``q = u·a·tr(G) > 1e-3`` for float32 ``x`` on a route that reads nothing on the host (CUDA,
    ``torch.compile``, a distributed ``all_reduce``): there rank-deficient features may be off by more
    than 1e-3. A device-side comparison, no sync. Always false in float64 and on the CPU route, which
    redoes inaccurate sets in float64.
    """
    if x.dtype != torch.float32 or (_host.decided_on_host(x) and mode != "reduce"):
        return torch.zeros_like(scaled_trace, dtype=torch.bool)
    return _host.FLOAT32_ROUNDOFF * scaled_trace > _host.FLOAT64_ABOVE


def _save_for_backward(
    ctx: FunctionCtx,
    rows: Tensor,
    scale: Tensor | float,
    factor: _steps.Factor,
    probe: Tensor | None,
    inverse: Tensor | None,
    layout: tuple[Any, ...],
) -> None:
    """What the backward reads: the rows, the factor, the failed mask and NaN probe (``None`` where a host
    read showed their branch does not apply), ``M⁻¹`` if the accuracy check formed it, and the scale (a
    tensor is saved, version-checked; a float travels on ``ctx``)."""
    saved = (
        rows,
        factor.chol,
        factor.failed,
        probe,
        inverse,
        *([scale] if isinstance(scale, Tensor) else []),
    )
    ctx.save_for_backward(*saved)  # type: ignore[arg-type]
    ctx.scale = None if isinstance(scale, Tensor) else scale  # type: ignore[attr-defined]
    ctx.layout = layout  # type: ignore[attr-defined]


class _GramHalfLogdet(torch.autograd.Function):
    """Forward: one Gram, one factorization. Backward: ``M⁻¹`` from the saved factor, one GEMM."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        scale: Tensor | float,
        mode: ReduceMode,
        group: Any,
        gram_in_float64: bool,
        orthogonal: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows, first_row = _steps.gather_rows(x, mode, group)
        n_side = mode == "gather" or (mode == "local" and rows.shape[-2] < rows.shape[-1])
        k = rows.shape[-2] if n_side else rows.shape[-1]
        matrix, mirrored, scaled_trace = _steps.form_gram(
            rows, scale, n_side, mode, group, gram_in_float64=gram_in_float64, orthogonal=orthogonal
        )
        limit = series_below(k, rows.dtype)
        bounds = _host.trace_bounds(scaled_trace) if _host.decided_on_host(rows) else None
        regular = bounds is not None and _host.series_never_applies(bounds, k, limit)
        series = None if regular else _steps.series_branch(matrix, mirrored, scaled_trace, limit)
        inverse = None
        if orthogonal:
            factor = _steps.qr_factor(rows, scale, n_side)
        else:
            factor = _steps.cholesky_factor(matrix, known_regular=regular)
            if bounds is not None:
                factor, inverse = _steps.redo_inaccurate_float32(
                    rows, scale, n_side, mode, factor, series, scaled_trace, bounds
                )
        value, probe = _steps.select_value(factor, series, scaled_trace)
        layout = (n_side, mode, group, k, first_row, x.shape[-2])
        _save_for_backward(ctx, rows, scale, factor, probe, inverse, layout)
        ctx.mark_non_differentiable(factor.info, scaled_trace)
        ctx.set_materialize_grads(False)
        return value, factor.info, scaled_trace

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_value: Tensor | None, _grad_info: Tensor | None, _grad_trace: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            # The backward reuses a factor saved without history, so its output cannot be differentiated
            # again; a silent zero second derivative (e.g. in a gradient penalty) would be wrong, so refuse.
            raise RuntimeError(
                "the coding rate provides first derivatives only: backward with create_graph=True "
                "(double backward) is not supported"
            )
        if grad_value is None:
            return None, None, None, None, None, None
        x, chol, failed, probe, inverse, *scale_tensor = ctx.saved_tensors  # type: ignore[attr-defined]
        # The backward runs under the autocast state around the backward() call, not the forward's.
        if not autocast_enabled(x.device):
            return _GramHalfLogdet._gradient(ctx, grad_value, x, chol, failed, probe, inverse, scale_tensor)
        with float32_island(x.device):
            return _GramHalfLogdet._gradient(ctx, grad_value, x, chol, failed, probe, inverse, scale_tensor)

    @staticmethod
    def _gradient(
        ctx: FunctionCtx,
        grad_value: Tensor,
        x: Tensor,
        chol: Tensor,
        failed: Tensor | None,
        probe: Tensor | None,
        inverse: Tensor | None,
        scale_tensor: list[Tensor],
    ) -> tuple[Tensor | None, ...]:
        n_side, mode, group, k, first_row, local_n = ctx.layout  # type: ignore[attr-defined]
        # The upstream gradient times the scale; a float scale rides on the final GEMM instead.
        coef = grad_value * scale_tensor[0] if scale_tensor else grad_value
        if mode != "local":
            # Every rank holds a copy of the global rate; summing the upstream gradients of all copies makes
            # DDP's mean all-reduce of parameter gradients equal the single-process full-batch gradient.
            coef = coef.clone() if coef is grad_value else coef
            dist.all_reduce(coef, group=group)
        # Failed factors (now unit triangular) get exactly zero gradient; non-finite input gets NaN.
        if failed is not None:
            coef = torch.where(failed, 0.0, coef)
        if probe is not None:  # also where the factor "succeeded" on an overflowed Gram (e.g. d = 1)
            coef = coef + probe
        # M⁻¹ is symmetric and comes back column-major: its transpose is the same matrix, row-major, which
        # the GEMM reads faster. The leading k x k block of a padded factor is the unpadded factor. A saved
        # M⁻¹ is scaled out of place, so a second backward (retain_graph) finds it unchanged.
        if inverse is None:
            factor = chol if chol.shape[-1] == k else chol[..., :k, :k]
            inverse = _spd_inverse(factor).mT.mul_(per_matrix(coef))
        else:
            inverse = inverse.mT * per_matrix(coef)
        # A float64 factor (the CPU recompute of an inaccurate float32 rate) keeps the product in float64 too:
        # there M⁻¹X is a small difference of large terms, which float32 would not resolve.
        rows = x if inverse.dtype == x.dtype else x.to(inverse.dtype)
        left, right = (inverse, rows) if n_side else (rows, inverse)
        alpha = 1.0 if scale_tensor else ctx.scale  # type: ignore[attr-defined]
        grad = product_into(rows.new_empty(rows.shape), left, right, alpha).to(x.dtype)
        if mode == "gather":
            grad = grad[..., first_row : first_row + local_n, :]
        return grad, None, None, None, None, None


def gram_half_logdet(
    x: Tensor,
    scale: Tensor | float,
    *,
    mode: ReduceMode = "local",
    group: Any = None,
    fallback: Fallback = "zero",
    method: Method = "auto",
) -> GramLogdet:
    """Computes ``1/2 logdet(I + scale·XᵀX)`` per batch entry on the cheaper side, with an analytic backward.

    This is the low-level kernel behind :func:`jepa_rate.coding_rate` and :func:`jepa_rate.rate_reduction`
    (which call it without repeating its argument checks); it does no preprocessing. Autocast is disabled
    in its forward and backward, but ``x`` must already be in the compute dtype.

    Args:
        x: Features in the compute dtype (float32 or float64): one set, or a contiguous batch of sets. One
            set is computed as it is, without adding a batch dimension (which would cost autograd nodes).
        scale: The scale ``a``: one Python float for all batch entries, or a tensor with one per entry (same
            dtype and device as ``x``).
        mode: ``"local"`` (this process only), ``"reduce"`` (sum the ``d x d`` Gram over the process group) or
            ``"gather"`` (concatenate the rows of all ranks and factor the ``n x n`` side).
        group: The process group for ``"reduce"`` and ``"gather"`` (``None``: the default group).
        fallback: What a batch entry whose Cholesky factorization fails (finite input) gets. ``"zero"``:
            value 0 and zero gradient, selected on the device with no host sync. ``"float64"``: those
            entries are recomputed in float64 by the QR route, which never fails, or with ``mode="reduce"``
            (no rows) from the float64 Gram, which keeps the zero value if it fails too (one host sync to
            find out whether any failed). ``"raise"``: ``torch.linalg.LinAlgError`` naming the entries (one
            host sync).
        method: ``"cholesky"`` (Cholesky of ``I + a·G``), ``"qr"`` (QR of ``[√a·X; I]``, not with
            ``mode="reduce"``) or ``"auto"``: QR for float64 unless ``mode="reduce"``, Cholesky otherwise.

    Returns:
        A :class:`GramLogdet` with ``rate``, ``info`` and ``scaled_trace``, each of shape ``(B,)`` (``()``
        for one set), and the ``failed`` mask as a property.

    Raises:
        TypeError: If ``x`` is not float32/float64 or ``scale`` is neither a real number nor a tensor.
        ValueError: For a bad shape, an unknown ``mode``/``method``/``fallback``, a negative float scale, a
            scale tensor of the wrong shape, dtype or device or one that requires grad (it is not
            differentiated), or ``method="qr"`` with ``mode="reduce"``.
        torch.linalg.LinAlgError: With ``fallback="raise"``, when a factorization fails.

    Shape:
        - x: ``(B, n, d)`` or ``(n, d)``
        - scale: ``(B,)`` (``()`` for one set) or a float
        - output: ``(B,)`` or ``()``

    Examples:
        >>> x = torch.randn(2, 8, 32, dtype=torch.float64)
        >>> out = gram_half_logdet(x, torch.full((2,), 0.5, dtype=torch.float64))
        >>> ref = 0.5 * torch.logdet(torch.eye(32, dtype=torch.float64) + 0.5 * x[0].T @ x[0])
        >>> bool(torch.isclose(out.rate[0], ref))
        True
    """
    _check_kernel_arguments(x, scale, mode, method, fallback)
    return half_logdet(x, scale, mode, group, fallback, method)


def half_logdet(
    x: Tensor,
    scale: Tensor | float,
    mode: ReduceMode,
    group: Any,
    fallback: Fallback,
    method: Method = "auto",
) -> GramLogdet:
    """:func:`gram_half_logdet` without its argument checks, for callers that checked their own arguments
    (checking again would cost time, and break ``torch.compile`` where ``scale`` is symbolic)."""
    orthogonal = method == "qr" or (method == "auto" and x.dtype == torch.float64 and mode != "reduce")
    gram_in_float64 = x.dtype == torch.float32 and matmul_precision_reduced(x.device)
    with float32_island(x.device):
        rate, info, scaled_trace = _GramHalfLogdet.apply(x, scale, mode, group, gram_in_float64, orthogonal)
    # The QR route never fails, so float64 input on it has nothing to escalate.
    if fallback == "zero" or (fallback == "float64" and orthogonal):
        return GramLogdet(rate, info, scaled_trace)
    failed = GramLogdet(rate, info, scaled_trace).failed
    # Deliberate host sync: the user asked for an escalation that depends on the outcome.
    if bool(failed.any()):
        if fallback == "raise":
            bad = failed.reshape(-1).nonzero().flatten().tolist()
            shown_scale = scale.reshape(-1)[bad].tolist() if isinstance(scale, Tensor) else scale
            where = "the matrix" if failed.ndim == 0 else f"batch entries {bad}"
            raise torch.linalg.LinAlgError(  # type: ignore[attr-defined]
                f"Cholesky factorization of I + a*Gram failed for {where} "
                f"(scale a={shown_scale}): the float32 Gram is too inaccurate at this scale; pass "
                "compute_dtype=torch.float64, a larger eps / smaller alpha, or normalize=True"
            )
        scale64 = scale.double() if isinstance(scale, Tensor) else scale
        exact = _GramHalfLogdet.apply(x.double(), scale64, mode, group, False, mode != "reduce")
        rate = torch.where(failed, exact[0].to(rate.dtype), rate)
    return GramLogdet(rate, info, scaled_trace)


def _check_kernel_arguments(x: Tensor, scale: object, mode: str, method: str, fallback: str) -> None:
    """The checks of :func:`gram_half_logdet`: Python-side only, so they cost no device sync."""
    if not isinstance(x, Tensor) or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be a float32 or float64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must have shape (n, d) or (B, n, d), got {tuple(x.shape)}")
    check_choice(mode, "mode", get_args(ReduceMode))
    check_choice(method, "method", get_args(Method))
    check_choice(fallback, "fallback", FALLBACKS)
    if method == "qr" and mode == "reduce":
        raise ValueError("method='qr' needs the rows of X; it cannot be combined with mode='reduce'")
    if isinstance(scale, Tensor):
        if scale.shape != x.shape[:-2] or scale.dtype != x.dtype or scale.device != x.device:
            raise ValueError(
                f"a scale tensor must have shape {tuple(x.shape[:-2])}, dtype {x.dtype} and device "
                f"{x.device} like x, got {tuple(scale.shape)}, {scale.dtype}, {scale.device}"
            )
        if scale.requires_grad:
            raise ValueError("the scale is not differentiated: pass scale.detach()")
    else:
        check_nonnegative(scale, "scale")
