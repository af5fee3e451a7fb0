"""The CIFAR-10 rotation trainer's outputs in use: compare_runs, evaluation length, variant constraints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_ex_train_smoke import train_tiny

import cifar_rot_train
import compare_runs
from common.checkpoint import load_checkpoint
from common.run import read_jsonl


def test_symmetric_variant_uses_one_hot_actions_and_rejects_sincos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = cifar_rot_train.TrainConfig(variant="symmetric_rate")
    assert cfg.action_kind == "onehot" and cifar_rot_train.TrainConfig().action_kind == "sincos"
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(
            ["--config", "tiny", "--variant", "symmetric_rate", "--set", "seq.actions=sincos"]
        )
    assert exit_info.value.code == 2
    assert "symmetric_rate inverts actions by negation" in capsys.readouterr().err


def test_compare_runs_tables_and_plots_two_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        train_tiny(tmp_path, v, "--set", "epochs=1", "--set", "eval.offline=false")
        for v in ("ema", "teacherless")
    ]
    out = tmp_path / "comparison"
    assert compare_runs.main([str(r) for r in runs] + ["--out", str(out)]) == 0
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| run | variant | data |") and len(table) == 4
    assert table[2].startswith("| ema |") and table[3].startswith("| teacherless |")
    assert "online.linear_acc" in table[0] and "effective_rank.z_agg" in table[0]
    assert (out / "comparison.png").stat().st_size > 1000
    assert "| ema |" in capsys.readouterr().out


def test_evaluation_length_and_recipe_options(tmp_path: Path) -> None:
    recipe = ["model.target_pass=separate", "model.predictor_norm=layer", "model.ema_tau_end=null",
              "optim.name=adam", "optim.schedule_unit=epoch", "seq.eval_num_observations=5",
              "epochs=1"]  # fmt: skip
    run = train_tiny(tmp_path, "teacherless_rate", *(a for r in recipe for a in ("--set", r)))
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["offline"]["z_agg"]["linear_acc"] <= 1.0
    state = load_checkpoint(run / "last.pt")["state"]["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_evaluation_does_not_depend_on_the_evaluation_batch_size(tmp_path: Path) -> None:
    records = []
    for batch in (64, 7):  # one batch of the 40 hold-out images, or six uneven ones
        extra = ("--set", "epochs=1", "--set", "eval.offline=false", "--set", f"eval.batch_size={batch}")
        run = train_tiny(tmp_path / str(batch), "teacherless_rate", *extra)
        records.append([r for r in read_jsonl(run / "metrics.jsonl") if r["epoch"] == 1][-1])
    a, b = records
    assert a["online.rotation_acc"] == b["online.rotation_acc"]
    for key in ("val_pred_loss", "online.rotation_r2", "online.linear_acc", "z_agg.effective_rank"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
