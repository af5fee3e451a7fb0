"""Shared timing, environment and report helpers for the benchmark scripts.

The scripts in this folder time whole callables with :class:`torch.utils.benchmark.Timer`, which
synchronizes the accelerator around each timed block, and summarize each measurement by its median and
interquartile range (IQR). Every number in one report comes from a single process, so ratios between
routes are measured side by side under the same load, thread count and clock.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

__all__ = [
    "DTYPES",
    "Timing",
    "add_common_arguments",
    "available_cpus",
    "environment",
    "finite_or_none",
    "format_load",
    "format_ratio",
    "format_time",
    "int_list",
    "markdown_table",
    "non_negative_float",
    "parse_args",
    "pinned_threads",
    "positive_float",
    "positive_int",
    "resolve_device",
    "run_config",
    "set_timing_defaults",
    "time_callable",
    "write_report",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class Timing:
    """Summary of one :class:`torch.utils.benchmark.Measurement`, in seconds per call.

    Attributes:
        median: Median time of one call.
        iqr: Interquartile range of the per-call times.
        p25: 25th percentile.
        p75: 75th percentile.
        runs: Number of timed blocks.
        number_per_run: Calls per timed block.
    """

    median: float
    iqr: float
    p25: float
    p75: float
    runs: int
    number_per_run: int

    def as_dict(self) -> dict[str, float | int]:
        """Returns the fields as a JSON-ready dictionary."""
        return asdict(self)


def available_cpus() -> int:
    """Returns the number of CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _number(text: str, convert: Callable[[str], Any], what: str) -> Any:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1 (the error becomes a usage message, exit status 2)."""
    value: int = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    value: float = _number(text, float, "a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """``argparse`` type: a finite number >= 0."""
    value: float = _number(text, float, "a number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text!r}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """``argparse`` type: comma-separated integers >= 1, such as ``64,256``."""
    try:
        return tuple(positive_int(item) for item in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} in {text!r} (expected e.g. 64,256)") from None


def add_common_arguments(
    parser: argparse.ArgumentParser, *, dtype_choices: Sequence[str], all_threads: bool = False
) -> None:
    """Adds the options shared by every benchmark script to an ``argparse`` parser.

    Args:
        parser: The script's parser.
        dtype_choices: Allowed values of ``--dtype``.
        all_threads: Default ``--threads`` to every available CPU instead of 1 (for whole training steps,
            whose convolutions and matrix products scale with threads, unlike small LAPACK calls).
    """
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(dtype_choices), default="float32")
    why = (
        f"every available CPU, {available_cpus()} here"
        if all_threads
        else "1; multi-threaded LAPACK on small matrices is dominated by thread synchronization and swings "
        "with machine load"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=available_cpus() if all_threads else 1,
        help=f"intra-op CPU threads, pinned with torch.set_num_threads (default: {why})",
    )
    parser.add_argument("--quick", action="store_true", help="tiny grid and short timing, for CI")
    parser.add_argument(
        "--timer",
        choices=("blocked", "adaptive"),
        default=None,
        help="blocked_autorange or adaptive_autorange (default: adaptive, blocked with --quick)",
    )
    parser.add_argument(
        "--min-run-time", type=non_negative_float, default=None, help="seconds per measurement"
    )
    parser.add_argument(
        "--max-run-time", type=positive_float, default=5.0, help="cap for adaptive_autorange, in seconds"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="folder for the JSON and markdown reports",
    )
    parser.add_argument("--name", default=None, help="report file stem (default: derived from the run)")


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    check: Callable[[argparse.Namespace], object] | None = None,
) -> argparse.Namespace:
    """Parses ``argv`` and checks what needs the parsed options, as usage errors (exit status 2).

    Args:
        parser: The script's parser, with :func:`add_common_arguments` applied.
        argv: Command-line arguments (default ``sys.argv[1:]``).
        check: Called with the parsed options; a ``ValueError`` it raises becomes the usage error.

    Returns:
        The parsed options.
    """
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
        if check is not None:
            check(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def set_timing_defaults(args: argparse.Namespace, *, quick: float, full: float) -> None:
    """Fills in ``args.timer`` and ``args.min_run_time`` where not given, so the report records them.

    Args:
        args: Parsed options; an explicit ``--min-run-time 0`` is kept.
        quick: Default minimum run time with ``--quick``, in seconds.
        full: Default minimum run time otherwise.
    """
    if args.timer is None:
        args.timer = "blocked" if args.quick else "adaptive"
    if args.min_run_time is None:
        args.min_run_time = quick if args.quick else full


def run_config(args: Any) -> dict[str, Any]:
    """Returns the parsed options of a run for its report, without the machine-specific output folder."""
    return {k: v for k, v in vars(args).items() if k != "out_dir"}


def resolve_device(name: str) -> torch.device:
    """Returns the requested device, raising when CUDA is asked for but absent.

    Raises:
        ValueError: If ``name`` is ``"cuda"`` and no CUDA device is available.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    return torch.device(name)


@contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Pins ``torch.set_num_threads`` for the duration of the block, restoring the old value after.

    Raises:
        ValueError: If ``threads`` is not positive.
    """
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_callable(
    fn: Callable[[], object],
    *,
    threads: int,
    timer: str,
    min_run_time: float,
    max_run_time: float,
    label: str = "",
) -> Timing:
    """Times ``fn()`` with :class:`torch.utils.benchmark.Timer`.

    Args:
        fn: The callable to time; it is run for warm-up before measurement starts.
        threads: CPU threads used while timing.
        timer: ``"blocked"`` for ``blocked_autorange`` or ``"adaptive"`` for ``adaptive_autorange``.
        min_run_time: Minimum total measured time in seconds.
        max_run_time: Cap on the total measured time of ``adaptive_autorange``.
        label: Label stored in the measurement.

    Returns:
        Median, IQR and percentiles of the per-call time.

    Raises:
        ValueError: If ``timer`` is not one of the two modes.
    """
    t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label)
    if timer == "blocked":
        m = t.blocked_autorange(min_run_time=min_run_time)
    elif timer == "adaptive":
        m = t.adaptive_autorange(threshold=0.1, min_run_time=min_run_time, max_run_time=max_run_time)
    else:
        raise ValueError(f"timer must be 'blocked' or 'adaptive', got {timer!r}")
    times = sorted(m.times)
    if len(times) >= 2:
        p25, _, p75 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        p25 = p75 = times[0]
    return Timing(
        median=float(m.median),
        iqr=float(p75 - p25),
        p25=float(p25),
        p75=float(p75),
        runs=len(times),
        number_per_run=int(m.number_per_run),
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device, dtype: str, threads: int) -> dict[str, Any]:
    """Collects what is needed to interpret and reproduce a run.

    Args:
        device: Device the benchmark ran on.
        dtype: Name of the input dtype.
        threads: Pinned CPU thread count.

    Returns:
        A JSON-ready dictionary (torch version, device name, threads, dtype, ...).
    """
    try:
        import jepa_rate

        package_version: str | None = jepa_rate.__version__
    except ImportError:
        package_version = None
    env: dict[str, Any] = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "jepa_rate": package_version,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpus_available": available_cpus(),
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "dtype": dtype,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    return env


def finite_or_none(x: float | None) -> float | None:
    """Returns ``x`` unless it is NaN or infinite, which strict JSON cannot hold."""
    if x is None or not math.isfinite(x):
        return None
    return x


def format_load(env: dict[str, Any]) -> str:
    """Formats the load average recorded by :func:`environment`, or a dash when unknown."""
    load = env.get("load_average")
    if not load:
        return "—"
    return " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)"


def format_time(seconds: float | None) -> str:
    """Formats a duration with three significant figures and a unit (s, ms, µs, ns)."""
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def format_ratio(ratio: float | None) -> str:
    """Formats a speed-up ratio such as ``12.3x``."""
    if ratio is None:
        return "—"
    return f"{ratio:.3g}x" if ratio < 100 else f"{ratio:.0f}x"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """Renders a GitHub-flavoured markdown table.

    Args:
        header: Column titles.
        rows: Cell strings, one sequence per row.
        align: One character per column, ``l`` or ``r`` (default: first column left, others right).

    Returns:
        The table, one line per row, without a trailing newline.

    Raises:
        ValueError: If a row or ``align`` does not have one entry per column.
    """
    width = len(header)
    align = align or "l" + "r" * (width - 1)
    if len(align) != width:
        raise ValueError(f"align has {len(align)} entries for {width} columns: {align!r}")
    for row in rows:
        if len(row) != width:
            raise ValueError(f"row has {len(row)} cells for {width} columns: {list(row)!r}")
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir: Path, stem: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Writes ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` (created if needed).

    Returns:
        The paths of the JSON and markdown files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    return json_path, md_path
