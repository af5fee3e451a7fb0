"""The CIFAR-10 rotation trainer end to end on the `tiny` preset: every variant and its outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import cifar_rot_train
from common.checkpoint import load_checkpoint
from common.run import read_jsonl

STEPS = 6  # the tiny preset: 48 training images, batch 16, 2 epochs


def train_tiny(tmp_path: Path, variant: str, *extra: str) -> Path:
    """Trains ``variant`` on the tiny preset into ``tmp_path/<variant>`` and returns that folder."""
    argv = [
        "--config",
        "tiny",
        "--variant",
        variant,
        "--set",
        f"out_dir={tmp_path}",
        "--name",
        variant,
        *extra,
    ]
    assert cifar_rot_train.main(argv) == 0
    return tmp_path / variant


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)


@pytest.mark.parametrize("variant", sorted(cifar_rot_train.VARIANTS))
def test_each_variant_trains_and_writes_its_outputs(tmp_path: Path, variant: str) -> None:
    run = train_tiny(tmp_path, variant)
    for name in ("config.yaml", "config.json", "metrics.jsonl", "metrics.csv", "summary.json", "last.pt"):
        assert (run / name).is_file(), name
    for plot in ("train_curves.png", "epoch_metrics.png", "spectrum.png"):
        assert (run / plot).stat().st_size > 1000, plot

    summary = json.loads((run / "summary.json").read_text())
    assert summary["variant"] == variant and summary["steps"] == STEPS and summary["world_size"] == 1
    for group in ("z_agg", "encoder"):
        for key in ("linear_acc", "knn_acc"):
            assert 0.0 <= summary["offline"][group][key] <= 1.0
        assert summary["effective_rank"][group] >= 1.0
    for key in ("linear_acc", "rotation_acc"):
        assert 0.0 <= summary["online"][key] <= 1.0
    assert _finite(summary["online"]["rotation_r2"]) and _finite(summary["offline"]["rotation_r2"])
    assert 0.0 < summary["rate_time_share"] < 1.0, "the coding rate was timed in some step"
    assert summary["images_per_s"] > 0 and summary["wall_time_s"] >= summary["train_time_s"] > 0

    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if not isinstance(r["epoch"], int)]
    epochs = [r for r in records if isinstance(r["epoch"], int)]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(_finite(r["loss"]) and _finite(r["rate"]) for r in steps)
    target, with_rate, _ = cifar_rot_train.VARIANTS[variant]
    assert all(r["rate_weight"] == (0.06 if with_rate else 0.0) for r in steps)
    assert ("tau" in steps[0]) == (target == "ema")
    assert len(epochs[-1]["z_agg.spectrum"]) == 8 + 16 and len(epochs[-1]["encoder.std"]) == 16

    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == STEPS and ckpt["config"]["variant"] == variant
    has_target = any(k.startswith("target_encoder.") for k in ckpt["state"]["model"])
    assert has_target == (target == "ema")
