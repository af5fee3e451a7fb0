"""Seeded, class-balanced index draws: hold-out splits and subsets.

A draw takes, for every class present in ``labels``, a fixed number of its indices chosen by a
``torch.randperm`` from a generator seeded with ``seed``; per-class counts differ by at most one (the first
classes, in label order, take the remainder). The result depends only on the labels, the size and the seed,
so every run with the same data and ``split_seed`` evaluates on exactly the same images.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["balanced_split", "balanced_subset", "default_holdout_size"]


def default_holdout_size(num_samples: int, num_classes: int) -> int:
    """10% of ``num_samples``, rounded down to a multiple of ``num_classes`` (at least one per class).

    Examples:
        >>> default_holdout_size(50_000, 10), default_holdout_size(2_500, 10)
        (5000, 250)
    """
    return max(num_classes, (num_samples // 10) // num_classes * num_classes)


def _per_class_counts(labels: Tensor, size: int, what: str) -> tuple[Tensor, list[int]]:
    if labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be a 1-D int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{what} must be a non-negative int, got {size!r}")
    classes = torch.unique(labels)
    num = int(classes.numel())
    if size > labels.numel():
        raise ValueError(f"{what}={size} exceeds the {labels.numel()} available images")
    # Sizes that are not a multiple of the class count give the first classes one extra image each.
    counts = [size // num + (1 if i < size % num else 0) for i in range(num)] if num else []
    return classes, counts


def _draw(labels: Tensor, size: int, generator: torch.Generator, what: str) -> Tensor:
    classes, counts = _per_class_counts(labels, size, what)
    picked = []
    for cls, count in zip(classes.tolist(), counts, strict=True):
        members = torch.nonzero(labels == cls).flatten()
        if count > members.numel():
            raise ValueError(
                f"{what}={size} needs {count} images of class {cls}, but only {members.numel()} exist"
            )
        picked.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    if not picked:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(picked)).values


def balanced_subset(labels: Tensor, size: int, seed: int) -> Tensor:
    """Draws a seeded, class-balanced subset (per-class counts differ by at most one).

    Args:
        labels: ``(N,)`` int64 labels.
        size: Number of indices to draw.
        seed: Seed of the draw; the same inputs always give the same subset.

    Returns:
        Sorted ``(size,)`` int64 indices into ``labels``.

    Raises:
        ValueError: ``size`` is negative, too large, or a class has too few images.

    Examples:
        >>> labels = torch.arange(10).repeat_interleave(5)
        >>> idx = balanced_subset(labels, 20, seed=0)
        >>> torch.bincount(labels[idx]).tolist()
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    return _draw(labels, size, torch.Generator().manual_seed(seed), "size")


def balanced_split(labels: Tensor, holdout: int, seed: int) -> tuple[Tensor, Tensor]:
    """Splits indices into a training part and a seeded, class-balanced hold-out of ``holdout`` images.

    Args:
        labels: ``(N,)`` int64 labels.
        holdout: Number of held-out indices (per-class counts differ by at most one).
        seed: Seed of the draw; the same inputs always give the same split.

    Returns:
        ``(train_idx, holdout_idx)``: disjoint, sorted int64 indices that together cover ``range(N)``.

    Raises:
        ValueError: ``holdout`` is negative, too large, or a class has too few images.

    Examples:
        >>> labels = torch.arange(4).repeat(25)
        >>> train, held = balanced_split(labels, 8, seed=0)
        >>> len(train), torch.bincount(labels[held]).tolist()
        (92, [2, 2, 2, 2])
    """
    held = _draw(labels, holdout, torch.Generator().manual_seed(seed), "holdout")
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[held] = False
    return torch.nonzero(keep).flatten(), held
