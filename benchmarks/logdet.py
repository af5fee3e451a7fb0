#!/usr/bin/env python3
"""Forward-only benchmark of the ways to take the log-determinant of a symmetric positive definite matrix.

Routes: ``torch.logdet`` (LU), ``torch.linalg.slogdet`` (LU), ``torch.linalg.cholesky`` and
``torch.linalg.cholesky_ex`` followed by ``2 * sum(log(diag(L)))``, ``cholesky_ex`` of ``blockdiag(A, I_8)``
(the padded order ``jepa_rate`` factors on CPU when ``k`` is a multiple of 128), and
``sum(log(eigvalsh(A)))``. Each value
is checked against a float64 eigenvalue reference computed one matrix at a time, so a route that is fast
but wrong (for example a multi-threaded batched LU) is flagged in the report.

Usage::

    python benchmarks/logdet.py                          # CPU, float32 and float64, sizes 64..2048
    python benchmarks/logdet.py --quick                  # tiny sizes, seconds (CI)
    python benchmarks/logdet.py --device cuda --batch 16 # batched (16, k, k) inputs

Writes ``logdet_<device>[_b<batch>][_quick].json`` and ``.md`` (no dtype in the name: each report holds
every dtype) into ``--out-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    add_common_arguments,
    environment,
    finite_or_none,
    format_load,
    format_ratio,
    format_time,
    int_list,
    markdown_table,
    parse_args,
    pinned_threads,
    positive_int,
    resolve_device,
    run_config,
    set_timing_defaults,
    time_callable,
    write_report,
)

__all__ = ["FULL_SIZES", "QUICK_SIZES", "ROUTES", "main", "run"]

FULL_SIZES: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
QUICK_SIZES: tuple[int, ...] = (8, 32)
DTYPE_SETS: dict[str, tuple[torch.dtype, ...]] = {
    "float32": (torch.float32,),
    "float64": (torch.float64,),
    "both": (torch.float32, torch.float64),
}


def _cholesky(a: Tensor) -> Tensor:
    factor: Tensor = torch.linalg.cholesky(a)
    return 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _cholesky_ex(a: Tensor) -> Tensor:
    # No check_errors: the info tensor stays on the device, so the call never synchronizes.
    factor: Tensor = torch.linalg.cholesky_ex(a).L
    return 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _cholesky_ex_padded(a: Tensor) -> Tensor:
    # blockdiag(A, I_8): same determinant; the order of jepa_rate's CPU kernel when k is a multiple of 128.
    k = a.shape[-1]
    padded = torch.nn.functional.pad(a, (0, 8, 0, 8))
    padded.diagonal(dim1=-2, dim2=-1)[..., k:] = 1.0
    factor: Tensor = torch.linalg.cholesky_ex(padded).L
    return 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _eigvalsh(a: Tensor) -> Tensor:
    eig: Tensor = torch.linalg.eigvalsh(a)
    return eig.log().sum(-1)


ROUTES: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "logdet": ("`torch.logdet`", torch.logdet),
    "slogdet": ("`torch.linalg.slogdet`", lambda a: torch.linalg.slogdet(a).logabsdet),
    "cholesky": ("`cholesky` + 2 Σ log diag", _cholesky),
    "cholesky_ex": ("`cholesky_ex` + 2 Σ log diag", _cholesky_ex),
    "cholesky_ex_padded": ("`cholesky_ex` of blockdiag(A, I₈)", _cholesky_ex_padded),
    "eigvalsh": ("`eigvalsh` + Σ log", _eigvalsh),
}


def _spd(k: int, batch: int, seed: int) -> Tensor:
    """Float64 SPD matrices ``I + X Xᵀ / k`` with Gaussian ``X``, shape ``(k, k)`` or ``(batch, k, k)``."""
    gen = torch.Generator().manual_seed(seed + k)
    x = torch.randn((batch, k, k), generator=gen, dtype=torch.float64)
    a = torch.eye(k, dtype=torch.float64) + x @ x.mT / k
    return a[0] if batch == 1 else a


def _reference(a64: Tensor) -> Tensor:
    # One matrix at a time: the reference must not rely on a batched factorization.
    flat = a64.reshape(-1, *a64.shape[-2:])
    ref = torch.stack([torch.linalg.eigvalsh(m).log().sum() for m in flat])
    return ref.reshape(a64.shape[:-2])


def _measure(args: argparse.Namespace, device: torch.device, sizes: Sequence[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dtype in DTYPE_SETS[args.dtype]:
        dname = str(dtype).removeprefix("torch.")
        for k in sizes:
            a64 = _spd(k, args.batch, args.seed)
            ref = _reference(a64.to(device)).cpu()
            a = a64.to(device=device, dtype=dtype)
            for key, (title, fn) in ROUTES.items():
                row: dict[str, Any] = {
                    "dtype": dname,
                    "size": k,
                    "batch": args.batch,
                    "route": key,
                    "title": title,
                }
                value = fn(a).to(device="cpu", dtype=torch.float64)
                rel = float(((value - ref).abs() / ref.abs().clamp_min(1.0)).max())
                row["rel_err"] = finite_or_none(rel)
                timing = time_callable(
                    functools.partial(fn, a),
                    threads=args.threads,
                    timer=args.timer,
                    min_run_time=args.min_run_time,
                    max_run_time=args.max_run_time,
                    label=f"{dname}/{k}/{key}",
                )
                row["timing"] = timing.as_dict()
                rows.append(row)
                print(
                    f"  {dname} {k:>5} {key:<12} {format_time(timing.median):>10}  rel_err={rel:.1e}",
                    flush=True,
                )
    for r in rows:
        base = next(
            b for b in rows if b["dtype"] == r["dtype"] and b["size"] == r["size"] and b["route"] == "logdet"
        )
        r["speedup_vs_logdet"] = base["timing"]["median"] / r["timing"]["median"]
    return rows


def _time_cell(row: dict[str, Any]) -> str:
    return f"{format_time(row['timing']['median'])} ({format_ratio(row['speedup_vs_logdet'])})"


def _markdown(payload: dict[str, Any]) -> str:
    env, cfg = payload["environment"], payload["config"]
    shape = "single matrices" if cfg["batch"] == 1 else f"batches of {cfg['batch']} matrices"
    lines = [
        f"# Log-determinant of an SPD matrix, forward only: {env['device']}",
        "",
        markdown_table(
            ["Setting", "Value"],
            [
                ["device", f"{env['device']} ({env['device_name']})"],
                ["inputs", f"{shape}, A = I + X Xᵀ / k"],
                ["threads", f"{env['threads']} pinned (of {env['cpus_available']} available CPUs)"],
                ["torch", env["torch"]],
                ["grid", "quick (smoke test only)" if cfg["quick"] else "full"],
                ["timer", f"{cfg['timer']}_autorange, min_run_time={cfg['min_run_time']} s"],
                ["load average at start", format_load(env)],
                ["date", env["timestamp"]],
            ],
            align="ll",
        ),
        "",
        "Each cell: median time (speed-up over `torch.logdet` in this run). Relative error: max over the",
        "batch of |value - reference| / max(|reference|, 1) against float64 eigenvalues.",
    ]
    keys = list(ROUTES)
    for dname in dict.fromkeys(r["dtype"] for r in payload["results"]):
        rows = [r for r in payload["results"] if r["dtype"] == dname]
        sizes = list(dict.fromkeys(r["size"] for r in rows))
        cell = {(r["size"], r["route"]): r for r in rows}
        times = [[str(k)] + [_time_cell(cell[k, key]) for key in keys] for k in sizes]
        errors = [
            [str(k)]
            + ["—" if cell[k, key]["rel_err"] is None else f"{cell[k, key]['rel_err']:.1e}" for key in keys]
            for k in sizes
        ]
        header = ["Size k"] + [ROUTES[key][0] for key in keys]
        lines += ["", f"## {dname}: time", "", markdown_table(header, times), ""]
        lines += [f"## {dname}: relative error", "", markdown_table(header, errors)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[Path, Path]:
    """Runs the benchmark described by parsed command-line ``args`` and writes its reports.

    Returns:
        Paths of the JSON and markdown reports.

    Raises:
        ValueError: If ``--batch`` or ``--sizes`` is invalid, or the device is unavailable.
    """
    device = resolve_device(args.device)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    sizes: Sequence[int] = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        sizes = list(args.sizes)  # main parses ``--sizes`` with int_list; check programmatic callers too
        if any(k < 1 for k in sizes):
            raise ValueError(f"--sizes must be positive integers, got {args.sizes!r}")
    set_timing_defaults(args, quick=0.02, full=0.3)
    env = environment(device, args.dtype, args.threads)  # load average before the run loads the machine
    with pinned_threads(args.threads):
        rows = _measure(args, device, sizes)
    payload: dict[str, Any] = {
        "benchmark": "logdet",
        "schema_version": 1,
        "config": run_config(args),
        "environment": env,
        "results": rows,
    }
    suffix = ("" if args.batch == 1 else f"_b{args.batch}") + ("_quick" if args.quick else "")
    stem = args.name or f"logdet_{device.type}{suffix}"
    return write_report(args.out_dir, stem, payload, _markdown(payload))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, dtype_choices=tuple(DTYPE_SETS))
    parser.set_defaults(dtype="both")
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="matrices per call (1: a single (k, k) matrix)"
    )
    parser.add_argument(
        "--sizes", type=int_list, default=None, help="comma-separated matrix sizes, e.g. 64,256"
    )
    args = parse_args(parser, argv)
    json_path, md_path = run(args)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
