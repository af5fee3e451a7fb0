"""CIFAR-10 in memory: npz / torchvision / embedded-subset loading, balanced hold-out splits, normalization.

Images stay ``uint8`` in ``(N, C, H, W)`` layout on the host (50,000 CIFAR-10 images are 150 MB); batches are
moved to the device as ``uint8`` and converted there with :func:`normalize`, which is four times less traffic
than shipping float32 and keeps the whole input pipeline batched.

Where the data comes from is chosen by :class:`DataConfig`, in this order:

1. ``train_npz``: an npz with arrays ``x`` (uint8, ``(N, H, W, 3)``, HWC) and ``y`` (integer, ``(N,)``),
   optionally ``classes``; the format of ``cifar10_train.npz`` in the shared data folder.
2. ``data_dir``: a torchvision ``CIFAR10`` root (downloaded into it only when ``download`` is true).
3. Neither: the embedded class-balanced subset ``examples/data/cifar10_subset.npz`` (2,500 images).

The evaluation split is ``test_npz`` when given, else the official test split for a torchvision root, else a
fixed, seeded, class-balanced hold-out of the training data (``holdout`` images; by default 10% of them,
rounded down to a multiple of the number of classes: 5,000 of 50,000, or 250 of the embedded 2,500).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .checks import check_min
from .npz import DataFormatError, read_image_arrays
from .paths import path_field
from .splits import balanced_split, balanced_subset, default_holdout_size

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "EMBEDDED_SUBSET",
    "CifarData",
    "DataConfig",
    "DataFormatError",
    "DataNotFoundError",
    "ImageSplit",
    "load_cifar10",
    "load_npz",
    "load_torchvision",
    "normalize",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Per-channel statistics of the training split over [0, 1] pixels.
CIFAR10_MEAN: tuple[float, float, float] = (0.4913, 0.4821, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2452, 0.2428, 0.2606)
#: The class-balanced subset committed with the examples (see ``examples/data/README.md``).
EMBEDDED_SUBSET: Path = Path(__file__).resolve().parent.parent / "data" / "cifar10_subset.npz"

_HOW_TO_PROVIDE = (
    "Provide CIFAR-10 in one of these ways:\n"
    "  --set data.train_npz=PATH   an npz with x uint8 (N, 32, 32, 3) and y int (N,) "
    "(optionally --set data.test_npz=PATH for a test split in the same format)\n"
    "  --set data.data_dir=DIR     a torchvision CIFAR10 root (add --set data.download=true to download it "
    "when online)\n"
    "  (nothing)                   the embedded subset examples/data/cifar10_subset.npz"
)


class DataNotFoundError(FileNotFoundError):
    """The requested dataset is not where the configuration says; the message says how to provide it."""


@dataclass(frozen=True)
class DataConfig:
    """Where CIFAR-10 comes from and how it is split; nest it in a trainer config as ``data``.

    Args:
        train_npz: Training npz (``x``, ``y``, optional ``classes``). Takes precedence over ``data_dir``.
        test_npz: Evaluation npz in the same format; without it (and without ``data_dir``) a hold-out is used.
        data_dir: torchvision ``CIFAR10`` root, used when ``train_npz`` is not set.
        download: Let torchvision download into ``data_dir`` (needs network access).
        holdout: Size of the class-balanced hold-out taken from the training data when there is no test
            split (ignored when there is one); ``None`` means :func:`default_holdout_size` (10%).
        train_size: Optional class-balanced subset size of the (remaining) training images.
        test_size: Optional class-balanced subset size of the evaluation images.
        split_seed: Seed of the hold-out and subset draws; separate from the training seed so that runs with
            different seeds are evaluated on the same images.
    """

    train_npz: str | None = path_field()
    test_npz: str | None = path_field()
    data_dir: str | None = path_field()
    download: bool = False
    holdout: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        check_min("data.", 0, holdout=self.holdout, train_size=self.train_size, test_size=self.test_size)


@dataclass(frozen=True)
class ImageSplit:
    """Images and labels held in memory.

    Shape:
        - images: ``(N, C, H, W)``, ``uint8``.
        - labels: ``(N,)``, ``int64``.
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 of shape (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, index: Tensor) -> ImageSplit:
        """Returns the rows ``index`` (a 1-D int64 tensor) as a new split."""
        return ImageSplit(self.images[index].contiguous(), self.labels[index].contiguous())


@dataclass(frozen=True)
class CifarData:
    """A training and an evaluation split with their class names and a one-line provenance note."""

    train: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _missing(what: str, path: Path) -> DataNotFoundError:
    return DataNotFoundError(f"{what} not found: '{path}'.\n{_HOW_TO_PROVIDE}")


def _load_npz(path: str | Path, what: str) -> tuple[ImageSplit, tuple[str, ...], bool]:
    """:func:`load_npz`, also saying whether the file named its classes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(what, path)
    x, y, classes_arr = read_image_arrays(path, what)
    num_classes = int(y.max()) + 1
    if classes_arr is not None:
        classes = tuple(str(c) for c in classes_arr.tolist())
    elif num_classes <= len(CIFAR10_CLASSES):
        classes = CIFAR10_CLASSES
    else:
        classes = tuple(str(i) for i in range(num_classes))
    if num_classes > len(classes):
        raise DataFormatError(
            f"{what} '{path}': label {num_classes - 1} out of range for {len(classes)} classes"
        )
    images = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(y.astype(np.int64, copy=False))
    return ImageSplit(images, labels), classes, classes_arr is not None


def load_npz(path: str | Path, *, what: str = "CIFAR-10 npz") -> tuple[ImageSplit, tuple[str, ...]]:
    """Loads an npz with ``x`` uint8 ``(N, H, W, 3)`` and ``y`` integer ``(N,)`` into NCHW uint8 tensors.

    The file is read with ``allow_pickle=False``: it must hold plain arrays only.

    Args:
        path: The npz file.
        what: How the file is named in error messages.

    Returns:
        The split and the class names (the ``classes`` array, or CIFAR-10's names when it is absent and there
        are at most ten classes, else ``"0"``, ``"1"``, ...).

    Raises:
        DataNotFoundError: ``path`` does not exist (the message lists the ways to provide the data).
        DataFormatError: The file is not a readable npz (a ``.npy``, a damaged archive, pickled objects), an
            array is missing, or the arrays have the wrong dtype, shape or label range, or hold no images.
    """
    split, classes, _ = _load_npz(path, what)
    return split, classes


def _check_test_split(
    test: ImageSplit, test_classes: tuple[str, ...] | None, train: ImageSplit, classes: tuple[str, ...],
    train_named: bool, where: str,
) -> None:  # fmt: skip
    """Rejects a test split that the training data cannot be evaluated against (``test_classes``: the names
    the test file gives, if any; ``train_named``: whether ``classes`` are the training data's own names)."""
    if test.images.shape[1:] != train.images.shape[1:]:
        size, train_size = ("x".join(map(str, s.images.shape[2:])) for s in (test, train))
        raise DataFormatError(f"{where}: images are {size} but the training images are {train_size}")
    if int(test.labels.max()) >= len(classes):
        raise DataFormatError(
            f"{where}: label {int(test.labels.max())} is outside the {len(classes)} classes of the training "
            "data"
        )
    # Only names given on both sides can be compared; a silent remap would hide a mislabelled file.
    if train_named and test_classes is not None and test_classes != classes:
        relation = "are in another order than" if sorted(test_classes) == sorted(classes) else "differ from"
        raise DataFormatError(
            f"{where}: its classes ({', '.join(test_classes)}) {relation} the training data's "
            f"({', '.join(classes)}), so its labels would be misread; store it with the training classes"
        )


def _check_sizes(cfg: DataConfig, train: ImageSplit, test: ImageSplit, test_name: str) -> None:
    """Rejects splits too small to train or evaluate on, naming the setting that made them so."""
    if len(train) == 0:
        raise ValueError("no training images are left: lower data.holdout or raise data.train_size")
    if len(test) >= 2:
        return
    if cfg.test_size is not None:
        cause = f"data.test_size={cfg.test_size} leaves"
    elif test_name == "hold-out":
        cause = f"data.holdout={cfg.holdout} leaves"
    else:
        cause = "the test split has"
    raise ValueError(f"{cause} {len(test)} {test_name} image(s); the evaluation needs at least 2")


def load_torchvision(root: str | Path, *, train: bool, download: bool = False) -> ImageSplit:
    """Loads one split of torchvision's ``CIFAR10`` dataset into NCHW uint8 tensors.

    Args:
        root: The dataset root (the folder that holds ``cifar-10-batches-py``).
        train: Training split if true, else the official test split.
        download: Download into ``root`` first if the files are missing (needs network access).

    Raises:
        DataNotFoundError: The files are missing (and not downloaded, or the download failed).
    """
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser()
    try:
        dataset = CIFAR10(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:
        hint = "the download failed (offline?)" if download else "download is off"
        raise DataNotFoundError(
            f"torchvision CIFAR10 not found under '{root}' ({hint}: {err}).\n{_HOW_TO_PROVIDE}"
        ) from err
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSplit(images, torch.as_tensor(dataset.targets, dtype=torch.int64))


def load_cifar10(config: DataConfig | None = None) -> CifarData:
    """Loads the training and evaluation splits that ``config`` describes (see the module docstring).

    Args:
        config: Data source and split; ``None`` means the embedded subset with the default hold-out.

    Returns:
        The splits, class names and a provenance note such as
        ``"npz cifar10_train.npz: 45000 train / 5000 hold-out (split_seed 0)"``.

    Raises:
        DataNotFoundError: A configured file or folder does not exist (the message says how to provide it).
        DataFormatError: An unreadable or malformed file, or a test split that does not match the training
            data (image size, labels outside its classes, class names in another order).
        ValueError: Sizes that the data cannot satisfy, or that leave no training images or fewer than 2
            evaluation images.
    """
    cfg = config or DataConfig()
    test: ImageSplit | None = None
    if cfg.train_npz is not None:
        train, classes, named = _load_npz(cfg.train_npz, "training npz (data.train_npz)")
        source = f"npz {Path(cfg.train_npz).name}"
    elif cfg.data_dir is not None:
        train = load_torchvision(cfg.data_dir, train=True, download=cfg.download)
        test = load_torchvision(cfg.data_dir, train=False, download=cfg.download)
        classes, named, source = CIFAR10_CLASSES, True, f"torchvision CIFAR10 {cfg.data_dir}"
    else:
        train, classes, named = _load_npz(EMBEDDED_SUBSET, "embedded subset")
        source = f"embedded subset {EMBEDDED_SUBSET.name}"
    if cfg.test_npz is not None:
        what = "test npz (data.test_npz)"
        test, test_classes, test_named = _load_npz(cfg.test_npz, what)
        where = f"{what} '{Path(cfg.test_npz).expanduser()}'"
        _check_test_split(test, test_classes if test_named else None, train, classes, named, where)
        source += f" + test npz {Path(cfg.test_npz).name}"

    if test is None:
        size = cfg.holdout
        if size is None:
            size = default_holdout_size(len(train), int(torch.unique(train.labels).numel()))
        train_idx, held_idx = balanced_split(train.labels, size, cfg.split_seed)
        train, test = train.select(train_idx), train.select(held_idx)
        test_name = "hold-out"
    else:
        test_name = "test"
    if cfg.train_size is not None:
        train = train.select(balanced_subset(train.labels, cfg.train_size, cfg.split_seed + 1))
    if cfg.test_size is not None:
        test = test.select(balanced_subset(test.labels, cfg.test_size, cfg.split_seed + 2))
    _check_sizes(cfg, train, test, test_name)
    description = f"{source}: {len(train)} train / {len(test)} {test_name} (split_seed {cfg.split_seed})"
    return CifarData(train=train, test=test, classes=classes, description=description)


def normalize(
    images: Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Converts ``uint8`` images to ``dtype``, scales to [0, 1] and standardizes per channel, batched.

    Args:
        images: ``(..., C, H, W)`` uint8 (or already float in [0, 1]) on any device.
        mean: Per-channel mean over [0, 1] pixels.
        std: Per-channel standard deviation over [0, 1] pixels.
        dtype: Floating output dtype.

    Returns:
        A new tensor of the same shape, memory format and device.

    Raises:
        ValueError: The channel dimension does not match ``mean``/``std``.
        TypeError: ``images`` is neither uint8 nor floating, or ``dtype`` is not floating.

    Examples:
        >>> x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
        >>> normalize(x)[0, :, 0, 0]
        tensor([2.0746, 2.1330, 2.1239])
    """
    if images.ndim < 3 or images.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"images must have shape (..., {len(mean)}, H, W) to match mean/std, got {tuple(images.shape)}"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be floating, got {dtype}")
    if images.dtype == torch.uint8:
        out = images.to(dtype).div_(255.0)
    elif images.is_floating_point():
        out = images.to(dtype, copy=True)
    else:
        raise TypeError(f"images must be uint8 or floating, got {images.dtype}")
    shape = (len(mean), 1, 1)
    m = torch.tensor(mean, dtype=dtype, device=images.device).view(shape)
    s = torch.tensor(std, dtype=dtype, device=images.device).view(shape)
    return out.sub_(m).div_(s)
