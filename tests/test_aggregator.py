"""Tests for TransformerLayer and SeqAggregator."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from jepa_rate.modules import SeqAggregator, TransformerLayer

F64 = torch.float64
# float64 and at most a few thousand flops per output: round-off ~1e-14. 1e-10 leaves margin and still
# catches any structural error (a wrong mask, norm placement or head split changes outputs by O(1)).
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _small(**kwargs: object) -> SeqAggregator:
    torch.manual_seed(0)
    defaults: dict[str, object] = {"d_model": 16, "num_layers": 2, "num_heads": 4, "dim_feedforward": 24}
    defaults.update(kwargs)
    agg = SeqAggregator(**defaults).double()  # type: ignore[arg-type]
    # The [AGG] token starts at zero (upstream); give it a value so the tests exercise it.
    with torch.no_grad():
        agg.agg_token.normal_()
    return agg.eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_matches_torch_transformer_encoder_layer(norm_first: bool) -> None:
    torch.manual_seed(0)
    ours = TransformerLayer(16, 4, 32, dropout=0.0, norm_first=norm_first).double().eval()
    ref = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    ref = ref.double().eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(torch.randn(48, dtype=F64))
        ours.qkv.bias.copy_(ref.self_attn.in_proj_bias)
        ref.self_attn.out_proj.weight.copy_(ours.out_proj.weight)
        ref.self_attn.out_proj.bias.copy_(torch.randn(16, dtype=F64))
        ours.out_proj.bias.copy_(ref.self_attn.out_proj.bias)
        for name in ("linear1", "linear2", "norm1", "norm2"):
            getattr(ref, name).load_state_dict(getattr(ours, name).state_dict())
    x = _randn(3, 5, 16, seed=1)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    assert_close(ours(x), ref(x), **TIGHT)
    assert_close(ours(x, (~pad)[:, None, None, :]), ref(x, src_key_padding_mask=pad), **TIGHT)


def test_parameter_count_matches_torch_layer() -> None:
    ours = TransformerLayer(640, 4, 2560)
    ref = nn.TransformerEncoderLayer(640, 4, 2560, batch_first=True)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    agg = SeqAggregator()  # upstream defaults: d_model 640, 3 layers, 4 heads, feed-forward 2560
    assert sum(p.numel() for p in agg.layers.parameters()) == 14_770_560
    assert agg.pos_embed is None and torch.equal(agg.agg_token, torch.zeros(1, 1, 640))
    assert all(not layer.norm_first and layer.dropout_p == 0.1 for layer in agg.layers)  # type: ignore[union-attr]


def test_layers_are_initialised_independently() -> None:
    agg = SeqAggregator(d_model=32, num_layers=3, num_heads=4)
    for a, b in itertools.combinations(agg.layers, 2):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
            if name.endswith("weight") and "norm" not in name:
                assert not torch.equal(pa, pb), f"{name} is identical in two layers"


def test_output_shapes_and_dtypes() -> None:
    agg = SeqAggregator(d_model=16, num_layers=1, num_heads=2)
    out = agg(torch.randn(4, 6, 12), torch.randn(4, 6, 4))
    assert out.agg.shape == (4, 16) and out.tokens.shape == (4, 6, 16)
    assert out.agg.dtype == torch.float32
    out64 = agg.double()(_randn(2, 3, 16, seed=0))
    assert out64.agg.dtype == F64


@pytest.mark.parametrize("options", [{}, {"norm_first": True}, {"max_len": 8}, {"final_norm": False}])
def test_padding_does_not_change_the_result(options: dict[str, object]) -> None:
    agg = _small(**options)
    lengths = [6, 2, 4, 1]
    x = _randn(4, 6, 16, seed=2)
    mask = torch.tensor([[t >= n for t in range(6)] for n in lengths])
    garbage = torch.where(mask[..., None], 1e3 * _randn(4, 6, 16, seed=3), x)
    padded = agg(x, key_padding_mask=mask)
    padded_garbage = agg(garbage, key_padding_mask=mask)
    assert_close(padded.agg, padded_garbage.agg, **TIGHT)
    for b, n in enumerate(lengths):
        alone = agg(x[b : b + 1, :n])
        assert_close(padded.agg[b], alone.agg[0], **TIGHT)
        assert_close(padded.tokens[b, :n], alone.tokens[0], **TIGHT)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("options", [{}, {"max_len": 8}, {"norm_first": True, "dropout": 0.0, "train": True}])
def test_non_finite_padding_changes_neither_values_nor_gradients(
    bad: float, options: dict[str, object]
) -> None:
    # A padded slot gets attention weight 0, and 0 * NaN = NaN: a buffer from torch.empty must not poison
    # its row. The reference holds finite garbage in the same slots.
    train = bool(options.pop("train", False))
    agg = _small(**options).train(train)
    x, cond = _randn(3, 5, 12, seed=5), _randn(3, 5, 4, seed=6)
    mask = torch.tensor([[False] * 2 + [True] * 3, [False] * 5, [False] * 4 + [True]])
    results = []
    for fill in (bad, 7.0):
        xs = x.masked_fill(mask[..., None], fill).requires_grad_(True)
        cs = cond.masked_fill(mask[..., None], fill).requires_grad_(True)
        agg.zero_grad()
        out = agg(xs, cs, key_padding_mask=mask)
        valid_tokens = out.tokens[~mask]
        (out.agg.square().sum() + valid_tokens.sin().sum()).backward()
        grads = [xs.grad, cs.grad, *(p.grad for p in agg.parameters())]
        results.append((out.agg, valid_tokens, grads))
    (agg_bad, tok_bad, grads_bad), (agg_ref, tok_ref, grads_ref) = results
    assert bool(agg_bad.isfinite().all()) and bool(tok_bad.isfinite().all())
    assert_close(agg_bad, agg_ref, **TIGHT)
    assert_close(tok_bad, tok_ref, **TIGHT)
    for got, want in zip(grads_bad, grads_ref, strict=True):
        assert got is not None and want is not None and bool(got.isfinite().all())
        assert_close(got, want, **TIGHT)
    assert torch.equal(grads_bad[0][mask], torch.zeros_like(grads_bad[0][mask]))


def test_without_positions_agg_is_permutation_invariant() -> None:
    agg = _small()
    x = _randn(2, 5, 16, seed=4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, out_perm = agg(x), agg(x[:, perm])
    assert_close(out.agg, out_perm.agg, **TIGHT)
    assert_close(out.tokens[:, perm], out_perm.tokens, **TIGHT)
    with_pos = _small(max_len=5)
    assert not torch.allclose(with_pos(x).agg, with_pos(x[:, perm]).agg)


def test_gradients_reach_every_parameter() -> None:
    agg = SeqAggregator(d_model=16, num_layers=2, num_heads=4, max_len=4)
    out = agg(torch.randn(3, 4, 16))
    (out.agg.square().sum() + out.tokens.sum()).backward()
    missing = [n for n, p in agg.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"


def test_dropout_only_in_training() -> None:
    agg = SeqAggregator(d_model=16, num_layers=1, num_heads=2, dropout=0.5)
    x = torch.randn(2, 3, 16)
    agg.eval()
    assert torch.equal(agg(x).agg, agg(x).agg)
    agg.train()
    assert not torch.equal(agg(x).agg, agg(x).agg)


def test_compile_fullgraph() -> None:
    agg = _small(max_len=6)
    x = _randn(3, 6, 12, seed=5)
    cond = _randn(3, 6, 4, seed=6)
    mask = torch.tensor([[False] * 6, [False] * 2 + [True] * 4, [False] * 5 + [True]])
    compiled = torch.compile(agg, fullgraph=True, backend="eager")
    eager, comp = agg(x, cond, key_padding_mask=mask), compiled(x, cond, key_padding_mask=mask)
    assert_close(comp.agg, eager.agg, **TIGHT)
    assert_close(comp.tokens, eager.tokens, **TIGHT)


def test_validation() -> None:
    with pytest.raises(ValueError, match="d_model=10, num_heads=4"):
        SeqAggregator(d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="num_layers"):
        SeqAggregator(d_model=8, num_layers=0, num_heads=2)
    with pytest.raises(ValueError, match="dropout"):
        SeqAggregator(d_model=8, num_heads=2, dropout=1.5)
    with pytest.raises(ValueError, match="activation"):
        SeqAggregator(d_model=8, num_heads=2, activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="norm_first must be a bool, got str"):
        SeqAggregator(d_model=8, num_heads=2, norm_first="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layer_norm_eps must be a finite number > 0, got -1\.0"):
        TransformerLayer(d_model=8, num_heads=2, dim_feedforward=16, layer_norm_eps=-1.0)
    layer = TransformerLayer(d_model=8, num_heads=2, dim_feedforward=16)
    with pytest.raises(ValueError, match=r"d_model=8, got \(3, 8\)"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"d_model=8, got \(2, 3, 6\)"):
        layer(torch.randn(2, 3, 6))
    agg = SeqAggregator(d_model=8, num_layers=1, num_heads=2, max_len=3)
    with pytest.raises(ValueError, match="d_model=8, got 7"):
        agg(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="max_len=3"):
        agg(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"cond must have shape"):
        agg(torch.randn(2, 3, 4), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match=r"\(B, N, d\)"):
        agg(torch.randn(3, 8))
    with pytest.raises(TypeError, match="bool"):
        agg(torch.randn(2, 3, 8), key_padding_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        agg(torch.randn(2, 3, 8), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
