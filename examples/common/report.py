"""What a run shows: the progress bar or lines, the closing report, and PNG plots of its curves and
spectra (matplotlib's Agg canvas: no display, no global state)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_SKIP = frozenset({"epoch", "step", "elapsed"})
Records = Sequence[Mapping[str, Any]]


def numeric_keys(records: Records, exclude: frozenset[str] = _SKIP) -> list[str]:
    """Keys with a real-number value in some record, in first-seen order.

    Examples:
        >>> numeric_keys([{"epoch": 0, "loss": 1.0}, {"epoch": 1, "acc": 0.5, "tag": "x"}])
        ['loss', 'acc']
    """
    keys = (k for r in records for k, v in r.items() if k not in exclude and _is_number(v))
    return list(dict.fromkeys(keys))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _panels(runs: Mapping[str, Records], keys: Sequence[str], x: str, path: Path, title: str | None) -> Path:
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    # Fixed margins: a constrained layout measures every tick label, which costs more than the plot.
    inch = 1 / (3.0 * rows)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.5 * inch, top=1 - 0.65 * inch, wspace=0.3, hspace=0.6)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, records in runs.items():
            points = [
                (float(r.get(x, j)), float(r[key])) for j, r in enumerate(records) if _is_number(r.get(key))
            ]
            xy = zip(*points, strict=True) if points else ([], [])
            ax.plot(*xy, marker="o" if len(points) < 30 else None, markersize=3, label=label or None)
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
    records: Records, path: Path, keys: Sequence[str], x: str = "epoch", title: str | None = None
) -> Path:
    """One panel per metric of ``keys`` against ``x``."""
    return _panels({"": records}, keys, x, path, title)


def plot_comparison(
    runs: Mapping[str, Records], path: Path, keys: Sequence[str] | None = None, x: str = "epoch"
) -> Path:
    """The runs' curves overlaid, one panel per metric (default: the numeric keys all runs share, at most 9);
    ``ValueError`` if there is none."""
    if keys is None:
        per_run = [numeric_keys(r, _SKIP | {x}) for r in runs.values()]
        keys = [k for k in per_run[0] if all(k in other for other in per_run[1:])][:9]
    if not keys:
        raise ValueError("the runs have no numeric metric in common to plot")
    return _panels(runs, keys, x, path, None)


def plot_run(records: Records, folder: Path, step_keys: Sequence[str],
             epoch_keys: Sequence[str], spectra: Sequence[str]) -> None:  # fmt: skip
    """A run's ``train_curves.png``, ``epoch_metrics.png`` and ``spectrum.png`` (first and last epoch)."""
    steps = [r for r in records if not isinstance(r.get("epoch"), int)]
    epochs = [r for r in records if isinstance(r.get("epoch"), int)]
    for rows, keys, name, x in (
        (steps, step_keys, "train_curves", "step"),
        (epochs, epoch_keys, "epoch_metrics", "epoch"),
    ):
        if present := [k for k in keys if any(k in r for r in rows)]:
            plot_metrics(rows, folder / f"{name}.png", present, x=x, title=folder.name)
    ends = epochs[:1] + epochs[-1:] if len(epochs) > 1 else epochs
    curves = {
        f"{n} epoch {r['epoch']}": r[f"{n}.spectrum"] for n in spectra for r in ends if f"{n}.spectrum" in r
    }
    if curves:
        plot_spectrum(curves, folder / "spectrum.png", "covariance spectrum of the evaluation embeddings")


def plot_spectrum(spectra: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Eigenvalues, sorted and divided by their sum, on a log scale: one curve per entry (a collapsed
    representation drops after a few components)."""
    fig = Figure(figsize=(5.5, 3.8))
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.9)
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


class Progress:
    """A tqdm bar on a terminal, else a plain line every ``log_every`` steps; silent when not ``enabled``."""

    def __init__(self, total: int, initial: int, log_every: int, *, enabled: bool = True, stream: Any = None):
        self.total, self.log_every, self.enabled = total, log_every, enabled
        self.step = self.initial = initial
        self.stream, self.start, self.bar = stream or sys.stderr, time.perf_counter(), None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", file=self.stream, dynamic_ncols=True)

    def update(self, batch_size: int, shown: Mapping[str, float]) -> None:
        """One step of ``batch_size`` images; ``shown``: the metrics logged at this step (maybe none)."""
        self.step += 1
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        shown = {**shown, "img/s": round((self.step - self.initial) * batch_size / elapsed)}
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()), refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.step % self.log_every == 0 or self.step == self.total):
            eta = elapsed / (self.step - self.initial) * (self.total - self.step)
            head = f"train step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%) | "
            tail = f" | elapsed {elapsed:.0f}s" + (f" | eta {eta:.0f}s" if self.step < self.total else "")
            self.write(head + format_metrics(shown) + tail)

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif self.enabled:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(value: Any, key: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if key.endswith(("acc", "share")):
        return f"{100 * value:.1f}%"
    if key or isinstance(value, int):
        return f"{value:.3f}" if key and abs(value) < 10 else f"{value:.0f}"
    return f"{value:.2e}" if value != 0 and not 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """``"loss 0.1235 | lr 3.00e-04"``: the numbers of a progress or epoch line."""
    return " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))


def format_report(path: Path, summary: Mapping[str, Any]) -> str:
    """The closing lines of a run: the online, offline and effective-rank groups, then throughput.

    Examples:
        >>> print(format_report(Path("runs/a"), {"wall_time_s": 61.2, "online": {"linear_acc": 0.25},
        ...                     "images_per_s": 640.0, "rate_time_share": 0.004}))
        done: a in 61 s
          online: linear_acc 25.0%
          640 img/s | coding rate 0.4% of step time
          outputs: runs/a/ (summary.json, metrics.jsonl, metrics.csv, *.png, last.pt)
    """
    lines = [f"done: {path.name} in {summary.get('wall_time_s', 0):.0f} s"]
    for group in ("online", "offline", "effective_rank"):
        values = summary.get(group) or {}
        shown = ("linear_acc", "knn_acc")  # of a group; the details stay in summary.json
        parts = [f"{k} [{' '.join(f'{a} {_fmt(b, a)}' for a, b in v.items() if a in shown)}]"
                 if isinstance(v, Mapping) else f"{k} {_fmt(v, k)}" for k, v in values.items()]  # fmt: skip
        lines += [f"  {group}: " + " | ".join(parts)] if parts else []
    rate = _fmt(summary.get("rate_time_share"), "share")
    lines.append(f"  {_fmt(summary.get('images_per_s'), 'img/s')} img/s | coding rate {rate} of step time")
    lines.append(f"  outputs: {path}/ (summary.json, metrics.jsonl, metrics.csv, *.png, last.pt)")
    return "\n".join(lines)
