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
* In float64 the factor comes from a QR decomposition instead of Cholesky (see ``_factor``): its error is the
  square root of the Gram route's, which is what keeps 1e-6 relative accuracy at any scale and rank.
* Factorization failure is detected on the device with :func:`torch.linalg.cholesky_ex` (no host sync) and
  the failed batch entries get a value of zero and a zero gradient, chosen by :func:`torch.where`; the
  caller receives the mask to count or escalate them.
* Non-finite inputs propagate as NaN (value and gradient), never as a finite wrong number.
* When ``a·tr(G)`` is tiny, ``1 + a·G_ii`` loses the digits that carry the answer, so the value comes from the
  series ``tr(A)/2 - tr(A²)/4`` (``A = a G``) instead; its truncation error is below ``tr(A)²/6`` relative,
  and the threshold is set per dtype where that bound meets the Cholesky rounding error.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import FunctionCtx

__all__ = ["FALLBACKS", "Fallback", "GramLogdet", "Method", "ReduceMode", "gram_half_logdet"]

ReduceMode = Literal["local", "reduce", "gather"]
Method = Literal["auto", "cholesky", "qr"]
Fallback = Literal["zero", "float64", "raise"]
FALLBACKS: tuple[str, ...] = ("zero", "float64", "raise")

# a·tr(G) below which the two-term series is more accurate than Cholesky in that dtype (see module docstring):
# float32: series error <= (2e-2)^2/6 ~ 7e-5 relative, Cholesky error ~ sqrt(k)·u/tr(A) <= ~1e-4 above it;
# float64: series error <= 2e-10, Cholesky error ~ 1e-10 above it.
_SERIES_THRESHOLD = {torch.float32: 2e-2, torch.float64: 3e-5}


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


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]
def _matmul_precision_reduced(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` may run in reduced precision (TF32 / bf16 passes).

    Then the Gram is accumulated in float64 (and stored in float32), since a TF32 Gram is as harmful as a
    bf16 one. Compiled graphs read this setting once, when they are traced.
    """
    if torch.get_float32_matmul_precision() != "highest":
        return True
    if getattr(torch.backends, "fp32_precision", "none") not in ("none", "ieee"):
        return True
    if device.type != "cuda":
        return False
    matmul = torch.backends.cuda.matmul
    return bool(matmul.allow_tf32) or getattr(matmul, "fp32_precision", "none") == "tf32"


def _factor(
    x: Tensor, scaled_gram: Tensor, a: Tensor, n_side: bool, *, orthogonal: bool
) -> tuple[Tensor, Tensor]:
    """A lower-triangular ``L`` with ``L Lᵀ = I + a·G`` and the factorization status (0: success).

    The Cholesky route adds the identity to ``scaled_gram`` (``a·G``) in place.

    ``orthogonal=False``: Cholesky of ``I + a·G``, whose rounding perturbs the eigenvalues of ``I + a·G``
    (all >= 1) by ``~u·a·||G||``. ``orthogonal=True``: Householder QR of ``B = [√a·X_side; I_k]``, for which
    ``BᵀB = I + a·G`` exactly; QR's backward error perturbs the singular values of ``B`` (all >= 1) by
    ``~u·√(a·||G||)``, the square root of the Gram route's error, so rank-deficient features at large scale
    keep full float64 accuracy. It costs a few Grams, and it never fails.
    """
    if not orthogonal:
        scaled_gram.diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol, info = torch.linalg.cholesky_ex(scaled_gram)
        return chol, info
    side = x.mT if n_side else x
    k = side.shape[-1]
    eye = torch.eye(k, dtype=x.dtype, device=x.device).expand(x.shape[0], k, k)
    r = torch.linalg.qr(torch.cat([side * a.sqrt()[:, None, None], eye], dim=-2), mode="r").R
    # R's diagonal may be negative; L Lᵀ = RᵀR holds regardless, and the log-determinant uses |diag|.
    return r.mT, torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)


class _GramHalfLogdet(torch.autograd.Function):
    """Forward: one Gram, one factorization. Backward: ``M⁻¹`` from the saved factor, one GEMM."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        scale: Tensor,
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
            # (world·B, n, d) -> (B, world·n, d): rank r's rows sit at [r·n, (r+1)·n).
            x = gathered.view(world, -1, *x.shape[1:]).transpose(0, 1).flatten(1, 2)
        n_side = mode == "gather" or (mode == "local" and x.shape[-2] < x.shape[-1])
        src = x.double() if gram_in_float64 else x
        gram = (src @ src.mT if n_side else src.mT @ src).to(x.dtype)
        if mode == "reduce":
            dist.all_reduce(gram, group=group)

        a = scale.to(x.dtype)
        scaled_gram = gram * a[:, None, None]
        scaled_trace = scaled_gram.diagonal(dim1=-2, dim2=-1).sum(-1)
        scaled_norm = torch.linalg.vector_norm(scaled_gram, dim=(-2, -1))
        series = torch.addcmul(0.5 * scaled_trace, scaled_norm, scaled_norm, value=-0.25)
        chol, info = _factor(x, scaled_gram, a, n_side, orthogonal=orthogonal)
        diagonal = chol.diagonal(dim1=-2, dim2=-1)
        factored = (diagonal.abs() if orthogonal else diagonal).log().sum(-1)
        value = torch.where(scaled_trace < _SERIES_THRESHOLD[x.dtype], series, factored)
        # Failed factors give 0; adding (t - t), which is 0 for finite t and NaN otherwise, makes non-finite
        # input come out as NaN whatever the factorization did.
        value = torch.where(info == 0, value, 0.0) + (scaled_trace - scaled_trace)

        ctx.save_for_backward(x, chol, a, info, scaled_trace)
        ctx.n_side = n_side  # type: ignore[attr-defined]
        ctx.mode = mode  # type: ignore[attr-defined]
        ctx.group = group  # type: ignore[attr-defined]
        ctx.rows = (rank * local_n, (rank + 1) * local_n)  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(info, scaled_trace)
        return value, info, scaled_trace

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_value: Tensor, _grad_info: Tensor, _grad_trace: Tensor
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            # The backward reuses a factor saved without history, so its output cannot be differentiated
            # again; a silent zero second derivative (e.g. in a gradient penalty) would be wrong, so refuse.
            raise RuntimeError(
                "the coding rate provides first derivatives only: backward with create_graph=True "
                "(double backward) is not supported"
            )
        x, chol, a, info, scaled_trace = ctx.saved_tensors  # type: ignore[attr-defined]
        g = grad_value.to(x.dtype)
        if ctx.mode != "local":  # type: ignore[attr-defined]
            # Every rank holds a copy of the global rate; summing the upstream gradients of all copies makes
            # DDP's mean all-reduce of parameter gradients equal the single-process full-batch gradient.
            g = g.clone()
            dist.all_reduce(g, group=ctx.group)  # type: ignore[attr-defined]
        # M⁻¹ from the saved factor (potri) and one GEMM: on CPU this is about twice as fast as two
        # triangular solves with the m right-hand sides, and it is k x k, never the larger side.
        inverse = torch.cholesky_inverse(chol)
        # A failed factor holds garbage; its entries get exactly zero gradient, not NaN times zero.
        failed = (info != 0) & scaled_trace.isfinite()
        inverse = torch.where(failed[:, None, None], 0.0, inverse * (a * g)[:, None, None])
        grad = inverse @ x if ctx.n_side else x @ inverse  # type: ignore[attr-defined]
        if ctx.mode == "gather":  # type: ignore[attr-defined]
            lo, hi = ctx.rows  # type: ignore[attr-defined]
            grad = grad[:, lo:hi]
        return grad, None, None, None, None, None


def gram_half_logdet(
    x: Tensor,
    scale: Tensor,
    *,
    mode: ReduceMode = "local",
    group: Any = None,
    fallback: Fallback = "zero",
    method: Method = "auto",
) -> GramLogdet:
    """Computes ``1/2 logdet(I + scale·XᵀX)`` per batch entry on the cheaper side, with an analytic backward.

    This is the low-level kernel behind :func:`jepa_rate.coding_rate` and :func:`jepa_rate.rate_reduction`;
    it does no argument checking, no autocast handling and no preprocessing.

    Args:
        x: Features in the compute dtype (float32 or float64), contiguous batch of sets.
        scale: Per-batch-entry scale ``a``, same dtype and device as ``x``.
        mode: ``"local"`` (this process only), ``"reduce"`` (sum the ``d x d`` Gram over the process group) or
            ``"gather"`` (concatenate the rows of all ranks and factor the ``n x n`` side).
        group: The process group for ``"reduce"`` and ``"gather"`` (``None``: the default group).
        fallback: What a batch entry whose Cholesky factorization fails (finite input) gets. ``"zero"``:
            value 0
            and zero gradient, selected on the device with no host sync. ``"float64"``: those entries are
            recomputed with the Gram formed and factored in float64 (one host sync to find out whether any
            failed). ``"raise"``: ``torch.linalg.LinAlgError`` naming the entries (one host sync).
        method: ``"cholesky"`` (Cholesky of ``I + a·G``), ``"qr"`` (QR of ``[√a·X; I]``, not with
            ``mode="reduce"``) or ``"auto"``: QR for float64 unless ``mode="reduce"``, Cholesky otherwise.

    Returns:
        A :class:`GramLogdet` with ``rate``, ``info`` and ``scaled_trace``, each of shape ``(B,)``, and the
        ``failed`` mask as a property.

    Raises:
        torch.linalg.LinAlgError: With ``fallback="raise"``, when a factorization fails.

    Shape:
        - x: ``(B, n, d)``
        - scale: ``(B,)``

    Examples:
        >>> x = torch.randn(2, 8, 32, dtype=torch.float64)
        >>> out = gram_half_logdet(x, torch.full((2,), 0.5, dtype=torch.float64))
        >>> ref = 0.5 * torch.logdet(torch.eye(32, dtype=torch.float64) + 0.5 * x[0].T @ x[0])
        >>> bool(torch.isclose(out.rate[0], ref))
        True
    """
    if method == "qr" and mode == "reduce":
        raise ValueError("method='qr' needs the rows of X; it cannot be combined with mode='reduce'")
    orthogonal = method == "qr" or (method == "auto" and x.dtype == torch.float64 and mode != "reduce")
    gram_in_float64 = x.dtype == torch.float32 and _matmul_precision_reduced(x.device)
    rate, info, scaled_trace = _GramHalfLogdet.apply(x, scale, mode, group, gram_in_float64, orthogonal)
    if fallback == "zero" or (fallback == "float64" and x.dtype == torch.float64):
        return GramLogdet(rate, info, scaled_trace)
    failed = GramLogdet(rate, info, scaled_trace).failed
    # Deliberate host sync: the user asked for an escalation that depends on the outcome.
    if bool(failed.any()):
        if fallback == "raise":
            bad = failed.nonzero().flatten().tolist()
            raise torch.linalg.LinAlgError(  # type: ignore[attr-defined]
                f"Cholesky factorization of I + a*Gram failed for batch entries {bad} "
                f"(scale a={scale[bad].tolist()}): the float32 Gram is too inaccurate at this scale; pass "
                "compute_dtype=torch.float64, a larger eps / smaller alpha, or normalize=True"
            )
        exact = _GramHalfLogdet.apply(x.double(), scale.double(), mode, group, False, mode != "reduce")
        rate = torch.where(failed, exact[0].to(rate.dtype), rate)
    return GramLogdet(rate, info, scaled_trace)
