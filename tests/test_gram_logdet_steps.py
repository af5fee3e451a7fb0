"""The kernel's forward steps (``jepa_rate.numerics._steps``), each run alone: the series, the factor, the
CPU float64 redo (the precision policy) and the choice of the value."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from jepa_rate.numerics import _host, _steps
from jepa_rate.numerics.gram_logdet import series_below
from reference import rate_reference


def _gram(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _steps.form_gram(x, scale, False, "local", None, gram_in_float64=False, orthogonal=False)[::2]


def test_series_branch_applies_below_its_limit_only() -> None:
    x = torch.randn(2, 64, 16, dtype=torch.float64)
    x[0] *= 1e-4
    matrix, trace = _gram(x, 0.1)
    series = _steps.series_branch(matrix, None, trace, series_below(16, torch.float64))
    assert series.use.tolist() == [True, False]
    assert_close(series.value[0], rate_reference(x[0], 0.1), rtol=1e-9, atol=0)
    assert float(series.error[0]) >= 0 > float(series.error[1])


def test_cholesky_factor_marks_a_failed_set_and_gives_it_value_zero() -> None:
    matrix = torch.stack([torch.eye(3), -2 * torch.eye(3)])  # I + matrix: definite, then indefinite
    factor = _steps.cholesky_factor(matrix, known_regular=False)
    assert factor.failed is not None and factor.failed.tolist() == [False, True]
    assert_close(factor.logdet, torch.tensor([1.5 * math.log(2.0), 0.0]))
    regular = _steps.cholesky_factor(torch.eye(3), known_regular=True)
    assert regular.failed is None and not regular.may_have_failed


def test_qr_factor_gives_the_log_determinant() -> None:
    x = torch.randn(40, 12, dtype=torch.float64)
    for n_side in (False, True):
        assert_close(_steps.qr_factor(x, 0.3, n_side).logdet, rate_reference(x, 0.3), rtol=1e-12, atol=0)


def _redo(x: torch.Tensor, scale: float) -> tuple[_steps.Factor, torch.Tensor | None]:
    matrix, trace = _gram(x, scale)
    factor = _steps.cholesky_factor(matrix, known_regular=True)
    return _steps.redo_inaccurate_float32(
        x, scale, False, "local", factor, None, trace, _host.trace_bounds(trace)
    )


def test_cpu_precision_policy_redoes_an_inaccurate_float32_set_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    collapsed = (torch.rand(1, 512, generator=g) * 6 - 3).expand(256, 512) + 1e-3 * torch.randn(
        256, 512, generator=g
    )
    scale = 512 / (256 * 0.5)  # q ~ 2e-2: beyond the contract, rank one
    factor, inverse = _redo(collapsed, scale)
    assert factor.float64 and factor.chol.dtype == torch.float64 and inverse is None
    assert factor.logdet.dtype == torch.float32
    assert_close(factor.logdet.double(), rate_reference(collapsed, scale), rtol=1e-6, atol=0)


def test_cpu_precision_policy_keeps_an_accurate_float32_factor() -> None:
    x = torch.randn(256, 32)
    matrix, trace = _gram(x, 0.1)
    factor = _steps.cholesky_factor(matrix, known_regular=True)
    kept, _ = _steps.redo_inaccurate_float32(
        x, 0.1, False, "local", factor, None, trace, _host.trace_bounds(trace)
    )
    assert kept is factor and not kept.float64


def test_select_value_prefers_the_float64_factor_and_propagates_nan() -> None:
    trace = torch.tensor([1e-3, math.inf])
    logdet = torch.tensor([1.0, 2.0])
    series = _steps.Series(torch.tensor([True, False]), torch.tensor([5.0, 6.0]), torch.tensor([0.0, -1.0]))
    factor = _steps.Factor(torch.eye(2).expand(2, 2, 2), torch.zeros(2, dtype=torch.int32), None, logdet)
    value, probe = _steps.select_value(factor, series, trace)
    assert value[0] == 5.0 and bool(value[1].isnan()) and probe is not None
    redone = factor._replace(logdet=logdet.clone(), float64=True)
    assert _steps.select_value(redone, series, trace)[0][0] == 1.0
    assert _steps.select_value(factor, None, trace) == (logdet, None)
