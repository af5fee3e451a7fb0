"""The CIFAR-10 rotation trainer under stops, resumes, Ctrl-C, NaNs and user mistakes (tiny preset, CPU)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import cifar_rot_train
from common.checkpoint import load_checkpoint
from common.run import read_jsonl
from jepa_rate import SeqJEPA

TIMING_KEYS = {"elapsed", "wall_time_s", "train_time_s", "images_per_s", "rate_time_share"}

# ema_rate has the most state (EMA target, rate, probes); crop / flip and dropout exercise the step RNG.
BASE = ["--config", "tiny", "--variant", "ema_rate", "--set", "seq.crop=true", "--set", "seq.flip=true"]


def _argv(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*BASE, "--set", f"out_dir={tmp_path}", "--name", name, *extra]


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _assert_same_state(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _outputs(run: Path) -> tuple[Any, Any, Any]:
    summary = json.loads((run / "summary.json").read_text())
    return (
        _without_timing(read_jsonl(run / "metrics.jsonl")),
        _without_timing(summary),
        load_checkpoint(run / "last.pt"),
    )


def test_stopped_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path: Path) -> None:
    assert cifar_rot_train.main(_argv(tmp_path, "whole")) == 0
    assert cifar_rot_train.main(_argv(tmp_path, "parts", "--stop-after", "4")) == 0  # mid-epoch 2
    parts = tmp_path / "parts"
    assert load_checkpoint(parts / "last.pt")["step"] == 4 and not (parts / "summary.json").exists()
    stale = parts / ".last.pt.12345.tmp"  # what a kill between a checkpoint's write and its rename leaves
    stale.write_bytes(b"half a checkpoint")
    assert cifar_rot_train.main(["--resume", str(parts)]) == 0
    assert not stale.exists() and not [p for p in parts.iterdir() if p.name.endswith(".tmp")]

    records, summary, ckpt = _outputs(tmp_path / "whole")
    records2, summary2, ckpt2 = _outputs(parts)
    assert records == records2
    assert summary == summary2 and summary["steps"] == 6
    for meter in (ckpt["state"]["meter"], ckpt2["state"]["meter"]):
        assert meter.pop("seconds")["train"] > 0
    _assert_same_state(ckpt["state"], ckpt2["state"], "state")
    assert ckpt["state"]["meter"]["sums"] == ckpt2["state"]["meter"]["sums"] == {}
    assert ckpt["step"] == ckpt2["step"] == 6


def test_ctrl_c_saves_and_exits_then_resume_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forward = SeqJEPA.forward
    calls = {"train": 0}

    def interrupting(self: SeqJEPA, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            calls["train"] += 1
            if calls["train"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # handled after the step: the step completes
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SeqJEPA, "forward", interrupting)
    assert cifar_rot_train.main(_argv(tmp_path, "run")) == 130
    monkeypatch.setattr(SeqJEPA, "forward", forward)
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["step"] == 2
    assert cifar_rot_train.main(["--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = SeqJEPA.forward
    calls = {"train": 0}

    def poisoned(self: SeqJEPA, *args: Any, **kwargs: Any) -> Any:
        out = forward(self, *args, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] >= 5:
                return out._replace(prediction=out.prediction * math.nan)
        return out

    monkeypatch.setattr(SeqJEPA, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(_argv(tmp_path, "run", "--set", "ckpt_every=2"))
    message = str(exit_info.value.code)
    assert message.startswith("error: the loss became NaN/Inf at step 5 (detected at step 5)")
    assert f"the last good checkpoint, {run / 'last.pt'} (step 4), is kept" in message
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state"]["model"].values() if t.is_floating_point())
    assert not (run / "summary.json").exists()


def test_typo_in_a_set_key_is_an_error_that_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(["--config", "tiny", "--set", "optim.lrr=1e-3"])
    assert exit_info.value.code == 2
    assert "unknown config key 'optim.lrr' in --set; did you mean 'optim.lr'?" in capsys.readouterr().err


def test_bad_value_and_unknown_variant_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in (
        (["--set", "rate.weight=-1"], "rate.weight must be a finite number >= 0, got -1.0"),
        (["--set", "variant=teacherles"], "Invalid value 'teacherles', expected one of"),
    ):
        with pytest.raises(SystemExit):
            cifar_rot_train.main(["--config", "tiny", *argv])
        assert expected in capsys.readouterr().err


def test_missing_data_says_how_to_provide_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar10_train.npz"
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(_argv(tmp_path, "run", "--set", f"data.train_npz={missing}"))
    message = str(exit_info.value.code)
    assert f"training npz (data.train_npz) not found: '{missing}'" in message
    assert "--set data.train_npz=PATH" in message and "--set data.data_dir=DIR" in message
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_not_overwritten_by_accident(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(tmp_path, "run", "--set", "epochs=1", "--set", "eval.offline=false")
    assert cifar_rot_train.main(argv) == 0
    with pytest.raises(SystemExit, match="it already exists; continue it with --resume"):
        cifar_rot_train.main(argv)
    assert cifar_rot_train.main([*argv, "--overwrite"]) == 0
    (tmp_path / "run" / "last.pt").unlink()
    with pytest.raises(SystemExit, match=r"it has no checkpoint last\.pt"):
        cifar_rot_train.main(["--resume", str(tmp_path / "run")])
    with pytest.raises(SystemExit):
        cifar_rot_train.main(["--resume", str(tmp_path)])
    assert f"cannot resume '{tmp_path}': it has no config.yaml" in capsys.readouterr().err


def test_a_refused_resume_leaves_the_run_resumable(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    argv = _argv(tmp_path, "r1", "--set", "eval.offline=false", "--stop-after", "2")
    assert cifar_rot_train.main(argv) == 0
    saved = {name: (run / name).read_bytes() for name in ("config.yaml", "config.json")}
    for extra, changed in (
        (["--set", "batch_size=8"], "batch_size=8 (saved 16)"),
        (["--variant", "ema"], "variant='ema' (saved 'ema_rate')"),
        (["--name", "other"], "name='other' (saved 'r1')"),  # the folder keeps its name
    ):
        with pytest.raises(SystemExit) as exit_info:
            cifar_rot_train.main(["--resume", str(run), *extra])
        assert str(exit_info.value.code).startswith(f"error: cannot resume '{run}' with {changed}: ")
        assert {name: (run / name).read_bytes() for name in saved} == saved
    # Keys that shape neither the saved state nor the data may change, and are recorded.
    assert cifar_rot_train.main(["--resume", str(run), "--set", "optim.lr=1e-4"]) == 0
    assert "lr: 0.0001" in (run / "config.yaml").read_text()
    assert load_checkpoint(run / "last.pt")["step"] == 6


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stopped")
    argv = _argv(folder, "run", "--set", "eval.offline=false", "--stop-after", "2")
    assert cifar_rot_train.main(argv) == 0
    return folder / "run"


def _stopped_run(tmp_path: Path, stopped: Path) -> Path:
    """A copy of a run stopped after step 2 (its config names its own folder, so keep the path)."""
    return Path(shutil.copytree(stopped, tmp_path / "copy" / "run"))


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


def _empty(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    return None


def _no_state(ckpt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ckpt.items() if k != "state"}


def _wrong_shape(ckpt: dict[str, Any]) -> dict[str, Any]:
    name = next(k for k, v in ckpt["state"]["model"].items() if v.ndim == 2)
    ckpt["state"]["model"][name] = torch.zeros(3, 3)
    return ckpt


def _no_meter(ckpt: dict[str, Any]) -> dict[str, Any]:
    del ckpt["state"]["meter"]
    return ckpt


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_empty, "the file is empty"),
        (_no_state, "not a checkpoint of this trainer (no 'state' entry)"),
        (
            _wrong_shape,
            "its 'model' does not fit: Error(s) in loading state_dict for SeqJEPA: size mismatch for",
        ),
        (_no_meter, "it has no state for 'meter'"),
    ],
)
def test_a_malformed_checkpoint_is_one_line_and_changes_nothing(
    tmp_path: Path, stopped_run: Path, damage: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _stopped_run(tmp_path, stopped_run)
    damaged = damage(load_checkpoint(run / "last.pt"))
    if damaged is None:
        (run / "last.pt").write_bytes(b"")
    else:
        torch.save(damaged, run / "last.pt")
    before = _snapshot(run)
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(["--resume", str(run)])
    error = str(exit_info.value.code)
    assert error.startswith(f"error: cannot resume from {run / 'last.pt'}: ") and message in error, error
    assert "\n" not in error and "()" not in error
    assert _snapshot(run) == before
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("signum", "where"), [(signal.SIGINT, "offline_evaluation"), (signal.SIGTERM, "plot_metrics")]
)
def test_a_signal_after_training_stops_cleanly_and_resume_finishes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    where: str,
) -> None:
    import common.report

    module = cifar_rot_train if where == "offline_evaluation" else common.report
    original = getattr(module, where)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, where, interrupted)
    offline = "true" if where == "offline_evaluation" else "false"
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(_argv(tmp_path, "run", "--set", "epochs=1", "--set", f"eval.offline={offline}"))
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"finish the run with --resume {tmp_path / 'run'}" in err
    monkeypatch.setattr(module, where, original)
    assert cifar_rot_train.main(["--resume", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3


def test_evaluation_runs_on_a_single_sequence_with_the_rate_on() -> None:
    cfg = cifar_rot_train.TrainConfig(variant="symmetric_rate")
    model = cifar_rot_train.build(cfg, 10, 10, _cpu()).model
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    features = cifar_rot_train.encode(cfg, model, images, salt=2)
    assert features["z_agg"].shape == (1, model.aggregator.d_model) and features["loss"].isfinite().all()
    assert model.training, "evaluation leaves the model in training mode"


def _cpu() -> Any:
    from common.dist import DistInfo

    return DistInfo(0, 1, torch.device("cpu"))
