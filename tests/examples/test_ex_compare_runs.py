"""compare_runs.py rejects bad input with a one-line usage error that names the culprit, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import compare_runs
from common.run import RunDir


def _run(path: Path, summary: str = '{"acc": 0.2}') -> Path:
    run = RunDir(path)
    path.mkdir(parents=True)
    for epoch in range(2):
        run.log({"epoch": epoch, "loss": 1.0 - 0.1 * epoch, "acc": 0.2 * epoch})
    (path / "summary.json").write_text(summary, encoding="utf-8")
    return path


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        compare_runs.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_the_same_run_twice_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, out = _run(tmp_path / "a"), tmp_path / "cmp"
    for argv in ([str(a), str(a)], [str(a), f"{a}/"]):
        assert f"given more than once: {a}" in _error([*argv, "--out", str(out)], capsys)
    assert not out.exists()


@pytest.mark.parametrize(("text", "message"), [("{not json", "invalid JSON"), ("[1, 2]", "JSON object")])
def test_bad_summary_names_its_path(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _run(tmp_path / "bad", summary=text)
    line = _error([str(_run(tmp_path / "a")), str(bad), "--out", str(tmp_path / "cmp")], capsys)
    assert str(bad / "summary.json") in line and message in line


def test_out_pointing_at_a_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    out.write_text("keep me", encoding="utf-8")
    assert f"--out {out} exists and is not a folder" in _error(
        [str(_run(tmp_path / "a")), "--out", str(out)], capsys
    )
    assert out.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize(
    ("extra", "unknown"), [(["--keys", "loss,nope"], "nope"), (["--x", "stp"], "--x stp")]
)
def test_unknown_plot_keys_list_the_available_ones(
    extra: list[str], unknown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [str(_run(tmp_path / "a")), str(_run(tmp_path / "b"))]
    line = _error([*runs, "--out", str(tmp_path / "cmp"), *extra], capsys)
    assert f": {unknown} (available: epoch, loss, acc)" in line
    assert not (tmp_path / "cmp").exists()
    # Known keys and an explicit known --x still plot.
    assert compare_runs.main([*runs, "--out", str(tmp_path / "ok"), "--keys", "acc", "--x", "loss"]) == 0
    assert (tmp_path / "ok" / "comparison.png").is_file()
