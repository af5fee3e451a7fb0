"""Half log-determinant of ``I + a·G`` for a Gram matrix ``G`` of features: the numerics core of the library.

For a batch of feature matrices ``X`` of shape ``(n, d)`` this computes

.. math:: \\tfrac12 \\log\\det(I_d + a X^\\top X) = \\tfrac12 \\log\\det(I_n + a X X^\\top)

(Sylvester's identity), always factoring the smaller of the two ``k x k`` sides with one Cholesky
decomposition. The backward pass reuses that factor: ``dR/dX = a X M^{-1}`` on the ``d`` side and
``a M^{-1} X`` on the ``n`` side (``M = I + a G``), with ``M^{-1}`` (``k x k``, the small side)
formed from the saved factor and one matrix product; there is no second factorization and never a
``d x d`` inverse when the ``n`` side is used.

Why each choice:

* The Gram matrix is formed and stored in the compute dtype (float32 or float64), never in bf16/fp16: a
  low-precision Gram has rounding errors of size ``u·a·||G||`` which, once they exceed 1, make ``I + a G``
  indefinite (NaN from Cholesky).
* In float64 the factor comes from a QR decomposition instead of Cholesky (see ``_qr_factor``): its error is
  the square root of the Gram route's, which is what keeps 1e-6 relative accuracy at any scale and rank.
* Factorization failure is detected on the device with :func:`torch.linalg.cholesky_ex` (no host sync); the
  factor of a failed batch entry is overwritten by a unit lower-triangular one (a masked fill), which
  gives the value zero, a zero gradient and a backward that cannot raise; the caller receives the status to
  count or escalate them.
* From order 256 on, the Gram is formed from three GEMMs of its lower blocks (3/4 of the flops): the
  factorization reads only the lower triangle.
* On CPU, a successful float32 factorization whose rate is estimated to be off by more than 1e-3 (see
  ``_host.needs_float64``) is redone by the float64 QR route, whose factor also serves the backward.
* On the ``d`` side, from 128 rows on, a set whose mean carries half its energy is summed around the row
  mean (``XᵀX = X_cᵀX_c + n·μμᵀ``): collapsed rows make a plain float32 sum round every term the same way,
  an error that lands on the unit eigenvalues of ``I + a·G``.
* Off CPU nothing in forward or backward reads a value on the host: the rare branches (series, failed
  factor, non-finite input) are all computed and selected with :func:`torch.where`, and the backward inverts
  with a triangular solve, since :func:`torch.cholesky_inverse` checks its LAPACK status there with a device
  sync. On CPU, where reading a value is no device sync, one read of the traces and one of the status skip
  the branches that do not apply: a dozen small ops, most of a step's time at small sizes. Where a branch
  does not apply it adds exact zeros, so both routes give the same bits; only the mean split below, which
  the host read may skip, changes the rounding. ``torch.compile`` traces the device route.
* On CPU a ``k x k`` matrix with ``k`` a multiple of 128 is factored as ``blockdiag(M, I_8)``: LAPACK's
  Cholesky is much slower at those orders (1.7x to 3.7x in ``benchmarks/logdet.py``, padding included),
  presumably because the columns fall into the same cache sets, and the padding changes nothing else.
* Non-finite inputs propagate as NaN (value and gradient), never as a finite wrong number.
* When ``a·tr(G)`` is tiny, ``1 + a·G_ii`` loses the digits that carry the answer, so the value comes from the
  series ``tr(A)/2 - tr(A²)/4`` (``A = a G``) instead; its truncation error is below ``tr(A)²/6`` relative,
  and the threshold is set per dtype where that bound meets the Cholesky rounding error.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx

from jepa_rate._validation import check_choice, check_nonnegative
from jepa_rate.numerics import _host
from jepa_rate.numerics._gram import ReduceMode, per_matrix, product_into, scaled_gram
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


def _qr_factor(x: Tensor, scale: Tensor | float, n_side: bool) -> Tensor:
    """Lower-triangular ``L`` with ``L Lᵀ = I + a·G`` from a Householder QR of ``B = [√a·X_side; I_k]``.

    ``BᵀB = I + a·G`` exactly, and QR's backward error perturbs the singular values of ``B`` (all >= 1) by
    ``~u·√(a·||G||)``: the square root of the Gram route's error, so rank-deficient features at large scale
    keep full float64 accuracy. It costs a few Grams, and it never fails.
    """
    side = x.mT if n_side else x
    k = side.shape[-1]
    root = per_matrix(scale.sqrt()) if isinstance(scale, Tensor) else scale**0.5
    eye = torch.eye(k, dtype=x.dtype, device=x.device).expand(*x.shape[:-2], k, k)
    # R's diagonal may be negative; L Lᵀ = RᵀR holds regardless, and the log-determinant uses |diag|.
    r: Tensor = torch.linalg.qr(torch.cat([side * root, eye], dim=-2), mode="r").R
    return r.mT


def _in_float64(scale: Tensor | float) -> Tensor | float:
    """The scale for a float64 recompute: a tensor cast to float64, a Python float as it is."""
    return scale.double() if isinstance(scale, Tensor) else scale


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
        local_n = x.shape[-2]
        rank = 0
        if mode == "gather":
            world = dist.get_world_size(group)
            rank = dist.get_rank(group)
            gathered = x.new_empty((world * x.shape[0], *x.shape[1:]))
            dist.all_gather_into_tensor(gathered, x.contiguous(), group=group)
            # (world·B, n, d) -> (B, world·n, d): rank r's rows sit at [r·n, (r+1)·n). One matrix is already
            # (world·n, d).
            if x.ndim == 3:
                gathered = gathered.view(world, -1, *x.shape[1:]).transpose(0, 1).flatten(1, 2)
            x = gathered
        n_side = mode == "gather" or (mode == "local" and x.shape[-2] < x.shape[-1])
        k = x.shape[-2] if n_side else x.shape[-1]
        split = not (n_side or orthogonal or gram_in_float64) and _host.split_rows(x, scale)
        matrix, mirrored = scaled_gram(
            x, scale, n_side, mode, group, gram_in_float64=gram_in_float64, pad=not orthogonal, split=split
        )
        # Padding is zero, so the trace and the norm of the padded matrix are those of a·G.
        diagonal = matrix.diagonal(dim1=-2, dim2=-1)
        scaled_trace = diagonal.sum(-1)
        limit = series_below(k, x.dtype)
        bounds = _host.trace_bounds(scaled_trace) if _host.decided_on_host(x) else None
        regular = bounds is not None and _host.series_never_applies(bounds, k, limit)
        use_series: Tensor | None = None
        if not regular:
            norm = torch.linalg.vector_norm(matrix, dim=(-2, -1))
            if mirrored is not None:
                norm = torch.hypot(norm, torch.linalg.vector_norm(mirrored, dim=(-2, -1)))
            use_series = norm < limit
            series = torch.addcmul(scaled_trace, norm, norm, value=-0.5).mul_(0.5)  # tr(A)/2 - tr(A²)/4
        failed: Tensor | None = None
        inverse: Tensor | None = None
        redone = False
        if orthogonal:
            chol = _qr_factor(x, scale, n_side)
            info = torch.zeros(x.shape[:-2], dtype=torch.int32, device=x.device)
            factored = chol.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
        else:
            diagonal.add_(1.0)
            chol, info = torch.linalg.cholesky_ex(matrix)
            any_failed = not regular or _host.any_on_host(info)
            if any_failed:
                failed = info != 0
                # A failed factor holds garbage (possibly a zero pivot, on which cholesky_inverse raises).
                # Overwrite it with ones: read as lower-triangular (the only triangle used) that is a
                # unit-diagonal factor with log-determinant 0, the fallback value, and a small finite inverse.
                # In place, so the factor keeps the column-major layout cholesky_inverse reads without a copy.
                chol.masked_fill_(per_matrix(failed), 1.0)
            factored = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            if bounds is not None:
                factor = chol if chol.shape[-1] == k else chol[..., :k, :k]
                rate, series_error = factored, None
                if use_series is not None:
                    rate = torch.where(use_series, series, factored)
                    series_error = torch.where(use_series, norm**3 / 6, -1.0)
                check = _host.check_float32(
                    x, mode, bounds, scaled_trace, series_error, factor, rate, info, any_failed
                )
                inverse = check.inverse
                if check.redo:
                    # On CPU an inaccurate or failed float32 factor is redone from the rows by the float64 QR
                    # route (never fails, 1e-6 at any scale), for the whole batch; its factor serves the
                    # backward.
                    chol = _qr_factor(x.double(), _in_float64(scale), n_side)
                    info, failed, inverse = torch.zeros_like(info), None, None
                    redone = True
                    factored = chol.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1).to(x.dtype)
        probe: Tensor | None = None
        value = factored
        if use_series is not None:
            if not redone:  # the float64 factor beats the series at any trace
                value = torch.where(use_series, series, factored)
            # 0 for finite input and NaN otherwise: non-finite input comes out as NaN whatever the
            # factorization did (LAPACK flags NaN as a failure, cuSOLVER need not).
            probe = scaled_trace - scaled_trace
            value = value.add_(probe)

        # A tensor scale is saved (version-checked); a float one travels on ctx. ``failed`` and ``probe`` are
        # None when the host read showed their branch does not apply (save_for_backward accepts None);
        # ``inverse`` is M⁻¹ when the accuracy check already formed it.
        saved = (x, chol, failed, probe, inverse, *([scale] if isinstance(scale, Tensor) else []))
        ctx.save_for_backward(*saved)  # type: ignore[arg-type]
        ctx.scale = None if isinstance(scale, Tensor) else scale  # type: ignore[attr-defined]
        ctx.layout = (n_side, mode, group, k, rank * local_n, local_n)  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(info, scaled_trace)
        ctx.set_materialize_grads(False)
        return value, info, scaled_trace

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

    This is the low-level kernel behind :func:`jepa_rate.coding_rate` and :func:`jepa_rate.rate_reduction`;
    it does no argument checking and no preprocessing. Autocast is disabled in its forward and backward, but
    ``x`` must already be in the compute dtype.

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
    return half_logdet(x, scale, mode=mode, group=group, fallback=fallback, method=method)


def half_logdet(
    x: Tensor,
    scale: Tensor | float,
    *,
    mode: ReduceMode = "local",
    group: Any = None,
    fallback: Fallback = "zero",
    method: Method = "auto",
) -> GramLogdet:
    """:func:`gram_half_logdet` without its argument checks, for callers that checked their own arguments.

    Its Python-side checks would also break ``torch.compile`` with dynamic shapes, where ``scale`` is
    symbolic.
    """
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
        exact = _GramHalfLogdet.apply(x.double(), _in_float64(scale), mode, group, False, mode != "reduce")
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
