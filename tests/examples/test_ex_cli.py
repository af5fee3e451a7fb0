"""User mistakes on the command line of both trainers: each is one clear error, before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cifar_rot_train
import common.run
import two_view_rate

ROT, TWO = cifar_rot_train.main, two_view_rate.main


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (ROT, ["--set", "seq.num_observations=1"], "seq.num_observations must be >= 2, got 1"),
        (ROT, ["--set", "seq.eval_num_observations=1"], "seq.eval_num_observations must be >= 2, got 1"),
        (ROT, ["--set", "model.dropout=2"], "model.dropout must lie in [0.0, 1.0), got 2.0"),
        (ROT, ["--set", "model.action_embed_dim=0"], "model.action_embed_dim must be >= 1, got 0"),
        (ROT, ["--set", "model.predictor_hidden=-3"], "model.predictor_hidden must be >= 1, got -3"),
        (ROT, ["--set", "model.dim_feedforward=0"], "model.dim_feedforward must be >= 1, got 0"),
        (ROT, ["--set", "model.conv_widths=[]"], "model.conv_widths must be one or more channel counts"),
        (
            ROT,
            ["--config", "gpu", "--set", "model.encoder_norm=none"],
            "encoder_norm=none is a setting of the conv",
        ),
        (
            ROT,
            ["--set", "model.encoder_norm=layer"],
            "config key 'model.encoder_norm' in --set: Invalid value",
        ),
        (ROT, ["--set", "optim.name=sgd"], "config key 'optim.name' in --set: Invalid value 'sgd'"),
        (
            ROT,
            ["--set", "epochs=two"],
            "config key 'epochs' in --set: Value 'two' of type 'str' could not be",
        ),
        (ROT, ["--set", "optim.lrr=1"], "unknown config key 'optim.lrr' in --set; did you mean 'optim.lr'?"),
        (ROT, ["--set", "lr"], "--set 'lr' must look like key=value"),
        (ROT, ["--config", "nope"], "unknown preset 'nope'"),
        (ROT, ["--set", "model.num_heads=5"], "model.num_heads=5 must divide the aggregator width 24"),
        (ROT, ["--set", "rate.alpha=0"], "rate.alpha must be a finite number > 0, got 0.0"),
        (ROT, ["--set", "device=tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got 'tpu'"),
        (ROT, ["--variant", "ema", "--set", "model.ema_tau=1.5"], "model.ema_tau must lie in [0.0, 1.0]"),
        (ROT, ["--set", "batch_size=1"], "batch_size must be >= 2, got 1"),
        (ROT, ["--set", "name=../escape"], "name must be a single folder name"),
        (ROT, ["--name", "a/b"], "name must be a single folder name"),
        (ROT, ["--stop-after", "0"], "argument --stop-after: must be >= 1, got 0"),
        (ROT, ["--stop-after", "-2"], "argument --stop-after: must be >= 1, got -2"),
        (TWO, ["--set", "model.proj_dim=0"], "model.proj_dim must be >= 1, got 0"),
        (TWO, ["--set", "model.conv_widths=[]"], "model.conv_widths must be one or more channel counts"),
        (TWO, ["--variant", "byol", "--set", "model.ema_tau=1.5"], "model.ema_tau must lie in [0.0, 1.0]"),
        (TWO, ["--set", "batch_size=1"], "batch_size must be >= 2, got 1"),
    ],
)
def test_bad_values_are_usage_errors_before_the_data_is_loaded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    main: Callable[[list[str]], int],
    argv: list[str],
    message: str,
) -> None:
    def no_data(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the data was loaded before the config was checked")

    monkeypatch.setattr(common.run, "load_cifar10", no_data)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "tiny", "--set", f"out_dir={tmp_path / 'runs'}", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may be written"


def _bad_npz(tmp_path: Path) -> str:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not an archive at all")
    return f"data.train_npz={path}"


def _big_test_npz(tmp_path: Path) -> str:
    path = tmp_path / "test.npz"
    np.savez(path, x=np.zeros((20, 64, 64, 3), np.uint8), y=np.repeat(np.arange(10), 2))
    return f"data.test_npz={path}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (_bad_npz, "bad.npz' is not an npz archive"),
        (_big_test_npz, "test.npz': images are 64x64 but the training images are 32x32"),
        (lambda _: "data.holdout=0", "data.holdout=0 leaves 0 hold-out image(s)"),
        (lambda _: "batch_size=100", "batch_size=100 exceeds the 48 training images"),
    ],
)
def test_data_that_cannot_be_used_is_a_one_line_error_and_writes_no_run(
    tmp_path: Path, override: Callable[[Path], str], message: str
) -> None:
    argv = ["--config", "tiny", "--set", f"out_dir={tmp_path / 'runs'}", "--set", override(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cifar_rot_train.main(argv)
    error = str(exit_info.value.code)
    assert error.startswith("error: ") and message in error and "\n" not in error
    assert not (tmp_path / "runs").exists()
