"""Regenerates ``cifar10_subset.npz``: a seeded, class-balanced subset of the CIFAR-10 training npz.

Usage::

    python examples/data/make_subset.py SOURCE_NPZ [--per-class 250] [--seed 0] [--out PATH]

``SOURCE_NPZ`` holds ``x`` uint8 (50000, 32, 32, 3), ``y``, ``classes`` and ``files``. The output is an npz
with the same arrays plus ``index`` (each image's row in the source), byte-identical for the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["draw_indices", "main", "write_npz"]

#: sha256 of the source npz the committed subset was drawn from.
SOURCE_SHA256 = "49ebb3fc7e8e5bbf68134b5289f0066a3dda4dc1ae67ee8f1dc08d8f7ed1c2b7"


def draw_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted source rows: ``per_class`` picks of every class, drawn without replacement by one
    ``numpy.random.default_rng(seed)``, classes in label order."""
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if members.size < per_class:
            raise ValueError(f"class {cls} has {members.size} rows, fewer than --per-class {per_class}")
        picked.append(members[rng.permutation(members.size)[:per_class]])
    return np.sort(np.concatenate(picked))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes an ``np.load``-compatible npz whose bytes depend only on the arrays (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the CIFAR-10 training npz (x, y, classes, files)")
    parser.add_argument("--per-class", type=int, default=250, help="images per class (default 250)")
    parser.add_argument("--seed", type=int, default=0, help="draw seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cifar10_subset.npz")
    args = parser.parse_args(argv)

    if not args.source.is_file():
        parser.error(f"source npz not found: {args.source}")
    source_sha = hashlib.sha256(args.source.read_bytes()).hexdigest()
    if source_sha != SOURCE_SHA256:
        print(f"warning: source sha256 {source_sha} differs from {SOURCE_SHA256}", file=sys.stderr)
    with np.load(args.source, allow_pickle=False) as src:
        x, y = src["x"], src["y"]
        classes, files = src["classes"], src["files"]
    index = draw_indices(y, args.per_class, args.seed)
    arrays = {"x": x[index], "y": y[index], "classes": classes, "files": files[index], "index": index}
    write_npz(args.out, arrays)

    counts = np.bincount(arrays["y"], minlength=len(classes)).tolist()
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.2f} MB): {index.size} images, per class {counts}")
    print(f"sha256 {hashlib.sha256(args.out.read_bytes()).hexdigest()}")
    print(f"sha256 of x bytes {hashlib.sha256(arrays['x'].tobytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
