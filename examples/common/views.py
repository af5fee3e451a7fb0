"""Batched, on-device rotation sequences for seq-JEPA: views, angles and action encodings.

Conventions:

- A rotation is a number of counterclockwise quarter turns ``k`` in ``{0, 1, 2, 3}`` (angle ``90 * k``
  degrees, ``pi / 2 * k`` radians), applied as ``torch.rot90(image, k, dims=(-2, -1))`` (counterclockwise as
  the image is displayed, the ``np.rot90`` convention). ``torch.rot90(view, -k, dims=(-2, -1))`` undoes it.
- A sequence has ``M + 1`` views of one image: views ``0 .. M-1`` are the observations and view ``M`` is the
  target. View 0 is never rotated; each other view's ``k`` is drawn uniformly and independently.
- Absolute encodings describe each view's own rotation, shape ``(B, M+1, A)``: ``[sin, cos]`` of its angle
  (``A = 2``) or one-hot of ``k`` (``A = 4``). An action encoder that forms relative actions itself takes
  these.
- Relative encodings describe the rotation *from view i to view i+1*, shape ``(B, M, A)``: with
  ``dk = (k[i+1] - k[i]) mod 4``, ``[sin, cos]`` of ``pi / 2 * dk`` (equal to ``[sin, cos]`` of
  ``theta[i+1] - theta[i]``) or one-hot of ``dk``. Action ``i`` goes with observation ``i``; the last one,
  ``i = M - 1``, is the action from the last observation to the target, and action 0 is the relative rotation
  between views 0 and 1 that the equivariance probe predicts.
- Optional crop (zero padding, then a random window) and horizontal flip are applied per view *before* the
  rotation, so the rotation between two views stays exactly the one their angles say (a flip applied after
  a rotation would reverse its direction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "ActionKind",
    "RotationSequence",
    "action_dim",
    "make_rotation_sequence",
    "random_crop_flip",
    "relative_rotations",
    "rotate",
    "rotation_actions",
]

ActionKind = Literal["sincos", "onehot"]


@dataclass(frozen=True)
class RotationSequence:
    """A batch of rotation sequences.

    Shape:
        - views: ``(B, M+1, C, H, W)``, same dtype and device as the input images.
        - rotations: ``(B, M+1)`` int64 quarter turns, ``rotations[:, 0] == 0``.
    """

    views: Tensor
    rotations: Tensor

    @property
    def num_observations(self) -> int:
        """``M``, the number of views before the target."""
        return int(self.views.shape[1]) - 1

    @property
    def angles(self) -> Tensor:
        """``(B, M+1)`` float32 absolute angles in radians."""
        return self.rotations.to(torch.float32) * (math.pi / 2)

    def actions(self, kind: ActionKind = "sincos", *, relative: bool = True) -> Tensor:
        """The action encoding of this sequence; see :func:`rotation_actions`."""
        return rotation_actions(self.rotations, kind, relative=relative)


def action_dim(kind: ActionKind) -> int:
    """Width of an action encoding: 2 for ``"sincos"``, 4 for ``"onehot"``.

    Raises:
        ValueError: Unknown ``kind``.
    """
    if kind == "sincos":
        return 2
    if kind == "onehot":
        return 4
    raise ValueError(f"action kind must be 'sincos' or 'onehot', got {kind!r}")


def _check_rotations(rotations: Tensor) -> None:
    if rotations.dtype != torch.int64 or rotations.ndim < 1:
        raise ValueError(f"rotations must be an int64 tensor of quarter turns, got {rotations.dtype}")


def relative_rotations(rotations: Tensor) -> Tensor:
    """Quarter turns from each view to the next: ``(k[..., 1:] - k[..., :-1]) mod 4``.

    Args:
        rotations: ``(..., M+1)`` int64 quarter turns.

    Returns:
        ``(..., M)`` int64 values in ``{0, 1, 2, 3}``.

    Examples:
        >>> relative_rotations(torch.tensor([[0, 3, 1, 1]])).tolist()
        [[3, 2, 0]]
    """
    _check_rotations(rotations)
    return torch.remainder(rotations[..., 1:] - rotations[..., :-1], 4)


def rotation_actions(rotations: Tensor, kind: ActionKind = "sincos", *, relative: bool = True) -> Tensor:
    """Encodes rotations as actions (see the module docstring for the convention).

    Args:
        rotations: ``(B, M+1)`` int64 absolute quarter turns.
        kind: ``"sincos"`` (``[sin, cos]`` of the angle) or ``"onehot"`` (of the quarter turns).
        relative: Encode the rotation from each view to the next (``(B, M, A)``) instead of each view's own
            rotation (``(B, M+1, A)``).

    Returns:
        float32 actions on the device of ``rotations``.

    Raises:
        ValueError: Unknown ``kind`` or non-int64 ``rotations``.

    Examples:
        >>> k = torch.tensor([[0, 1, 3]])
        >>> rotation_actions(k).round().tolist()  # +90 then +180 degrees
        [[[1.0, 0.0], [0.0, -1.0]]]
        >>> rotation_actions(k, "onehot", relative=False)[0, 2].tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    dim = action_dim(kind)
    _check_rotations(rotations)
    quarter = relative_rotations(rotations) if relative else torch.remainder(rotations, 4)
    if kind == "onehot":
        return F.one_hot(quarter, dim).to(torch.float32)
    # Exact table lookup: sin/cos of multiples of pi/2 evaluated in floating point are off by ~1e-8.
    table = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]], device=rotations.device)
    return table[quarter]


def rotate(images: Tensor, rotations: Tensor) -> Tensor:
    """Rotates each image by its own number of quarter turns, batched (no per-sample Python loop).

    Args:
        images: ``(*batch, C, H, W)`` with ``H == W``, any dtype.
        rotations: ``batch``-shaped int64 quarter turns (any integers; taken mod 4).

    Returns:
        The rotated images, a new tensor of the same shape.

    Raises:
        ValueError: Non-square images or mismatched batch shapes.

    Examples:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> torch.equal(rotate(rotate(x, torch.tensor([1])), torch.tensor([-1])), x)
        True
    """
    if images.ndim < 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (..., C, H, W) with H == W, got {tuple(images.shape)}")
    if tuple(rotations.shape) != tuple(images.shape[:-3]):
        raise ValueError(
            f"rotations shape {tuple(rotations.shape)} must match the batch shape {tuple(images.shape[:-3])}"
        )
    if rotations.dtype != torch.int64:
        raise ValueError(f"rotations must be int64 quarter turns, got {rotations.dtype}")
    quarter = torch.remainder(rotations, 4).to(images.device)[(...,) + (None,) * 3]
    out = images
    # Three full-batch rot90s selected with where: no data-dependent indexing, hence no device sync.
    for k in (1, 2, 3):
        out = torch.where(quarter == k, torch.rot90(images, k, dims=(-2, -1)), out)
    return out


def _source_pixels(
    dy: Tensor, dx: Tensor, flip: Tensor, turns: Tensor, size: tuple[int, int], padded_width: int
) -> Tensor:
    """Flat indices into the padded source of every output pixel of crop, then flip, then rotation.

    Folding the three into one index map turns the whole augmentation into a single ``gather``.

    Args:
        dy, dx: ``(n,)`` crop offsets into the padded image.
        flip: ``(n,)`` bool, mirror the crop horizontally.
        turns: ``(n,)`` counterclockwise quarter turns applied last (only 0 unless ``H == W``).
        size: ``(H, W)`` of the output.
        padded_width: Width of the padded source rows.

    Returns:
        ``(n, H * W)`` int64 indices.
    """
    h, w = size
    i = torch.arange(h, device=dy.device).view(h, 1).expand(h, w)
    j = torch.arange(w, device=dy.device).view(1, w).expand(h, w)
    # Pixel (i, j) of rot90(a, k) is a[u, v]: k=1 -> a[j, W-1-i], k=2 -> a[H-1-i, W-1-j], k=3 -> a[H-1-j, i].
    u = torch.stack([i, j, h - 1 - i, h - 1 - j])
    v = torch.stack([j, w - 1 - i, w - 1 - j, i])
    # The eight (turn, flip) maps are tiny; one row lookup per image is far cheaper than per-pixel arithmetic.
    table = torch.stack([u * padded_width + v, u * padded_width + (w - 1 - v)], dim=1).view(8, h * w)
    return table[turns * 2 + flip.long()] + (dy * padded_width + dx).view(-1, 1)


def _draw_crop_flip(
    n: int, crop: bool, flip: bool, padding: int, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    span = 2 * padding + 1 if crop else 1
    dy = torch.randint(0, span, (n,), generator=generator, device=device)
    dx = torch.randint(0, span, (n,), generator=generator, device=device)
    if flip:
        mirror = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    else:
        mirror = torch.zeros(n, dtype=torch.bool, device=device)
    return dy, dx, mirror


def _pad(images: Tensor, padding: int) -> Tensor:
    return F.pad(images, (padding, padding, padding, padding)) if padding else images


def random_crop_flip(
    images: Tensor,
    *,
    crop: bool = True,
    flip: bool = True,
    padding: int = 4,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-image random crop (zero padding, then an ``H x W`` window) and horizontal flip, batched.

    Args:
        images: ``(*batch, C, H, W)``, any dtype; each image in ``batch`` gets its own draw.
        crop: Apply the random crop.
        flip: Flip each image horizontally with probability 1/2.
        padding: Zero padding on each side before cropping (4 for CIFAR).
        generator: Source of randomness; it must live on ``images.device``. ``None`` uses the global RNG.

    Returns:
        A new tensor of the same shape, dtype and device.

    Raises:
        ValueError: ``images`` has fewer than 3 dims or ``padding`` is negative.

    Examples:
        >>> x = torch.rand(5, 3, 8, 8)
        >>> random_crop_flip(x, crop=False, flip=False).equal(x)
        True
    """
    if images.ndim < 3:
        raise ValueError(f"images must have shape (..., C, H, W), got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch_shape, (c, h, w) = images.shape[:-3], images.shape[-3:]
    x = images.reshape(-1, c, h, w)
    n = x.shape[0]
    pad = padding if crop else 0
    dy, dx, mirror = _draw_crop_flip(n, crop, flip, pad, generator, images.device)
    turns = torch.zeros(n, dtype=torch.int64, device=images.device)
    index = _source_pixels(dy, dx, mirror, turns, (h, w), w + 2 * pad)
    src = _pad(x, pad).flatten(2)
    out = torch.gather(src, 2, index.unsqueeze(1).expand(n, c, h * w))
    return out.reshape(*batch_shape, c, h, w)


def make_rotation_sequence(
    images: Tensor,
    num_observations: int = 3,
    *,
    generator: torch.Generator | None = None,
    crop: bool = False,
    flip: bool = False,
    padding: int = 4,
) -> RotationSequence:
    """Builds ``M + 1`` views of each image: view 0 unrotated, the others rotated by random quarter turns.

    Args:
        images: ``(B, C, H, W)`` with ``H == W``, any dtype (uint8 keeps the traffic low; normalize after).
        num_observations: ``M >= 1``, the number of views before the target.
        generator: Source of randomness; it must live on ``images.device``. ``None`` uses the global RNG.
        crop: Random crop each view (before its rotation).
        flip: Random horizontal flip of each view (before its rotation).
        padding: Crop padding.

    Returns:
        The views ``(B, M+1, C, H, W)`` and their quarter turns ``(B, M+1)``.

    Raises:
        ValueError: ``num_observations < 1``, negative ``padding``, or images that are not
            ``(B, C, H, W)`` squares.

    Examples:
        >>> x = torch.rand(8, 3, 32, 32)
        >>> seq = make_rotation_sequence(x, 3, generator=torch.Generator().manual_seed(0))
        >>> seq.views.shape, seq.rotations.shape, seq.actions().shape, seq.views[:, 0].equal(x)
        (torch.Size([8, 4, 3, 32, 32]), torch.Size([8, 4]), torch.Size([8, 3, 2]), True)
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (B, C, H, W) with H == W, got {tuple(images.shape)}")
    if isinstance(num_observations, bool) or not isinstance(num_observations, int) or num_observations < 1:
        raise ValueError(f"num_observations must be an int >= 1, got {num_observations!r}")
    b = images.shape[0]
    rotations = torch.randint(0, 4, (b, num_observations + 1), generator=generator, device=images.device)
    rotations[:, 0] = 0
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if crop or flip:
        # Crop, flip and rotation of every view are one gather from the padded source image.
        c, h, w = images.shape[1:]
        v = num_observations + 1
        pad = padding if crop else 0
        dy, dx, mirror = _draw_crop_flip(b * v, crop, flip, pad, generator, images.device)
        index = _source_pixels(dy, dx, mirror, rotations.flatten(), (h, w), w + 2 * pad).view(b, v, 1, h * w)
        src = _pad(images, pad).flatten(2).unsqueeze(1).expand(b, v, c, -1)
        views = torch.gather(src, 3, index.expand(b, v, c, h * w)).view(b, v, c, h, w)
        return RotationSequence(views=views, rotations=rotations)
    # All views share one image: rotate it four times once and gather, instead of rotating every view.
    turns = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)], dim=1)
    views = turns[torch.arange(b, device=images.device)[:, None], rotations]
    return RotationSequence(views=views, rotations=rotations)
