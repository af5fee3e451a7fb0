"""AdamW with parameter groups (no weight decay on norms, biases and learned tokens) and a per-step schedule.

The learning rate is a pure function of the global step (linear warmup, then a half-cosine down to
``min_lr``; see :func:`jepa_rate.warmup_cosine`), set on the optimizer before every step. Holding no
scheduler state, it resumes exactly from the step counter alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jepa_rate import warmup_cosine

__all__ = ["OptimConfig", "build_optimizer", "learning_rate", "param_groups", "set_learning_rate"]

# Learned tokens and position embeddings are offsets, like biases: decaying them towards zero only hurts.
_NO_DECAY_NAME_PARTS = ("token", "pos_embed")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and learning-rate schedule settings; nest it in a trainer config as ``optim``.

    Args:
        lr: Peak learning rate, reached at the end of the warmup.
        min_lr: Final learning rate of the cosine decay.
        weight_decay: Decoupled weight decay of the matrices and convolution kernels.
        betas: Adam's ``(beta1, beta2)``.
        warmup_epochs: Length of the linear warmup, in epochs (fractions allowed).
        grad_clip: Clip the global gradient norm to this value; ``None`` disables clipping.
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"optim.{name} must be a finite number >= 0, got {value!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 or None, got {self.grad_clip!r}")


def _decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim >= 2 and not any(part in name for part in _NO_DECAY_NAME_PARTS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Splits the trainable parameters into a decayed and a non-decayed group.

    Matrices and convolution kernels are decayed; 1-D parameters (biases, norm scales and shifts) and learned
    tokens / position embeddings (names containing ``token`` or ``pos_embed``) are not. Frozen parameters
    (``requires_grad=False``, e.g. an EMA target) are left out.

    Args:
        model: The module to optimize.
        weight_decay: Decay of the first group.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]``.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        >>> [len(g["params"]) for g in param_groups(net, 0.05)]  # weight | bias, norm weight, norm bias
        [1, 3]
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if _decays(name, param) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``model`` with the settings of ``cfg`` (lr set per step later).

    Raises:
        ValueError: ``model`` has no trainable parameter.
    """
    groups = param_groups(model, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimize")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def learning_rate(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate of (0-based) training step ``step``.

    Step ``k`` uses the value of :func:`jepa_rate.warmup_cosine` at ``k + 1``, so that the first step
    already has a non-zero rate and the last one reaches ``min_lr``.

    Args:
        cfg: Peak, final rate and warmup length.
        step: The global step about to be taken.
        total_steps: Steps in the whole run.
        steps_per_epoch: Steps per epoch (converts ``warmup_epochs`` to steps).

    Returns:
        The learning rate.

    Examples:
        >>> cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_epochs=1)
        >>> [round(learning_rate(cfg, k, 4, 2), 3) for k in range(4)]
        [0.5, 1.0, 0.5, 0.0]
    """
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    return warmup_cosine(step + 1, peak=cfg.lr, total_steps=total_steps, warmup_steps=warmup, end=cfg.min_lr)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Sets ``lr`` on every parameter group of ``optimizer`` and returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
