"""What the benchmark scripts share: the command line, timing, the environment record and the reports.

Timing is :class:`torch.utils.benchmark.Timer` (it synchronizes CUDA around every timed block); each
measurement is summarized by its median and interquartile range. Every number in one report comes from one
process, so the ratios between routes are measured side by side under the same load, threads and clock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
RESULTS = Path(__file__).resolve().parent / "results"


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An ``argparse`` type: ``convert`` the text, then require ``ok`` (failures are usage errors)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind} {rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    return parse


positive_int = _checked(int, lambda v: v >= 1, ">= 1")
positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "finite and > 0")
non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")


def int_list(text: str) -> tuple[int, ...]:
    """``argparse`` type: comma-separated integers >= 1, such as ``64,256``."""
    try:
        return tuple(positive_int(item) for item in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} in {text!r} (expected e.g. 64,256)") from None


def make_parser(doc: str, *, dtypes: Sequence[str], all_threads: bool = False) -> argparse.ArgumentParser:
    """The options every script takes. ``all_threads``: default ``--threads`` to every CPU instead of 1
    (whole training steps scale with threads; small LAPACK calls are dominated by their synchronization)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", choices=("cpu", "cuda"), default="cpu")
    add("--dtype", choices=tuple(dtypes), default="float32")
    cpus = available_cpus() if all_threads else 1
    why = f"every available CPU, {cpus} here" if all_threads else "1"
    add("--threads", type=positive_int, default=cpus, help=f"pinned intra-op CPU threads (default: {why})")
    add("--quick", action="store_true", help="tiny grid and short timing, for CI")
    add("--timer", choices=("blocked", "adaptive"), help="default: adaptive, blocked with --quick")
    add("--min-run-time", type=non_negative_float, help="seconds per measurement")
    add("--max-run-time", type=positive_float, default=5.0, help="cap of adaptive timing, in seconds")
    add("--seed", type=int, default=0)
    add("--out-dir", type=Path, default=RESULTS, help="folder of the JSON and markdown reports")
    add("--name", help="report file stem (default: derived from the run)")
    return parser


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    min_run_time: tuple[float, float],
    check: Callable[[argparse.Namespace], object] | None = None,
) -> argparse.Namespace:
    """Parses ``argv``; a missing CUDA device or a ``ValueError`` from ``check`` is a usage error (exit 2).
    Fills in the timer and ``min_run_time`` (``(quick, full)`` seconds) and pins the thread count."""
    args = parser.parse_args(argv)
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
        if check is not None:
            check(args)
    except ValueError as err:
        parser.error(str(err))
    args.timer = args.timer or ("blocked" if args.quick else "adaptive")
    if args.min_run_time is None:
        args.min_run_time = min_run_time[0] if args.quick else min_run_time[1]
    torch.set_num_threads(args.threads)
    return args


def time_callable(fn: Callable[[], object], args: argparse.Namespace, label: str = "") -> dict[str, Any]:
    """Median, IQR and quartiles of one call of ``fn`` (warmed up first), timed as ``args`` says."""
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads, label=label)
    if args.timer == "blocked":
        m = t.blocked_autorange(min_run_time=args.min_run_time)
    else:
        m = t.adaptive_autorange(
            threshold=0.1, min_run_time=args.min_run_time, max_run_time=args.max_run_time
        )
    times = sorted(m.times)
    p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {
        "median": float(m.median),
        "iqr": float(p75 - p25),
        "p25": float(p25),
        "p75": float(p75),
        "runs": len(times),
        "number_per_run": int(m.number_per_run),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _git_commit() -> str | None:
    command = ["git", "-C", str(RESULTS.parent), "rev-parse", "--short", "HEAD"]
    try:
        return subprocess.check_output(command, text=True, timeout=10, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """What is needed to interpret and reproduce a run; call it before timing (the load average)."""
    import jepa_rate

    cuda = args.device == "cuda"
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "jepa_rate": jepa_rate.__version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "cpus_available": available_cpus(),
        "threads": args.threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "dtype": args.dtype,
        "cuda": torch.version.cuda if cuda else None,
    }


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run, for its report, without the machine-specific output folder."""
    return {k: v for k, v in vars(args).items() if k != "out_dir"}


def finite_or_none(x: float | None) -> float | None:
    """``x`` unless it is NaN or infinite, which strict JSON cannot hold."""
    return x if x is not None and math.isfinite(x) else None


def format_load(env: dict[str, Any]) -> str:
    load = env.get("load_average")
    return " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)" if load else "—"


def format_time(seconds: float | None) -> str:
    """Three significant figures and a unit (s, ms, µs, ns)."""
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return f"{ratio:.3g}x" if ratio < 100 else f"{ratio:.0f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one ``l`` or ``r`` a column (default: first left, others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(args: argparse.Namespace, stem: str, payload: dict[str, Any], markdown: str) -> None:
    """Writes ``<stem>.json`` and ``<stem>.md`` (``--name`` overrides the stem) into ``--out-dir``."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = (args.out_dir / f"{args.name or stem}{suffix}" for suffix in (".json", ".md"))
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    print(f"wrote {json_path} and {md_path}")
