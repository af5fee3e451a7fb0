"""torchrun / DDP set-up that degrades to a no-op in a single process.

Under ``torchrun --nproc_per_node=N script.py`` the environment holds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed` then starts a process group
(NCCL when the run uses CUDA, gloo on CPU) and pins each process to its local GPU. Run directly, the same call
returns rank 0 of 1 and starts nothing, and every helper below behaves as the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .checks import check_device

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "any_rank",
    "barrier",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, device, and backend (``None`` if single)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {raw!r}") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Starts the process group when launched by torchrun; otherwise returns the single-process info.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``. Under DDP
            on CUDA each process uses ``cuda:<LOCAL_RANK>``.

    Returns:
        The process's :class:`DistInfo`.

    Raises:
        ValueError: Unknown ``device``, CUDA requested but unavailable, or malformed torchrun variables.
    """
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistInfo(0, 1, 0, torch.device(device), None)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        # Binding the device lets NCCL collectives (barrier included) know their GPU without guessing.
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            device_id=dev if backend == "nccl" else None,
        )
    return DistInfo(rank, world_size, local_rank, dev, backend)


def is_distributed() -> bool:
    """Whether a process group is running."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that logs and writes."""
    return get_rank() == 0


def barrier() -> None:
    """Waits for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroys the process group if one is running (safe to call twice)."""
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over ranks, as a new tensor (a copy in a single process).

    Examples:
        >>> all_reduce_mean(torch.tensor([1.0, 3.0]))
        tensor([1., 3.])
    """
    out = value.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= get_world_size()
    return out


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is true on at least one rank (e.g. an interrupt or a non-finite loss).

    Args:
        flag: This rank's flag.
        device: Where the reduction tensor lives (the rank's CUDA device under NCCL).
    """
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
