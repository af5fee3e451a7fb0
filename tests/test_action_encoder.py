"""Tests for ActionEncoder and relative_actions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close

from jepa_rate.modules import ActionEncoder, relative_actions

F64 = torch.float64
# Everything is float64 and a few dozen flops per entry: round-off ~1e-15, so 1e-12 catches any real error.
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _reference_embed(enc: ActionEncoder, rel: Tensor) -> Tensor:
    """Linear then batch norm with biased batch variance, written out, over the rows of ``rel`` (n, A)."""
    x = rel @ enc.proj.weight.T
    mean = x.mean(dim=0)
    var = x.var(dim=0, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), steps=st.integers(2, 6), dim=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_relative_actions_are_consecutive_differences(batch: int, steps: int, dim: int, seed: int) -> None:
    a = _randn(batch, steps, dim, seed=seed)
    rel = relative_actions(a)
    assert rel.shape == (batch, steps - 1, dim)
    for t in range(steps - 1):
        assert_close(rel[:, t], a[:, t + 1] - a[:, t], **TIGHT)


def test_upstream_layout_and_values() -> None:
    torch.manual_seed(0)
    enc = ActionEncoder(action_dim=3, embed_dim=6).double()
    assert enc.proj.bias is None
    assert isinstance(enc.norm, torch.nn.BatchNorm1d) and not enc.norm.affine
    actions = _randn(5, 4, 3, seed=1)
    out = enc(actions)
    assert out.tokens.shape == (5, 3, 6) and out.next.shape == (5, 6)
    assert out.tokens.dtype == F64 and out.next.dtype == F64
    rel = relative_actions(actions)
    expected = _reference_embed(enc, rel.reshape(-1, 3)).reshape(5, 3, 6)
    assert_close(out.tokens[:, :-1], expected[:, :-1], **TIGHT)
    assert torch.equal(out.tokens[:, -1], torch.zeros(5, 6, dtype=F64))
    assert_close(out.next, expected[:, -1], **TIGHT)


def test_relative_input_matches_absolute_input() -> None:
    torch.manual_seed(0)
    absolute = ActionEncoder(action_dim=2, embed_dim=4).double()
    relative = ActionEncoder(action_dim=2, embed_dim=4, relative_input=True).double()
    relative.load_state_dict(absolute.state_dict())
    actions = _randn(6, 5, 2, seed=2)
    a, r = absolute(actions), relative(relative_actions(actions))
    assert_close(a.tokens, r.tokens, **TIGHT)
    assert_close(a.next, r.next, **TIGHT)


def test_two_views_have_only_the_query_action() -> None:
    enc = ActionEncoder(action_dim=2, embed_dim=4)
    out = enc(torch.randn(8, 2, 2))
    assert out.tokens.shape == (8, 1, 4)
    assert torch.equal(out.tokens, torch.zeros_like(out.tokens))
    assert out.next.abs().sum() > 0


def test_padding_excluded_from_statistics_and_output() -> None:
    # All rows have 3 valid views out of 5: the result must equal the unpadded 3-view batch, whatever the
    # padded actions hold.
    torch.manual_seed(0)
    enc = ActionEncoder(action_dim=3, embed_dim=4).double()
    valid = _randn(6, 3, 3, seed=3)
    mask = torch.tensor([[False] * 3 + [True] * 2] * 6)
    outs = []
    for seed in (4, 5):
        padded = torch.cat([valid, 1e3 * _randn(6, 2, 3, seed=seed)], dim=1)
        outs.append(enc(padded, padding_mask=mask))
    ref = enc(valid)
    for out in outs:
        assert_close(out.tokens[:, :2], ref.tokens, **TIGHT)
        assert torch.equal(out.tokens[:, 2:], torch.zeros(6, 2, 4, dtype=F64))
        assert_close(out.next, ref.next, **TIGHT)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("relative", [False, True])
def test_non_finite_padding_changes_neither_values_nor_gradients(bad: float, relative: bool) -> None:
    # Padded slots of a buffer from torch.empty may hold NaN / Inf: they must not reach the outputs or the
    # projection's gradient (0 * NaN = NaN in the weight gradient if they were projected).
    torch.manual_seed(0)
    enc = ActionEncoder(action_dim=3, embed_dim=4, relative_input=relative, bias=True).double()
    lengths = [5, 2, 4, 3]
    mask = torch.tensor([[t >= n for t in range(5)] for n in lengths])
    slots = mask[:, 1:] if relative else mask
    actions = _randn(4, 4 if relative else 5, 3, seed=7)
    results = []
    for fill in (bad, 3.0):
        enc.zero_grad()
        inputs = actions.masked_fill(slots[..., None], fill).requires_grad_(True)
        out = enc(inputs, padding_mask=mask)
        (out.tokens.sin().sum() + out.next.square().sum()).backward()
        results.append((out.tokens, out.next, inputs.grad, enc.proj.weight.grad, enc.proj.bias.grad))
    for got, want in zip(*results, strict=True):
        assert got is not None and want is not None and bool(got.isfinite().all())
        assert_close(got, want, **TIGHT)


def test_variable_lengths_pick_the_right_query() -> None:
    torch.manual_seed(0)
    enc = ActionEncoder(action_dim=2, embed_dim=3, norm="none").double()
    actions = _randn(3, 5, 2, seed=6)
    lengths = [5, 2, 4]
    mask = torch.tensor([[t >= n for t in range(5)] for n in lengths])
    out = enc(actions, padding_mask=mask)
    for b, n in enumerate(lengths):
        rel = relative_actions(actions[b, :n])
        emb = rel @ enc.proj.weight.T
        assert_close(out.next[b], emb[-1], **TIGHT)
        assert_close(out.tokens[b, : n - 2], emb[:-1], **TIGHT)
        assert torch.equal(out.tokens[b, n - 2 :], torch.zeros(4 - (n - 2), 3, dtype=F64))


def test_layer_norm_option_and_gradients() -> None:
    enc = ActionEncoder(action_dim=2, embed_dim=8, norm="layer", bias=True)
    out = enc(torch.randn(4, 3, 2))
    assert_close(out.next.mean(dim=-1), torch.zeros(4), atol=1e-6, rtol=0)
    (out.tokens.sum() + out.next.square().sum()).backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"action_dim": 0}, ValueError, "action_dim"),
        ({"action_dim": 2, "embed_dim": 2.0}, TypeError, "embed_dim"),
        ({"action_dim": 2, "norm": "group"}, ValueError, "norm"),
        ({"action_dim": 2, "relative_input": "no"}, TypeError, "relative_input must be a bool, got str"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ActionEncoder(**kwargs)  # type: ignore[arg-type]


def test_forward_validation() -> None:
    enc = ActionEncoder(action_dim=2, embed_dim=4)
    with pytest.raises(ValueError, match=r"\(4, 3, 5\)"):
        enc(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match="at least 2 views"):
        enc(torch.randn(4, 1, 2))
    with pytest.raises(TypeError, match=r"floating torch\.Tensor, got dtype torch\.int64"):
        enc(torch.ones(4, 3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="bool"):
        enc(torch.randn(4, 3, 2), padding_mask=torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        enc(torch.randn(4, 3, 2), padding_mask=torch.zeros(4, 2, dtype=torch.bool))
    not_prefix = torch.tensor([[False, True, False]] + [[False] * 3] * 3)
    with pytest.raises(ValueError, match="row 0 must be right-padded"):
        enc(torch.randn(4, 3, 2), padding_mask=not_prefix)
    too_short = torch.tensor([[False, True, True]] + [[False] * 3] * 3)
    with pytest.raises(ValueError, match="at least 2 valid"):
        enc(torch.randn(4, 3, 2), padding_mask=too_short)
    with pytest.raises(ValueError, match="T >= 2"):
        relative_actions(torch.randn(3, 1, 2))
