"""Pure ``step -> value`` schedules for EMA decays and loss weights.

Every schedule is a pure function of the global optimisation step: it holds no state, so resuming a run only
needs the step counter, and two processes that agree on the step agree on the value. Each schedule exists as
a plain function (``cosine_ramp(step, ...)``) and as a small frozen dataclass that is callable with the step
alone, which is what :class:`~jepa_rate.modules.EMATarget` and training loops take.

Steps before ``0`` are treated as ``0`` and steps past the end of a ramp hold its final value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from jepa_rate._validation import check_int, finite_real

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "Schedule",
    "WarmupCosineSchedule",
    "as_schedule",
    "cosine_ramp",
    "linear_ramp",
    "warmup_cosine",
]

Schedule: TypeAlias = Callable[[int], float]
"""Any callable mapping a global step (``int``) to a value (``float``)."""


def _check_count(value: object, name: str, minimum: int | None) -> int:
    # Steps are counters: NumPy and tensor integers (anything with __index__ but a bool) count as ints.
    if not isinstance(value, (bool, int)) and hasattr(value, "__index__"):
        value = value.__index__()
    return check_int(value, name, minimum=minimum)


def _check_step(step: object) -> int:
    # Negative steps count as 0.
    return max(_check_count(step, "step", minimum=None), 0)


# The unchecked ramps below take a step k >= 0 and checked settings; the public functions and the schedule
# classes check each argument once where the user passes it and then call them.
def _linear(k: int, start: float, end: float, total: int) -> float:
    return end if k >= total else start + (end - start) * k / total


def _cosine(k: int, start: float, end: float, total: int) -> float:
    return end if k >= total else end - (end - start) * (math.cos(math.pi * k / total) + 1.0) / 2.0


def _warmup_cosine(k: int, peak: float, total: int, warmup: int, start: float, end: float) -> float:
    if k < warmup:
        return _linear(k, start, peak, warmup)
    return _cosine(k - warmup, peak, end, total - warmup)


def _ramp_settings(start: object, end: object, total_steps: object) -> tuple[float, float, int]:
    total = _check_count(total_steps, "total_steps", minimum=0)
    return finite_real(start, "start"), finite_real(end, "end"), total


def _warmup_cosine_settings(
    peak: object, total_steps: object, warmup_steps: object, start: object, end: object
) -> tuple[float, int, int, float, float]:
    warmup = _check_count(warmup_steps, "warmup_steps", minimum=0)
    total = _check_count(total_steps, "total_steps", minimum=0)
    if total < warmup:
        raise ValueError(
            f"total_steps must be >= warmup_steps, got total_steps={total}, warmup_steps={warmup}"
        )
    # Both ends are checked, not only the one a step's branch reads: a NaN ``end`` must not wait until the
    # warmup is over to surface.
    return finite_real(peak, "peak"), total, warmup, finite_real(start, "start"), finite_real(end, "end")


def linear_ramp(step: int, *, start: float, end: float, total_steps: int) -> float:
    """Linear interpolation from ``start`` (step 0) to ``end`` (step ``total_steps`` and after).

    Args:
        step: Global step; negative steps count as 0.
        start: Value at step 0.
        end: Value from ``total_steps`` on.
        total_steps: Length of the ramp, ``>= 0`` (``0`` jumps straight to ``end``).

    Returns:
        The scheduled value.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``total_steps < 0`` or a value is not finite.

    Examples:
        >>> linear_ramp(5, start=0.0, end=1.0, total_steps=10)
        0.5
    """
    return _linear(_check_step(step), *_ramp_settings(start, end, total_steps))


def cosine_ramp(step: int, *, start: float, end: float, total_steps: int) -> float:
    """Half-cosine interpolation from ``start`` to ``end`` over ``total_steps`` steps.

    ``value(k) = end - (end - start) * (cos(pi * k / K) + 1) / 2`` for ``0 <= k <= K``, then ``end``. With
    ``start=0.996, end=1.0`` this is the BYOL EMA decay ``tau = 1 - (1 - tau0) (cos(pi k / K) + 1) / 2``.

    Args:
        step: Global step ``k``; negative steps count as 0.
        start: Value at step 0.
        end: Value from step ``total_steps`` on.
        total_steps: Length ``K`` of the ramp, ``>= 0`` (``0`` jumps straight to ``end``).

    Returns:
        The scheduled value.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``total_steps < 0`` or a value is not finite.

    Examples:
        >>> cosine_ramp(0, start=0.996, end=1.0, total_steps=100)
        0.996
        >>> cosine_ramp(50, start=0.996, end=1.0, total_steps=100)
        0.998
        >>> cosine_ramp(100, start=0.996, end=1.0, total_steps=100)
        1.0
    """
    return _cosine(_check_step(step), *_ramp_settings(start, end, total_steps))


def warmup_cosine(
    step: int,
    *,
    peak: float,
    total_steps: int,
    warmup_steps: int = 0,
    start: float = 0.0,
    end: float = 0.0,
) -> float:
    """Linear warmup from ``start`` to ``peak``, then half-cosine decay from ``peak`` to ``end``.

    The warmup covers steps ``[0, warmup_steps)``; the cosine covers ``[warmup_steps, total_steps]``; from
    ``total_steps`` on the value is ``end``. Usable for learning rates and for loss weights that should fade
    in (``start=0``) and out.

    Args:
        step: Global step; negative steps count as 0.
        peak: Value reached at the end of warmup (at step ``warmup_steps``; when that is ``total_steps``,
            the value there is ``end``, so the schedule ramps towards ``peak`` and then drops to ``end``).
        total_steps: Step at which the value reaches ``end``; must be ``>= warmup_steps``.
        warmup_steps: Length of the linear warmup, ``>= 0``.
        start: Value at step 0.
        end: Final value.

    Returns:
        The scheduled value.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``total_steps < warmup_steps``, a step count is negative or a value is not finite.

    Examples:
        >>> [round(warmup_cosine(k, peak=1.0, warmup_steps=2, total_steps=6), 3) for k in range(7)]
        [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    settings = _warmup_cosine_settings(peak, total_steps, warmup_steps, start, end)
    return _warmup_cosine(_check_step(step), *settings)


def _set_fields(schedule: object, **values: float) -> None:
    """Stores checked settings on a frozen schedule dataclass."""
    for name, value in values.items():
        object.__setattr__(schedule, name, value)


@dataclass(frozen=True)
class ConstantSchedule:
    """A schedule that always returns ``value``.

    Examples:
        >>> ConstantSchedule(0.996)(12345)
        0.996
    """

    value: float

    def __post_init__(self) -> None:
        _set_fields(self, value=finite_real(self.value, "value"))

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.value


@dataclass(frozen=True)
class LinearSchedule:
    """Callable form of :func:`linear_ramp`.

    Examples:
        >>> LinearSchedule(start=0.0, end=0.1, total_steps=4)(1)
        0.025
    """

    start: float
    end: float
    total_steps: int

    def __post_init__(self) -> None:
        # Checked once here, stored as plain Python numbers; each call then only checks its step.
        start, end, total = _ramp_settings(self.start, self.end, self.total_steps)
        _set_fields(self, start=start, end=end, total_steps=total)

    def __call__(self, step: int) -> float:
        return _linear(_check_step(step), self.start, self.end, self.total_steps)


@dataclass(frozen=True)
class CosineSchedule:
    """Callable form of :func:`cosine_ramp`; the default arguments give the BYOL EMA decay ramp.

    Examples:
        >>> tau = CosineSchedule(total_steps=1000)  # 0.996 -> 1.0
        >>> tau(0), tau(1000)
        (0.996, 1.0)
    """

    total_steps: int
    start: float = 0.996
    end: float = 1.0

    def __post_init__(self) -> None:
        start, end, total = _ramp_settings(self.start, self.end, self.total_steps)
        _set_fields(self, start=start, end=end, total_steps=total)

    def __call__(self, step: int) -> float:
        return _cosine(_check_step(step), self.start, self.end, self.total_steps)


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Callable form of :func:`warmup_cosine`.

    Examples:
        >>> weight = WarmupCosineSchedule(peak=0.05, warmup_steps=10, total_steps=100, end=0.01)
        >>> weight(0), weight(10), weight(100)
        (0.0, 0.05, 0.01)
    """

    peak: float
    total_steps: int
    warmup_steps: int = 0
    start: float = 0.0
    end: float = 0.0

    def __post_init__(self) -> None:
        peak, total, warmup, start, end = _warmup_cosine_settings(
            self.peak, self.total_steps, self.warmup_steps, self.start, self.end
        )
        _set_fields(self, peak=peak, total_steps=total, warmup_steps=warmup, start=start, end=end)

    def __call__(self, step: int) -> float:
        k = _check_step(step)
        return _warmup_cosine(k, self.peak, self.total_steps, self.warmup_steps, self.start, self.end)


def as_schedule(value: float | Schedule) -> Schedule:
    """Returns ``value`` unchanged if it is callable, else a :class:`ConstantSchedule` holding it.

    Args:
        value: A number or a schedule.

    Returns:
        A schedule.

    Raises:
        TypeError: If ``value`` is neither a real number nor callable.

    Examples:
        >>> as_schedule(0.5)(10)
        0.5
    """
    if callable(value):
        return value
    return ConstantSchedule(value)
