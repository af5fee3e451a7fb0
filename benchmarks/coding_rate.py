#!/usr/bin/env python3
"""Forward + backward benchmark of ``jepa_rate``'s coding rate against the routes public code uses.

Every route computes the same scalar on the same input (the sum of the rates of the views, or the MCR² rate
reduction for grouped workloads) as one training step runs it: forward, then ``backward()`` into a leaf
``z``. Speed-ups are ``baseline median / ours median`` from the same process. Before timing, every route's
value is compared with a float64 reference from small-side eigenvalues, so a fast but wrong route shows.

Usage::

    python benchmarks/coding_rate.py                       # full grid, CPU, float32
    python benchmarks/coding_rate.py --quick               # tiny grid, seconds (CI)
    python benchmarks/coding_rate.py --device cuda --dtype bfloat16

Writes ``coding_rate_<device>_<dtype>[_quick].{json,md}`` into ``--out-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa_rate.losses import coding_rate, rate_reduction

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import rate_baselines as bl

Route = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Workload:
    """One input: ``kind`` is ``single`` ``(n, d)``, ``views`` ``(views, n, d)`` or ``grouped`` (MCR²)."""

    name: str
    kind: str
    n: int
    d: int
    views: int = 1
    classes: int = 0
    title: str = ""


def _single(n: int, d: int) -> Workload:
    return Workload(f"{n}x{d}", "single", n, d, title=f"{n}x{d} (n x d)")


FULL_GRID = (
    *(_single(n, d) for n, d in ((64, 256), (128, 640), (100, 1024), (512, 512), (1024, 256), (1024, 2048))),
    Workload("emp-ssl", "views", 100, 1024, views=10, title="EMP-SSL: 10 patches of 100x1024"),
    Workload("mcr2-c10", "grouped", 1000, 128, classes=10, title="MCR² grouped: 1000x128, 10 classes"),
    Workload("mcr2-c100", "grouped", 1024, 256, classes=100, title="MCR² grouped: 1024x256, 100 classes"),
)
QUICK_GRID = (
    _single(16, 48),
    _single(48, 16),
    Workload("views-quick", "views", 8, 32, views=3, title="3 views of 8x32"),
    Workload("grouped-quick", "grouped", 64, 16, classes=4, title="grouped: 64x16, 4 classes"),
)

ROUTE_TITLES = {
    "ours": "ours: `coding_rate`",
    "ours_grouped": "ours: `rate_reduction`",
    "logdet_d": "`torch.logdet`, d side (MCR², EMP-SSL, seq-JEPA Step 2)",
    "cholesky_d": "`cholesky`, d side (SimDINO)",
    "cholesky_small": "`cholesky`, small side, autograd",
    "cholesky_small_batched": "`cholesky`, small side, autograd, batched",
    "eigvalsh_small": "`eigvalsh`, small side",
    "bare_small": "ours without padding, fallback, series, NaN checks or mean split (not public code)",
    "mcr2_dense_loop": "per-class loop as in the MCR² code (dense n x n membership, d-side `torch.logdet`)",
    "logdet_d_loop": "per-class loop of d-side `torch.logdet`, boolean-mask gathers",
    "ours_loop": "per-class loop of ours (`coding_rate`)",
}
# (workload, baseline, required speed-up of ours); on every workload ours is never slower than NEVER_SLOWER.
TARGETS = (
    ("128x640", "logdet_d", 20.0),
    ("100x1024", "logdet_d", 80.0),
    ("emp-ssl", "logdet_d", 50.0),
    ("mcr2-c10", "mcr2_dense_loop", 5.0),
    ("mcr2-c100", "mcr2_dense_loop", 5.0),
)
NEVER_SLOWER = ("cholesky_small", "cholesky_small_batched")
# Relative error vs float64 above which ours fails every target on that workload, whatever its speed: the
# package's precision contract for its default fp32 island (bf16 inputs are exact in the reference).
ACCURACY = {"float32": 1e-3, "bfloat16": 1e-3, "float64": 1e-6}


def _routes(w: Workload, eps: float) -> dict[str, Route]:
    def on_views(route: Callable[[Tensor, float], Tensor]) -> Route:
        if w.kind == "views":
            return lambda z, _: bl.loop_over_views(route, z, eps)
        return lambda z, _: route(z, eps).sum()

    if w.kind == "grouped":
        return {
            "ours_grouped": lambda z, y: rate_reduction(z, y, num_classes=w.classes, eps=eps).delta,
            "mcr2_dense_loop": lambda z, y: bl.grouped_mcr2_dense(z, y, w.classes, eps),
            "logdet_d_loop": lambda z, y: bl.grouped_loop(bl.logdet_dside, z, y, w.classes, eps),
            "ours_loop": lambda z, y: bl.grouped_loop(
                lambda z_j, e: coding_rate(z_j, eps=e), z, y, w.classes, eps
            ),
        }
    routes: dict[str, Route] = {
        "ours": lambda z, _: coding_rate(z, eps=eps).sum(),
        "logdet_d": on_views(bl.logdet_dside),
        "cholesky_d": on_views(bl.cholesky_dside),
        "cholesky_small": on_views(bl.cholesky_small),
        "eigvalsh_small": on_views(bl.eigvalsh_small),
        "bare_small": lambda z, _: bl.bare_small(z, eps).sum(),
    }
    if w.kind == "views":
        routes["cholesky_small_batched"] = lambda z, _: bl.cholesky_small(z, eps).sum()
    return routes


def _inputs(w: Workload, args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    shape = (w.views, w.n, w.d) if w.kind == "views" else (w.n, w.d)
    # Unit-norm rows, as MCR², SimDINO and EMP-SSL feed the rate; balanced labels in random order.
    z = F.normalize(torch.randn(shape, generator=gen, dtype=torch.float64), dim=-1)
    labels = (torch.arange(w.n) % max(w.classes, 1))[torch.randperm(w.n, generator=gen)]
    z = z.to(device=args.device, dtype=h.DTYPES[args.dtype]).requires_grad_(True)
    return z, labels.to(args.device)


def _reference(w: Workload, z: Tensor, labels: Tensor, eps: float) -> float:
    if w.kind != "grouped":
        return float(bl.reference_rate(z, eps).sum())
    parts = (z.detach()[labels == j] for j in range(w.classes))
    return float(bl.reference_rate(z, eps)) - sum(
        p.shape[0] / w.n * float(bl.reference_rate(p, eps)) for p in parts
    )


def _step(route: Route, z: Tensor, labels: Tensor, autocast: Callable[[], Any]) -> Tensor:
    z.grad = None
    with autocast():
        value = route(z, labels)
    torch.autograd.backward(value)
    return value


def _measure(w: Workload, args: argparse.Namespace) -> list[dict[str, Any]]:
    z, labels = _inputs(w, args)
    reference = _reference(w, z, labels, args.eps)
    autocast: Callable[[], Any] = contextlib.nullcontext
    if args.dtype == "bfloat16":
        autocast = functools.partial(torch.autocast, device_type=args.device, dtype=torch.bfloat16)
    rows: list[dict[str, Any]] = []
    for key, route in _routes(w, args.eps).items():
        row: dict[str, Any] = {"workload": w.name, "route": key, "title": ROUTE_TITLES[key]}
        rows.append(row)
        try:
            value = float(_step(route, z, labels, autocast).detach())
        except (RuntimeError, ValueError) as exc:  # LinAlgError is a RuntimeError
            row.update(status="error", error=str(exc).splitlines()[0][:200], timing=None)
            continue
        grad_ok = z.grad is not None and bool(torch.isfinite(z.grad).all())
        rel_err = abs(value - reference) / max(abs(reference), 1e-30)
        row.update(value=h.finite_or_none(value), reference=reference, rel_err=h.finite_or_none(rel_err))
        row["status"] = "ok" if math.isfinite(value) and grad_ok else "nonfinite"
        row["timing"] = h.time_callable(
            functools.partial(_step, route, z, labels, autocast), args, f"{w.name}/{key}"
        )
        print(f"  {w.name:>12} {key:<24} {h.format_time(row['timing']['median']):>10}  rel_err={rel_err:.1e}")
    ours = next((r for r in rows if r["route"] in ("ours", "ours_grouped") and r["timing"]), None)
    for r in rows:
        timed = ours is not None and r["timing"] is not None
        r["speedup"] = r["timing"]["median"] / ours["timing"]["median"] if timed else None  # type: ignore[index]
    return rows


def _targets(grid: Sequence[Workload], rows: list[dict[str, Any]], tol: float) -> list[dict[str, Any]]:
    """:data:`TARGETS` and the never-slower rule; a target also fails when ours is inaccurate."""
    by_key = {(r["workload"], r["route"]): r for r in rows}
    ours = {r["workload"]: r for r in rows if r["route"] in ("ours", "ours_grouped")}
    wanted = [*TARGETS, *((w.name, b, 1.0) for w in grid for b in NEVER_SLOWER if (w.name, b) in by_key)]
    out = []
    for workload, baseline, required in wanted:
        measured = by_key.get((workload, baseline), {}).get("speedup")
        mine = ours.get(workload, {})
        if workload not in {w.name for w in grid}:
            status = "n/a (not in grid)"
        elif measured is None:
            status = "FAIL (not measured)"
        elif mine.get("status") != "ok" or (mine.get("rel_err") or 0.0) > tol:
            status = f"FAIL (ours: {mine.get('status')}, rel. error {mine.get('rel_err')})"
        else:
            status = "PASS" if measured >= required else "FAIL"
        out.append({"workload": workload, "baseline": baseline, "required": required, "measured": measured})
        out[-1]["status"] = status
    return out


def _markdown(payload: dict[str, Any], grid: Sequence[Workload]) -> str:
    env, cfg = payload["environment"], payload["config"]
    titles = {w.name: w.title for w in (*FULL_GRID, *QUICK_GRID)}
    autocast = " (inputs; routes run under autocast)" if env["dtype"] == "bfloat16" else ""
    settings = [
        ["device", f"{env['device']} ({env['device_name']})"],
        ["dtype", env["dtype"] + autocast],
        ["threads", f"{env['threads']} pinned (of {env['cpus_available']} available CPUs)"],
        ["torch", env["torch"]],
        ["jepa_rate", f"{env['jepa_rate']} (commit {env['git_commit']})"],
        ["grid", "quick (smoke test only)" if cfg["quick"] else "full"],
        ["timer", f"{cfg['timer']}_autorange, min_run_time={cfg['min_run_time']} s"],
        ["eps", str(cfg["eps"])],
        ["load average at start", h.format_load(env)],
        ["date", env["timestamp"]],
    ]
    targets = [
        [titles.get(t["workload"], t["workload"]), ROUTE_TITLES[t["baseline"]], f">= {t['required']:g}x"]
        for t in payload["targets"]
    ]
    for row, t in zip(targets, payload["targets"], strict=True):
        row += [h.format_ratio(t["measured"]), t["status"]]
    results = []
    for w in grid:
        for i, r in enumerate(r for r in payload["results"] if r["workload"] == w.name):
            timing, err = r["timing"] or {}, r.get("rel_err")
            results.append(
                [
                    "" if i else w.title,
                    r["title"],
                    h.format_time(timing.get("median")),
                    h.format_time(timing.get("iqr") if timing.get("runs", 0) >= 4 else None),
                    h.format_ratio(r["speedup"]),
                    "—" if err is None else f"{err:.1e}",
                    r["status"] if r["status"] != "error" else f"error: {r['error']}",
                ]
            )
    header = ["Workload", "Route", "Median", "IQR", "Speed-up of ours", "Rel. error vs float64", "Status"]
    return "\n".join(
        [
            f"# Coding rate, forward + backward: {env['device']}, {env['dtype']}",
            "",
            h.markdown_table(["Setting", "Value"], settings, align="ll"),
            "",
            "Speed-up = baseline median / ours median, measured side by side in this run (> 1: ours is "
            "faster).",
            "",
            "## Targets",
            "",
            h.markdown_table(
                ["Workload", "Ours vs", "Required", "Measured", "Result"], targets, align="llrrl"
            ),
            "",
            "## Results",
            "",
            h.markdown_table(header, results, align="llrrrrl"),
        ]
    )


def _grid(args: argparse.Namespace) -> list[Workload]:
    """The grid, restricted to ``--only``; raises ``ValueError`` naming every unknown name."""
    grid = QUICK_GRID if args.quick else FULL_GRID
    wanted = args.only.split(",") if args.only else [w.name for w in grid]
    if unknown := [name for name in wanted if name not in {w.name for w in grid}]:
        raise ValueError(f"--only: unknown workload(s) {unknown} (available: {[w.name for w in grid]})")
    return [w for w in grid if w.name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    parser = h.make_parser(__doc__ or "", dtypes=tuple(h.DTYPES))
    parser.add_argument("--eps", type=h.positive_float, default=0.5, help="MCR² eps (plays the role of eps²)")
    parser.add_argument("--only", help="comma-separated workload names to run, e.g. 128x640")
    args = h.parse_args(parser, argv, min_run_time=(0.02, 0.5), check=_grid)
    grid, env = _grid(args), h.environment(args)  # the load average before the run loads the machine
    rows: list[dict[str, Any]] = []
    for w in grid:
        print(f"[{w.name}] {w.title}", flush=True)
        rows += _measure(w, args)
    payload: dict[str, Any] = {
        "benchmark": "coding_rate",
        "schema_version": 1,
        "config": h.run_config(args),
        "environment": env,
        "workloads": [asdict(w) for w in grid],
        "results": rows,
        "targets": _targets(grid, rows, ACCURACY[args.dtype]),
    }
    stem = f"coding_rate_{args.device}_{args.dtype}" + ("_quick" if args.quick else "")
    h.write_report(args, stem, payload, _markdown(payload, grid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
