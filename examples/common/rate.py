"""The coding-rate regularizer of the example trainers: settings, weight schedule, logging and timing.

The loss is :class:`jepa_rate.CodingRateLoss` (its own ``weight`` stays 1; the trainers multiply by the
scheduled weight). The defaults are the seq-JEPA "Step 2" regularizer ``logdet(I + alpha C)`` with
``C = Z_cᵀZ_c / n`` and ``alpha = 1``: ``alpha=1, center=True`` here, where ``R = 1/2 logdet(I + C)``, so a
published weight ``lambda`` on the logdet is ``weight = 2 * lambda`` on ``R``.

**Share of step time in the coding rate** (:func:`time_rate`): every ``timing_every`` steps the trainers
time one forward + backward of the rate on a fresh leaf tensor of the shape the rate saw in that step
(``(n, d)``; under DDP with the global rate every rank does it at once, collectives included), with the
device synchronized around it, and divide by the synchronized wall time of that training step. Because the
backward of the rate does not depend on the graph upstream of ``Z``, this isolates exactly the rate's own
cost; the timing itself is excluded from the step time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from jepa_rate import (
    CodingRateComponents,
    CodingRateLoss,
    ConstantSchedule,
    LinearSchedule,
    Schedule,
    WarmupCosineSchedule,
)

__all__ = ["MonitoredRate", "RateConfig", "rate_schedule", "synchronize", "time_rate"]


@dataclass(frozen=True)
class RateConfig:
    """Coding-rate settings; nest it in a trainer config as ``rate``.

    Args:
        weight: Weight of ``-R`` in the loss (after any warmup), >= 0.
        schedule: ``"constant"``; ``"warmup"`` (linear from 0 to ``weight`` over ``warmup_epochs``, then
            constant); or ``"warmup_cosine"`` (linear warmup, then half-cosine to ``final_weight``).
        warmup_epochs: Warmup length in epochs (fractions allowed).
        final_weight: End value of ``"warmup_cosine"``.
        eps: ``eps`` of :func:`jepa_rate.coding_rate` (as eps²), > 0; exclusive with ``alpha``.
        alpha: Scale ``a = alpha / n``, > 0; exclusive with ``eps``.
        center: Subtract the batch mean (the global mean under DDP) first.
        normalize: L2-normalize each row first.
    """

    weight: float = 0.06
    schedule: Literal["constant", "warmup", "warmup_cosine"] = "constant"
    warmup_epochs: float = 0.0
    final_weight: float = 0.0
    eps: float | None = None
    alpha: float | None = 1.0
    center: bool = True
    normalize: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "warmup_epochs", "final_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"rate.{name} must be a finite number >= 0, got {value!r}")
        if (self.eps is None) == (self.alpha is None):
            raise ValueError(
                f"set exactly one of rate.eps and rate.alpha, got eps={self.eps}, alpha={self.alpha}"
            )
        for name in ("eps", "alpha"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"rate.{name} must be a finite number > 0, got {value!r}")

    def loss(self, *, gather_distributed: bool = False) -> MonitoredRate:
        """The monitored :class:`jepa_rate.CodingRateLoss` with these settings (weight 1)."""
        return MonitoredRate(
            CodingRateLoss(
                eps=self.eps, alpha=self.alpha, center=self.center, normalize=self.normalize,
                gather_distributed=gather_distributed,
            )
        )  # fmt: skip


def rate_schedule(cfg: RateConfig, total_steps: int, steps_per_epoch: int) -> Schedule:
    """The rate weight as a function of the global step.

    Examples:
        >>> weight = rate_schedule(RateConfig(weight=0.1, schedule="warmup", warmup_epochs=1), 10, 4)
        >>> [round(weight(k), 3) for k in (0, 2, 4, 9)]
        [0.0, 0.05, 0.1, 0.1]
    """
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    if cfg.schedule == "constant" or cfg.weight == 0:
        return ConstantSchedule(cfg.weight)
    if cfg.schedule == "warmup":
        return LinearSchedule(start=0.0, end=cfg.weight, total_steps=warmup)
    return WarmupCosineSchedule(
        peak=cfg.weight, total_steps=total_steps, warmup_steps=warmup, end=cfg.final_weight
    )


class MonitoredRate(nn.Module):
    """A :class:`jepa_rate.CodingRateLoss` that keeps the terms of its last training evaluation for logging.

    In training mode ``forward`` evaluates the loss once with ``forward_components`` and stores the
    (detached) rate, normalized rate, scale ``a`` and fallback count in :attr:`last`, and the input shape in
    :attr:`last_shape` (what :func:`time_rate` replays). In eval mode it returns a zero loss without
    computing anything: the rate is a training signal, and skipping it keeps a rank-0-only evaluation free of
    the collectives of a global (``gather_distributed``) rate.

    Args:
        loss: The coding-rate loss; its ``weight`` should stay 1.

    Examples:
        >>> rate = MonitoredRate(CodingRateLoss(alpha=1.0, center=True))
        >>> loss = rate(torch.randn(64, 16))
        >>> bool(loss == -rate.last.rate), rate.last_shape, float(rate.last.scale)
        (True, (64, 16), 0.015625)
    """

    def __init__(self, loss: CodingRateLoss) -> None:
        super().__init__()
        self.loss = loss
        self.last: CodingRateComponents | None = None
        self.last_shape: tuple[int, ...] | None = None

    def forward(self, z: Tensor) -> Tensor:
        """``-R(z)`` (times the wrapped loss's weight) in training mode; a zero in eval mode."""
        if not self.training:
            return z.new_zeros((), dtype=torch.float32)
        parts = self.loss.forward_components(z)
        self.last = CodingRateComponents(*(t.detach() for t in parts))
        self.last_shape = tuple(z.shape)
        return parts.loss

    @torch.no_grad()
    def observe(self, z: Tensor) -> CodingRateComponents:
        """Computes and stores the terms for ``z`` without a graph (to log the rate of runs that do not
        train with it)."""
        parts = self.loss.forward_components(z.detach())
        self.last = CodingRateComponents(*(t.detach() for t in parts))
        self.last_shape = tuple(z.shape)
        return self.last


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rate(rate: MonitoredRate, device: torch.device, repeats: int = 3) -> float:
    """Seconds per forward + backward of ``rate.loss`` on a leaf of ``rate.last_shape`` (see the module docs).

    Args:
        rate: The monitored loss, after at least one evaluation.
        device: Where to time it (the training device).
        repeats: Timed repetitions after one warm-up; the median is returned.

    Raises:
        ValueError: ``rate`` has not been evaluated yet.
    """
    if rate.last_shape is None:
        raise ValueError("time_rate needs a rate that has been evaluated at least once (last_shape is None)")
    # A private generator: timing must not shift the training RNG stream.
    generator = torch.Generator(device).manual_seed(0)
    z = torch.randn(rate.last_shape, device=device, generator=generator).requires_grad_(True)
    times = []
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        rate.loss(z).backward()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
        z.grad = None
    return sorted(times)[len(times) // 2]
