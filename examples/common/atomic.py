"""Atomic file writes: readers see the old file or the new one, never half of one.

:func:`atomic_write` writes to a temporary file in the destination folder and moves it over the destination
with ``os.replace`` (atomic on POSIX and Windows). A failure or Ctrl-C before the move removes the temporary
file and leaves the destination untouched. The new file gets the permissions an ordinary ``open()`` would
give it (``0o666`` less the umask), not the owner-only ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "default_file_mode"]


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    # The umask can only be read by setting it; put it straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable. Some platforms and file systems cannot fsync a directory; the file
    # itself is already on disk then, so that is not worth failing a write for.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, durable: bool = False, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Opens a temporary file next to ``path`` for writing; moves it over ``path`` when the block succeeds.

    Args:
        path: The destination; its folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
        durable: Flush and fsync the file and its folder, so the new content survives a power loss.
        **kwargs: Passed to :func:`os.fdopen` (``encoding``, ``newline``).

    Yields:
        The open temporary file.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_write(target, "w") as handle:
        ...     _ = handle.write("done")
        >>> target.read_text(), oct(target.stat().st_mode & 0o777) == oct(default_file_mode())
        ('done', True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(path.parent)
