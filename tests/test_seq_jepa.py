"""Tests for the SeqJEPA assembly: outputs, symmetric prediction, padding, validation, prediction_loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from jepa_rate import CodingRateLoss, coding_rate
from jepa_rate.models import ConvEncoder, SeqJEPA, cifar_resnet18, prediction_loss
from jepa_rate.modules import relative_actions
from seq_jepa_setup import F64, TIGHT, FlatEncoder
from seq_jepa_setup import build_model as _model
from seq_jepa_setup import jepa_loss as _loss
from seq_jepa_setup import make_batch as _batch


def test_parameter_count_matches_upstream() -> None:
    # Counting only: build on the meta device, no memory or init cost.
    with torch.device("meta"):
        model = SeqJEPA(cifar_resnet18(), action_dim=9)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.encoder) == 11_168_832
    assert count(model.aggregator.layers) == 14_770_560
    assert count(model.predictor) == 1_313_280
    online = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # + action projection 9 x 128, [AGG] token 640, final LayerNorm 2 x 640
    assert online == 11_168_832 + 14_770_560 + 1_313_280 + 9 * 128 + 640 + 2 * 640
    assert round(online / 1e6, 2) == 27.26
    assert model.target_encoder is not None and count(model.target_encoder) == 11_168_832
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


@pytest.mark.parametrize("target", ["ema", "stopgrad"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("relative", [False, True])
def test_output_shapes_and_dtypes(target: str, symmetric: bool, relative: bool) -> None:
    model = _model(target=target, symmetric=symmetric, relative_actions=relative)
    views, actions = _batch()
    out = model(views, relative_actions(actions) if relative else actions)
    rows = 12 if symmetric else 6
    assert out._fields == ("prediction", "target", "z_agg", "encodings")
    assert out.z_agg.shape == (rows, 12) and out.encodings.shape == (6, 3, 8)
    assert out.prediction.shape == (rows, 8) and out.target.shape == (rows, 8)
    assert all(t.dtype == F64 for t in out)
    assert torch.isfinite(_loss(out)) and not out.target.requires_grad and out.prediction.requires_grad


def test_symmetric_differs_and_is_reversal_symmetric() -> None:
    views, actions = _batch(seed=1)
    enc = ConvEncoder(widths=(4, 8), out_dim=8)  # with BN: batch statistics must be symmetric too
    sym, one = _model(enc, symmetric=True), _model(enc, symmetric=False)
    one.load_state_dict(sym.state_dict())
    flipped = (views.flip(1), actions.flip(1))
    sym_loss, sym_flip = _loss(sym(views, actions)).detach(), _loss(sym(*flipped)).detach()
    one_loss, one_flip = _loss(one(views, actions)).detach(), _loss(one(*flipped)).detach()
    assert_close(sym_loss, sym_flip, **TIGHT)
    assert abs(float(one_loss - one_flip)) > 1e-3
    assert abs(float(sym_loss - one_loss)) > 1e-3


def test_symmetric_relative_actions_are_inverted() -> None:
    views, actions = _batch(seed=2)
    model = _model(symmetric=True, relative_actions=True)
    rel = relative_actions(actions)
    assert_close(_loss(model(views, rel)), _loss(model(views.flip(1), -rel.flip(1))), **TIGHT)


def test_symmetric_uses_the_given_action_inverse() -> None:
    # [sin θ, cos θ] codes: the inverse rotation is [-sin θ, cos θ], not the negation of both entries.
    views, actions = _batch(seed=3)
    angle = actions[..., 0]
    codes = torch.stack((angle.sin(), angle.cos()), dim=-1)[:, :-1]  # relative: (B, T - 1, 2)

    def inverse(a: torch.Tensor) -> torch.Tensor:
        return a * a.new_tensor([-1.0, 1.0])

    model = _model(symmetric=True, relative_actions=True, inverse_action=inverse)
    reversed_codes = inverse(codes.flip(1))
    assert_close(_loss(model(views, codes)), _loss(model(views.flip(1), reversed_codes)), **TIGHT)
    negating = _model(symmetric=True, relative_actions=True)
    assert abs(float((_loss(model(views, codes)) - _loss(negating(views, codes))).detach())) > 1e-6
    with pytest.raises(TypeError, match="inverse_action must be callable"):
        _model(symmetric=True, inverse_action=1.0)


def test_symmetric_rows_are_the_two_directions_in_eval() -> None:
    # In eval mode nothing couples the batch: the first B rows are the forward direction, the next B the
    # reversed one, so the symmetric loss is the mean of the two one-sided ones.
    views, actions = _batch(seed=3)
    for target in ("ema", "stopgrad"):
        sym = _model(symmetric=True, target=target).eval()
        one = _model(symmetric=False, target=target).eval()
        one.load_state_dict(sym.state_dict())
        out, fwd, rev = sym(views, actions), one(views, actions), one(views.flip(1), actions.flip(1))
        for field in ("prediction", "target", "z_agg"):
            expected = torch.cat((getattr(fwd, field), getattr(rev, field)))
            assert_close(getattr(out, field), expected, **TIGHT)
        assert_close(out.encodings, fwd.encodings, **TIGHT)
        assert_close(_loss(out), (_loss(fwd) + _loss(rev)) / 2, **TIGHT)


@pytest.mark.parametrize(
    ("target", "symmetric", "relative"),
    [("ema", False, False), ("stopgrad", False, False), ("ema", True, False), ("stopgrad", True, True)],
)
def test_padding_does_not_change_the_result(target: str, symmetric: bool, relative: bool) -> None:
    model = _model(target=target, symmetric=symmetric, relative_actions=relative).eval()
    views, actions = _batch(batch=3, steps=5, seed=4)
    lengths = [5, 3, 2]
    mask = torch.tensor([[t >= n for t in range(5)] for n in lengths])
    gen = torch.Generator().manual_seed(5)
    noise_views = 1e3 * torch.randn(views.shape, generator=gen, dtype=F64)
    noise_actions = 1e3 * torch.randn(actions.shape, generator=gen, dtype=F64)
    garbage_views = torch.where(mask[:, :, None, None, None], noise_views, views)
    garbage_actions = torch.where(mask[..., None], noise_actions, actions)
    acts = relative_actions(garbage_actions) if relative else garbage_actions
    out = model(garbage_views, acts, padding_mask=mask)
    per_row = []
    for b, n in enumerate(lengths):
        row_acts = relative_actions(actions[b : b + 1, :n]) if relative else actions[b : b + 1, :n]
        alone = model(views[b : b + 1, :n], row_acts)  # a single sequence (B = 1)
        per_row.append(_loss(alone))
        rows = [b, b + 3] if symmetric else [b]
        assert_close(out.prediction[rows], alone.prediction, **TIGHT)
        assert_close(out.target[rows], alone.target, **TIGHT)
        assert_close(out.z_agg[rows], alone.z_agg, **TIGHT)
        assert_close(out.encodings[b, : n - 1], alone.encodings[0], **TIGHT)
        assert torch.equal(out.encodings[b, n - 1 :], torch.zeros(5 - n, 8, dtype=F64))
    assert_close(_loss(out), torch.stack(per_row).mean(), **TIGHT)


def test_padding_content_ignored_in_training() -> None:
    # In training mode padded views must not even enter the encoder's batch statistics.
    model = _model(ConvEncoder(widths=(4, 8), out_dim=8), symmetric=True)
    views, actions = _batch(batch=4, steps=4, seed=6)
    mask = torch.tensor([[False] * 4, [False] * 2 + [True] * 2, [False] * 3 + [True], [False] * 4])
    other = torch.where(mask[:, :, None, None, None], 50.0 + views, views)
    expected = model(views, actions, padding_mask=mask)
    for got, want in zip(model(other, actions, padding_mask=mask), expected, strict=True):
        assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    ("target", "symmetric", "relative"),
    [("ema", False, False), ("stopgrad", True, False), ("ema", True, True)],
)
def test_non_finite_padding_changes_neither_values_nor_gradients(
    bad: float, target: str, symmetric: bool, relative: bool
) -> None:
    # Padded views and actions from torch.empty may hold NaN / Inf; in training (batch statistics) the
    # outputs and every gradient must equal those with finite garbage there, and be finite.
    model = _model(
        ConvEncoder(widths=(4, 8), out_dim=8), target=target, symmetric=symmetric, relative_actions=relative
    )
    views, actions = _batch(batch=4, steps=5, seed=8)
    lengths = [5, 2, 4, 3]
    mask = torch.tensor([[t >= n for t in range(5)] for n in lengths])
    act_mask = mask[:, 1:] if relative else mask
    acts = relative_actions(actions) if relative else actions
    results = []
    for fill in (bad, 5.0):
        model.zero_grad()
        out = model(
            views.masked_fill(mask[:, :, None, None, None], fill),
            acts.masked_fill(act_mask[..., None], fill),
            padding_mask=mask,
        )
        (_loss(out) - 0.1 * coding_rate(out.z_agg) + out.encodings.square().mean()).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append([*out, *grads])
    for got, want in zip(*results, strict=True):
        assert got is not None and want is not None and bool(got.isfinite().all())
        assert_close(got, want, **TIGHT)


@pytest.mark.parametrize("rate_on", ["agg", "encoder"])
def test_objective_composed_by_the_caller(rate_on: str) -> None:
    # The model returns outputs only; the rate term is added where the objective is composed.
    model = _model(target="stopgrad", symmetric=True)
    views, actions = _batch()
    out = model(views, actions)
    rows = out.z_agg if rate_on == "agg" else out.encodings.flatten(0, 1)
    rate_loss = CodingRateLoss()(rows)
    assert_close(rate_loss, -coding_rate(rows, eps=0.5), **TIGHT)
    loss = _loss(out) + 0.2 * rate_loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.isfinite().all()), name
    # The rate alone moves the encoder (teacherless: nothing else stops collapse).
    model.zero_grad()
    out = model(views, actions)
    CodingRateLoss()(out.z_agg if rate_on == "agg" else out.encodings.flatten(0, 1)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_encodings_are_the_online_encodings_of_the_observed_views() -> None:
    model = _model(symmetric=True).eval()
    views, actions = _batch()
    out = model(views, actions)
    expected = model.encoder(views[:, :-1].flatten(0, 1)).view(6, 3, 8)
    assert_close(out.encodings, expected, **TIGHT)


@pytest.mark.parametrize("target", ["ema", "stopgrad"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_single_sequence(target: str, symmetric: bool) -> None:
    # B = 1: the batch statistics of the predictor's BatchNorm need >= 2 rows in training, so eval mode.
    model = _model(target=target, symmetric=symmetric).eval()
    views, actions = _batch()
    out = model(views[:1], actions[:1])
    rows = 2 if symmetric else 1
    assert out.prediction.shape == out.target.shape == (rows, 8) and out.z_agg.shape == (rows, 12)
    batched = model(views, actions)
    assert_close(out.prediction[0], batched.prediction[0], **TIGHT)
    loss = _loss(out)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_prediction_loss_kinds_against_reference() -> None:
    gen = torch.Generator().manual_seed(7)
    p, t = torch.randn(5, 6, generator=gen, dtype=F64), torch.randn(5, 6, generator=gen, dtype=F64)
    cos = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1))
    assert_close(prediction_loss(p, t), (1 - cos).mean(), **TIGHT)
    assert_close(prediction_loss(p, t, "mse"), (2 - 2 * cos).mean(), **TIGHT)
    diff = p / p.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)
    huber = torch.where(diff.abs() < 0.5, 0.5 * diff**2 / 0.5, diff.abs() - 0.25)
    assert_close(prediction_loss(p, t, "smooth_l1", beta=0.5), huber.sum(1).mean(), **TIGHT)
    assert_close(prediction_loss(p, t, "mse"), 2 - 2 * F.cosine_similarity(p, t).mean(), **TIGHT)
    with pytest.raises(ValueError, match="kind must be one of"):
        prediction_loss(p, t, "l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0, got 0\.0"):
        prediction_loss(p, t, "smooth_l1", beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        prediction_loss(p, t[:, :3])


@pytest.mark.parametrize("kind", ["cosine", "mse", "smooth_l1"])
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_prediction_loss_of_low_precision_inputs_is_float32(kind: str, low: torch.dtype) -> None:
    # A near-perfect prediction: 1 - cos ~ 1e-3, which bf16's 8-bit mantissa would round to exactly 0.
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(256, 512, generator=gen)
    p = t + 0.05 * torch.randn(256, 512, generator=gen)
    p_low, t_low = p.to(low), t.to(low)
    loss = prediction_loss(p_low, t_low, kind)  # type: ignore[arg-type]
    assert loss.dtype == torch.float32
    # The same loss of the rounded inputs, in float64. 1 - cos cancels: float32 rounds cos by ~6e-8, 5e-5 of
    # this loss per sample, so 1e-3 leaves room for that and still fails a bf16 computation (error ~100%).
    expected = prediction_loss(p_low.double(), t_low.double(), kind)  # type: ignore[arg-type]
    assert_close(loss.double(), expected, rtol=1e-3, atol=0)
    assert float(loss) > 1e-5


def test_state_dict_round_trip() -> None:
    model = _model(symmetric=True)
    views, actions = _batch()
    _loss(model(views, actions)).backward()
    model.update_target()
    keys = model.state_dict().keys()
    assert "target_encoder.step" in keys and not any("_online" in k for k in keys)
    other = _model(symmetric=True)
    other.load_state_dict(model.state_dict())
    assert other.target_encoder is not None and other.target_encoder.num_updates == 1
    model.eval()
    other.eval()
    for got, want in zip(model(views, actions), other(views, actions), strict=True):
        assert torch.equal(got, want)


def test_padding_mask_is_checked_once_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check costs a host synchronisation; the action encoder must not repeat it inside SeqJEPA.
    import jepa_rate.models.seq_jepa as seq_jepa_module
    import jepa_rate.modules.action_encoder as action_encoder_module

    calls = []
    original = seq_jepa_module.check_padding_mask

    def counting(*args: object, **kwargs: object) -> Tensor:
        calls.append(kwargs.get("name"))
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(seq_jepa_module, "check_padding_mask", counting)
    monkeypatch.setattr(action_encoder_module, "check_padding_mask", counting)
    model = _model(symmetric=True)
    views, actions = _batch()
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[0, 3] = True
    model(views, actions, padding_mask=mask)
    assert calls == ["padding_mask"]


def test_validation() -> None:
    with pytest.raises(ValueError, match="embed_dim is required"):
        SeqJEPA(nn.Flatten(), action_dim=2)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        SeqJEPA("resnet", action_dim=2, embed_dim=8)  # type: ignore[arg-type]
    for kwargs, match in (
        ({"target": "momentum"}, "target"),
        ({"target_pass": "twice", "target": "stopgrad"}, "target_pass must be one of"),
        ({"target_pass": "separate"}, r"target_pass='separate' applies to target='stopgrad' only"),
        ({"embed_dim": 0}, "embed_dim must be"),
        # Unused without a teacher, but still checked: a typo must not pass unnoticed.
        ({"target": "stopgrad", "ema_decay": 2.0}, r"ema_decay must lie in \[0, 1\], got 2\.0"),
        ({"target": "stopgrad", "ema_buffers": "average"}, "ema_buffers"),
    ):
        with pytest.raises(ValueError, match=match):
            _model(**kwargs)
    for flag in ("symmetric", "norm_first", "relative_actions"):
        with pytest.raises(TypeError, match=f"^{flag} must be a bool, got str"):
            _model(**{flag: "no"})
    # Checked once, by the sub-module that uses it, but reported under the argument the user passed.
    for name, value, error, match in (
        ("action_embed_dim", 0, ValueError, "action_embed_dim must be >= 1, got 0"),
        ("action_embed_dim", "a", TypeError, "action_embed_dim must be an int, got str"),
        ("predictor_hidden", 0, ValueError, "predictor_hidden must be >= 1, got 0"),
        ("predictor_layers", 0, ValueError, "predictor_layers must be >= 1, got 0"),
        ("predictor_norm", "group", ValueError, "predictor_norm must be one of"),
        ("ema_buffers", "average", ValueError, "ema_buffers must be one of"),
        ("num_layers", "x", TypeError, "num_layers must be an int"),
        ("action_dim", 0, ValueError, "action_dim must be >= 1, got 0"),
    ):
        with pytest.raises(error, match=f"^{match}"):
            _model(**{name: value})
    model = _model()
    views, actions = _batch()
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(views[:, 0], actions)
    with pytest.raises(TypeError, match=r"views must be a floating torch\.Tensor, got dtype torch\.uint8"):
        model(views.to(torch.uint8), actions)
    with pytest.raises(ValueError, match="T >= 2"):
        model(views[:, :1], actions[:, :1])
    with pytest.raises(ValueError, match=r"actions must have shape \(6, 4, 2\) \(A = action_dim\)"):
        model(views, actions[:, :3])
    with pytest.raises(ValueError, match=r"actions must have shape \(6, 4, 2\).*got \(6, 4, 3\)"):
        model(views, torch.cat((actions, actions[..., :1]), dim=-1))
    with pytest.raises(TypeError, match=r"actions must be a floating torch\.Tensor, got dtype torch\.int64"):
        model(views, actions.long())
    with pytest.raises(ValueError, match=r"padding_mask row 1 must be right-padded"):
        model(views, actions, padding_mask=torch.tensor([[False] * 4, [False, True, False, False]] * 3))
    with pytest.raises(TypeError, match="padding_mask must be a bool tensor"):
        model(views, actions, padding_mask=torch.zeros(6, 4))
    with pytest.raises(ValueError, match="at least 2 valid"):
        model(views, actions, padding_mask=torch.tensor([[False] + [True] * 3] * 6))
    for removed in ("loss", "rate_on", "rate_weight", "rate_loss", "prediction_weight", "smooth_l1_beta"):
        with pytest.raises(TypeError, match=removed):  # the objective is composed by the caller
            _model(**{removed: 1.0})
    wrong_dim = SeqJEPA(FlatEncoder(out_dim=6), action_dim=2, embed_dim=8, action_embed_dim=4, num_heads=2)
    with pytest.raises(ValueError, match=r"\(N, 8\), got output \(18, 6\)"):
        wrong_dim(views.float(), actions.float())
