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

import common
from common import dist
from common.dist import init_distributed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert info.device == torch.device("cpu")
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main()
    dist.barrier()
    assert dist.any_rank(True) and not dist.any_rank(False)
    x = torch.tensor([1.0, 2.0])
    y = dist.all_reduce_mean(x)
    assert torch.equal(x, y) and y is not x
    dist.cleanup()


def test_bad_device_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got 'tpu'"):
        init_distributed("tpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an int, got 'two'"):
        init_distributed("cpu")


_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as tdist
    from common import ShardedBatchLoader, any_rank, all_reduce_mean, barrier, cleanup, init_distributed

    info = init_distributed("cpu")
    loader = ShardedBatchLoader(40, 8, seed=1, rank=info.rank, world_size=info.world_size)
    batches = [b.tolist() for b in loader]
    gathered = [None] * info.world_size
    tdist.all_gather_object(gathered, batches)
    mean = all_reduce_mean(torch.tensor([float(info.rank)])).item()
    flag = any_rank(info.rank == 1)
    barrier()
    if info.is_main:
        json.dump({"world": info.world_size, "backend": info.backend, "batches": gathered, "mean": mean,
                   "flag": flag}, open(sys.argv[1], "w"))
    cleanup()
    """
)


@pytest.mark.distributed
def test_two_gloo_processes_shard_and_reduce(tmp_path: Path, free_port: int) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    result = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port}", str(script), str(result),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(result.read_text())
    assert out["world"] == 2 and out["backend"] == "gloo" and out["mean"] == 0.5 and out["flag"] is True
    rank0, rank1 = out["batches"]
    single = [b.tolist() for b in common.ShardedBatchLoader(40, 8, seed=1)]
    assert [a + b for a, b in zip(rank0, rank1, strict=True)] == single
    assert {i for b in rank0 for i in b}.isdisjoint(i for b in rank1 for i in b)
