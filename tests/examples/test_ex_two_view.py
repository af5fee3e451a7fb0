"""examples/two_view_rate.py on its tiny preset: every variant runs and writes the shared outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import two_view_rate
from common.checkpoint import load_checkpoint
from common.run import read_jsonl
from jepa_rate import prediction_loss


def _train(tmp_path: Path, variant: str, *extra: str) -> Path:
    # "none" as a run name would read as None (no name): prefix the names.
    name = f"run-{variant}"
    argv = ["--preset", "tiny", "--variant", variant, "--set", f"out_dir={tmp_path}", "--name", name, *extra]
    assert two_view_rate.main(argv) == 0
    return tmp_path / f"run-{variant}"


@pytest.mark.parametrize("variant", two_view_rate.VARIANTS)
def test_each_variant_trains_and_writes_its_outputs(tmp_path: Path, variant: str) -> None:
    run = _train(tmp_path, variant)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["variant"] == variant and summary["steps"] == 6
    assert 0.0 <= summary["offline"]["encoder"]["linear_acc"] <= 1.0
    assert 0.0 <= summary["offline"]["encoder"]["knn_acc"] <= 1.0
    assert summary["effective_rank"]["projection"] >= 1.0 and 0 < summary["rate_time_share"] < 1
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if not isinstance(r["epoch"], int)]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["rate"]) for r in steps)
    assert all(r["rate_weight"] == (0.06 if variant == "rate" else 0.0) for r in steps)
    if variant == "none":  # without a stop-gradient, EMA or rate, the loss is the prediction loss alone
        assert all(r["loss"] == r["pred_loss"] for r in steps)
    assert ("tau" in steps[0]) == (variant == "byol")
    state = load_checkpoint(run / "last.pt")["state"]["model"]
    assert any(k.startswith("target.") for k in state) == (variant == "byol")
    for plot in ("train_curves.png", "epoch_metrics.png", "spectrum.png"):
        assert (run / plot).is_file()


def test_rate_variant_gradients_flow_through_both_branches() -> None:
    model = two_view_rate.NetConfig(conv_widths=(4, 8), proj_dim=8)
    views = torch.randn(2, 16, 3, 16, 16)
    grads = {}
    for variant in ("simsiam", "rate"):
        torch.manual_seed(0)
        net = two_view_rate.TwoViewNet(two_view_rate.TwoViewConfig(variant=variant, model=model), 10)
        out = net(views)
        (p1, p2), (t1, t2) = out.p.chunk(2), out.t.chunk(2)
        (
            prediction_loss(p1, t2) + prediction_loss(p2, t1)
        ).backward()  # the rate is off: only the target differs
        grads[variant] = torch.cat(
            [p.grad.flatten() for p in net.projector.parameters() if p.grad is not None]
        )
    assert not torch.allclose(grads["simsiam"], grads["rate"])


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    whole = _train(tmp_path, "byol", "--set", "eval.offline=false")
    argv = ["--preset", "tiny", "--variant", "byol", "--set", f"out_dir={tmp_path}", "--name", "parts"]
    assert two_view_rate.main([*argv, "--set", "eval.offline=false", "--stop-after", "4"]) == 0
    assert two_view_rate.main(["--resume", str(tmp_path / "parts")]) == 0
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(tmp_path / "parts" / "last.pt")
    for key, value in a["state"]["model"].items():
        assert torch.equal(value, b["state"]["model"][key]), key
