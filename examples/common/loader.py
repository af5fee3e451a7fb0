"""Shuffled, rank-sharded, resumable batches of indices over in-memory tensors.

Every epoch is one permutation of ``range(num_samples)`` drawn from a ``torch.Generator`` seeded by
``(seed, epoch)`` alone, so any position ``(epoch, step)`` can be recomputed without replaying the past: that
is what makes resuming exact. The permutation is cut into global batches of ``batch_size`` (the last partial
batch is dropped) and global batch ``step`` is split into ``world_size`` equal, disjoint, contiguous shards,
one per rank. The union of the ranks' shards at a step is therefore the very batch a single process sees,
which keeps a DDP run and a single-process run on the same data order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["ShardedBatchLoader"]

_MAX_SEED = 2**32
_MASK64 = 2**64 - 1


def _mix(seed: int, epoch: int) -> int:
    """A well-spread 32-bit seed for ``(seed, epoch)`` (splitmix64 finalizer, folded to 32 bits).

    The CPU generator keeps only the low 32 bits of its seed, so packing ``seed`` into high bits would give
    every seed the same shuffles.
    """
    z = (((seed << 32) | (epoch & 0xFFFFFFFF)) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z ^ (z >> 32)) & 0xFFFFFFFF


class ShardedBatchLoader:
    """Yields this rank's shard of each global batch and tracks the position ``(epoch, step)``.

    Iterating yields the remaining batches of the current epoch and then moves to the next epoch, so a
    training loop reads::

        while loader.epoch < epochs:
            for idx in loader:          # (batch_size // world_size,) int64 indices
                ...                     # train; a checkpoint taken here stores loader.state_dict()
            ...                         # end-of-epoch work; loader.epoch has advanced

    The position advances when a batch is handed out, so a checkpoint written after the step that consumed
    it resumes at the following batch.

    Args:
        num_samples: Size of the dataset.
        batch_size: Global batch size (over all ranks); must be divisible by ``world_size``.
        seed: Seed of the shuffles, in ``[0, 2**32)``.
        rank: This process's rank.
        world_size: Number of processes.
        shuffle: Permute each epoch (else the identity order, for evaluation).

    Raises:
        ValueError: Non-positive sizes, a batch larger than the dataset, ``batch_size`` not divisible by
            ``world_size``, a rank out of range, or a seed outside ``[0, 2**32)``.

    Examples:
        >>> loader = ShardedBatchLoader(10, 4, seed=0)
        >>> len(loader), [b.tolist() for b in loader] == [loader.indices(0, s).tolist() for s in range(2)]
        (2, True)
        >>> loader.epoch, loader.step
        (1, 0)
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        for name, value in (
            ("num_samples", num_samples),
            ("batch_size", batch_size),
            ("world_size", world_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if batch_size > num_samples:
            raise ValueError(f"batch_size={batch_size} exceeds num_samples={num_samples}")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by world_size={world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.local_batch_size = batch_size // world_size
        self._epoch = 0
        self._step = 0
        self._cache: tuple[int, Tensor] | None = None

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._epoch

    @property
    def step(self) -> int:
        """The index, within its epoch, of the next batch."""
        return self._step

    @property
    def global_step(self) -> int:
        """Batches handed out since epoch 0, step 0."""
        return self._epoch * len(self) + self._step

    def __len__(self) -> int:
        """Steps per epoch."""
        return self.num_samples // self.batch_size

    def permutation(self, epoch: int) -> Tensor:
        """The full ``(num_samples,)`` order of ``epoch`` (the same on every rank)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            # Seeding from (seed, epoch) alone lets any epoch be recomputed without replaying earlier ones.
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            perm = torch.randperm(self.num_samples, generator=generator)
        else:
            perm = torch.arange(self.num_samples)
        self._cache = (epoch, perm)
        return perm

    def indices(self, epoch: int, step: int) -> Tensor:
        """This rank's ``(batch_size // world_size,)`` int64 indices at ``(epoch, step)``.

        Raises:
            ValueError: ``epoch`` is negative or ``step`` is outside ``[0, len(self))``.
        """
        if epoch < 0 or not 0 <= step < len(self):
            raise ValueError(f"(epoch, step)=({epoch}, {step}) out of range: steps per epoch is {len(self)}")
        start = step * self.batch_size + self.rank * self.local_batch_size
        return self.permutation(epoch)[start : start + self.local_batch_size].clone()

    def __iter__(self) -> Iterator[Tensor]:
        epoch = self._epoch
        while self._step < len(self):
            idx = self.indices(epoch, self._step)
            self._step += 1
            yield idx
        self._epoch, self._step = epoch + 1, 0

    def batches(
        self, *tensors: Tensor, device: torch.device | str | None = None
    ) -> Iterator[tuple[Tensor, ...]]:
        """Like iterating, but yields ``tuple(t[idx] for t in tensors)``, moved to ``device`` if given.

        Raises:
            ValueError: A tensor's first dimension is not ``num_samples``.
        """
        for t in tensors:
            if t.shape[0] != self.num_samples:
                raise ValueError(
                    f"tensor of shape {tuple(t.shape)} does not have num_samples={self.num_samples} rows"
                )
        for idx in self:
            picked = tuple(t[idx.to(t.device)] for t in tensors)
            if device is not None:
                picked = tuple(p.to(device, non_blocking=True) for p in picked)
            yield picked

    def state_dict(self) -> dict[str, int]:
        """The position and the settings that determine the batches (plain ints, checkpoint-safe)."""
        return {
            "epoch": self._epoch,
            "step": self._step,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "shuffle": int(self.shuffle),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position saved by :meth:`state_dict`.

        The world size may differ from the saved run's: the global batches are the same for any world size.

        Raises:
            ValueError: The state was saved with another seed, dataset size, batch size or shuffle setting
                (the batches would differ), or the position is out of range.
        """
        for key in ("seed", "num_samples", "batch_size", "shuffle"):
            mine = int(getattr(self, key))
            if int(state[key]) != mine:
                raise ValueError(
                    f"loader state has {key}={int(state[key])}, but this loader has {key}={mine}"
                )
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step <= len(self):
            raise ValueError(f"loader state position (epoch, step)=({epoch}, {step}) is out of range")
        self._epoch, self._step = epoch, step
