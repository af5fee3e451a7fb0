"""DDP helpers: the single-process no-op path, and two gloo processes launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from common import dist
from common.data import batch_indices

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    dist.barrier()
    assert dist.any_rank(True, info.device) and not dist.any_rank(False, info.device)
    x = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(x), x) and dist.all_reduce_mean(x) is not x
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="must be integers"):
        dist.init_distributed("cpu")


_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as tdist
    from common.data import batch_indices
    from common.dist import all_reduce_mean, any_rank, barrier, cleanup, init_distributed

    info = init_distributed("cpu")
    batches = [batch_indices(40, 8, 1, step, info.rank, info.world_size).tolist() for step in range(5)]
    gathered = [None] * info.world_size
    tdist.all_gather_object(gathered, batches)
    mean = all_reduce_mean(torch.tensor([float(info.rank)])).item()
    flag = any_rank(info.rank == 1, info.device)
    barrier()
    if info.is_main:
        out = {"world": info.world_size, "batches": gathered, "mean": mean, "flag": flag}
        json.dump(out, open(sys.argv[1], "w"))
    cleanup()
    """
)


@pytest.mark.distributed
def test_two_gloo_processes_shard_and_reduce(tmp_path: Path, free_port: int) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    result = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port}", str(script), str(result)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(result.read_text())
    assert out["world"] == 2 and out["mean"] == 0.5 and out["flag"] is True
    rank0, rank1 = out["batches"]
    single = [batch_indices(40, 8, 1, step).tolist() for step in range(5)]
    assert [a + b for a, b in zip(rank0, rank1, strict=True)] == single
    assert {i for b in rank0 for i in b}.isdisjoint(i for b in rank1 for i in b)
