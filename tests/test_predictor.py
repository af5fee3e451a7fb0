"""Tests for ActionConditionedPredictor."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from jepa_rate.modules import ActionConditionedPredictor

F64 = torch.float64
# float64 matrix products of size <= 64: round-off ~1e-14; 1e-10 still catches a wrong layer or input order.
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_upstream_structure_and_parameter_count() -> None:
    pred = ActionConditionedPredictor()  # z_AGG 640 + action 128 -> 1024 -> 512
    layers = list(pred.mlp)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert layers[0].in_features == 768 and layers[0].out_features == 1024 and layers[0].bias is None
    assert layers[3].in_features == 1024 and layers[3].out_features == 512 and layers[3].bias is not None
    assert sum(p.numel() for p in pred.parameters()) == 1_313_280


def test_forward_matches_manual_computation() -> None:
    torch.manual_seed(0)
    pred = ActionConditionedPredictor(6, 3, 4, hidden_dim=8).double().train()
    z, a = _randn(5, 6, seed=1), _randn(5, 3, seed=2)
    lin1, bn, _, lin2 = pred.mlp
    h = torch.cat([z, a], dim=1) @ lin1.weight.T
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    expected = torch.relu(h) @ lin2.weight.T + lin2.bias
    assert_close(pred(z, a), expected, **TIGHT)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_depth_and_norm_options(norm: str, num_layers: int) -> None:
    pred = ActionConditionedPredictor(8, 2, 5, hidden_dim=16, num_layers=num_layers, norm=norm)  # type: ignore[arg-type]
    linears = [m for m in pred.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    norms = [m for m in pred.mlp if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
    assert len(norms) == (0 if norm == "none" else num_layers - 1)
    assert all((lin.bias is None) == (norm != "none") for lin in linears[:-1])
    out = pred(torch.randn(4, 8), torch.randn(4, 2))
    assert out.shape == (4, 5) and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in pred.parameters())


def test_gradients_reach_inputs() -> None:
    pred = ActionConditionedPredictor(6, 3, 4, hidden_dim=8)
    z = torch.randn(5, 6, requires_grad=True)
    a = torch.randn(5, 3, requires_grad=True)
    pred(z, a).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_unconditioned_predictor() -> None:
    pred = ActionConditionedPredictor(6, 0, 4, hidden_dim=8)
    assert pred(torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match="action_dim=0"):
        pred(torch.randn(3, 6), torch.randn(3, 2))


def test_compile_fullgraph() -> None:
    torch.manual_seed(0)
    pred = ActionConditionedPredictor(6, 3, 4, hidden_dim=8).double().eval()
    z, a = _randn(5, 6, seed=3), _randn(5, 3, seed=4)
    compiled = torch.compile(pred, fullgraph=True, backend="eager")
    assert_close(compiled(z, a), pred(z, a), **TIGHT)


def test_validation() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        ActionConditionedPredictor(4, 2, 4, num_layers=0)
    with pytest.raises(ValueError, match="norm"):
        ActionConditionedPredictor(4, 2, 4, norm="group")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hidden_dim"):
        ActionConditionedPredictor(4, 2, 4, hidden_dim=3.5)  # type: ignore[arg-type]
    pred = ActionConditionedPredictor(4, 2, 3, hidden_dim=8)
    with pytest.raises(ValueError, match=r"\(B, 4\), got \(3, 5\)"):
        pred(torch.randn(3, 5), torch.randn(3, 2))
    with pytest.raises(ValueError, match="required"):
        pred(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\(3, 2\), got \(3, 1\)"):
        pred(torch.randn(3, 4), torch.randn(3, 1))
