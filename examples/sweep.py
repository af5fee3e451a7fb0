"""Runs the example trainer over a grid of config values and seeds, then tabulates and plots the results.

Usage::

    python examples/sweep.py --config cpu --variant teacherless_rate --variant ema_rate \\
        --grid rate.weight=1e-3,3e-3,1e-2,3e-2,1e-1 --seeds 0,1 --baseline ema --baseline teacherless \\
        --set data.train_size=20000 --set epochs=3 --jobs 1 --out runs/sweep_lambda

Every (variant, grid point, seed) is one trainer run in ``<out>/<name>/``; each ``--baseline`` variant runs
once per seed without the grid. Finished runs (with ``summary.json``) are skipped and stopped ones (with
``last.pt``) resumed, so an interrupted sweep continues where it stopped. The trainer's output goes to
``<out>/logs/<name>.log``. At the end ``<out>/sweep.md`` and ``<out>/sweep.csv`` hold the mean and the
standard deviation over seeds of each grid point, and ``<out>/sweep_<key>.png`` plots them against each
swept key (log axis for positive numbers), with the baselines as horizontal lines.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.config import ConfigError, load_config, preset_path
from compare_runs import collect_summaries, markdown_table

__all__ = ["Run", "aggregate", "build_runs", "main", "parse_grid", "parse_seeds", "run_name"]

# ------------------------------------------------------------------------- the trainer, in one place
TRAINER = Path(__file__).with_name("cifar_rot_train.py")
#: Keys the sweep sets for each run (``--seeds``, ``--out``, the run name), so not in ``--set`` / ``--grid``.
RESERVED = ("seed", "out_dir", "name")
SUMMARY, CHECKPOINT = "summary.json", "last.pt"  # a finished run; a resumable one
#: Table column -> dotted key of the trainer's ``summary.json``.
METRICS: dict[str, str] = {
    "z_agg.linear_acc": "offline.z_agg.linear_acc",
    "z_agg.knn_acc": "offline.z_agg.knn_acc",
    "encoder.linear_acc": "offline.encoder.linear_acc",
    "encoder.knn_acc": "offline.encoder.knn_acc",
    "rotation_r2": "offline.rotation_r2",
    "z_agg.effective_rank": "effective_rank.z_agg",
    "encoder.effective_rank": "effective_rank.encoder",
    "wall_time_s": "wall_time_s",
}
_FIXED = {"variant", "n", *METRICS, *(f"{m}_std" for m in METRICS)}  # row keys that are not grid keys


@dataclass(frozen=True)
class Run:
    """One trainer run: a variant, the grid values it sets (key -> value text) and a seed."""

    variant: str
    point: tuple[tuple[str, str], ...]
    seed: int


def trainer_command(run: Run, config: str, sets: Sequence[str], out: Path) -> list[str]:
    """The trainer's command line for ``run``: a resume when its folder holds ``last.pt``, else a new run."""
    folder = out / run_name(run)
    if (folder / CHECKPOINT).is_file():
        return [sys.executable, str(TRAINER), "--resume", str(folder)]
    grid = [f"{k}={v}" for k, v in run.point]
    overrides = [f"--set={s}" for s in [*sets, *grid, f"seed={run.seed}", f"out_dir={out}"]]
    return [sys.executable, str(TRAINER), "--config", config, "--variant", run.variant, *overrides,
            "--name", run_name(run), "--overwrite"]  # fmt: skip


def trainer_variants() -> list[str]:
    """The trainer's ``--variant`` choices."""
    from cifar_rot_train import VARIANTS

    return sorted(VARIANTS)


def check_config(run: Run, config: str, sets: Sequence[str]) -> None:
    """Resolves ``run``'s config as the trainer will, so a bad key or value fails before any run starts."""
    from cifar_rot_train import TrainConfig

    overrides = [*sets, *(f"{k}={v}" for k, v in run.point), f"variant={run.variant}", f"seed={run.seed}"]
    load_config(TrainConfig, preset_path(config), overrides)


# ------------------------------------------------------------------------------------------ the grid
def parse_grid(text: str) -> tuple[str, list[str]]:
    """``"key=v1,v2"`` as ``("key", ["v1", "v2"])``.

    Raises:
        ValueError: No ``=``, an empty key or value, or a repeated value.

    Examples:
        >>> parse_grid("rate.weight=1e-3,1e-2")
        ('rate.weight', ['1e-3', '1e-2'])
    """
    key, sep, rest = text.partition("=")
    values = [v.strip() for v in rest.split(",")]
    if not sep or not key.strip() or not all(values):
        raise ValueError(f"--grid must be KEY=V1,V2,... with no empty value, got {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"--grid {key.strip()} repeats a value: {text!r}")
    return key.strip(), values


def parse_seeds(text: str) -> list[int] | None:
    """``"0,1"`` as ``[0, 1]``; ``None`` unless they are distinct non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        return None
    return seeds if len(set(seeds)) == len(seeds) and min(seeds) >= 0 else None


def run_name(run: Run) -> str:
    """The run folder name: ``<variant>[-<key>=<value>...]-s<seed>`` (path separators become ``_``).

    Examples:
        >>> run_name(Run("ema_rate", (("rate.weight", "1e-3"),), 1))
        'ema_rate-rate.weight=1e-3-s1'
    """
    parts = [run.variant, *(f"{k}={v}" for k, v in run.point), f"s{run.seed}"]
    return "-".join(parts).replace("/", "_").replace("\\", "_")


def build_runs(
    variants: Sequence[str],
    grid: Sequence[tuple[str, list[str]]],
    seeds: Sequence[int],
    baselines: Sequence[str],
) -> list[Run]:
    """Every variant at every grid point (the product of the grid keys) and seed, then the baselines."""
    points = [tuple(zip([k for k, _ in grid], values, strict=True)) for values in
              itertools.product(*(v for _, v in grid))]  # fmt: skip
    runs = [Run(v, p, s) for v in variants for p in points for s in seeds]
    runs += [Run(b, (), s) for b in baselines for s in seeds]
    return list(dict.fromkeys(runs))  # without a grid, a baseline may also be a --variant


def aggregate(runs: Sequence[Run], summaries: Mapping[str, Mapping[str, object]]) -> list[dict[str, object]]:
    """One row per (variant, grid point): ``n`` finished seeds, and ``<metric>`` / ``<metric>_std``
    (mean and standard deviation over seeds; 0 for one seed) of each of :data:`METRICS`."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[Mapping[str, object]]] = {}
    for run in runs:
        if (summary := summaries.get(run_name(run))) is not None:
            groups.setdefault((run.variant, run.point), []).append(summary)
    rows: list[dict[str, object]] = []
    for (variant, point), found in groups.items():
        row: dict[str, object] = {"variant": variant, **dict(point), "n": len(found)}
        for column, key in METRICS.items():
            values = [float(v) for s in found if isinstance(v := s.get(key), (int, float))]
            row[column] = statistics.fmean(values) if values else None
            row[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- running, output
def execute(runs: Sequence[Run], config: str, sets: Sequence[str], out: Path, jobs: int) -> list[str]:
    """Runs the unfinished runs, ``jobs`` at a time with ``cores // jobs`` threads each (at most the
    ``OMP_NUM_THREADS`` of the sweep); returns the failed ones, each with its log."""
    todo = [r for r in runs if not (out / run_name(r) / SUMMARY).is_file()]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if (cap := os.environ.get("OMP_NUM_THREADS", "")).isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))  # the sweep's own thread cap holds for its runs too
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def one(run: Run) -> str | None:
        log = out / "logs" / f"{run_name(run)}.log"
        print(f"run {run_name(run)} (log: {log})", flush=True)
        with log.open("a", encoding="utf-8") as f:
            code = subprocess.run(trainer_command(run, config, sets, out), stdout=f, stderr=subprocess.STDOUT,
                                  env=env, check=False).returncode  # fmt: skip
        return None if code == 0 else f"{run_name(run)} (exit {code}, see {log})"

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        return [failed for failed in pool.map(one, todo) if failed is not None]
    finally:  # on Ctrl-C the running trainers checkpoint and stop; the waiting runs must not start
        pool.shutdown(cancel_futures=True)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def plot(rows: Sequence[dict[str, object]], key: str, path: Path) -> Path:
    """Each metric against ``key``: one line per variant (and other grid values), baselines as lines."""
    swept = [r for r in rows if key in r]
    values = list(dict.fromkeys(str(r[key]) for r in swept))
    numeric = all(_is_number(v) for v in values)
    # Categorical values (e.g. model.predictor_norm) are evenly spaced, in the order given.
    xs = {v: float(v) if numeric else float(i) for i, v in enumerate(values)}
    log = numeric and all(x > 0 for x in xs.values())
    lines: dict[str, list[dict[str, object]]] = {}
    for r in swept:
        other = [f"{k}={r[k]}" for k in r if k not in _FIXED and k != key]
        lines.setdefault(", ".join([str(r["variant"]), *other]), []).append(r)
    fig = Figure(figsize=(16, 7), layout="constrained")
    for ax, metric in zip(fig.subplots(2, 4).flat, METRICS, strict=True):
        for label, line in lines.items():
            pts = sorted(
                (xs[str(r[key])], r[metric], r[f"{metric}_std"]) for r in line if r[metric] is not None
            )
            if pts:
                ax.errorbar(*zip(*pts, strict=True), marker="o", capsize=3, label=label)
        for i, r in enumerate(r for r in rows if key not in r and r[metric] is not None):
            ax.axhline(r[metric], ls="--", color=f"C{len(lines) + i}", label=f"{r['variant']} (baseline)")
        if log:
            ax.set_xscale("log")
        elif not numeric:
            ax.set_xticks(list(xs.values()), values)
        ax.set(title=metric, xlabel=key)
        ax.grid(alpha=0.3)
    if labelled := [ax for ax in fig.axes if ax.get_legend_handles_labels()[0]]:
        labelled[0].legend(fontsize="small")
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def write_outputs(rows: Sequence[dict[str, object]], keys: Sequence[str], out: Path) -> list[Path]:
    """``sweep.md`` (``mean ± std`` cells), ``sweep.csv`` (means and stds) and one plot per swept key."""
    columns = ["variant", *keys, "n", *(c for m in METRICS for c in (m, f"{m}_std"))]
    with (out / "sweep.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    cells = {
        "-".join([str(r["variant"]), *(f"{k}={r[k]}" for k in keys if k in r)]): {
            "n": r["n"], **{m: None if r[m] is None else f"{r[m]:.4g} ± {r[f'{m}_std']:.2g}" for m in METRICS}
        }
        for r in rows
    }  # fmt: skip
    (out / "sweep.md").write_text(markdown_table(cells) + "\n", encoding="utf-8")
    return [out / "sweep.md", out / "sweep.csv", *(plot(rows, k, out / f"sweep_{k}.png") for k in keys)]


def parse_args(
    argv: Sequence[str] | None,
) -> tuple[argparse.Namespace, list[tuple[str, list[str]]], list[int]]:
    """The flags, the grid and the seeds; a bad value is an argparse usage error (exit code 2)."""
    parser = argparse.ArgumentParser(description="Run a grid of trainer runs; tabulate and plot them.")
    parser.add_argument("--config", default="demo", help="the trainer's preset name or YAML file")
    parser.add_argument("--variant", action="append", default=[], choices=trainer_variants(),
                        help="a variant run at every grid point (repeatable)")  # fmt: skip
    parser.add_argument("--baseline", action="append", default=[], choices=trainer_variants(),
                        help="a variant run once per seed, without the grid (repeatable)")  # fmt: skip
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", help="swept key")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                        help="a config value of every run (repeatable)")  # fmt: skip
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="output folder")
    args = parser.parse_args(argv)
    try:
        grid = [parse_grid(g) for g in args.grid]
    except ValueError as err:
        parser.error(str(err))
    if len({k for k, _ in grid}) != len(grid):
        parser.error(f"--grid names a key twice: {', '.join(k for k, _ in grid)}")
    keys = [k for k, _ in grid] + [s.partition("=")[0].strip() for s in args.sets]
    if reserved := [k for k in keys if k in RESERVED]:
        parser.error(f"the sweep sets {', '.join(reserved)} itself: use --seeds and --out instead")
    seeds = parse_seeds(args.seeds)
    if seeds is None:
        parser.error(f"--seeds must be distinct non-negative integers like 0,1,2, got {args.seeds!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if not args.variant and not args.baseline:
        parser.error("nothing to run: give at least one --variant or --baseline")
    if grid and not args.variant:
        parser.error("--grid needs a --variant to sweep")
    try:
        for run in build_runs(args.variant, grid, seeds, args.baseline):
            check_config(run, args.config, args.sets)
    except ConfigError as err:
        parser.error(f"{run_name(run)}: {err}")
    return args, grid, seeds


def main(argv: Sequence[str] | None = None) -> int:
    args, grid, seeds = parse_args(argv)
    runs = build_runs(args.variant, grid, seeds, args.baseline)
    failed = execute(runs, args.config, args.sets, args.out.resolve(), args.jobs)
    done = [args.out / run_name(r) for r in runs if (args.out / run_name(r) / SUMMARY).is_file()]
    rows = aggregate(runs, collect_summaries(done) if done else {})
    for path in write_outputs(rows, [k for k, _ in grid], args.out):
        print(f"wrote {path}")
    if failed:
        print("failed runs:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
