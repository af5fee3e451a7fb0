"""The optimizer, the learning rate and coding-rate weight of a step, and the timing of the rate's cost."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from common.config import OptimConfig, RateConfig
from jepa_rate import CodingRateLoss, warmup_cosine


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or Adam over the trainable parameters; matrices and kernels decay, while biases, norms and
    learned tokens / position embeddings (offsets, like biases) do not.

    Examples:
        >>> opt = build_optimizer(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), OptimConfig())
        >>> [len(g["params"]) for g in opt.param_groups]  # weight | bias, norm weight, norm bias
        [1, 3]
    """
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "token" not in name and "pos_embed" not in name else rest).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=cfg.betas)


def learning_rate(cfg: OptimConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Warmup then half-cosine to ``min_lr``, at step ``step + 1`` (the first step already learns and the last
    reaches ``min_lr``); with ``schedule_unit=epoch``, the seq-JEPA fork's per-epoch rule: epoch ``e`` of the
    warmup gets ``(e + 1) / warmup`` of the peak, the epoch after it the peak, the last epoch ``min_lr``.

    Examples:
        >>> cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_epochs=1)
        >>> [round(learning_rate(cfg, k, 4, 2), 3) for k in range(4)]
        [0.5, 1.0, 0.5, 0.0]
        >>> fork = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_epochs=2, schedule_unit="epoch")
        >>> [round(learning_rate(fork, e, 10, 1), 6) for e in (0, 1, 2, 5, 9)]
        [0.0005, 0.001, 0.001, 0.00065, 0.0001]
    """
    if cfg.schedule_unit == "epoch":
        epochs, epoch = total_steps // steps_per_epoch, step // steps_per_epoch
        warmup = min(round(cfg.warmup_epochs), epochs)
        if epoch < warmup:
            return cfg.lr * (epoch + 1) / warmup
        progress = min((epoch - warmup) / max(epochs - warmup - 1, 1), 1.0)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    return warmup_cosine(step + 1, peak=cfg.lr, total_steps=total_steps, warmup_steps=warmup, end=cfg.min_lr)


def rate_weight(cfg: RateConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The weight of ``-R`` at ``step``: ``rate.weight`` through ``rate.schedule``.

    Examples:
        >>> cfg = RateConfig(weight=0.1, schedule="warmup", warmup_epochs=1)
        >>> [round(rate_weight(cfg, k, 10, 4), 3) for k in (0, 2, 4, 9)]
        [0.0, 0.05, 0.1, 0.1]
    """
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    if cfg.schedule == "constant" or cfg.weight == 0:
        return cfg.weight
    if cfg.schedule == "warmup":
        return cfg.weight * min(1.0, step / warmup) if warmup else cfg.weight
    return warmup_cosine(
        step, peak=cfg.weight, total_steps=total_steps, warmup_steps=warmup, end=cfg.final_weight
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rate(
    rate_loss: CodingRateLoss, shape: tuple[int, ...], device: torch.device, repeats: int = 3
) -> float:
    """Median seconds of one forward + backward of the rate on a fresh leaf of ``shape`` (collectives included
    under DDP): the rate's own cost, as its backward does not depend on the graph upstream. Keeps the RNG."""
    generator = torch.Generator(device).manual_seed(0)
    z = torch.randn(shape, device=device, generator=generator).requires_grad_(True)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        synchronize(device)
        start = time.perf_counter()
        rate_loss(z).backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
        z.grad = None
    return sorted(times[1:])[repeats // 2]
