"""Precision controls of the numerics core: the float32 island under autocast, and detecting reduced-precision
float32 matmuls (TF32 and bf16 passes)."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["float32_island", "matmul_precision_reduced"]


def float32_island(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """A context with autocast disabled on ``device``; a no-op context when autocast is not active there.

    The losses enter it around the whole computation, and the kernel's backward enters it again, because a
    backward pass runs under whatever autocast state surrounds the ``backward()`` call.

    Args:
        device: The device whose autocast is switched off.

    Returns:
        The context manager.

    Examples:
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     with float32_island(torch.device("cpu")):
        ...         product = torch.ones(2, 2) @ torch.ones(2, 2)
        >>> product.dtype
        torch.float32
    """
    if autocast_enabled(device):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def autocast_enabled(device: torch.device) -> bool:
    """Whether autocast is active on ``device``; ``False`` where it has none (the meta device)."""
    return torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]
def matmul_precision_reduced(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` may run in reduced precision (TF32 / bf16 passes).

    Then the Gram is accumulated in float64 (and stored in float32), since a TF32 Gram is as harmful as a
    bf16 one. Compiled graphs read this setting once, when they are traced.

    Args:
        device: The device the matmuls run on.

    Returns:
        ``True`` when :func:`torch.set_float32_matmul_precision`, ``allow_tf32`` or the ``fp32_precision``
        settings (global, and the matmul backend of ``device``: cuBLAS or oneDNN) allow float32 matmuls in
        reduced precision on ``device``.

    Examples:
        >>> matmul_precision_reduced(torch.device("cpu"))
        False
    """
    backends = torch.backends
    # The fp32_precision settings: "none" inherits from the level above, so the first other value counts.
    if device.type == "cuda":
        chain = [getattr(backends.cuda.matmul, "fp32_precision", "none")]
    else:
        onednn = getattr(backends, "mkldnn", None)
        chain = [getattr(getattr(onednn, "matmul", None), "fp32_precision", "none")]
        chain.append(getattr(onednn, "fp32_precision", "none"))
    chain.append(getattr(backends, "fp32_precision", "none"))
    effective = next((value for value in chain if value != "none"), "none")
    if effective != "none":
        return bool(effective != "ieee")
    # Only the legacy settings remain. Once any fp32_precision setting has been used, PyTorch refuses to
    # answer the legacy queries (RuntimeError); the settings read above then hold the answer.
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return True
        return device.type == "cuda" and bool(backends.cuda.matmul.allow_tf32)
    except RuntimeError:
        return False
