"""Rotation sequences: counterclockwise quarter turns, exact action codes, crop and flip before rotating."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.data import normalize
from common.views import draw_rotations, random_crop_flip, rotate, rotation_actions, rotation_views


def _images(b: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_rotations_are_counterclockwise_quarter_turns() -> None:
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # Counterclockwise as displayed (the np.rot90 convention): the top-right pixel moves to the top-left.
    assert rotate(img, torch.tensor([1])).flatten().tolist() == [2.0, 4.0, 1.0, 3.0]
    assert torch.equal(rotate(img, torch.tensor([4])), img)


def test_drawn_rotations_leave_view_0_alone_and_cover_all_turns() -> None:
    turns = draw_rotations(64, 4, seed=5)
    assert torch.equal(turns, draw_rotations(64, 4, seed=5)) and not torch.equal(
        turns, draw_rotations(64, 4, 6)
    )
    assert (turns[:, 0] == 0).all() and (torch.bincount(turns[:, 1:].flatten(), minlength=4) > 0).all()


def test_actions_match_the_angles() -> None:
    k = draw_rotations(32, 5, seed=2)
    theta = k.double() * (math.pi / 2)
    rel = theta[:, 1:] - theta[:, :-1]
    ref = torch.stack([torch.sin(rel), torch.cos(rel)], dim=-1)
    # The codes are exact table values; the float64 reference carries ~1e-16 rounding from pi.
    torch.testing.assert_close(rotation_actions(k, "sincos").double(), ref, rtol=0, atol=1e-12)
    onehot = rotation_actions(k, "onehot")
    assert onehot.shape == (32, 4, 4) and torch.equal(
        onehot.argmax(-1), torch.remainder(k[:, 1:] - k[:, :-1], 4)
    )


def test_views_are_rotations_of_the_image_and_action_0_takes_view_0_to_view_1() -> None:
    x, turns = _images(), draw_rotations(16, 4, seed=0)
    views = rotation_views(x, turns)
    for v in range(4):
        assert torch.equal(rotate(views[:, v], -turns[:, v]), normalize(x))
    dk = torch.remainder(turns[:, 1] - turns[:, 0], 4)
    assert torch.equal(rotate(views[:, 1], -dk), views[:, 0])


def test_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors_some() -> None:
    x = _images(b=24)
    torch.manual_seed(0)
    out = random_crop_flip(x, crop=True, flip=True, padding=2)
    padded = F.pad(x, (2, 2, 2, 2))
    offsets, mirrored = set(), 0
    for b in range(24):
        windows = [(dy, dx, padded[b, :, dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5)]
        found = [(dy, dx, torch.equal(out[b], w.flip(-1))) for dy, dx, w in windows
                 if torch.equal(out[b], w) or torch.equal(out[b], w.flip(-1))]  # fmt: skip
        assert found, f"sample {b} is not a (mirrored) crop of its padded image"
        offsets.add(found[0][:2])
        mirrored += found[0][2]
    assert len(offsets) > 3 and 0 < mirrored < 24


def test_augmented_views_rotate_after_the_crop() -> None:
    x, turns = _images(b=6), draw_rotations(6, 3, seed=1)
    torch.manual_seed(0)
    views = rotation_views(x, turns, crop=True, flip=True)
    unrotated = rotate(views.flatten(0, 1), -turns.flatten()).unflatten(0, (6, 3))
    padded = normalize(F.pad(x, (4, 4, 4, 4)))  # zero padding is normalized like the pixels
    pad_value = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))
    padded = torch.where(F.pad(torch.ones(6, 1, 8, 8), (4, 4, 4, 4)) > 0, padded, pad_value)
    for b in range(6):
        for v in range(3):
            windows = [padded[b, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)]
            assert any(
                torch.equal(unrotated[b, v], w) or torch.equal(unrotated[b, v], w.flip(-1)) for w in windows
            )
