"""Checkpoints: atomic writes, ``weights_only`` loads, and checks that name the file and what is wrong."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

#: What every checkpoint of the example trainers holds.
REQUIRED = ("step", "config", "state")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed from; the message is one line naming the file."""


def atomic_write(path: Path, data: bytes, durable: bool = False) -> None:
    """Writes ``data`` to ``path`` through a temporary file and ``os.replace``: a crash leaves the old file
    whole. ``durable`` fsyncs it first, so that it also survives a power loss.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write(target, b"done"); target.read_bytes(), [p.name for p in target.parent.iterdir()]
        (b'done', ['a.txt'])
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue(), durable=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Loads and checks a checkpoint of these trainers (``ResumeError`` naming what is wrong)."""
    if not path.is_file():
        raise ResumeError(f"cannot resume '{path.parent}': it has no checkpoint {path.name}")
    cannot = f"cannot resume from {path}:"
    if path.stat().st_size == 0:
        raise ResumeError(f"{cannot} the file is empty (a write that never finished?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        raise ResumeError(f"{cannot} it cannot be loaded ({why[:300]})") from None
    if not isinstance(state, dict):
        raise ResumeError(f"{cannot} it holds a {type(state).__name__}, not a checkpoint dict")
    if missing := [k for k in REQUIRED if k not in state]:
        raise ResumeError(f"{cannot} not a checkpoint of this trainer (no '{missing[0]}' entry)")
    return state


def restore(path: Path, saved: Mapping[str, Any], objects: Mapping[str, Any]) -> None:
    """Loads ``saved[name]`` into each of ``objects``; ``ResumeError`` names an entry that is not fit."""
    for name, obj in objects.items():
        if name not in saved:
            raise ResumeError(f"cannot resume from {path}: it has no state for '{name}'")
        try:
            obj.load_state_dict(saved[name])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
            why = " ".join(str(err).split())
            raise ResumeError(f"cannot resume from {path}: its '{name}' does not fit: {why[:400]}") from None
