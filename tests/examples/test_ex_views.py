"""Batched rotation sequences and action encodings of the example infrastructure."""

from __future__ import annotations

import math

import pytest
import torch

from common.views import (
    action_dim,
    make_rotation_sequence,
    random_crop_flip,
    relative_rotations,
    rotate,
    rotation_actions,
)


def _images(b: int = 16, dtype: torch.dtype = torch.float32, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, 3, size, size), generator=g, dtype=torch.uint8)
    return torch.rand(b, 3, size, size, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("m", [1, 3, 5])
def test_view0_unrotated_and_rotating_back_recovers_the_image(dtype: torch.dtype, m: int) -> None:
    x = _images(dtype=dtype)
    seq = make_rotation_sequence(x, m, generator=torch.Generator().manual_seed(1))
    assert seq.views.shape == (16, m + 1, 3, 8, 8) and seq.views.dtype == dtype
    assert seq.rotations.shape == (16, m + 1) and seq.num_observations == m
    assert torch.equal(seq.rotations[:, 0], torch.zeros(16, dtype=torch.int64))
    assert torch.equal(seq.views[:, 0], x)
    for v in range(m + 1):
        for b in range(16):
            back = torch.rot90(seq.views[b, v], -int(seq.rotations[b, v]), dims=(-2, -1))
            assert torch.equal(back, x[b])
    assert torch.equal(rotate(seq.views, -seq.rotations), x.unsqueeze(1).expand_as(seq.views))


def test_rotations_are_counterclockwise_quarter_turns() -> None:
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # Counterclockwise as displayed (the np.rot90 convention): the top-right pixel moves to the top-left.
    assert rotate(img, torch.tensor([1])).flatten().tolist() == [2.0, 4.0, 1.0, 3.0]
    assert torch.equal(rotate(img, torch.tensor([4])), img)


def test_rotations_cover_all_quarter_turns_and_follow_the_generator() -> None:
    x = _images(b=64)
    a = make_rotation_sequence(x, 3, generator=torch.Generator().manual_seed(5))
    b = make_rotation_sequence(x, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.rotations, b.rotations) and torch.equal(a.views, b.views)
    counts = torch.bincount(a.rotations[:, 1:].flatten(), minlength=4)
    assert bool((counts > 0).all())


def test_actions_match_the_angles() -> None:
    k = torch.randint(0, 4, (32, 5), generator=torch.Generator().manual_seed(2))
    k[:, 0] = 0
    theta = k.double() * (math.pi / 2)
    rel = theta[:, 1:] - theta[:, :-1]
    ref_rel = torch.stack([torch.sin(rel), torch.cos(rel)], dim=-1)
    ref_abs = torch.stack([torch.sin(theta), torch.cos(theta)], dim=-1)
    # The encodings are exact table values; the float64 reference carries ~1e-16 rounding from pi.
    torch.testing.assert_close(rotation_actions(k).double(), ref_rel, rtol=0, atol=1e-12)
    torch.testing.assert_close(rotation_actions(k, relative=False).double(), ref_abs, rtol=0, atol=1e-12)
    onehot = rotation_actions(k, "onehot")
    assert onehot.shape == (32, 4, 4)
    assert torch.equal(onehot.argmax(-1), torch.remainder(k[:, 1:] - k[:, :-1], 4))
    assert torch.equal(rotation_actions(k, "onehot", relative=False).argmax(-1), k)
    # Relative [sin, cos] is the angle-difference identity applied to consecutive absolute encodings.
    s, c = rotation_actions(k, relative=False).unbind(-1)
    derived = torch.stack(
        [s[:, 1:] * c[:, :-1] - c[:, 1:] * s[:, :-1], c[:, 1:] * c[:, :-1] + s[:, 1:] * s[:, :-1]], -1
    )
    assert torch.equal(derived, rotation_actions(k))


def test_sequence_actions_and_relative_rotations() -> None:
    seq = make_rotation_sequence(_images(), 3, generator=torch.Generator().manual_seed(0))
    assert seq.actions().shape == (16, 3, action_dim("sincos"))
    assert seq.actions("onehot", relative=False).shape == (16, 4, action_dim("onehot"))
    dk = relative_rotations(seq.rotations)
    rotated_back = rotate(seq.views[:, 1], -dk[:, 0])
    assert torch.equal(rotated_back, seq.views[:, 0])  # action 0 takes view 0 to view 1
    torch.testing.assert_close(seq.angles, seq.rotations.float() * (math.pi / 2))
    with pytest.raises(ValueError, match="'sincos' or 'onehot'"):
        rotation_actions(seq.rotations, "euler")  # type: ignore[arg-type]


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = _images(b=24)
    out = random_crop_flip(x, crop=True, flip=False, padding=2, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for b in range(24):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[b], padded[b, :, dy : dy + 8, dx : dx + 8])
        ]
        assert matches, f"sample {b} is not a crop of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 3


def test_augmented_views_without_crop_are_rotated_mirrors() -> None:
    x = _images(b=16)
    seq = make_rotation_sequence(x, 2, generator=torch.Generator().manual_seed(3), flip=True)
    mirrored = 0
    for b in range(16):
        for v in range(3):
            k = int(seq.rotations[b, v])
            plain = torch.rot90(x[b], k, dims=(-2, -1))
            mirror = torch.rot90(x[b].flip(-1), k, dims=(-2, -1))
            assert torch.equal(seq.views[b, v], plain) or torch.equal(seq.views[b, v], mirror)
            mirrored += int(torch.equal(seq.views[b, v], mirror))
    assert 0 < mirrored < 48


def test_flip_is_identity_or_mirror_and_both_happen() -> None:
    x = _images(b=32)
    out = random_crop_flip(x, crop=False, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[b], x[b].flip(-1)) for b in range(32)]
    kept = [torch.equal(out[b], x[b]) for b in range(32)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_augmented_sequences_rotate_after_the_crop(dtype: torch.dtype) -> None:
    x = _images(b=8, dtype=dtype)
    seq = make_rotation_sequence(x, 3, generator=torch.Generator().manual_seed(0), crop=True, flip=True)
    assert seq.views.shape == (8, 4, 3, 8, 8) and seq.views.dtype == dtype
    assert torch.equal(seq.rotations[:, 0], torch.zeros(8, dtype=torch.int64))
    unrotated = rotate(seq.views, -seq.rotations)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for b in range(8):
        for v in range(4):
            windows = [padded[b, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
            assert any(
                torch.equal(unrotated[b, v], w) or torch.equal(unrotated[b, v], w.flip(-1)) for w in windows
            )


def test_views_validate_inputs() -> None:
    with pytest.raises(ValueError, match=r"H == W, got \(2, 3, 8, 6\)"):
        make_rotation_sequence(torch.zeros(2, 3, 8, 6))
    with pytest.raises(ValueError, match="num_observations must be an int >= 1, got 0"):
        make_rotation_sequence(torch.zeros(2, 3, 8, 8), 0)
    with pytest.raises(ValueError, match=r"rotations shape \(3,\)"):
        rotate(torch.zeros(2, 3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        random_crop_flip(torch.zeros(2, 3, 8, 8), padding=-1)
