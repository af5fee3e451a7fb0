"""sweep.py: grid parsing, run names, aggregation over seeds, its usage errors, and one tiny real sweep."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import sweep
from sweep import Run, aggregate, build_runs, parse_grid, parse_seeds, run_name


def test_parse_grid() -> None:
    assert parse_grid("rate.weight=1e-3, 3e-3,1e-2") == ("rate.weight", ["1e-3", "3e-3", "1e-2"])
    assert parse_grid("model.predictor_norm=batch,none") == ("model.predictor_norm", ["batch", "none"])


@pytest.mark.parametrize("text", ["rate.weight", "=1,2", "rate.weight=", "rate.weight=1,,2", "a=1,1"])
def test_parse_grid_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--grid"):
        parse_grid(text)


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,5") == [0, 1, 5]
    assert parse_seeds("0,0") is None and parse_seeds("-1") is None and parse_seeds("a") is None


def test_runs_and_names() -> None:
    grid = [("rate.weight", ["1e-3", "1e-2"]), ("optim.lr", ["1e-3"])]
    runs = build_runs(["ema_rate", "teacherless_rate"], grid, [0, 1], ["ema"])
    assert len(runs) == 2 * 2 * 1 * 2 + 2
    names = [run_name(r) for r in runs]
    assert len(set(names)) == len(names)
    assert names[0] == "ema_rate-rate.weight=1e-3-optim.lr=1e-3-s0" and names[-1] == "ema-s1"
    assert run_name(Run("ema", (("data.train_npz", "a/b.npz"),), 0)) == "ema-data.train_npz=a_b.npz-s0"
    # Without a grid, a baseline that is also a swept variant runs once.
    assert build_runs(["ema"], [], [0], ["ema", "teacherless"]) == [
        Run("ema", (), 0),
        Run("teacherless", (), 0),
    ]


def _summary(acc: float, rank: float) -> dict[str, Any]:
    return {"offline.z_agg.linear_acc": acc, "effective_rank.z_agg": rank, "wall_time_s": 10.0}


def test_aggregate_means_and_spreads_over_seeds() -> None:
    runs = build_runs(["teacherless_rate"], [("rate.weight", ["0.01", "0.1"])], [0, 1], ["teacherless"])
    summaries = {run_name(r): _summary(0.2 + 0.1 * r.seed, 5.0 + r.seed) for r in runs}
    del summaries["teacherless_rate-rate.weight=0.1-s1"]  # an unfinished run is left out
    rows = {(r["variant"], r.get("rate.weight")): r for r in aggregate(runs, summaries)}
    both = rows[("teacherless_rate", "0.01")]
    assert both["n"] == 2 and both["z_agg.linear_acc"] == pytest.approx(0.25)
    assert both["z_agg.linear_acc_std"] == pytest.approx(0.1 / 2**0.5)
    assert both["z_agg.effective_rank"] == pytest.approx(5.5) and both["rotation_r2"] is None
    one = rows[("teacherless_rate", "0.1")]
    assert one["n"] == 1 and one["z_agg.linear_acc_std"] == 0.0
    assert rows[("teacherless", None)]["n"] == 2


def test_outputs_table_csv_and_plots(tmp_path: Path) -> None:
    runs = build_runs(["ema_rate"], [("rate.weight", ["1e-3", "1e-2"])], [0, 1], ["ema"])
    rows = aggregate(runs, {run_name(r): _summary(0.3 + 0.01 * r.seed, 8.0) for r in runs})
    paths = sweep.write_outputs(rows, ["rate.weight"], tmp_path)
    assert [p.name for p in paths] == ["sweep.md", "sweep.csv", "sweep_rate.weight.png"]
    table = (tmp_path / "sweep.md").read_text(encoding="utf-8")
    assert "| ema_rate-rate.weight=1e-3 | 2 | 0.305 ± 0.0071 |" in table and "| ema | 2 |" in table
    with (tmp_path / "sweep.csv").open(encoding="utf-8") as f:
        table_rows = list(csv.DictReader(f))
    assert [r["rate.weight"] for r in table_rows] == ["1e-3", "1e-2", ""]
    assert all(p.stat().st_size > 0 for p in paths)
    # A categorical grid key plots too.
    cat_runs = build_runs(["ema"], [("model.loss", ["mse", "cosine"])], [0], [])
    cat = aggregate(cat_runs, {run_name(r): _summary(0.3, 8.0) for r in cat_runs})
    (tmp_path / "cat").mkdir()
    assert sweep.write_outputs(cat, ["model.loss"], tmp_path / "cat")[-1].stat().st_size > 0


def test_trainer_command_starts_or_resumes(tmp_path: Path) -> None:
    run = Run("ema_rate", (("rate.weight", "0.01"),), 3)
    argv = sweep.trainer_command(run, "tiny", ["epochs=1"], tmp_path)
    assert argv[:2] == [sys.executable, str(sweep.TRAINER)]
    assert argv[2:6] == ["--config", "tiny", "--variant", "ema_rate"]
    for flag in ("--set=epochs=1", "--set=rate.weight=0.01", "--set=seed=3", f"--set=out_dir={tmp_path}"):
        assert flag in argv
    assert argv[-3:] == ["--name", "ema_rate-rate.weight=0.01-s3", "--overwrite"]
    folder = tmp_path / run_name(run)
    folder.mkdir()
    (folder / sweep.CHECKPOINT).write_bytes(b"")
    assert sweep.trainer_command(run, "tiny", ["epochs=1"], tmp_path)[2:] == ["--resume", str(folder)]


def test_finished_runs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done, todo = Run("ema", (), 0), Run("ema", (), 1)
    (tmp_path / run_name(done)).mkdir()
    (tmp_path / run_name(done) / "summary.json").write_text("{}", encoding="utf-8")
    launched: list[tuple[list[str], str]] = []

    class Finished:
        returncode = 1

    def fake_run(argv: list[str], env: dict[str, str], **_: Any) -> Finished:
        launched.append((argv, env["OMP_NUM_THREADS"]))
        return Finished()

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    failed = sweep.execute([done, todo], "tiny", [], tmp_path, jobs=2)
    assert [(a[a.index("--name") + 1], threads) for a, threads in launched] == [("ema-s1", "4")]
    assert failed == [f"ema-s1 (exit 1, see {tmp_path / 'logs' / 'ema-s1.log'})"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the sweep's own cap holds for its runs
    sweep.execute([todo], "tiny", [], tmp_path, jobs=1)
    assert launched[-1][1] == "1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variant", "ema", "--grid", "rate.weight"], "--grid must be KEY=V1,V2,..."),
        (["--variant", "emma"], "invalid choice: 'emma'"),
        (["--variant", "ema", "--jobs", "0"], "--jobs must be >= 1, got 0"),
        (["--variant", "ema", "--seeds", "0,x"], "--seeds must be distinct non-negative integers"),
        (["--variant", "ema", "--grid", "a=1", "--grid", "a=2"], "--grid names a key twice: a, a"),
        (["--variant", "ema", "--grid", "rate.wieght=1"], "rate.wieght"),
        (["--variant", "ema", "--grid", "rate.weight=abc"], "rate.weight"),
        ([], "nothing to run: give at least one --variant or --baseline"),
        (["--variant", "ema", "--set", "seed=3"], "the sweep sets seed itself: use --seeds and --out"),
        (["--variant", "ema", "--grid", "out_dir=a,b"], "the sweep sets out_dir itself"),
        (["--baseline", "ema", "--grid", "rate.weight=1"], "--grid needs a --variant to sweep"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--config", "tiny", *argv, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not out.exists()


def test_tiny_sweep_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    argv = ["--config", "tiny", "--variant", "teacherless_rate", "--grid", "rate.weight=0.01,0.1",
            "--set", "epochs=1", "--set", "eval.offline=false", "--out", str(out)]  # fmt: skip
    assert sweep.main(argv) == 0
    for weight in ("0.01", "0.1"):
        summary = json.loads((out / f"teacherless_rate-rate.weight={weight}-s0" / "summary.json").read_text())
        assert summary["variant"] == "teacherless_rate" and summary["epochs"] == 1
    table = (out / "sweep.md").read_text(encoding="utf-8")
    assert "teacherless_rate-rate.weight=0.01" in table and "teacherless_rate-rate.weight=0.1" in table
    assert (out / "sweep_rate.weight.png").is_file()
    capsys.readouterr()
    assert sweep.main(argv) == 0  # everything finished: nothing runs again
    assert "run teacherless_rate" not in capsys.readouterr().out
