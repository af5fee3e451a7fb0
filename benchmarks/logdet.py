#!/usr/bin/env python3
"""Forward-only benchmark of the ways to take the log-determinant of a symmetric positive definite matrix.

Routes: ``torch.logdet`` (LU), ``torch.linalg.slogdet`` (LU), ``torch.linalg.cholesky`` and
``torch.linalg.cholesky_ex`` followed by ``2 * sum(log(diag(L)))``, ``cholesky_ex`` of ``blockdiag(A, I_8)``
(the padded order ``jepa_rate`` factors on CPU when ``k`` is a multiple of 128), and
``sum(log(eigvalsh(A)))``. Each value is checked against a float64 eigenvalue reference computed one
matrix at a time, so a route that is fast but wrong (for example a multi-threaded batched LU) is flagged.

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

import _harness as h

FULL_SIZES = (64, 128, 256, 512, 1024, 2048)
QUICK_SIZES = (8, 32)
DTYPE_SETS = {
    "float32": (torch.float32,),
    "float64": (torch.float64,),
    "both": (torch.float32, torch.float64),
}


def _two_log_diag(factor: Tensor) -> Tensor:
    return 2.0 * factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _cholesky_ex_padded(a: Tensor) -> Tensor:
    # blockdiag(A, I_8): same determinant; the order of jepa_rate's CPU kernel when k is a multiple of 128.
    k = a.shape[-1]
    padded = torch.nn.functional.pad(a, (0, 8, 0, 8))
    padded.diagonal(dim1=-2, dim2=-1)[..., k:] = 1.0
    return _two_log_diag(torch.linalg.cholesky_ex(padded).L)


# cholesky_ex without check_errors: the info tensor stays on the device, so the call never synchronizes.
ROUTES: dict[str, tuple[str, Callable[[Tensor], Tensor]]] = {
    "logdet": ("`torch.logdet`", torch.logdet),
    "slogdet": ("`torch.linalg.slogdet`", lambda a: torch.linalg.slogdet(a).logabsdet),
    "cholesky": ("`cholesky` + 2 Σ log diag", lambda a: _two_log_diag(torch.linalg.cholesky(a))),
    "cholesky_ex": ("`cholesky_ex` + 2 Σ log diag", lambda a: _two_log_diag(torch.linalg.cholesky_ex(a).L)),
    "cholesky_ex_padded": ("`cholesky_ex` of blockdiag(A, I₈)", _cholesky_ex_padded),
    "eigvalsh": ("`eigvalsh` + Σ log", lambda a: torch.linalg.eigvalsh(a).log().sum(-1)),
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


def _measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dtype in DTYPE_SETS[args.dtype]:
        dname = str(dtype).removeprefix("torch.")
        for k in args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES):
            a64 = _spd(k, args.batch, args.seed)
            ref, a = _reference(a64.to(args.device)).cpu(), a64.to(device=args.device, dtype=dtype)
            for key, (title, fn) in ROUTES.items():
                value = fn(a).to(device="cpu", dtype=torch.float64)
                rel = float(((value - ref).abs() / ref.abs().clamp_min(1.0)).max())
                timing = h.time_callable(functools.partial(fn, a), args, f"{dname}/{k}/{key}")
                row = {"dtype": dname, "size": k, "batch": args.batch, "route": key, "title": title}
                rows.append({**row, "rel_err": h.finite_or_none(rel), "timing": timing})
                print(f"  {dname} {k:>5} {key:<12} {h.format_time(timing['median']):>10}  rel_err={rel:.1e}")
    logdet = {(r["dtype"], r["size"]): r["timing"]["median"] for r in rows if r["route"] == "logdet"}
    for r in rows:
        r["speedup_vs_logdet"] = logdet[r["dtype"], r["size"]] / r["timing"]["median"]
    return rows


def _time_cell(row: dict[str, Any]) -> str:
    return f"{h.format_time(row['timing']['median'])} ({h.format_ratio(row['speedup_vs_logdet'])})"


def _markdown(payload: dict[str, Any]) -> str:
    env, cfg = payload["environment"], payload["config"]
    shape = "single matrices" if cfg["batch"] == 1 else f"batches of {cfg['batch']} matrices"
    lines = [
        f"# Log-determinant of an SPD matrix, forward only: {env['device']}",
        "",
        h.markdown_table(
            ["Setting", "Value"],
            [
                ["device", f"{env['device']} ({env['device_name']})"],
                ["inputs", f"{shape}, A = I + X Xᵀ / k"],
                ["threads", f"{env['threads']} pinned (of {env['cpus_available']} available CPUs)"],
                ["torch", env["torch"]],
                ["grid", "quick (smoke test only)" if cfg["quick"] else "full"],
                ["timer", f"{cfg['timer']}_autorange, min_run_time={cfg['min_run_time']} s"],
                ["load average at start", h.format_load(env)],
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
        lines += ["", f"## {dname}: time", "", h.markdown_table(header, times), ""]
        lines += [f"## {dname}: relative error", "", h.markdown_table(header, errors)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.make_parser(__doc__ or "", dtypes=tuple(DTYPE_SETS))
    parser.set_defaults(dtype="both")
    parser.add_argument("--batch", type=h.positive_int, default=1, help="matrices per call (1: one (k, k))")
    parser.add_argument("--sizes", type=h.int_list, help="comma-separated matrix sizes, e.g. 64,256")
    args = h.parse_args(parser, argv, min_run_time=(0.02, 0.3))
    env = h.environment(args)  # the load average before the run loads the machine
    rows = _measure(args)
    payload = {"benchmark": "logdet", "schema_version": 1, "config": h.run_config(args), "environment": env}
    payload["results"] = rows
    suffix = ("" if args.batch == 1 else f"_b{args.batch}") + ("_quick" if args.quick else "")
    h.write_report(args, f"logdet_{args.device}{suffix}", payload, _markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
