"""benchmarks/train_step.py --quick on the tiny preset: a sound report, and data far from the bottleneck."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

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
    payload = json.loads((tmp_path / "train_step_cpu.json").read_text())
    rows = payload["results"]["variants"]
    assert sorted(rows) == ["ema", "ema_rate", "symmetric_rate", "teacherless", "teacherless_rate"]
    assert payload["batch_size"] == 16 and payload["views"] == 4
    for name, row in rows.items():
        assert row["step"]["median"] > 0 and 0 < row["rate_share"] < 1, name
        assert row["data_share"] < 0.5, f"{name}: building the batch must not be the bottleneck"
        assert row["rate_shape"] == [32 if name == "symmetric_rate" else 16, 24]
        assert row["rate_in_loss"] == name.endswith("_rate")
    markdown = (tmp_path / "train_step_cpu.md").read_text()
    assert markdown.startswith("# One seq-JEPA training step per variant (cpu, preset `tiny`)")
    assert markdown.count("\n| ") == 2 + len(rows)
