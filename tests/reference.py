"""Float64 references for the coding rate, computed one matrix at a time (never batched LU)."""

from __future__ import annotations

import torch
from torch import Tensor


def rate_reference(z: Tensor, scale: float) -> Tensor:
    """``1/2 logdet(I + scale·ZᵀZ)`` per set from the singular values of ``Z``, in float64.

    ``σ_i²`` are the eigenvalues of the small side's Gram; taking them from the SVD of ``Z`` avoids squaring
    the condition number (so the reference stays accurate for rank-deficient ``Z`` at large scale), and
    ``log1p`` stays exact for tiny ``scale``.
    """
    z64 = z.detach().to(torch.float64, copy=True)
    flat = z64.reshape(-1, *z64.shape[-2:])
    out = []
    for x in flat:
        sigma = torch.linalg.svdvals(x)
        out.append(0.5 * torch.log1p(scale * sigma.square()).sum())
    return torch.stack(out).reshape(z64.shape[:-2])


def rate_grad_reference(z: Tensor, scale: float) -> Tensor:
    """Closed-form gradient ``a·Z(I + a ZᵀZ)^{-1}`` of the rate for one ``(n, d)`` set, in float64."""
    x = z.detach().to(torch.float64)
    m = torch.eye(x.shape[1], dtype=torch.float64) + scale * x.T @ x
    return scale * torch.linalg.solve(m, x.T).T
