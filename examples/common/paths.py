"""Path-valued config fields, and how their relative values resolve.

A field declared with :func:`path_field` holds a file or folder path. :func:`common.config.load_config`
records such fields as absolute paths: a relative path in a preset file is taken relative to a base folder
(by default :data:`REPO_ROOT`, so the shipped presets work from any working directory), one given with
``--set`` relative to the working directory, as usual on a command line. A run's saved config then names the
same files wherever it is resumed or reloaded from.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "absolute_path", "is_path_field", "path_field"]

#: The repository root (the folder that holds ``examples/``): what relative paths in presets start from.
REPO_ROOT: Path = Path(__file__).resolve().parents[2]

_PATH = "config_path"


def path_field(default: str | None = None) -> Any:
    """A dataclass field that holds a path (see the module docstring for how relative values resolve)."""
    return dataclasses.field(default=default, metadata={_PATH: True})


def is_path_field(cls: type, name: str) -> bool:
    """Whether field ``name`` of dataclass ``cls`` was declared with :func:`path_field`."""
    return any(f.name == name and f.metadata.get(_PATH, False) for f in dataclasses.fields(cls))


def absolute_path(value: str, base: Path) -> str:
    """``value`` as an absolute path, relative ones taken from ``base``.

    Examples:
        >>> absolute_path("../shared/a.npz", Path("/repo")), absolute_path("/data/a.npz", Path("/repo"))
        ('/shared/a.npz', '/data/a.npz')
    """
    # Only relative paths move; "~" counts as absolute, as it does for the loaders. ``..`` is folded
    # lexically, without resolving symlinks, so a linked data folder keeps the name the user sees.
    path = Path(value).expanduser()
    return value if path.is_absolute() else os.path.abspath(base / path)
