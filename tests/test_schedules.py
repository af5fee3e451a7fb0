"""Tests for the pure ``step -> value`` schedules."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jepa_rate.schedules import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    WarmupCosineSchedule,
    as_schedule,
    cosine_ramp,
    linear_ramp,
    warmup_cosine,
)

# Every value below is a handful of float64 operations on numbers of order 1: 1e-12 is far above the
# rounding (~1e-15) and far below any formula error (a wrong phase or end point moves values by >= 1e-4).
TOL = 1e-12


def _byol_tau(k: int, total: int, tau0: float = 0.996) -> float:
    """BYOL, eq. after (3): tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2."""
    return 1.0 - (1.0 - tau0) * (math.cos(math.pi * k / total) + 1.0) / 2.0


@pytest.mark.parametrize("total", [1, 7, 100])
def test_cosine_schedule_is_byol_ema_ramp(total: int) -> None:
    sched = CosineSchedule(total_steps=total)
    for k in range(total + 3):
        expected = _byol_tau(min(k, total), total)
        assert sched(k) == pytest.approx(expected, abs=TOL), f"step {k}"


def test_cosine_endpoints_and_clamping() -> None:
    assert cosine_ramp(0, start=0.2, end=0.8, total_steps=10) == pytest.approx(0.2, abs=TOL)
    assert cosine_ramp(10, start=0.2, end=0.8, total_steps=10) == 0.8
    assert cosine_ramp(10_000, start=0.2, end=0.8, total_steps=10) == 0.8
    assert cosine_ramp(-5, start=0.2, end=0.8, total_steps=10) == pytest.approx(0.2, abs=TOL)
    assert cosine_ramp(3, start=0.2, end=0.8, total_steps=0) == 0.8


def test_linear_ramp_values() -> None:
    for k in range(12):
        expected = 1.0 + (3.0 - 1.0) * min(k, 8) / 8
        assert linear_ramp(k, start=1.0, end=3.0, total_steps=8) == pytest.approx(expected, abs=TOL)
    assert LinearSchedule(start=1.0, end=3.0, total_steps=8)(4) == pytest.approx(2.0, abs=TOL)


def test_warmup_cosine_pieces() -> None:
    peak, warmup, total, start, end = 2.0, 4, 12, 0.5, 0.1
    sched = WarmupCosineSchedule(peak=peak, warmup_steps=warmup, total_steps=total, start=start, end=end)
    for k in range(total + 2):
        if k < warmup:
            expected = start + (peak - start) * k / warmup
        elif k <= total:
            expected = end + (peak - end) * (math.cos(math.pi * (k - warmup) / (total - warmup)) + 1) / 2
        else:
            expected = end
        assert sched(k) == pytest.approx(expected, abs=TOL), f"step {k}"


def test_warmup_without_warmup_is_cosine() -> None:
    for k in range(11):
        assert warmup_cosine(k, peak=1.0, total_steps=10) == pytest.approx(
            cosine_ramp(k, start=1.0, end=0.0, total_steps=10), abs=TOL
        )


@settings(max_examples=50, deadline=None)
@given(
    total=st.integers(min_value=1, max_value=10_000),
    start=st.floats(min_value=-10, max_value=10),
    end=st.floats(min_value=-10, max_value=10),
)
def test_ramps_are_monotone_and_bounded(total: int, start: float, end: float) -> None:
    lo, hi = min(start, end), max(start, end)
    steps = sorted({0, 1, total // 3, total // 2, total - 1, total, total + 1})
    for ramp in (cosine_ramp, linear_ramp):
        values = [ramp(k, start=start, end=end, total_steps=total) for k in steps]
        assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in values), values
        diffs = [b - a for a, b in itertools.pairwise(values)]
        sign = 1.0 if end >= start else -1.0
        assert all(sign * dv >= -1e-9 for dv in diffs), values


def test_schedules_are_pure() -> None:
    sched = WarmupCosineSchedule(peak=1.0, warmup_steps=3, total_steps=20)
    first = [sched(k) for k in range(25)]
    shuffled = {k: sched(k) for k in reversed(range(25))}
    assert first == [shuffled[k] for k in range(25)]


def test_constant_and_as_schedule() -> None:
    assert ConstantSchedule(0.3)(0) == 0.3
    assert ConstantSchedule(0.3)(10**9) == 0.3
    sched = CosineSchedule(total_steps=5)
    assert as_schedule(sched) is sched
    assert as_schedule(0.7)(123) == 0.7


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: cosine_ramp(1, start=0.0, end=1.0, total_steps=-1), ValueError, "total_steps"),
        (lambda: cosine_ramp(1.5, start=0.0, end=1.0, total_steps=3), TypeError, "step"),  # type: ignore[arg-type]
        (lambda: linear_ramp(1, start=float("nan"), end=1.0, total_steps=3), ValueError, "start"),
        (lambda: warmup_cosine(1, peak=1.0, total_steps=2, warmup_steps=5), ValueError, "warmup_steps=5"),
        (lambda: CosineSchedule(total_steps=2.0), TypeError, "total_steps"),  # type: ignore[arg-type]
        (lambda: ConstantSchedule("a"), TypeError, "value"),  # type: ignore[arg-type]
        (lambda: as_schedule(None), TypeError, "value"),  # type: ignore[arg-type]
        # Each end is checked when the schedule is built, not when a step first reaches its branch.
        (lambda: WarmupCosineSchedule(1.0, 9, warmup_steps=2, end=math.nan), ValueError, "end"),
        (lambda: WarmupCosineSchedule(peak=1.0, total_steps=9, start=math.nan), ValueError, "start"),
    ],
)
def test_validation(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_numpy_scalars_and_overflow() -> None:
    np = pytest.importorskip("numpy")
    assert ConstantSchedule(np.float32(0.5))(3) == 0.5
    assert linear_ramp(5, start=np.float64(0.0), end=1.0, total_steps=np.int64(10)) == 0.5
    with pytest.raises(ValueError, match="start must be a finite number"):
        linear_ramp(3, start=10**400, end=1.0, total_steps=10)
    # A schedule checks its settings once and keeps them as plain Python numbers.
    sched = CosineSchedule(total_steps=np.int64(10), start=np.float32(0.5))
    assert type(sched.total_steps) is int and type(sched.start) is float
    assert sched(5) == cosine_ramp(5, start=0.5, end=1.0, total_steps=10)
    warm = WarmupCosineSchedule(peak=np.float64(1.0), total_steps=np.int32(6), warmup_steps=np.int64(2))
    assert type(warm.warmup_steps) is int and type(warm.peak) is float
    assert [warm(k) for k in range(8)] == [
        warmup_cosine(k, peak=1.0, total_steps=6, warmup_steps=2) for k in range(8)
    ]
