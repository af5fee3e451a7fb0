"""torchrun / DDP set-up that is a no-op in a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Starts the process group when launched by torchrun; ``device``: auto, cpu, cuda or cuda:<i>."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    try:
        world, rank, local = (
            int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0))
        )
    except ValueError:
        raise ValueError("the torchrun variables WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
    if world <= 1:
        return DistInfo(0, 1, torch.device(device))
    cuda = device.startswith("cuda")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo", rank=rank, world_size=world, device_id=dev if cuda else None
        )
    return DistInfo(rank, world, dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroys the process group if one is running (safe to call twice)."""
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a copy in a single process)."""
    out = values.detach().clone()
    if is_distributed():
        dist.all_reduce(out)
        out /= dist.get_world_size()
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on some rank, so all ranks stop together."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap(model: nn.Module, info: DistInfo, compile: bool) -> nn.Module:
    """What the training step calls: the model in channels_last on CUDA, in DDP across processes, and
    compiled if asked (probes, evaluation and checkpoints use ``model`` itself)."""
    cuda = info.device.type == "cuda"
    net: nn.Module = model.to(memory_format=torch.channels_last) if cuda else model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[info.device] if cuda else None)
    return torch.compile(net) if compile else net  # type: ignore[return-value]
