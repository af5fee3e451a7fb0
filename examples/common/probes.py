"""Online probes: small heads trained during training, on detached features, with their own optimizer.

A probe reads the representation without shaping it: its inputs are detached, so its gradients never reach
the model, and it has its own Adam optimizer (constant learning rate). It tracks how linearly decodable the
classes (or how predictable the transformations) are as training goes, at almost no cost. Under DDP each
rank trains on its own shard and the probe gradients are averaged over ranks before the step, so the probe
weights stay identical on all ranks, like the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OnlineProbe", "ProbeConfig", "linear_classifier", "mlp_regressor"]


@dataclass(frozen=True)
class ProbeConfig:
    """Online probe settings; nest it in a trainer config as ``probe``.

    Args:
        lr: Adam learning rate of every probe.
        weight_decay: Adam (L2) weight decay of every probe.
        hidden: Hidden width of MLP probes.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 256

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.weight_decay < 0 or self.hidden < 1:
            raise ValueError(
                f"probe needs lr > 0, weight_decay >= 0, hidden >= 1; got {self.lr}, {self.weight_decay}, "
                f"{self.hidden}"
            )


class OnlineProbe:
    """A head and its optimizer, trained step by step on detached inputs.

    Args:
        head: The module, already on the training device.
        task: ``"classify"`` (cross-entropy on int64 labels) or ``"regress"`` (MSE on float targets).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.

    Examples:
        >>> probe = OnlineProbe(nn.Linear(4, 3), "classify", lr=0.1)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> first = probe.step(x, y)
        >>> for _ in range(50):
        ...     last = probe.step(x, y)
        >>> bool(last < first), probe.predict(x).shape
        (True, torch.Size([32, 3]))
    """

    def __init__(
        self, head: nn.Module, task: Literal["classify", "regress"], *, lr: float, weight_decay: float = 0.0
    ) -> None:
        if task not in ("classify", "regress"):
            raise ValueError(f"task must be 'classify' or 'regress', got {task!r}")
        self.head = head
        self.task = task
        self.optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)

    def loss(self, x: Tensor, target: Tensor) -> Tensor:
        """The probe's loss on ``x`` (detached here) and ``target``."""
        out = self.head(x.detach().float())
        if self.task == "classify":
            return F.cross_entropy(out, target)
        return F.mse_loss(out, target.float())

    def step(self, x: Tensor, target: Tensor) -> Tensor:
        """One optimizer step on a batch; returns the (detached) loss before the step."""
        self.head.train()
        with torch.autocast(device_type=x.device.type, enabled=False):
            loss = self.loss(x, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if dist.is_available() and dist.is_initialized():
            # A probe has a handful of tensors: one all-reduce each is cheaper than flattening them.
            for param in self.head.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
                    param.grad /= dist.get_world_size()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The head's output on ``x`` in eval mode."""
        self.head.eval()
        with torch.autocast(device_type=x.device.type, enabled=False):
            out: Tensor = self.head(x.float())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Head and optimizer state (checkpoint-safe)."""
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


def linear_classifier(in_dim: int, num_classes: int, cfg: ProbeConfig, device: torch.device) -> OnlineProbe:
    """A linear classification probe (cross-entropy)."""
    return OnlineProbe(
        nn.Linear(in_dim, num_classes).to(device), "classify", lr=cfg.lr, weight_decay=cfg.weight_decay
    )


def mlp_regressor(in_dim: int, out_dim: int, cfg: ProbeConfig, device: torch.device) -> OnlineProbe:
    """A one-hidden-layer MLP regression probe (MSE), e.g. ``[z_0, z_1] -> [sin, cos]`` of their rotation."""
    head = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, out_dim))
    return OnlineProbe(head.to(device), "regress", lr=cfg.lr, weight_decay=cfg.weight_decay)
