"""PNG plots of training curves and eigen-spectra (matplotlib's Agg canvas; no display, no global state).

The figures are built with ``matplotlib.figure.Figure`` directly rather than ``pyplot``, so nothing here
changes the process-wide backend or leaks figures in long runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["numeric_keys", "plot_comparison", "plot_metrics", "plot_spectrum"]

_SKIP = frozenset({"epoch", "step", "global_step", "time", "wall_time", "elapsed"})


def numeric_keys(records: Sequence[Mapping[str, Any]], exclude: frozenset[str] = _SKIP) -> list[str]:
    """Keys with a finite-or-not real number value in some record, in first-seen order, minus ``exclude``.

    Examples:
        >>> numeric_keys([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "acc": 0.5, "tag": "x"}])
        ['loss', 'acc']
    """
    keys: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in keys and key not in exclude and _is_number(value):
                keys.append(key)
    return keys


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(records: Sequence[Mapping[str, Any]], x: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, record in enumerate(records):
        value: Any = record.get(key)
        if _is_number(value):
            position: Any = record.get(x, i)
            xs.append(float(position) if _is_number(position) else float(i))
            ys.append(float(value))
    return xs, ys


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, max(1, n))
    return math.ceil(n / cols), cols


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def plot_metrics(
    records: Sequence[Mapping[str, Any]],
    path: str | Path,
    keys: Sequence[str] | None = None,
    x: str = "epoch",
    title: str | None = None,
) -> Path:
    """Plots one panel per metric against ``x`` (records without the metric are skipped).

    Args:
        records: Metrics records, e.g. ``RunDir.records()``.
        path: Output PNG.
        keys: Metrics to plot; default every numeric key except step/epoch/time ones.
        x: The record key on the horizontal axis (the record index where it is missing).
        title: Figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: No metric to plot.
    """
    keys = list(keys) if keys is not None else numeric_keys(records, _SKIP | {x})
    if not keys:
        raise ValueError(f"no numeric metrics to plot in {len(records)} records")
    rows, cols = _grid(len(keys))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs, ys = _series(records, x, key)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_comparison(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    keys: Sequence[str] | None = None,
    x: str = "epoch",
) -> Path:
    """Overlays the curves of several runs, one panel per metric.

    Args:
        runs: Run label to its metrics records.
        path: Output PNG.
        keys: Metrics to plot; default the numeric keys present in every run (at most nine).
        x: The record key on the horizontal axis.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: No runs, or no metric to plot.
    """
    if not runs:
        raise ValueError("no runs to compare")
    if keys is None:
        per_run = [numeric_keys(r, _SKIP | {x}) for r in runs.values()]
        keys = [k for k in per_run[0] if all(k in other for other in per_run[1:])][:9]
    keys = list(keys)
    if not keys:
        raise ValueError("the runs have no numeric metric in common to plot")
    rows, cols = _grid(len(keys))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, records in runs.items():
            xs, ys = _series(records, x, key)
            ax.plot(xs, ys, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_spectrum(
    spectra: Mapping[str, torch.Tensor | Sequence[float]],
    path: str | Path,
    *,
    normalize: bool = True,
    title: str = "eigen-spectrum",
) -> Path:
    """Plots sorted eigenvalues (e.g. of the embedding covariance) on a log scale, one curve per entry.

    Args:
        spectra: Label (e.g. ``"z"``, ``"z_agg epoch 10"``) to a 1-D sequence of non-negative eigenvalues.
        path: Output PNG.
        normalize: Divide each spectrum by its sum, so that spectra of different scales compare (a collapsed
            representation shows as a curve that drops after a few components).
        title: Figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: No spectra, or a spectrum that is not 1-D.
    """
    if not spectra:
        raise ValueError("no spectra to plot")
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for label, values in spectra.items():
        ev = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
        if ev.ndim != 1:
            raise ValueError(f"spectrum '{label}' must be 1-D, got shape {tuple(ev.shape)}")
        ev = torch.sort(ev.clamp_min(0), descending=True).values
        if normalize and ev.sum() > 0:
            ev = ev / ev.sum()
        # Exact zeros cannot sit on a log axis; the floor keeps a collapsed tail visible at the bottom.
        ax.semilogy(range(1, ev.numel() + 1), ev.clamp_min(1e-12).tolist(), label=label)
    ax.set_xlabel("component")
    ax.set_ylabel("eigenvalue / sum" if normalize else "eigenvalue")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)
