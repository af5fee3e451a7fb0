"""Tests for SeqJEPA's stop-gradient targets: EMA, joint and separate target passes, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from jepa_rate.models import ConvEncoder, prediction_loss
from seq_jepa_setup import TIGHT
from seq_jepa_setup import build_model as _model
from seq_jepa_setup import jepa_loss as _loss
from seq_jepa_setup import make_batch as _batch


@pytest.mark.parametrize("target", ["ema", "stopgrad"])
def test_gradients_reach_online_modules_and_never_the_target(target: str) -> None:
    model = _model(target=target)
    views, actions = _batch()
    views.requires_grad_(True)
    _loss(model(views, actions)).backward()
    assert views.grad is not None
    # The target view only feeds the stop-gradient target.
    assert torch.equal(views.grad[:, -1], torch.zeros_like(views.grad[:, -1]))
    assert bool((views.grad[:, :-1].abs().sum(dim=(2, 3, 4)) > 0).all())
    for name, p in model.named_parameters():
        if name.startswith("target_encoder."):
            assert p.grad is None and not p.requires_grad, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_stopgrad_target_is_detached_online_encoding() -> None:
    model = _model(target="stopgrad").eval()
    views, actions = _batch()
    out = model(views, actions)
    assert_close(out.target, model.encoder(views[:, -1]).detach(), **TIGHT)
    assert model.target_encoder is None and model.update_target() is False


def test_ema_target_and_update() -> None:
    model = _model(target="ema", ema_decay=0.5)
    views, actions = _batch()
    out = model(views, actions)
    assert model.target_encoder is not None
    assert_close(out.target, model.target_encoder.module(views[:, -1]), **TIGHT)
    _loss(out).backward()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.sub_(0.1 * p.grad)  # type: ignore[operator]
    old = [p.clone() for p in model.target_encoder.parameters()]
    assert model.update_target()
    for t, o, e in zip(model.target_encoder.parameters(), old, model.encoder.parameters(), strict=True):
        assert_close(t, 0.5 * o + 0.5 * e, **TIGHT)


def _batch_norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("symmetric", [False, True])
def test_separate_target_pass_is_a_second_encoder_call(symmetric: bool) -> None:
    # The seq-JEPA fork encodes the target views in their own no-grad encoder call after the online one.
    views, actions = _batch(batch=8, seed=9)
    enc = ConvEncoder(widths=(4, 8), out_dim=8)
    model = _model(enc, target="stopgrad", target_pass="separate", symmetric=symmetric)
    manual = copy.deepcopy(model.encoder)
    views.requires_grad_(True)
    out = model(views, actions)
    online = manual(views.flatten(0, 1) if symmetric else views[:, :-1].flatten(0, 1)).view(8, -1, 8)
    targets = views[:, -1] if not symmetric else torch.cat((views[:, -1], views[:, 0]))
    with torch.no_grad():
        expected = manual(targets)
    assert_close(out.encodings, online[:, :3], **TIGHT)
    assert_close(out.target, expected, **TIGHT)
    # Running statistics: updated twice (online views, then targets), exactly as by the two manual calls.
    for ours, ref in zip(_batch_norms(model.encoder), _batch_norms(manual), strict=True):
        assert int(ours.num_batches_tracked) == 2
        assert_close(ours.running_mean, ref.running_mean, **TIGHT)
        assert_close(ours.running_var, ref.running_var, **TIGHT)
    # Gradients flow through the online branch only.
    assert out.target.grad_fn is None and not out.target.requires_grad
    _loss(out).backward()
    assert views.grad is not None
    if not symmetric:
        assert torch.equal(views.grad[:, -1], torch.zeros_like(views.grad[:, -1]))
    manual_loss = prediction_loss(out.prediction, expected)
    assert_close(_loss(out), manual_loss.detach(), **TIGHT)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_separate_and_joint_target_passes_differ_only_through_batch_statistics() -> None:
    views, actions = _batch(batch=8, seed=10)
    enc = ConvEncoder(widths=(4, 8), out_dim=8)
    joint = _model(enc, target="stopgrad")
    separate = _model(copy.deepcopy(enc), target="stopgrad", target_pass="separate")
    separate.load_state_dict(joint.state_dict())
    manual = copy.deepcopy(joint.encoder)
    out_joint, out_separate = joint(views, actions), separate(views, actions)
    # Joint: one call over all views, whose statistics the targets share; running statistics updated once.
    with torch.no_grad():
        assert_close(out_joint.target, manual(views.flatten(0, 1)).view(8, 4, 8)[:, -1], **TIGHT)
    assert all(int(bn.num_batches_tracked) == 1 for bn in _batch_norms(joint.encoder))
    for got, want in ((out_separate.target, out_joint.target), (out_separate.encodings, out_joint.encodings)):
        assert float((got - want).detach().norm() / want.detach().norm()) > 1e-2
    # In eval mode the running statistics are used: both passes give the same outputs.
    joint.eval()
    separate.eval()
    separate.load_state_dict(joint.state_dict())
    for got, want in zip(separate(views, actions), joint(views, actions), strict=True):
        assert_close(got, want, **TIGHT)
