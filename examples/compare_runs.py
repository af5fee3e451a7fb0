"""Compares finished runs: a markdown table of their summaries and a plot of their curves.

Usage::

    python examples/compare_runs.py runs/a runs/b ... [--out runs/comparison] [--keys k1,k2] [--x epoch]

Writes ``<out>/comparison.md`` (also printed): a row per run, a column per scalar of any ``summary.json``
(nested values as dotted columns), and ``<out>/comparison.png``: the runs' ``metrics.jsonl`` curves overlaid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config import flat_keys
from common.report import numeric_keys, plot_comparison
from common.run import read_jsonl


def _cell(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: Mapping[str, Mapping[str, Any]], keys: Sequence[str] | None = None) -> str:
    """A markdown table: one row per run label, one column per key (default every key, first-seen order).

    Examples:
        >>> print(markdown_table({"a": {"acc": 0.31234, "rank": 12}, "b": {"acc": 0.4}}))
        | run | acc | rank |
        | --- | --- | --- |
        | a | 0.3123 | 12 |
        | b | 0.4 |  |
    """
    if keys is None:
        keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    lines = ["| run | " + " | ".join(keys) + " |", "| --- | " + " | ".join("---" for _ in keys) + " |"]
    for label, row in rows.items():
        lines.append(f"| {_cell(label)} | " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def collect_summaries(run_dirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Flattened ``summary.json`` of each run, keyed by a unique label (the folder name, or its path);
    ``ValueError`` for a run given twice or a ``summary.json`` that is not a JSON object (naming it)."""
    resolved = [p.resolve() for p in run_dirs]
    if repeated := sorted({str(p) for p in resolved if resolved.count(p) > 1}):
        raise ValueError(f"the same run is given more than once: {', '.join(repeated)}")
    names = [p.name for p in resolved]
    out: dict[str, dict[str, Any]] = {}
    for path, name in zip(run_dirs, names, strict=True):
        label = name if names.count(name) == 1 else str(path)
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:  # its message lacks the file it came from
            raise ValueError(f"{path / 'summary.json'}: invalid JSON: {err}") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{path / 'summary.json'} does not hold a JSON object")
        out[label] = {k: v for k, v in flat_keys(summary).items() if not isinstance(v, list)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare runs: markdown table of summaries and a plot.")
    add = parser.add_argument
    add("runs", nargs="+", type=Path, help="run folders (each with summary.json)")
    add("--out", type=Path, default=Path("runs/comparison"), help="output folder")
    add("--keys", help="comma-separated metrics to plot (default: shared ones)")
    add("--x", help="metric on the horizontal axis (default: epoch)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not (p / "summary.json").is_file()]
    if missing:
        parser.error(f"no summary.json in: {', '.join(missing)} (did those runs finish?)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    try:
        summaries = collect_summaries(args.runs)
    except ValueError as err:
        parser.error(str(err))
    curves = {label: read_jsonl(p / "metrics.jsonl") for label, p in zip(summaries, args.runs, strict=True)}
    keys = [k.strip() for k in args.keys.split(",")] if args.keys else None
    # --keys / --x must name logged metrics (else empty panels); the default "epoch" may be absent.
    logged = numeric_keys([r for records in curves.values() for r in records], frozenset())
    unknown = [k for k in keys or [] if k not in logged]
    if args.x is not None and args.x not in logged:
        unknown.append(f"--x {args.x}")
    if any(curves.values()) and unknown:
        available = ", ".join(logged) or "none"
        parser.error(f"not in any run's metrics.jsonl: {', '.join(unknown)} (available: {available})")
    table = markdown_table(summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    done = "; no metrics.jsonl to plot"
    if any(curves.values()):
        try:
            plot = plot_comparison(curves, args.out / "comparison.png", keys=keys, x=args.x or "epoch")
            done = f" and {plot}"
        except ValueError as err:
            done = f"; no plot: {err}"
    print(f"\nwrote {args.out / 'comparison.md'}{done}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
