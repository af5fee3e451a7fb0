#!/usr/bin/env python3
"""Checks on a CUDA device that the coding rate's default path never synchronizes with the host.

Runs the forward and backward of :func:`jepa_rate.coding_rate` (single set, batched sets, the n and d
sides, orders that take the blocked Gram, the float64 QR route),
:meth:`jepa_rate.CodingRateLoss.forward_components`, bf16 inputs under autocast, and a set whose
factorization fails (the ``zero`` fallback), with
``torch.cuda.set_sync_debug_mode("error")``: any synchronizing CUDA call raises. Each case is run once
before the check so that lazy initialization (cuBLAS/cuSOLVER handles, workspaces) is not counted.

Usage::

    python benchmarks/cuda_sync_check.py     # exit status 0: no case synchronized

Prints one line per case; needs torch with CUDA.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from jepa_rate import CodingRateLoss, coding_rate


def cases(device: torch.device) -> dict[str, Callable[[], object]]:
    """The checked workloads on ``device``, each a callable running one forward and backward."""
    gen = torch.Generator(device=device).manual_seed(0)

    def features(*shape: int, scale: float = 1.0) -> torch.Tensor:
        z = scale * torch.randn(*shape, generator=gen, device=device)
        return z.requires_grad_()

    def rate_step(z: torch.Tensor, **options: object) -> Callable[[], object]:
        def run() -> object:
            z.grad = None
            coding_rate(z, **options).sum().backward()  # type: ignore[arg-type]
            return z.grad

        return run

    loss_fn = CodingRateLoss(weight=0.02, alpha=1.0, center=True)
    collapsed = (1e3 * torch.randn(512, 1, generator=gen, device=device)) @ torch.randn(
        1, 64, generator=gen, device=device
    )

    def components() -> object:
        return loss_fn.forward_components(features(128, 256))

    def bf16_autocast() -> object:
        z = features(256, 128)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            coding_rate(z @ torch.eye(128, device=device)).backward()
        return z.grad

    return {
        "n side, 64x256": rate_step(features(64, 256)),
        "d side, 1024x256 (blocked Gram)": rate_step(features(1024, 256)),
        "n side, 512x1024 (blocked Gram)": rate_step(features(512, 1024)),
        "10 views of 100x1024": rate_step(features(10, 100, 1024)),
        "center and normalize": rate_step(features(128, 640), center=True, normalize=True),
        "compute_dtype=float64 (QR route)": rate_step(features(128, 640), compute_dtype=torch.float64),
        "forward_components": components,
        "bf16 under autocast": bf16_autocast,
        "failed factorization, zero fallback": rate_step(collapsed.requires_grad_(), eps=1e-3),
    }


def main() -> int:
    """Runs every case under the sync debug mode; returns the number of cases that synchronized."""
    if not torch.cuda.is_available():
        print("cuda_sync_check: torch.cuda.is_available() is False; nothing to run", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    failures = 0
    for name, case in cases(device).items():
        case()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            case()
            status = "no sync"
        except RuntimeError as exc:
            failures += 1
            status = f"SYNC: {str(exc).splitlines()[0][:160]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        print(f"{name:<40} {status}", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
