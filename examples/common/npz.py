"""Reading image npz files safely: plain arrays only (``allow_pickle=False``), every failure named.

A data file can be wrong in many ways that numpy reports confusingly or without the file's name: a ``.npy``
instead of an ``.npz``, a file that is no archive at all (numpy then tries pickle and talks about trusting
the file), a truncated download, object arrays, a missing array, channels-first images. Each becomes one
:class:`DataFormatError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DataFormatError", "read_image_arrays"]


class DataFormatError(ValueError):
    """A data file that cannot be read or does not hold what it should; the message names the file."""


def _read_arrays(path: Path, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
    except OSError as err:
        raise DataFormatError(f"cannot read {where}: {err}") from err
    # np.load guesses the format from these bytes and falls back to pickle, whose error would mislead.
    if magic.startswith(b"\x93NUMPY"):
        raise DataFormatError(f"{where} is a single .npy array, not an npz archive with arrays 'x' and 'y'")
    if not magic.startswith(b"PK"):
        raise DataFormatError(f"{where} is not an npz archive (np.savez writes a zip file; this is not one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                found = sorted(archive.files)
                raise DataFormatError(f"{where}: missing array '{missing[0]}' (found {found})")
            classes = archive["classes"] if "classes" in archive.files else None
            return archive["x"], archive["y"], classes
    except DataFormatError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataFormatError(f"{where} is a damaged or truncated npz archive ({err})") from err
    except ValueError as err:
        # Object arrays (refused without pickle) and malformed array headers.
        raise DataFormatError(f"{where} holds an array that cannot be loaded safely ({err})") from err


def read_image_arrays(path: str | Path, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reads and checks ``x`` (uint8 ``(N, H, W, 3)``, ``N >= 1``), ``y`` (integer ``(N,)``, ``>= 0``) and the
    optional ``classes`` array of an npz file.

    Args:
        path: An existing file.
        what: How the file is named in error messages, e.g. ``"training npz (data.train_npz)"``.

    Returns:
        ``(x, y, classes)``, ``classes`` ``None`` when the file has none.

    Raises:
        DataFormatError: Naming ``what`` and ``path``, and what is wrong.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.npy"
        >>> np.save(path, np.zeros((2, 32, 32, 3), np.uint8))
        >>> read_image_arrays(path, "test npz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        common.npz.DataFormatError: test npz '...d.npy' is a single .npy array, not an npz archive ...
    """
    path = Path(path)
    where = f"{what} '{path}'"
    x, y, classes = _read_arrays(path, where)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        hint = " (it looks channels-first: transpose it to HWC)" if x.ndim == 4 and x.shape[1] == 3 else ""
        raise DataFormatError(
            f"{where}: x must be uint8 of shape (N, H, W, 3) (HWC), got {x.dtype} {x.shape}{hint}"
        )
    if x.shape[0] == 0:
        raise DataFormatError(f"{where} holds no images")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
        raise DataFormatError(f"{where}: y must be integer of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if int(y.min()) < 0:
        raise DataFormatError(f"{where}: labels must be >= 0, got min {int(y.min())}")
    return x, y, classes
