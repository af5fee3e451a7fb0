"""Rank-sharded, resumable batch loader of the example infrastructure."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.loader import ShardedBatchLoader


def _epoch(loader: ShardedBatchLoader) -> list[list[int]]:
    return [b.tolist() for b in loader]


@settings(max_examples=30, deadline=None)
@given(
    num_samples=st.integers(min_value=4, max_value=60),
    world_size=st.integers(min_value=1, max_value=4),
    local=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    epoch=st.integers(min_value=0, max_value=5),
)
def test_ranks_get_disjoint_equal_shards_of_the_global_batch(
    num_samples: int, world_size: int, local: int, seed: int, epoch: int
) -> None:
    batch = world_size * local
    if batch > num_samples:
        return
    single = ShardedBatchLoader(num_samples, batch, seed=seed)
    ranks = [
        ShardedBatchLoader(num_samples, batch, seed=seed, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    seen: list[int] = []
    for step in range(len(single)):
        shards = [r.indices(epoch, step) for r in ranks]
        assert all(s.numel() == local for s in shards)
        # The union of the shards is the single-process batch, in order.
        assert torch.cat(shards).tolist() == single.indices(epoch, step).tolist()
        seen.extend(torch.cat(shards).tolist())
    # drop_last: every sample at most once per epoch, and only the final partial batch is left out.
    assert len(seen) == len(set(seen)) == (num_samples // batch) * batch


def test_epochs_are_different_permutations_and_seed_matters() -> None:
    loader = ShardedBatchLoader(100, 10, seed=7)
    first, second = _epoch(loader), _epoch(loader)
    assert first != second
    assert sorted(i for batch in first for i in batch) == list(range(100))
    other = ShardedBatchLoader(100, 10, seed=8)
    assert _epoch(other) != first


def test_resume_from_state_reproduces_the_same_batches() -> None:
    reference = ShardedBatchLoader(50, 8, seed=3, rank=1, world_size=2)
    full = [b.tolist() for _ in range(3) for b in reference]

    loader = ShardedBatchLoader(50, 8, seed=3, rank=1, world_size=2)
    got: list[list[int]] = []
    for i, idx in enumerate(loader):  # interrupted in the middle of epoch 0
        got.append(idx.tolist())
        if i == 3:
            break
    state = loader.state_dict()
    assert (state["epoch"], state["step"]) == (0, 4)

    resumed = ShardedBatchLoader(50, 8, seed=3, rank=1, world_size=2)
    resumed.load_state_dict(state)
    while resumed.epoch < 3:
        got.extend(b.tolist() for b in resumed)
    assert got == full


def test_resume_at_end_of_epoch_and_on_another_world_size() -> None:
    loader = ShardedBatchLoader(20, 4, seed=0)
    for _ in loader:
        pass
    assert (loader.epoch, loader.step) == (1, 0)
    state = {**loader.state_dict(), "epoch": 0, "step": len(loader)}
    resumed = ShardedBatchLoader(20, 4, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == [] and (resumed.epoch, resumed.step) == (1, 0)
    # Global batches do not depend on the world size, so a 2-rank run may resume a 1-rank one.
    two = [ShardedBatchLoader(20, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for r in two:
        r.load_state_dict(loader.state_dict())
    assert torch.cat([next(iter(r)) for r in two]).tolist() == loader.indices(1, 0).tolist()


def test_state_mismatch_and_bad_arguments_are_rejected() -> None:
    state = ShardedBatchLoader(20, 4, seed=0).state_dict()
    with pytest.raises(ValueError, match="batch_size=4, but this loader has batch_size=5"):
        ShardedBatchLoader(20, 5, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        ShardedBatchLoader(20, 4, seed=0, world_size=3)
    with pytest.raises(ValueError, match="rank=2"):
        ShardedBatchLoader(20, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="exceeds num_samples"):
        ShardedBatchLoader(3, 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ShardedBatchLoader(20, 4, seed=-1)
    with pytest.raises(ValueError, match="out of range"):
        ShardedBatchLoader(20, 4, seed=0).indices(0, 5)


def test_batches_gathers_tensors_and_shuffle_off_is_ordered() -> None:
    data = torch.arange(12).view(12, 1) * 10
    labels = torch.arange(12)
    loader = ShardedBatchLoader(12, 4, seed=0, shuffle=False)
    out = list(loader.batches(data, labels))
    assert [lab.tolist() for _, lab in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert torch.equal(out[1][0].flatten(), torch.tensor([40, 50, 60, 70]))
    with pytest.raises(ValueError, match="num_samples=12"):
        next(loader.batches(torch.zeros(5)))
