"""Time one seq-JEPA training step per variant, the coding rate's share of it, and the data pipeline.

Builds the model of ``examples/cifar_rot_train.py`` from one of its presets (default ``demo``) and times,
with :class:`torch.utils.benchmark.Timer` (which synchronizes the device around each timed block):

- **step**: one full optimization step of each variant on a batch of the preset's size (forward of the
  rotation sequences, backward, AdamW, EMA update), exactly :func:`cifar_rot_train.optimization_step`;
- **rate**: forward + backward of the coding rate alone on a leaf tensor of the shape it sees in that step
  (``batch x d_model`` for the rate on z_AGG; twice the rows for ``symmetric_rate``). The rate's backward does
  not depend on the graph upstream of ``Z``, so ``rate / step`` is its share of the step;
- **data**: building the batch the step consumes (index the uint8 images, draw the rotations, build and
  normalize the views, encode the actions), on the training device. It must stay far below the step time.

Usage::

    python benchmarks/train_step.py             # CPU, demo preset -> results/train_step_cpu.{json,md}
    python benchmarks/train_step.py --device cuda --config gpu --dtype bfloat16
    python benchmarks/train_step.py --quick --config tiny --out-dir /tmp/bench   # seconds, for CI

``--threads`` defaults to every available CPU (not 1 as in the other scripts): a whole step is dominated by
convolutions and matrix products, which scale with threads. Reports are named
``train_step_<device>[_bf16][_quick]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _harness import (
    add_common_arguments,
    environment,
    format_load,
    format_time,
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
from cifar_rot_train import (
    VARIANTS,
    TrainConfig,
    build_model,
    draw_rotations,
    optimization_step,
    rotation_views,
)
from common import load_cifar10, rotation_actions
from common.config import load_config
from common.optim import build_optimizer


def _batch_maker(cfg: TrainConfig, images: torch.Tensor, device: torch.device) -> Any:
    gen = torch.Generator().manual_seed(0)

    def make() -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen).to(device)
        turns = draw_rotations(cfg.batch_size, cfg.seq.num_observations + 1, int(idx[0]))
        views = rotation_views(images[idx], turns, cfg.seq, augment=True)
        return views, rotation_actions(turns.to(device), cfg.action_kind)

    return make


def _time_variant(
    cfg: TrainConfig, images: torch.Tensor, device: torch.device, timing: dict[str, Any]
) -> dict[str, Any]:
    """Times one optimization step of ``cfg.variant`` and the coding rate on the shape it sees."""
    with_rate = VARIANTS[cfg.variant][1]
    model, rate_loss = build_model(cfg, 1000, device=device, gather_distributed=False)
    optimizer = build_optimizer(model, cfg.optim)
    views, actions = _batch_maker(cfg, images, device)()  # the variant's own action codes
    weight = cfg.rate.weight if with_rate else None
    out = optimization_step(model, model, optimizer, views, actions, cfg, weight)
    if rate_loss.last_shape is None:  # the variant only logs the rate: time it on the z_AGG shape
        rate_loss.observe(out.z_agg.float())
    shape = rate_loss.last_shape or ()
    leaf = torch.randn(shape, device=device, requires_grad=True)

    def step() -> None:
        optimization_step(model, model, optimizer, views, actions, cfg, weight)

    def rate() -> None:
        rate_loss.loss(leaf).backward()
        leaf.grad = None

    step_t = time_callable(step, label=f"step {cfg.variant}", **timing)
    rate_t = time_callable(rate, label=f"rate {cfg.variant}", **timing)
    return {
        "step": step_t.as_dict(),
        "rate": rate_t.as_dict(),
        "rate_shape": list(shape),
        "rate_in_loss": with_rate,
        "rate_share": rate_t.median / step_t.median,
        "images_per_s": cfg.batch_size / step_t.median,
    }


def _overrides(args: argparse.Namespace) -> list[str]:
    overrides = [*(args.set or []), f"bf16={args.dtype == 'bfloat16'}"]
    if args.batch_size is not None:
        overrides.append(f"batch_size={args.batch_size}")
    return overrides


def _base_config(args: argparse.Namespace) -> TrainConfig:
    """The preset with ``--set`` and ``--batch-size`` applied.

    Raises:
        ConfigError: A ``ValueError`` naming an unknown preset or key, or a bad value.
    """
    cfg: TrainConfig = load_config(TrainConfig, args.config, _overrides(args))
    return cfg


def measure(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """Times the data pipeline and every variant; returns the base config and the results."""
    device = resolve_device(args.device)
    overrides = _overrides(args)
    base = _base_config(args)
    images = load_cifar10(base.data).train.images.to(device)
    set_timing_defaults(args, quick=0.2, full=2.0)  # on args, so the report records the timer used
    timing = {
        "threads": args.threads,
        "timer": args.timer,
        "min_run_time": args.min_run_time,
        "max_run_time": args.max_run_time,
    }
    data = time_callable(_batch_maker(base, images, device), label="data", **timing).as_dict()
    rows: dict[str, Any] = {"data": data, "variants": {}}
    for variant in sorted(VARIANTS):
        torch.manual_seed(args.seed)
        cfg: TrainConfig = load_config(TrainConfig, args.config, [*overrides, f"variant={variant}"])
        row = _time_variant(cfg, images, device, timing)
        row["data_share"] = data["median"] / row["step"]["median"]
        rows["variants"][variant] = row
    return base, rows


def render(payload: dict[str, Any]) -> str:
    """The markdown report."""
    env, cfg, rows = payload["environment"], payload["config"], payload["results"]
    header = [
        "variant",
        "step",
        "images/s",
        "coding rate (fwd+bwd)",
        "rate share",
        "rate in loss",
        "data / step",
    ]
    table = [
        [
            name,
            format_time(r["step"]["median"]),
            f"{r['images_per_s']:.0f}",
            f"{format_time(r['rate']['median'])} on {'x'.join(map(str, r['rate_shape']))}",
            f"{100 * r['rate_share']:.2f}%",
            "yes" if r["rate_in_loss"] else "logged only",
            f"{100 * r['data_share']:.1f}%",
        ]
        for name, r in rows["variants"].items()
    ]
    data = rows["data"]["median"]
    return "\n".join(
        [
            f"# One seq-JEPA training step per variant ({env['device']}, preset `{cfg['config']}`)",
            "",
            f"- Machine: {env['device_name']}, {env['threads']} thread(s) of {env['cpus_available']} CPUs; "
            f"load {format_load(env)}; torch {env['torch']}; {env['timestamp']}.",
            f"- Batch: {payload['batch_size']} sequences of {payload['views']} views; {env['dtype']}.",
            f"- Data pipeline (index, rotations, views, actions): {format_time(data)} per batch.",
            "- Times are medians of torch.utils.benchmark measurements; the rate share is the rate's own",
            "  forward + backward on its input shape divided by the full step (see the script docstring).",
            "",
            markdown_table(header, table),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, dtype_choices=("float32", "bfloat16"), all_threads=True)
    parser.add_argument("--config", default="demo", help="trainer preset (default: demo)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="trainer config override")
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, help="override the preset's batch size"
    )
    args = parse_args(parser, argv, _base_config)
    env = environment(resolve_device(args.device), args.dtype, args.threads)  # load average before timing
    with pinned_threads(args.threads):
        cfg, results = measure(args)
    payload = {
        "environment": env,
        "config": run_config(args),
        "batch_size": cfg.batch_size,
        "views": cfg.seq.num_observations + 1,
        "results": results,
    }
    suffix = ("_bf16" if args.dtype == "bfloat16" else "") + ("_quick" if args.quick else "")
    stem = args.name or f"train_step_{args.device}{suffix}"
    json_path, md_path = write_report(args.out_dir, stem, payload, render(payload))
    print(render(payload))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
