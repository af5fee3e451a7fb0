"""Batched, on-device SimCLR-style augmentations of the two-view example (no per-image Python or PIL)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from common.config import check_range

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (see :func:`augment`); ``crop_min_scale=1``, ``jitter=0`` turn one off."""

    crop_min_scale: float = 0.2
    flip: bool = True
    jitter: float = 0.4
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ValueError(f"augment.crop_min_scale must lie in (0, 1], got {self.crop_min_scale}")
        check_range(self, "augment.", 0, 1, "jitter jitter_prob grayscale_prob")


def grayscale(images: Tensor) -> Tensor:
    """Luma of ``(N, 3, H, W)`` images, ``(N, 1, H, W)``."""
    weights = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _uniform(n: int, low: float, high: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype, generator=generator) * (high - low) + low


def _crop_flip(images: Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    n = images.shape[0]
    if cfg.crop_min_scale < 1.0:
        area = _uniform(n, cfg.crop_min_scale, 1.0, images, generator)
        log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), images, generator)
        # Width and height as fractions of the image; the affine grid maps [-1, 1] onto the crop window.
        w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
        h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
        cx = (2 * _uniform(n, 0.0, 1.0, images, generator) - 1) * (1 - w)
        cy = (2 * _uniform(n, 0.0, 1.0, images, generator) - 1) * (1 - h)
    else:
        w = h = torch.ones(n, device=images.device, dtype=images.dtype)
        cx = cy = torch.zeros_like(w)
    sign = torch.ones_like(w)
    if cfg.flip:
        sign = torch.where(_uniform(n, 0.0, 1.0, images, generator) < 0.5, -1.0, 1.0).to(w.dtype)
    zero = torch.zeros_like(w)
    theta = torch.stack((torch.stack((w * sign, zero, cx), -1), torch.stack((zero, h, cy), -1)), dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jitter(images: Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    n = images.shape[0]
    shape = (n, 1, 1, 1)

    def factor() -> Tensor:
        return _uniform(n, 1 - cfg.jitter, 1 + cfg.jitter, images, generator).view(shape)

    out = (images * factor()).clamp(0, 1)
    mean = grayscale(out).mean(dim=(-2, -1), keepdim=True)
    out = ((out - mean) * factor() + mean).clamp(0, 1)
    gray = grayscale(out)
    out = ((out - gray) * factor() + gray).clamp(0, 1)
    apply = _uniform(n, 0.0, 1.0, images, generator).view(shape) < cfg.jitter_prob
    return torch.where(apply, out, images)


def augment(images: Tensor, cfg: AugmentConfig, *, generator: torch.Generator | None = None) -> Tensor:
    """One random view of each of ``images``, floats ``(N, 3, H, W)`` in ``[0, 1]``: a random resized crop
    (area fraction in ``[crop_min_scale, 1]``, aspect ratio in ``[3/4, 4/3]``) with an optional flip, then
    with probability ``jitter_prob`` brightness, contrast and saturation factors in ``[1 - jitter,
    1 + jitter]``, then grayscale with probability ``grayscale_prob``. It draws from the device's global RNG
    or ``generator``.

    Examples:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> view = augment(x, AugmentConfig(), generator=torch.Generator().manual_seed(0))
        >>> view.shape, bool(view.min() >= 0 and view.max() <= 1), view.equal(x)
        (torch.Size([8, 3, 32, 32]), True, False)
        >>> identity = AugmentConfig(crop_min_scale=1, flip=False, jitter=0, grayscale_prob=0)
        >>> augment(x, identity).allclose(x, atol=1e-5)
        True
    """
    out = _crop_flip(images, cfg, generator)
    if cfg.jitter > 0 and cfg.jitter_prob > 0:
        out = _jitter(out, cfg, generator)
    if cfg.grayscale_prob > 0:
        apply = _uniform(images.shape[0], 0.0, 1.0, images, generator).view(-1, 1, 1, 1) < cfg.grayscale_prob
        out = torch.where(apply, grayscale(out).expand_as(out), out)
    return out
