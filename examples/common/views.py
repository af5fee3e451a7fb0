"""Rotation sequences of CIFAR images for seq-JEPA, batched on the device: ``M + 1`` views of an image, each
rotated by its own counterclockwise quarter turns (view 0 unrotated; crop and flip come first)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from common.data import normalize

#: ``[sin, cos]`` of 0, 90, 180 and 270 degrees, indexed by quarter turns (exact, unlike sin/cos in floats).
ROTATION_SINCOS = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])


def draw_rotations(batch: int, num_views: int, seed: int) -> Tensor:
    """``(batch, num_views)`` int64 quarter turns from a generator seeded with ``seed``; view 0 unrotated."""
    turns = torch.randint(0, 4, (batch, num_views), generator=torch.Generator().manual_seed(seed))
    turns[:, 0] = 0
    return turns


def rotation_actions(turns: Tensor, kind: Literal["sincos", "onehot"]) -> Tensor:
    """Relative actions ``(B, M, A)`` of quarter turns ``(B, M + 1)``; ``A`` is 2 (sincos) or 4 (onehot).

    Examples:
        >>> rotation_actions(torch.tensor([[0, 1, 3]]), "sincos").tolist()  # +90 then +180 degrees
        [[[1.0, 0.0], [0.0, -1.0]]]
    """
    relative = torch.remainder(turns[:, 1:] - turns[:, :-1], 4)
    if kind == "onehot":
        return F.one_hot(relative, 4).float()
    return ROTATION_SINCOS.to(turns.device)[relative]


def rotate(images: Tensor, turns: Tensor) -> Tensor:
    """Rotates each square image of ``(n, C, H, W)`` by its own ``turns[i]`` quarter turns (no host sync).

    Examples:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> torch.equal(rotate(rotate(x, torch.tensor([1])), torch.tensor([3])), x)
        True
    """
    quarter = torch.remainder(turns, 4).view(-1, 1, 1, 1)
    out = images
    for k in (1, 2, 3):
        out = torch.where(quarter == k, torch.rot90(images, k, dims=(-2, -1)), out)
    return out


def random_crop_flip(images: Tensor, *, crop: bool, flip: bool, padding: int = 4) -> Tensor:
    """Per-image random crop (zero padding, then an ``H x W`` window) and horizontal flip of ``(n, C, H, W)``,
    one ``gather`` for the batch; draws from the global RNG of the images' device."""
    n, c, h, w = images.shape
    pad = padding if crop else 0
    dy, dx = (torch.randint(0, 2 * pad + 1, (n, 1), device=images.device) for _ in range(2))
    rows = dy + torch.arange(h, device=images.device)
    cols = dx + torch.arange(w, device=images.device)
    if flip:
        mirror = torch.randint(0, 2, (n, 1), device=images.device).bool()
        cols = torch.where(mirror, cols.flip(1), cols)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    padded = F.pad(images, (pad, pad, pad, pad)).flatten(2)
    return padded.gather(2, index).view(n, c, h, w)


def rotation_views(images: Tensor, turns: Tensor, *, crop: bool = False, flip: bool = False) -> Tensor:
    """Normalized views ``(b, V, C, H, W)`` of uint8 ``images`` ``(b, C, H, W)`` rotated by ``turns``
    ``(b, V)``, each view optionally cropped / flipped first.

    Examples:
        >>> x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> v = rotation_views(x, torch.tensor([[0, 1], [0, 2]]), crop=True, flip=True)
        >>> v.shape
        torch.Size([2, 2, 3, 8, 8])
    """
    turns = turns.to(images.device)
    b, v = turns.shape
    if crop or flip:
        views = images.unsqueeze(1).expand(-1, v, -1, -1, -1).flatten(0, 1)
        views = rotate(random_crop_flip(views, crop=crop, flip=flip), turns.flatten())
        return normalize(views).unflatten(0, (b, v))
    # Without per-view crops all views share one image: rotate it 4 times and pick (less work).
    quarter = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)], dim=1)
    return normalize(quarter[torch.arange(b, device=images.device)[:, None], turns])
