"""Process-group helpers for the global (all-ranks) coding rate."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_row_mean", "require_process_group", "world_size"]


def require_process_group(group: Any = None) -> None:
    """Raises ``RuntimeError`` when ``gather_distributed=True`` is used without an initialized process
    group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather_distributed=True needs an initialized torch.distributed process group "
            "(call torch.distributed.init_process_group first, e.g. under torchrun), or pass "
            "gather_distributed=False to compute the rate of this process's batch only"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")


def world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (the default group when ``None``)."""
    return int(dist.get_world_size(group))


def global_row_mean(x: Tensor, group: Any = None) -> Tensor:
    """Mean over the rows (dim ``-2``) of ``x`` across all ranks, differentiable.

    Every rank must hold the same number of rows. The backward pass sums the incoming gradients of all ranks,
    the same convention as the rate itself (see :func:`jepa_rate.coding_rate`).
    """
    from torch.distributed.nn.functional import all_reduce

    local_sum = x.sum(dim=-2, keepdim=True)
    total = all_reduce(local_sum, op=dist.ReduceOp.SUM, group=group or dist.group.WORLD)  # type: ignore[no-untyped-call]
    rows = x.shape[-2] * world_size(group)
    return torch.div(total, rows)
