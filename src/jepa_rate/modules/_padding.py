"""Checks and index helpers for right-padded sequences (``True`` in a padding mask marks padding)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_padding_mask", "last_valid_index", "reverse_valid_prefix"]


def check_padding_mask(mask: object, batch: int, length: int, *, min_valid: int, name: str) -> Tensor:
    """Validates a right-padding mask of shape ``(batch, length)`` and returns the per-row valid lengths.

    The valid entries of each row must form a prefix (right padding) of at least ``min_valid`` entries.
    Checking that costs one host synchronisation, which is why only the sequence-level modules call this.

    Raises:
        TypeError: If ``mask`` is not a bool tensor.
        ValueError: If its shape is wrong, a row is not right-padded or has fewer than ``min_valid`` entries.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = padding), got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} must have shape {(batch, length)}, got {tuple(mask.shape)}")
    lengths = length - mask.sum(dim=1)
    not_prefix = (mask[:, :-1] & ~mask[:, 1:]).any(dim=1)
    too_short = lengths < min_valid
    if bool((not_prefix | too_short).any()):
        bad = int(torch.nonzero(not_prefix | too_short)[0, 0])
        raise ValueError(
            f"{name} row {bad} must be right-padded (valid entries first) with at least {min_valid} valid "
            f"entries, got {mask[bad].int().tolist()}"
        )
    return lengths


def last_valid_index(lengths: Tensor, offset: int = 1) -> Tensor:
    """Index ``lengths - offset`` as a ``(B,)`` long tensor, for gathering the last valid entries."""
    return (lengths - offset).long()


def reverse_valid_prefix(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverses the valid prefix of every row of ``x`` (shape ``(B, T, ...)``) along dim 1.

    Padded entries stay where they are, so the result is right-padded with the same mask.
    """
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)
    index = torch.where(steps < lengths[:, None], lengths[:, None] - 1 - steps, steps)
    index = index.view(*index.shape, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, index)
