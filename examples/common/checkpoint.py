"""Atomic checkpoints loadable with ``weights_only=True``, and RNG states stored as tensors.

A checkpoint is written to a temporary file in the destination folder, flushed and fsynced, then moved over
the destination with ``os.replace`` (atomic on POSIX and Windows; see :func:`common.atomic.atomic_write`), so
a crash or Ctrl-C mid-write leaves the previous checkpoint intact and no temporary file behind. Loading uses
``torch.load(weights_only=True)``, which unpickles only tensors and plain containers/scalars: checkpoints
must hold ``state_dict()`` s, ints, floats, strings, ``None``, and lists/tuples/dicts of those (convert
configs with ``config_to_dict``), never arbitrary objects.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write

__all__ = ["get_rng_state", "load_checkpoint", "save_checkpoint", "seed_all", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Saves ``state`` to ``path`` atomically (temporary file in the same folder, fsync, ``os.replace``), with
    the permissions of an ordinary new file (``0o666`` less the umask).

    Args:
        state: Tensors, numbers, strings, ``None`` and containers of them.
        path: Destination, e.g. ``runs/<name>/last.pt``; its folder is created if needed.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        Exception: Whatever serialization or the file system raised; the temporary file is removed and an
            existing checkpoint at ``path`` is left untouched.

    Examples:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> p = save_checkpoint({"step": 3, "w": torch.ones(2)}, folder / "last.pt")
        >>> load_checkpoint(p)["step"]
        3
    """
    path = Path(path)
    with atomic_write(path, "wb", durable=True) as handle:
        torch.save(state, handle)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``torch.load(..., weights_only=True)``.

    Args:
        path: The checkpoint file.
        map_location: Where tensors are placed (default CPU; ``load_state_dict`` moves them to the model).

    Returns:
        The saved dictionary.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TypeError: The file does not hold a dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint '{path}' holds a {type(state).__name__}, expected a dict")
    return state


def get_rng_state() -> dict[str, Any]:
    """Captures the torch (CPU and every CUDA device), NumPy and Python RNG states as tensors and scalars.

    Examples:
        >>> state = get_rng_state()
        >>> a = torch.rand(1); set_rng_state(state); torch.equal(a, torch.rand(1))
        True
    """
    version, mt_state, gauss = random.getstate()
    # NumPy's legacy global RNG is what third-party code draws from when it uses np.random directly.
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores states captured by :func:`get_rng_state`.

    CUDA states are restored only when as many devices are visible as were saved; otherwise they are skipped
    with a warning (e.g. a GPU run resumed on another machine), and the run is no longer bit-reproducible.
    """
    torch.set_rng_state(state["torch"])
    cuda_states = list(state.get("cuda", []))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_states and count == len(cuda_states):
        torch.cuda.set_rng_state_all(cuda_states)
    elif cuda_states:
        warnings.warn(
            f"checkpoint has RNG states for {len(cuda_states)} CUDA devices but {count} are visible; "
            "CUDA RNG states not restored",
            stacklevel=2,
        )
    if "python" in state:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        npy = state["numpy"]
        keys = npy["keys"].numpy().astype(np.uint32)
        legacy = (npy["name"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["gauss"]))
        np.random.set_state(legacy)  # noqa: NPY002


def seed_all(seed: int) -> None:
    """Seeds torch (CPU and CUDA), NumPy and Python's ``random`` with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
