"""Run folders, metrics logs, atomic checkpoints, signals, plots and run comparison."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import compare_runs
from cifar_rot_train import TrainConfig
from common.checkpoint import ResumeError, atomic_write, load_checkpoint, restore, save_checkpoint
from common.report import Progress, plot_metrics, plot_spectrum
from common.run import RunDir, StopRequest, read_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Opaque:
    """An arbitrary object: weights_only loading must refuse it."""


def test_checkpoint_roundtrip_with_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 5, "config": {"lr": None}, "state": {"model": model.state_dict()}})
    loaded = load_checkpoint(path)
    assert loaded["step"] == 5 and loaded["config"] == {"lr": None}
    twin = torch.nn.Linear(3, 2)
    restore(path, loaded["state"], {"model": twin})
    assert torch.equal(twin.weight, model.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind
    save_checkpoint(path, {"step": 1, "config": {}, "state": {}, "obj": _Opaque()})
    with pytest.raises(ResumeError, match=r"it cannot be loaded \(Weights only load failed"):
        load_checkpoint(path)


def test_a_failed_write_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    atomic_write(path, b"old")

    def no_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_written_files_get_the_permissions_of_a_normal_file(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "last.pt", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_metrics_logs_widen_their_csv_and_a_resume_drops_later_records(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.begin(TrainConfig(name="r", out_dir=str(tmp_path)), 0)
    run.log({"step": 1, "loss": 1.0})
    run.log({"step": 2, "loss": 0.5, "z.spectrum": [1.0, 0.5], "group": {"acc": 0.3}})
    run.log({"step": 3, "loss": 0.25})
    assert (run.path / "metrics.csv").read_text().splitlines() == [
        "step,loss,group.acc",
        "1,1.0,",
        "2,0.5,0.3",
        "3,0.25,",
    ]
    (run.path / ".last.pt.99.tmp").write_bytes(b"torn")
    resumed = RunDir(run.path)
    resumed.begin(TrainConfig(name="r", out_dir=str(tmp_path)), 2)
    assert [r["step"] for r in read_jsonl(run.path / "metrics.jsonl")] == [1, 2]
    assert not (run.path / ".last.pt.99.tmp").exists() and (run.path / "config.yaml").is_file()


def test_disabled_run_writes_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r", enabled=False)
    run.begin(TrainConfig(), 0)
    run.log({"step": 1})
    assert not (tmp_path / "r").exists()


def test_a_first_signal_sets_a_flag_a_second_interrupts() -> None:
    previous = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert stop.signal_name is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal stops at once
    assert signal.getsignal(signal.SIGINT) is previous


class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None: ...

    def isatty(self) -> bool:
        return True


def test_progress_lines_off_a_terminal_a_bar_on_one_silence_elsewhere() -> None:
    import io

    plain = io.StringIO()
    progress = Progress(10, 0, 4, stream=plain)
    for _ in range(10):
        progress.update(64, {"loss": 0.25})
    lines = plain.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "train step 4/10",
        "train step 8/10",
        "train step 10/10",
    ]
    assert "loss 0.25 | img/s " in lines[0] and "eta " in lines[0] and "eta " not in lines[2]
    tty = _Tty()
    bar = Progress(3, 1, 1, stream=tty)
    bar.update(8, {"loss": 0.5})
    bar.close()
    assert "\r" in tty.text and "loss=0.5" in tty.text and "train step" not in tty.text
    silent = io.StringIO()
    Progress(3, 0, 1, stream=silent, enabled=False).update(8, {"loss": 1.0})
    assert silent.getvalue() == ""


def test_plots_write_png_files(tmp_path: Path) -> None:
    records = [{"epoch": e, "loss": 1.0 / (e + 1), "acc": 0.1 * e} for e in range(5)]
    curves = plot_metrics(records, tmp_path / "curves.png", ["loss", "acc"])
    spectrum = plot_spectrum(
        {"z": [1.0, 0.5, 0.25], "collapsed": [1.0, 0.0, 0.0]}, tmp_path / "s.png", "spectra"
    )
    for path in (curves, spectrum):
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_compare_runs_writes_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, acc in (("ema", 0.41), ("teacherless", 0.1)):
        (tmp_path / name).mkdir()
        run = RunDir(tmp_path / name)
        for epoch in range(3):
            run.log({"epoch": epoch, "loss": 1.0 - 0.1 * epoch, "acc": acc * epoch / 2})
        summary = {"acc": acc, "eval": {"knn": acc / 2}, "variant": name}
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "cmp"
    assert compare_runs.main([str(tmp_path / "ema"), str(tmp_path / "teacherless"), "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0] == "| run | acc | eval.knn | variant |"
    assert table[2] == "| ema | 0.41 | 0.205 | ema |"
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert "| ema |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        compare_runs.main([str(tmp_path)])
    assert f"no summary.json in: {tmp_path}" in capsys.readouterr().err
