"""PNG plots of metric curves and eigen-spectra (matplotlib's Agg canvas: no display, no global state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_SKIP = frozenset({"epoch", "step", "elapsed"})


def numeric_keys(records: Sequence[Mapping[str, Any]], exclude: frozenset[str] = _SKIP) -> list[str]:
    """Keys with a real-number value in some record, in first-seen order.

    Examples:
        >>> numeric_keys([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "acc": 0.5, "tag": "x"}])
        ['loss', 'acc']
    """
    return list(
        dict.fromkeys(
            k
            for r in records
            for k, v in r.items()
            if k not in exclude and isinstance(v, (int, float)) and not isinstance(v, bool)
        )
    )


def _panels(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    keys: Sequence[str],
    x: str,
    path: Path,
    title: str | None,
) -> Path:
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, records in runs.items():
            points = [
                (float(r.get(x, j)), float(r[key]))
                for j, r in enumerate(records)
                if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
            ]
            ax.plot(
                *zip(*points, strict=True) if points else ([], []),
                marker="o" if len(points) < 30 else None,
                markersize=3,
                label=label or None,
            )
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_metrics(
    records: Sequence[Mapping[str, Any]],
    path: Path,
    keys: Sequence[str],
    x: str = "epoch",
    title: str | None = None,
) -> Path:
    """One panel per metric of ``keys`` against ``x``."""
    return _panels({"": records}, keys, x, path, title)


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: Path,
    keys: Sequence[str] | None = None,
    x: str = "epoch",
) -> Path:
    """The runs' curves overlaid, one panel per metric (default: the numeric keys all runs share, at most 9).

    Raises:
        ValueError: No metric to plot.
    """
    if keys is None:
        per_run = [numeric_keys(r, _SKIP | {x}) for r in runs.values()]
        keys = [k for k in per_run[0] if all(k in other for other in per_run[1:])][:9]
    if not keys:
        raise ValueError("the runs have no numeric metric in common to plot")
    return _panels(runs, keys, x, path, None)


def plot_spectrum(spectra: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Eigenvalues, sorted and divided by their sum, on a log scale: one curve per entry (a collapsed
    representation drops after a few components)."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for label, values in spectra.items():
        ev = sorted((max(0.0, float(v)) for v in values), reverse=True)
        total = sum(ev) or 1.0
        ax.semilogy(range(1, len(ev) + 1), [max(v / total, 1e-12) for v in ev], label=label)
    ax.set(xlabel="component", ylabel="eigenvalue / sum", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path
