"""The CIFAR-10 rotation trainer under torchrun with two gloo processes (tiny preset, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.checkpoint import load_checkpoint
from common.run import read_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.distributed
def test_two_processes_use_the_global_batch_for_the_rate_and_write_on_rank_0(
    tmp_path: Path, free_port: int
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port}", str(EXAMPLES / "cifar_rot_train.py"), "--config", "tiny",
        "--variant", "teacherless_rate", "--set", f"out_dir={tmp_path}", "--name", "ddp",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if not isinstance(r["epoch"], int)]
    # One record per step: rank 1 logged nothing.
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert [r["epoch"] for r in records if isinstance(r["epoch"], int)] == [1, 2]
    # The rate's scale a = alpha / n uses the global n = 16 (alpha = 1), not the 8 rows of one rank.
    assert {r["rate_scale"] for r in steps} == {1 / 16}
    assert load_checkpoint(run / "last.pt")["step"] == 6
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no stray temp files
    assert proc.stdout.count("done: ddp") == 1 and proc.stderr.count(f"run {run}:") == 1  # rank 0 only
