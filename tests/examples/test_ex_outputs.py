"""Run folders, metrics logs, atomic checkpoints, RNG states, interrupts, plots and run comparison."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import compare_runs
from common.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, seed_all, set_rng_state
from common.interrupt import GracefulInterrupt
from common.outputs import RunDir
from common.plots import plot_metrics, plot_spectrum

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Opaque:
    """An arbitrary object: weights_only loading must refuse it."""


def test_checkpoint_roundtrip_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "step": 5,
        "cfg": {"name": "x", "lr": None},
    }
    path = save_checkpoint(state, tmp_path / "run" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 5 and loaded["cfg"] == {"name": "x", "lr": None}
    torch.testing.assert_close(loaded["model"]["weight"], model.weight.detach(), rtol=0, atol=0)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_weights_only_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = save_checkpoint({"obj": _Opaque()}, tmp_path / "bad.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_failed_write_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path / "last.pt")
    before = path.read_bytes()

    def torn_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")  # the process dies mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failed_rename_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    def no_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_checkpoint_and_summary_get_the_permissions_of_a_normal_file(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        run = RunDir(tmp_path / "r")
        run.save_checkpoint({"step": 1})
        run.write_summary({"acc": 0.5})
        (tmp_path / "plain").write_text("")  # what open() gives a new file under this umask
    finally:
        os.umask(previous)
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for path in (run.checkpoint, run.summary_json):
        assert path.stat().st_mode & 0o777 == expected, path.name


def test_missing_checkpoint_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 'last\.pt'"):
        RunDir(tmp_path / "r").load_checkpoint()


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    seed_all(123)
    torch.rand(3), random.random(), np.random.rand()  # noqa: NPY002
    save_checkpoint({"rng": get_rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(4), random.random(), np.random.rand(2))  # noqa: NPY002
    seed_all(999)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(4), random.random(), np.random.rand(2))  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


def test_metrics_jsonl_and_csv_with_header_union(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "runs" / "demo")
    run.log({"epoch": 0, "loss": torch.tensor(1.5)})
    run.log({"epoch": 1, "loss": 0.75, "probe": {"acc": 0.25}, "spectrum": [3.0, 1.0]})
    run.log({"epoch": 2, "loss": float("nan")})
    lines = run.metrics_csv.read_text().splitlines()
    assert lines == ["epoch,loss,probe.acc", "0,1.5,", "1,0.75,0.25", "2,nan,"]
    records = run.records()
    assert records[1]["spectrum"] == [3.0, 1.0] and np.isnan(records[2]["loss"])
    # A logger reopened on the same folder (a resumed run) keeps appending under the same header.
    again = RunDir(tmp_path / "runs" / "demo")
    again.log({"epoch": 3, "probe": {"acc": 0.5}})
    assert again.metrics_csv.read_text().splitlines()[-1] == "3,,0.5"


def test_truncate_drops_records_after_the_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    for epoch in range(4):
        run.log({"epoch": epoch, "loss": 1.0 / (epoch + 1), **({"late": 1} if epoch == 3 else {})})
    assert run.metrics.truncate(lambda r: r["epoch"] <= 1) == 2
    assert [r["epoch"] for r in run.records()] == [0, 1]
    assert run.metrics_csv.read_text().splitlines() == ["epoch,loss", "0,1.0", "1,0.5"]


def test_summary_config_and_disabled_rank(tmp_path: Path) -> None:
    from common.data import DataConfig

    run = RunDir(tmp_path / "r")
    run.save_config(DataConfig(holdout=10))
    run.write_summary({"acc": np.float32(0.5), "wall_time_s": 3, "nested": {"r2": torch.tensor(0.25)}})
    assert run.read_summary() == {"acc": 0.5, "wall_time_s": 3, "nested": {"r2": 0.25}}
    assert "holdout: 10" in run.config_yaml.read_text()
    assert json.loads((run.path / "config.json").read_text())["holdout"] == 10
    quiet = RunDir(tmp_path / "rank1", enabled=False)
    quiet.log({"a": 1})
    quiet.write_summary({"a": 1})
    quiet.save_checkpoint({"a": 1})
    assert not quiet.path.exists()
    with pytest.raises(TypeError, match="cannot store a _Opaque"):
        run.log({"x": _Opaque()})


def test_interrupt_sets_a_flag_then_restores_the_handler() -> None:
    previous = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt() as interrupt:
        assert not interrupt.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested and interrupt.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C stops at once
    assert signal.getsignal(signal.SIGINT) is previous


def test_plots_write_png_files(tmp_path: Path) -> None:
    records = [{"epoch": e, "loss": 1.0 / (e + 1), "acc": 0.1 * e} for e in range(5)]
    curves = plot_metrics(records, tmp_path / "curves.png")
    spectrum = plot_spectrum(
        {"z": torch.linspace(1, 0, 16), "collapsed": torch.tensor([1.0] + [0.0] * 15)}, tmp_path / "s.png"
    )
    for path in (curves, spectrum):
        assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no numeric metrics"):
        plot_metrics([{"epoch": 0}], tmp_path / "none.png")
    with pytest.raises(ValueError, match="must be 1-D"):
        plot_spectrum({"z": torch.ones(2, 2)}, tmp_path / "bad.png")


def test_compare_runs_writes_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, acc in (("ema", 0.41), ("teacherless", 0.1)):
        run = RunDir(tmp_path / name)
        for epoch in range(3):
            run.log({"epoch": epoch, "loss": 1.0 - 0.1 * epoch, "acc": acc * epoch / 2})
        run.write_summary({"acc": acc, "eval": {"knn": acc / 2}, "variant": name})
    out = tmp_path / "cmp"
    assert compare_runs.main([str(tmp_path / "ema"), str(tmp_path / "teacherless"), "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0] == "| run | acc | eval.knn | variant |"
    assert table[2] == "| ema | 0.41 | 0.205 | ema |"
    assert table[3] == "| teacherless | 0.1 | 0.05 | teacherless |"
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert "| ema |" in capsys.readouterr().out


def test_compare_runs_names_unfinished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    RunDir(tmp_path / "a")
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path / "a")])
    assert f"no summary.json in: {tmp_path / 'a'}" in capsys.readouterr().err
