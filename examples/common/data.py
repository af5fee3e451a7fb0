"""CIFAR-10 in memory as uint8 ``(N, C, H, W)`` (normalized on the device), and the seeded draws that make
a run exactly reproducible. :func:`load_cifar10` says where the images come from; every failure is one
:class:`DataFormatError` / :class:`DataNotFoundError` line naming the file.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common.config import DataConfig

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN, CIFAR10_STD = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)
EMBEDDED_SUBSET = Path(__file__).resolve().parent.parent / "data" / "cifar10_subset.npz"
_HOW = (
    "Provide CIFAR-10 with --set data.train_npz=PATH (an npz with x uint8 (N, 32, 32, 3) and y int (N,); "
    "--set data.test_npz=PATH adds a test split), --set data.data_dir=DIR (a torchvision CIFAR10 root; "
    "--set data.download=true downloads it when online), or nothing (the embedded subset)"
)
_MASK64 = 2**64 - 1


class DataNotFoundError(FileNotFoundError):
    """The data is not where the config says; the message says how to provide it."""


class DataFormatError(ValueError):
    """A data file that cannot be read or holds the wrong arrays; the message names the file."""


@dataclass(frozen=True)
class Split:
    """``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, index: Tensor) -> Split:
        return Split(self.images[index].contiguous(), self.labels[index].contiguous())


@dataclass(frozen=True)
class CifarData:
    train: Split
    test: Split
    classes: tuple[str, ...]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_npz(path: str | Path, what: str) -> tuple[Split, tuple[str, ...] | None]:
    """Reads and checks an image npz (plain arrays only); returns the split and its ``classes``, if any."""
    path = Path(path).expanduser()
    where = f"{what} '{path}'"
    if not path.is_file():
        raise DataNotFoundError(f"{what} not found: '{path}'. {_HOW}")
    magic = path.read_bytes()[:6]
    # np.load falls back to pickle for anything that is not a zip, and its error would mislead.
    if magic.startswith(b"\x93NUMPY"):
        raise DataFormatError(f"{where} is a single .npy array, not an npz archive with arrays 'x' and 'y'")
    if not magic.startswith(b"PK"):
        raise DataFormatError(f"{where} is not an npz archive (np.savez writes a zip file; this is not one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = sorted(archive.files)
            arrays = {k: archive[k] for k in ("x", "y", "classes") if k in files}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataFormatError(f"{where} is a damaged or truncated npz archive ({err})") from err
    except ValueError as err:
        raise DataFormatError(f"{where} holds an array that cannot be loaded safely ({err})") from err
    if missing := [k for k in ("x", "y") if k not in arrays]:
        raise DataFormatError(f"{where}: missing array '{missing[0]}' (found {files})")
    x, y, names = arrays["x"], arrays["y"], arrays.get("classes")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        hint = " (it looks channels-first: transpose it to HWC)" if x.ndim == 4 and x.shape[1] == 3 else ""
        raise DataFormatError(
            f"{where}: x must be uint8 of shape (N, H, W, 3), got {x.dtype} {x.shape}{hint}"
        )
    if x.shape[0] == 0:
        raise DataFormatError(f"{where} holds no images")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],) or int(y.min()) < 0:
        raise DataFormatError(
            f"{where}: y must be integer labels >= 0 of shape ({x.shape[0]},), got {y.dtype} {y.shape}"
        )
    classes = None if names is None else tuple(str(c) for c in names.tolist())
    if classes is not None and int(y.max()) >= len(classes):
        raise DataFormatError(f"{where}: label {int(y.max())} out of range for {len(classes)} classes")
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.from_numpy(y.astype(np.int64))), classes


@functools.cache
def _embedded_subset() -> tuple[Split, tuple[str, ...] | None]:
    """The committed subset, read once per process."""
    return read_npz(EMBEDDED_SUBSET, "embedded subset")


def load_torchvision(root: str | Path, *, train: bool, download: bool) -> Split:
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(str(Path(root).expanduser()), train=train, download=download)
    except (RuntimeError, OSError) as err:
        why = "the download failed (offline?)" if download else "download is off"
        raise DataNotFoundError(
            f"torchvision CIFAR10 not found under '{root}' ({why}: {err}). {_HOW}"
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return Split(images, torch.as_tensor(dataset.targets, dtype=torch.int64))


def balanced_subset(labels: Tensor, size: int, seed: int, what: str = "size") -> Tensor:
    """Sorted indices of a seeded draw with the same count of every class (the first classes take the rest).

    Examples:
        >>> labels = torch.arange(10).repeat_interleave(5)
        >>> torch.bincount(labels[balanced_subset(labels, 20, seed=0)]).tolist()
        [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    if size > len(labels):
        raise ValueError(f"{what}={size} exceeds the {len(labels)} available images")
    classes, generator, picked = torch.unique(labels).tolist(), torch.Generator().manual_seed(seed), []
    for i, cls in enumerate(classes):
        members = torch.nonzero(labels == cls).flatten()
        count = size // len(classes) + (i < size % len(classes))
        if count > len(members):
            raise ValueError(
                f"{what}={size} needs {count} images of class {cls}, but only {len(members)} exist"
            )
        picked.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.sort(torch.cat(picked)).values if picked else torch.empty(0, dtype=torch.int64)


def _check_test_split(test: Split, names: tuple[str, ...] | None, train: Split, classes: tuple[str, ...],
                      train_named: bool, where: str) -> None:  # fmt: skip
    if test.images.shape[1:] != train.images.shape[1:]:
        size, train_size = ("x".join(map(str, s.images.shape[2:])) for s in (test, train))
        raise DataFormatError(f"{where}: images are {size} but the training images are {train_size}")
    if int(test.labels.max()) >= len(classes):
        raise DataFormatError(
            f"{where}: label {int(test.labels.max())} is outside the {len(classes)} training classes"
        )
    # Labels are never remapped: a silent remap would hide a mislabelled file.
    if train_named and names is not None and names != classes:
        order = "are in another order than" if sorted(names) == sorted(classes) else "differ from"
        raise DataFormatError(
            f"{where}: its classes ({', '.join(names)}) {order} the training data's "
            f"({', '.join(classes)}), so its labels would be misread"
        )


def load_cifar10(cfg: DataConfig) -> CifarData:
    """The splits: ``data.train_npz`` (``x`` uint8 ``(N, H, W, 3)``, ``y``, maybe ``classes``), else the
    torchvision root ``data.data_dir``, else the embedded subset; tested on ``data.test_npz``, the
    torchvision test split, or a seeded class-balanced hold-out."""
    test = None
    if cfg.train_npz is not None:
        train, names = read_npz(cfg.train_npz, "training npz (data.train_npz)")
        source = f"npz {Path(cfg.train_npz).name}"
    elif cfg.data_dir is not None:
        train = load_torchvision(cfg.data_dir, train=True, download=cfg.download)
        test = load_torchvision(cfg.data_dir, train=False, download=cfg.download)
        names, source = CIFAR10_CLASSES, f"torchvision CIFAR10 {cfg.data_dir}"
    else:
        subset, names = _embedded_subset()
        train = Split(subset.images.clone(), subset.labels.clone())  # a copy: callers own their tensors
        source = f"embedded subset {EMBEDDED_SUBSET.name}"
    count = int(train.labels.max()) + 1
    if names is None and count > len(train):  # unnamed labels are class indices: one class per image at most
        raise DataFormatError(
            f"{source}: label {count - 1} exceeds what {len(train)} training images can index; labels must "
            "be class indices 0..K-1 (or add a 'classes' array naming them)"
        )
    classes = names or (CIFAR10_CLASSES if count <= 10 else tuple(map(str, range(count))))
    if cfg.test_npz is not None:
        what = "test npz (data.test_npz)"
        test, test_names = read_npz(cfg.test_npz, what)
        _check_test_split(test, test_names, train, classes, names is not None, f"{what} '{cfg.test_npz}'")
        source += f" + test npz {Path(cfg.test_npz).name}"
    test_name = "test" if test is not None else "hold-out"
    if test is None:
        num = int(torch.unique(train.labels).numel())
        size = cfg.holdout if cfg.holdout is not None else max(num, len(train) // 10 // num * num)
        held = balanced_subset(train.labels, size, cfg.split_seed, "holdout")
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[held] = False
        train, test = train.select(torch.nonzero(keep).flatten()), train.select(held)
    if cfg.train_size is not None:
        train = train.select(balanced_subset(train.labels, cfg.train_size, cfg.split_seed + 1))
    if cfg.test_size is not None:
        test = test.select(balanced_subset(test.labels, cfg.test_size, cfg.split_seed + 2))
    if len(train) == 0:
        raise ValueError("no training images are left: lower data.holdout or raise data.train_size")
    if len(test) < 2:
        cause = "the test split has" if test_name == "test" else f"data.holdout={cfg.holdout} leaves"
        cause = f"data.test_size={cfg.test_size} leaves" if cfg.test_size is not None else cause
        raise ValueError(f"{cause} {len(test)} {test_name} image(s); the evaluation needs at least 2")
    description = f"{source}: {len(train)} train / {len(test)} {test_name} (split_seed {cfg.split_seed})"
    return CifarData(train, test, classes, description)


def check_batch_size(batch_size: int, num_samples: int, world_size: int) -> None:
    """Raises ``ValueError`` unless the global batch fits the data and splits into batches of 2 or more."""
    if batch_size > num_samples:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {num_samples} training images: lower batch_size or "
            "use more data (data.train_size, data.holdout)"
        )
    if batch_size % world_size or batch_size // world_size < 2:
        raise ValueError(
            f"batch_size={batch_size} does not split into batches of 2 or more over {world_size} processes"
        )


def normalize(images: Tensor) -> Tensor:
    """uint8 images ``(..., 3, H, W)`` (or floats in [0, 1]) standardized with CIFAR-10's channel statistics.

    Examples:
        >>> normalize(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0]
        tensor([2.0746, 2.1330, 2.1239])
    """
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(3, 1, 1)
    return (x - mean) / torch.tensor(CIFAR10_STD, device=x.device).view(3, 1, 1)


def mix_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed of ``parts`` (splitmix64 rounds, folded: CPU generators keep 32 bits).

    Examples:
        >>> mix_seed(0, 1) != mix_seed(0, 2) != mix_seed(1, 1), mix_seed(0, 1) == mix_seed(0, 1)
        (True, True)
    """
    z = 0
    for part in parts:
        z = (z ^ (part & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return (z ^ (z >> 32)) & 0xFFFFFFFF


@functools.lru_cache(maxsize=2)
def _permutation(num_samples: int, seed: int) -> Tensor:
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))


def batch_indices(
    num_samples: int, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1
) -> Tensor:
    """This rank's share of global batch ``step``: epoch ``e`` is one permutation seeded by ``(seed, e)``, cut
    into batches (the last partial one dropped), each split into ``world`` contiguous shards. Any step can be
    recomputed from the seed alone (exact resume), and the ranks' shards together are the one-process batch.

    Examples:
        >>> one, two = batch_indices(10, 4, seed=0, step=1), batch_indices(10, 4, 0, 1, rank=1, world=2)
        >>> one[2:].tolist() == two.tolist()
        True
    """
    epoch, index = divmod(step, num_samples // batch_size)
    perm = _permutation(num_samples, mix_seed(seed, epoch))
    local = batch_size // world
    start = index * batch_size + rank * local
    return perm[start : start + local]
