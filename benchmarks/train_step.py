#!/usr/bin/env python3
"""Time one seq-JEPA training step per variant and the coding rate's share of it.

Builds the example trainer's seq-JEPA from the public ``jepa_rate`` API (``--model demo``: the 0.1 M-parameter
``ConvEncoder``; ``gpu``: the CIFAR ResNet-18) and times, on random 32x32 rotation sequences:

- **step**: one optimization step of each variant: forward (bf16 autocast with ``--dtype bfloat16``),
  backward, AdamW and the EMA update;
- **rate**: forward + backward of the coding rate alone on a leaf of the shape it sees in that step. Its
  backward does not depend on the graph upstream of ``Z``, so ``rate / step`` is its share of the step.

Usage::

    python benchmarks/train_step.py             # CPU, demo model -> results/train_step_cpu.{json,md}
    python benchmarks/train_step.py --device cuda --model gpu --dtype bfloat16
    python benchmarks/train_step.py --quick --out-dir /tmp/bench   # seconds, for CI

``--threads`` defaults to every available CPU: a whole step is dominated by convolutions and matrix
products, which scale with threads. Reports: ``train_step_<device>[_bf16][_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jepa_rate import CodingRateLoss, ConvEncoder, SeqJEPA, cifar_resnet18, prediction_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

# The trainer's presets: encoder, batch size and the SeqJEPA settings they change.
MODELS: dict[str, tuple[Any, int, dict[str, Any]]] = {
    "demo": (
        lambda: ConvEncoder(widths=(16, 32, 64, 128)),
        128,
        {"action_embed_dim": 32, "num_layers": 2, "predictor_hidden": 256, "ema_decay": 0.99},
    ),
    "gpu": (
        cifar_resnet18,
        512,
        {"action_embed_dim": 128, "num_layers": 3, "predictor_hidden": 1024, "ema_decay": 0.996},
    ),
}
# The trainer's variants: an EMA target or a stop-gradient one ("teacherless"), "_rate" adds the coding rate
# to the loss, and "symmetric_" also predicts the first view from the reversed sequence.
VARIANTS = ("ema", "ema_rate", "symmetric_rate", "teacherless", "teacherless_rate")
RATE_WEIGHT = 0.06


def build_model(args: argparse.Namespace, variant: str) -> SeqJEPA:
    """The variant's seq-JEPA (the architecture of the chosen preset); the loss is composed in the step."""
    encoder, _, settings = MODELS[args.model]
    model = SeqJEPA(
        encoder(),
        action_dim=2,  # (sin, cos) of the relative rotation
        relative_actions=True,
        target="ema" if variant.startswith("ema") else "stopgrad",
        symmetric=variant.startswith("symmetric"),
        inverse_action=lambda a: a * a.new_tensor([-1.0, 1.0]),
        **settings,
    ).to(args.device)
    if args.device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def _batch(args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """Random views ``(B, T, 3, 32, 32)`` and the ``(B, T - 1, 2)`` relative quarter-turn actions."""
    gen = torch.Generator().manual_seed(args.seed)
    views = torch.randn(args.batch_size, args.views, 3, 32, 32, generator=gen)
    turns = torch.randint(0, 4, (args.batch_size, args.views), generator=gen)
    angle = (turns.diff(dim=1) % 4) * (math.pi / 2)
    return views.to(args.device), torch.stack([angle.sin(), angle.cos()], dim=-1).to(args.device)


def _time_variant(args: argparse.Namespace, variant: str, views: Tensor, actions: Tensor) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = build_model(args, variant)
    rate_loss = CodingRateLoss(alpha=1.0, center=True)  # the seq-JEPA Step-2 settings of the presets
    with_rate = variant.endswith("_rate")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)

    def step() -> Tensor:
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            out = model(views, actions)
            loss = prediction_loss(out.prediction, out.target)
            if with_rate:
                loss = loss + RATE_WEIGHT * rate_loss(out.z_agg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target()
        z_agg: Tensor = out.z_agg
        return z_agg

    # The rate sees z_AGG (2B rows when symmetric); a variant without the rate is timed on the same shape.
    shape = step().shape
    leaf = torch.randn(shape, device=args.device, requires_grad=True)
    step_t = h.time_callable(step, args, f"step {variant}")
    rate_t = h.time_callable(lambda: rate_loss(leaf).backward(), args, f"rate {variant}")
    return {
        "step": step_t,
        "rate": rate_t,
        "rate_shape": list(shape),
        "rate_in_loss": with_rate,
        "rate_share": rate_t["median"] / step_t["median"],
        "images_per_s": args.batch_size / step_t["median"],
    }


def render(payload: dict[str, Any]) -> str:
    env, cfg, rows = payload["environment"], payload["config"], payload["results"]
    header = ["variant", "step", "images/s", "coding rate (fwd+bwd)", "rate share", "rate in loss"]
    table = [
        [
            name,
            h.format_time(r["step"]["median"]),
            f"{r['images_per_s']:.0f}",
            f"{h.format_time(r['rate']['median'])} on {'x'.join(map(str, r['rate_shape']))}",
            f"{100 * r['rate_share']:.2f}%",
            "yes" if r["rate_in_loss"] else "logged only",
        ]
        for name, r in rows["variants"].items()
    ]
    machine = f"{env['device_name']}, {env['threads']} thread(s) of {env['cpus_available']} CPUs"
    return "\n".join(
        [
            f"# One seq-JEPA training step per variant ({env['device']}, model `{cfg['model']}`)",
            "",
            f"- Machine: {machine}; load {h.format_load(env)}; torch {env['torch']}; {env['timestamp']}.",
            f"- Batch: {cfg['batch_size']} sequences of {cfg['views']} random 32x32 views; {env['dtype']}.",
            "- Times are medians of torch.utils.benchmark measurements; the rate share is the rate's own",
            "  forward + backward on its input shape divided by the full step (see the script docstring).",
            "",
            h.markdown_table(header, table),
            "",
        ]
    )


def _check_views(args: argparse.Namespace) -> None:
    if args.views < 2:
        raise ValueError(f"--views: a sequence needs an observation and a target view, got {args.views}")


def main(argv: list[str] | None = None) -> int:
    parser = h.make_parser(__doc__ or "", dtypes=("float32", "bfloat16"), all_threads=True)
    parser.add_argument("--model", choices=tuple(MODELS), default="demo", help="preset architecture")
    parser.add_argument("--batch-size", type=h.positive_int, help="default: the preset's (32 with --quick)")
    parser.add_argument("--views", type=h.positive_int, default=4, help="views per sequence, target included")
    args = h.parse_args(parser, argv, min_run_time=(0.2, 2.0), check=_check_views)
    args.batch_size = args.batch_size or (32 if args.quick else MODELS[args.model][1])
    env = h.environment(args)  # the load average before timing
    views, actions = _batch(args)
    results = {"variants": {v: _time_variant(args, v, views, actions) for v in VARIANTS}}
    payload = {"environment": env, "config": h.run_config(args), "results": results}
    suffix = ("_bf16" if args.dtype == "bfloat16" else "") + ("_quick" if args.quick else "")
    h.write_report(args, f"train_step_{args.device}{suffix}", payload, render(payload))
    print(render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
