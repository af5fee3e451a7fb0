"""Tests for EMATarget, ema_update_ and unwrap_module."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from jepa_rate.modules import EMATarget, ema_update_, unwrap_module
from jepa_rate.schedules import CosineSchedule

F64 = torch.float64


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()


def _perturb(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _params(module: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_copy_is_frozen_and_not_registered_twice() -> None:
    online = _net()
    ema = EMATarget(online)
    assert all(not p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in online.parameters())
    assert sum(p.numel() for p in ema.parameters()) == sum(p.numel() for p in online.parameters())
    assert all(a is not b for a, b in zip(ema.module.parameters(), online.parameters(), strict=True))
    assert not any(k.startswith("_online") for k in ema.state_dict())
    parent = nn.ModuleDict({"online": online, "target": ema})
    assert len(list(parent.parameters())) == 2 * len(list(online.parameters()))


def test_decay_zero_copies_and_one_freezes() -> None:
    online = _net()
    ema_copy, ema_frozen = EMATarget(online, decay=0.0), EMATarget(online, decay=1.0)
    before = _params(ema_frozen.module)
    _perturb(online, seed=1)
    assert ema_copy.update() and ema_frozen.update()
    for t, o in zip(ema_copy.module.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)
    for t, b in zip(ema_frozen.module.parameters(), before, strict=True):
        assert torch.equal(t, b)


def test_update_follows_formula_over_a_schedule() -> None:
    online = _net()
    sched = CosineSchedule(total_steps=4, start=0.5, end=0.9)
    ema = EMATarget(online, decay=sched)
    expected = _params(online)
    for k in range(6):
        _perturb(online, seed=10 + k)
        tau = sched(k)
        expected = [
            tau * e + (1 - tau) * o.detach() for e, o in zip(expected, online.parameters(), strict=True)
        ]
        assert ema.current_decay() == tau
        ema.update()
        assert int(ema.step) == k + 1 == ema.num_updates
        assert float(ema.decay) == pytest.approx(tau, rel=1e-7)  # stored as float32
        # float64 lerp vs the formula: a few ulps of values of order 1-10.
        for t, e in zip(ema.module.parameters(), expected, strict=True):
            assert_close(t, e, rtol=1e-13, atol=1e-13)


def test_no_update_in_eval_mode() -> None:
    online = _net()
    ema = EMATarget(online, decay=0.0)
    before = _params(ema.module)
    _perturb(online, seed=2)
    ema.eval()
    assert ema.update() is False
    assert int(ema.step) == 0
    for t, b in zip(ema.module.parameters(), before, strict=True):
        assert torch.equal(t, b)


def _moved_statistics(policy: str) -> tuple[nn.BatchNorm1d, nn.BatchNorm1d, EMATarget]:
    """An online net whose BN running statistics moved after its EMA target was created."""
    online = _net()
    ema = EMATarget(online, decay=0.25, buffers=policy)  # type: ignore[arg-type]
    online.train()
    online(torch.randn(16, 4, dtype=F64))
    bn, target_bn = online[1], ema.module[1]
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(target_bn, nn.BatchNorm1d)
    assert not torch.equal(bn.running_mean, target_bn.running_mean)
    return bn, target_bn, ema


def test_buffer_policy_none_leaves_buffers() -> None:
    _, target_bn, ema = _moved_statistics("none")
    before = [b.clone() for b in target_bn.buffers()]
    ema.update()
    assert all(torch.equal(a, b) for a, b in zip(target_bn.buffers(), before, strict=True))


@pytest.mark.parametrize("policy", ["ema", "copy"])
def test_buffer_policy_ema_and_copy(policy: str) -> None:
    bn, target_bn, ema = _moved_statistics(policy)
    old_mean, old_var = target_bn.running_mean.clone(), target_bn.running_var.clone()
    ema.update()
    if policy == "ema":
        # float64 lerp of order-1 values: a few ulps.
        assert_close(target_bn.running_mean, 0.25 * old_mean + 0.75 * bn.running_mean, rtol=1e-13, atol=1e-13)
        assert_close(target_bn.running_var, 0.25 * old_var + 0.75 * bn.running_var, rtol=1e-13, atol=1e-13)
    else:
        assert torch.equal(target_bn.running_mean, bn.running_mean)
        assert torch.equal(target_bn.running_var, bn.running_var)
    assert torch.equal(target_bn.num_batches_tracked, bn.num_batches_tracked)


def test_state_dict_round_trip_resumes_bit_for_bit() -> None:
    sched = CosineSchedule(total_steps=6, start=0.7, end=1.0)

    def train(online: nn.Module, ema: EMATarget, steps: range) -> None:
        for k in steps:
            _perturb(online, seed=100 + k)
            ema.update()

    online_a = _net()
    ema_a = EMATarget(online_a, decay=sched, buffers="ema")
    train(online_a, ema_a, range(8))

    online_b = _net()
    ema_b = EMATarget(online_b, decay=sched, buffers="ema")
    train(online_b, ema_b, range(3))
    saved_online, saved_ema = copy.deepcopy(online_b.state_dict()), copy.deepcopy(ema_b.state_dict())

    online_c = _net(seed=99)  # different initial weights: everything must come from the checkpoint
    ema_c = EMATarget(online_c, decay=sched, buffers="ema")
    online_c.load_state_dict(saved_online)
    ema_c.load_state_dict(saved_ema)
    assert ema_c.num_updates == 3
    train(online_c, ema_c, range(3, 8))
    for key, value in ema_a.state_dict().items():
        assert torch.equal(ema_c.state_dict()[key], value), key


def test_forward_runs_without_grad() -> None:
    online = _net()
    ema = EMATarget(online)
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    out = ema(x)
    assert not out.requires_grad
    assert_close(out, online(x).detach(), rtol=0, atol=0)


def test_compiled_online_is_unwrapped() -> None:
    online = _net()
    compiled = torch.compile(online, backend="eager")
    assert unwrap_module(compiled) is online
    ema = EMATarget(compiled, decay=0.0)
    assert not any("_orig_mod" in k for k in ema.state_dict())
    _perturb(online, seed=3)
    ema.update()
    for t, o in zip(ema.module.parameters(), online.parameters(), strict=True):
        assert torch.equal(t, o)


@pytest.mark.distributed
def test_ddp_online_is_unwrapped(tmp_path: object) -> None:
    import torch.distributed as dist

    init_file = os.path.join(str(tmp_path), "init")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        online = _net()
        ddp = nn.parallel.DistributedDataParallel(online)
        assert unwrap_module(ddp) is online
        ema = EMATarget(ddp, decay=0.0)
        assert not any(k.startswith("module.module") for k in ema.state_dict())
        loss = ddp(torch.randn(6, 4, dtype=F64)).square().sum()
        loss.backward()
        with torch.no_grad():
            for p in ddp.parameters():
                p.sub_(0.1 * p.grad)  # type: ignore[operator]
        ema.update()
        for t, o in zip(ema.module.parameters(), online.parameters(), strict=True):
            assert torch.equal(t, o)
    finally:
        dist.destroy_process_group()


def test_functional_update_validation() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\], got 1.5"):
        ema_update_(a, nn.Linear(2, 2), 1.5)
    with pytest.raises(TypeError, match="real number"):
        ema_update_(a, nn.Linear(2, 2), "0.9")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffers"):
        ema_update_(a, nn.Linear(2, 2), 0.9, buffers="average")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="structures differ"):
        ema_update_(a, nn.Sequential(b, nn.Linear(3, 1)), 0.9)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        EMATarget(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got 2\.0"):
        EMATarget(a, decay=2.0)
    with pytest.raises(ValueError, match=r"got -0\.5"):
        EMATarget(a, decay=lambda k: -0.5)
    with pytest.raises(ValueError, match=r"EMA decay must lie in \[0, 1\], got nan"):
        EMATarget(a, decay=float("nan"))
    # A target moved to another dtype than its online module: the message names the pair.
    ema = EMATarget(nn.Linear(2, 2), decay=0.5).to(torch.float64)
    with pytest.raises(ValueError, match=r"parameter 0 differ: target \(2, 2\) torch.float64 on cpu"):
        ema.update()
