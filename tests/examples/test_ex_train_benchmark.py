"""benchmarks/train_step.py --quick on the tiny preset: a sound report, and data far from the bottleneck."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))  # the script imports _harness by plain name, as when it runs
    spec = importlib.util.spec_from_file_location("jepa_rate_bench_train_step", BENCH_DIR / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_a_report_with_every_variant(tmp_path: Path) -> None:
    bench = _load()
    assert bench.main(["--quick", "--config", "tiny", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "train_step_cpu_quick.json").read_text())
    # The timer actually used is recorded, not the unset option.
    assert (payload["config"]["timer"], payload["config"]["min_run_time"]) == ("blocked", 0.2)
    rows = payload["results"]["variants"]
    assert sorted(rows) == ["ema", "ema_rate", "symmetric_rate", "teacherless", "teacherless_rate"]
    assert payload["batch_size"] == 16 and payload["views"] == 4
    for name, row in rows.items():
        assert row["step"]["median"] > 0 and 0 < row["rate_share"] < 1, name
        assert row["data_share"] < 0.5, f"{name}: building the batch must not be the bottleneck"
        assert row["rate_shape"] == [32 if name == "symmetric_rate" else 16, 24]
        assert row["rate_in_loss"] == name.endswith("_rate")
    markdown = (tmp_path / "train_step_cpu_quick.md").read_text()
    assert markdown.startswith("# One seq-JEPA training step per variant (cpu, preset `tiny`)")
    assert markdown.count("\n| ") == 2 + len(rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["--threads", "0"], "--threads: must be >= 1, got 0"),
        (["--set", "nope=1"], "unknown config key 'nope'"),
        (["--config", "nope"], "unknown preset 'nope'"),
        (["--device", "cuda"], "--device cuda"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--quick", "--config", "tiny", "--out-dir", str(tmp_path), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_threads_help_states_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "default: every available CPU" in " ".join(capsys.readouterr().out.split())
