"""CIFAR-10 loading, balanced hold-out splits and normalization of the example infrastructure."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import DataConfig
from common.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    EMBEDDED_SUBSET,
    DataFormatError,
    DataNotFoundError,
    balanced_subset,
    load_cifar10,
    load_torchvision,
    normalize,
    read_npz,
)


def _write_npz(
    path: Path, n_per_class: int, num_classes: int = 10, seed: int = 0, **extra: np.ndarray
) -> Path:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes, dtype=np.int64), n_per_class)  # grouped by class, like the source
    x = rng.integers(0, 256, size=(y.size, 32, 32, 3), dtype=np.uint8)
    np.savez(path, x=x, y=y, **extra)
    return path


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=3, max_value=12), min_size=2, max_size=6),
    per_class=st.integers(min_value=0, max_value=3),
    extra=st.integers(min_value=0, max_value=5),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_balanced_subset_is_balanced_sorted_and_deterministic(
    counts: list[int], per_class: int, extra: int, seed: int
) -> None:
    labels = torch.cat([torch.full((c,), i, dtype=torch.int64) for i, c in enumerate(counts)])
    size = min(per_class * len(counts) + extra, len(counts) * min(counts))
    idx = balanced_subset(labels, size, seed)
    per = torch.bincount(labels[idx], minlength=len(counts))
    assert idx.numel() == size and idx.unique().numel() == size and torch.equal(idx, idx.sort().values)
    assert int(per.max() - per.min()) <= 1
    assert torch.equal(idx, balanced_subset(labels, size, seed))


def test_balanced_subset_rejects_impossible_sizes() -> None:
    labels = torch.cat([torch.zeros(5, dtype=torch.int64), torch.ones(495, dtype=torch.int64)])
    with pytest.raises(ValueError, match="size=501 exceeds"):
        balanced_subset(labels, 501, 0)
    with pytest.raises(ValueError, match="class 0"):
        balanced_subset(labels, 20, 0)


def test_read_npz_converts_to_nchw_uint8(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "d.npz", 3)
    split, classes = read_npz(path, "npz")
    raw = np.load(path)
    assert split.images.shape == (30, 3, 32, 32) and split.images.dtype == torch.uint8
    assert torch.equal(split.images.permute(0, 2, 3, 1), torch.from_numpy(raw["x"]))
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == raw["y"].tolist()
    assert classes is None


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (
            np.zeros((4, 3, 32, 32), np.uint8),
            np.zeros(4, np.int64),
            r"x must be uint8 of shape \(N, H, W, 3\)",
        ),
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64), "x must be uint8"),
        (
            np.zeros((4, 32, 32, 3), np.uint8),
            np.zeros(5, np.int64),
            r"y must be integer labels >= 0 of shape \(4,\)",
        ),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.float32), "y must be integer"),
        (np.zeros((2, 32, 32, 3), np.uint8), np.array([0, -1]), "y must be integer labels >= 0"),
    ],
)
def test_read_npz_validates_arrays(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(ValueError, match=message):
        read_npz(path, "npz")


def test_read_npz_reports_missing_arrays_and_label_range(tmp_path: Path) -> None:
    np.savez(tmp_path / "nox.npz", y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="missing array 'x'"):
        read_npz(tmp_path / "nox.npz", "npz")
    np.savez(
        tmp_path / "range.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.array([0, 2]), classes=["a", "b"]
    )
    with pytest.raises(ValueError, match="label 2 out of range for 2 classes"):
        read_npz(tmp_path / "range.npz", "npz")


def test_missing_data_error_says_how_to_provide_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(DataConfig(train_npz=str(missing)))
    text = str(info.value)
    assert str(missing) in text
    assert "data.train_npz" in text and "data.data_dir" in text and "data.download=true" in text
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match=r"data.test_npz"):
        load_cifar10(DataConfig(test_npz=str(missing)))


def test_missing_torchvision_root_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="download is off") as info:
        load_torchvision(tmp_path / "cifar", train=True, download=False)
    assert "data.download=true" in str(info.value)


def test_holdout_from_training_npz(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "train.npz", 20)
    data = load_cifar10(DataConfig(train_npz=str(path), holdout=50, split_seed=3))
    assert len(data.train) == 150 and len(data.test) == 50
    assert torch.bincount(data.test.labels).tolist() == [5] * 10
    # Disjoint: the random images are distinct, so compare them as rows.
    train_rows = {bytes(r.numpy()) for r in data.train.images.flatten(1)}
    assert all(bytes(r.numpy()) not in train_rows for r in data.test.images.flatten(1))
    again = load_cifar10(DataConfig(train_npz=str(path), holdout=50, split_seed=3))
    assert torch.equal(again.test.images, data.test.images)
    assert "150 train / 50 hold-out" in data.description


def test_huge_unnamed_labels_are_one_clear_error(tmp_path: Path) -> None:
    x = np.zeros((10, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "big.npz", x=x, y=np.array([0] * 9 + [2**62], np.int64))
    with pytest.raises(DataFormatError, match=f"label {2**62} exceeds what 10 training images can index"):
        load_cifar10(DataConfig(train_npz=str(tmp_path / "big.npz")))


def test_explicit_test_npz_and_subset_sizes(tmp_path: Path) -> None:
    train_path = _write_npz(tmp_path / "train.npz", 20, seed=0)
    test_path = _write_npz(tmp_path / "test.npz", 6, seed=1)
    data = load_cifar10(
        DataConfig(train_npz=str(train_path), test_npz=str(test_path), train_size=100, test_size=30)
    )
    assert len(data.train) == 100 and len(data.test) == 30
    assert torch.bincount(data.train.labels).tolist() == [10] * 10
    assert torch.bincount(data.test.labels).tolist() == [3] * 10
    assert "30 test" in data.description


def test_embedded_subset_default() -> None:
    assert EMBEDDED_SUBSET.is_file()
    data = load_cifar10(DataConfig())
    assert len(data.train) + len(data.test) == 2500
    assert len(data.test) == 250
    assert torch.bincount(data.test.labels).tolist() == [25] * 10
    assert torch.bincount(data.train.labels).tolist() == [225] * 10
    assert data.train.images.shape[1:] == (3, 32, 32) and data.num_classes == 10


def test_normalize_matches_float64_reference() -> None:
    x = torch.randint(0, 256, (4, 2, 3, 5, 5), dtype=torch.uint8)
    out = normalize(x)
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=torch.float64).view(3, 1, 1)
    ref = (x.double() / 255 - mean) / std
    # Three float32 operations, each correctly rounded: a few ulps of values below 2.2 in magnitude.
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=4 * 2.2 * 2**-23)
    assert out.dtype == torch.float32 and out.shape == x.shape


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


def _truncated(path: Path) -> None:
    _write_npz(path, 2)
    path.write_bytes(path.read_bytes()[:2000])


def _npy(path: Path) -> None:
    with path.open("wb") as handle:  # np.save would append .npy to the name
        np.save(handle, np.zeros((2, 32, 32, 3), np.uint8))


def _objects(path: Path) -> None:
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, np.int64))


def _empty(path: Path) -> None:
    np.savez(path, x=np.zeros((0, 32, 32, 3), np.uint8), y=np.zeros(0, np.int64))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (_garbage, "is not an npz archive"),
        (_truncated, "is a damaged or truncated npz archive"),
        (_npy, "is a single .npy array, not an npz archive"),
        (_objects, "holds an array that cannot be loaded safely"),
        (_empty, "holds no images"),
    ],
)
def test_malformed_files_are_one_error_that_names_the_file(tmp_path: Path, write: Any, message: str) -> None:
    path = tmp_path / "train.npz"
    write(path)
    with pytest.raises(DataFormatError, match=re.escape(message)) as info:
        load_cifar10(DataConfig(train_npz=str(path)))
    assert f"training npz (data.train_npz) '{path}'" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_channels_first_images_get_a_hint(tmp_path: Path) -> None:
    np.savez(tmp_path / "chw.npz", x=np.zeros((4, 3, 32, 32), np.uint8), y=np.zeros(4, np.int64))
    with pytest.raises(DataFormatError, match="looks channels-first: transpose it to HWC"):
        read_npz(tmp_path / "chw.npz", "npz")


@pytest.mark.parametrize(
    ("test_kwargs", "message"),
    [
        ({"size": 64}, "images are 64x64 but the training images are 32x32"),
        ({"labels": 12}, "label 12 is outside the 10 training classes"),
        ({"classes": CIFAR10_CLASSES[::-1]}, "are in another order than the training data's"),
        ({"classes": tuple("abcdefghij")}, "differ from the training data's"),
    ],
)
def test_test_npz_must_match_the_training_data(
    tmp_path: Path, test_kwargs: dict[str, Any], message: str
) -> None:
    train = _write_npz(tmp_path / "train.npz", 4, classes=np.array(CIFAR10_CLASSES))
    y = np.repeat(np.arange(10), 2)
    if "labels" in test_kwargs:
        y[-1] = test_kwargs["labels"]
    size = test_kwargs.get("size", 32)
    extra = {"classes": np.array(test_kwargs["classes"])} if "classes" in test_kwargs else {}
    test = tmp_path / "test.npz"
    np.savez(test, x=np.zeros((y.size, size, size, 3), np.uint8), y=y, **extra)
    with pytest.raises(DataFormatError, match=re.escape(message)) as info:
        load_cifar10(DataConfig(train_npz=str(train), test_npz=str(test)))
    assert f"test npz (data.test_npz) '{test}'" in str(info.value)
    # The same names in the same order, or no names in the test file, are fine.
    np.savez(test, x=np.zeros((20, 32, 32, 3), np.uint8), y=np.repeat(np.arange(10), 2))
    assert len(load_cifar10(DataConfig(train_npz=str(train), test_npz=str(test))).test) == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"holdout": 0}, "data.holdout=0 leaves 0 hold-out image(s); the evaluation needs at least 2"),
        ({"holdout": 40, "test_size": 0}, "data.test_size=0 leaves 0 hold-out image(s)"),
        ({"holdout": 40, "test_size": 1}, "data.test_size=1 leaves 1 hold-out image(s)"),
        ({"holdout": 40, "train_size": 0}, "no training images are left"),
    ],
)
def test_splits_too_small_to_train_or_evaluate_are_rejected(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_cifar10(DataConfig(**overrides))


def test_negative_sizes_are_rejected_by_the_config() -> None:
    with pytest.raises(ValueError, match=r"data\.test_size must be >= 0, got -1"):
        DataConfig(test_size=-1)
