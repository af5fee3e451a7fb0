"""The global coding rate over a real gloo process group of 2 CPU processes, against one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from jepa_rate import CodingRateLoss

WORLD = 2
# (rows per rank, input dim, feature dim, center, sets): d <= global n uses all_reduce of the d x d Gram,
# global n < d all_gathers the rows and factors the n x n side. (80, 5, 128) and (150, 5, 400) reach the
# padded order (d = 128 after the all_reduce) and the Gram from its lower blocks (global n = 300 after the
# all_gather). With sets > 1 each rank's rows are split into that many sets, a (sets, n, d) batch, and set b
# of the global batch is set b of every rank, concatenated.
CASES = [
    (16, 5, 8, False, 1),
    (16, 5, 8, True, 1),
    (3, 5, 12, False, 1),
    (3, 5, 12, True, 1),
    (80, 5, 128, True, 1),
    (150, 5, 400, False, 1),
    (16, 5, 8, True, 2),
    (6, 5, 12, False, 2),
]


def as_sets(features: torch.Tensor, sets: int, world: int) -> torch.Tensor:
    """``(world·rows, d)`` features, rank-major, as the global ``(sets, world·rows/sets, d)`` batch."""
    if sets == 1:
        return features
    d = features.shape[-1]
    return features.view(world, sets, -1, d).transpose(0, 1).reshape(sets, -1, d)


def make_problem(rows: int, d_in: int, d: int) -> tuple[torch.Tensor, torch.nn.Linear]:
    g = torch.Generator().manual_seed(rows * 100 + d)
    inputs = torch.randn(WORLD * rows, d_in, generator=g, dtype=torch.float64)
    layer = torch.nn.Linear(d_in, d, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d, d_in, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
    return inputs, layer


def single_process(
    rows: int, d_in: int, d: int, center: bool, sets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, layer = make_problem(rows, d_in, d)
    loss = CodingRateLoss(weight=1.0, center=center)(as_sets(layer(inputs), sets, WORLD))
    loss.backward()
    assert layer.weight.grad is not None
    return loss.detach(), layer.weight.grad


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = []
        for rows, d_in, d, center, sets in CASES:
            inputs, layer = make_problem(rows, d_in, d)
            model = DistributedDataParallel(layer)
            local = inputs[rank * rows : (rank + 1) * rows]
            features = as_sets(model(local), sets, 1)
            loss = CodingRateLoss(weight=1.0, center=center, gather_distributed=True)(features)
            loss.backward()
            results.append((loss.detach(), layer.weight.grad))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_global_rate_and_ddp_gradients_equal_single_process(tmp_path: Path, free_port: int) -> None:
    mp.spawn(_worker, args=(free_port, str(tmp_path)), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for i, case in enumerate(CASES):
        value, grad = single_process(*case)
        for rank in range(WORLD):
            dist_value, dist_grad = per_rank[rank][i]
            # Same float64 arithmetic up to summation order: 1e-10 leaves room only for rounding.
            torch.testing.assert_close(dist_value, value, rtol=1e-10, atol=1e-10, msg=f"value, case {case}")
            torch.testing.assert_close(dist_grad, grad, rtol=1e-10, atol=1e-10, msg=f"grad, case {case}")
