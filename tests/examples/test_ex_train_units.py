"""The training-loop pieces shared by the example trainers: optim, probes, evaluation, rate, diagnostics."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from common.augment import AugmentConfig, augment
from common.config import EvalConfig, OptimConfig, ProbeConfig, RateConfig
from common.data import mix_seed
from common.evaluation import (
    OnlineProbe,
    collapse_record,
    fit_mlp_regressor,
    knn_accuracy,
    linear_probe,
    r2_score,
    rotation_accuracy,
)
from common.optim import build_optimizer, learning_rate, rate_weight, time_rate
from common.views import ROTATION_SINCOS
from jepa_rate import CodingRateLoss, ConvEncoder, SeqJEPA


# ------------------------------------------------------------------------------------------------ optim
def test_param_groups_decay_only_matrices_and_kernels() -> None:
    model = SeqJEPA(ConvEncoder(widths=(4, 8)), action_dim=2, action_embed_dim=8, num_layers=1, num_heads=2,
                    predictor_hidden=16, max_len=4)  # fmt: skip
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(map(id, decay["params"] + no_decay["params"])) == sorted(map(id, trainable))
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"aggregator.agg_token", "aggregator.pos_embed"} <= no_decay_names
    assert all(n.endswith(("bias", "weight", "token", "pos_embed")) for n in no_decay_names)
    grouped = {names[id(p)] for p in decay["params"] + no_decay["params"]}
    assert not any(n.startswith("target_encoder") for n in grouped), "the EMA copy is not trained"
    assert no_decay["weight_decay"] == 0.0 and isinstance(optimizer, torch.optim.AdamW)
    adam = build_optimizer(model, OptimConfig(name="adam"))
    assert type(adam) is torch.optim.Adam and adam.param_groups[1]["weight_decay"] == 0.0


def test_learning_rate_warms_up_then_decays_to_min_lr() -> None:
    cfg = OptimConfig(lr=1e-2, min_lr=1e-4, warmup_epochs=2)
    lrs = [learning_rate(cfg, k, 50, 5) for k in range(50)]
    peak = lrs.index(max(lrs))
    assert peak == 9 and lrs[peak] == pytest.approx(1e-2)
    assert all(a < b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))
    assert lrs[-1] == pytest.approx(1e-4) and lrs[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"optim\.lr must be >= 0, got -1"):
        OptimConfig(lr=-1)


def test_learning_rate_per_epoch_is_the_forks_rule_held_within_an_epoch() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_epochs=2, schedule_unit="epoch")
    lrs = [learning_rate(cfg, k, 12, 3) for k in range(12)]
    assert [lrs[3 * e] for e in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.0])
    assert all(lrs[k] == lrs[k - k % 3] for k in range(12))
    # The seq-JEPA fork's tuned teacherless run (Adam, lr 1e-3, 2 warmup epochs, min_lr 1e-4, 10 epochs).
    fork = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_epochs=2, schedule_unit="epoch")
    expected = [5e-4, 1e-3, 1e-3, 9.55e-4, 8.31e-4, 6.5e-4, 4.5e-4, 2.69e-4, 1.45e-4, 1e-4]
    assert [learning_rate(fork, e, 10, 1) for e in range(10)] == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------------------------- probes
def test_probe_trains_on_detached_inputs_and_resumes_exactly() -> None:
    x = torch.randn(64, 6, requires_grad=True)
    y = torch.randint(0, 3, (64,))
    probe = OnlineProbe(nn.Linear(6, 3), lr=ProbeConfig(lr=0.05).lr)
    probe.step(x, y)
    assert x.grad is None, "probe gradients must not reach the representation"
    state = copy.deepcopy(probe.state_dict())  # as a save / load round trip does
    twin = OnlineProbe(nn.Linear(6, 3), lr=0.05)
    twin.load_state_dict(state)
    for _ in range(3):
        a, b = probe.step(x, y), twin.step(x, y)
        assert torch.equal(a, b)
    assert torch.equal(probe.predict(x), twin.predict(x))


# ------------------------------------------------------------------------------------------- evaluation
def _knn_reference(train: np.ndarray, ty: np.ndarray, test: np.ndarray, qy: np.ndarray, k: int) -> float:
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    for i, query in enumerate(b):
        sims = a @ query
        nearest = np.argsort(-sims, kind="stable")[:k]
        counts = np.bincount(ty[nearest], minlength=ty.max() + 1).astype(float)
        tied = counts == counts.max()
        sim_sums = np.array([sims[nearest][ty[nearest] == c].sum() for c in range(len(counts))])
        winner = int(np.argmax(np.where(tied, sim_sums, -np.inf)))
        correct += int(winner == qy[i])
    return correct / len(b)


@given(seed=st.integers(0, 2**16), k=st.integers(1, 12))
def test_knn_matches_a_float64_reference(seed: int, k: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    train, test = (
        torch.randn(60, 5, generator=gen, dtype=torch.float64),
        torch.randn(25, 5, generator=gen, dtype=torch.float64),
    )
    ty, qy = torch.randint(0, 4, (60,), generator=gen), torch.randint(0, 4, (25,), generator=gen)
    expected = _knn_reference(train.numpy(), ty.numpy(), test.numpy(), qy.numpy(), k)
    assert knn_accuracy(train, ty, test, qy, k=k) == pytest.approx(expected, abs=1e-12)


@given(seed=st.integers(0, 2**16), outputs=st.integers(1, 4))
def test_r2_matches_the_textbook_formula(seed: int, outputs: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(30, outputs, generator=gen)
    pred = target + 0.5 * torch.randn(30, outputs, generator=gen)
    t, p = target.double().numpy(), pred.double().numpy()
    expected = np.mean(1 - ((t - p) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0))
    assert r2_score(pred, target) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_r2_of_constant_targets_and_bad_shapes() -> None:
    t = torch.ones(5, 2)
    assert r2_score(t, t) == 1.0 and r2_score(t + 1, t) == 0.0


def test_rotation_accuracy_reads_the_nearest_code() -> None:
    turns = torch.tensor([0, 1, 2, 3, 1])
    codes = ROTATION_SINCOS[turns]
    assert rotation_accuracy(codes + 0.3 * torch.tensor([1.0, -1.0]), turns) == 1.0
    assert rotation_accuracy(ROTATION_SINCOS[(turns + 1) % 4], turns) == 0.0


def test_linear_probe_is_deterministic_and_never_chooses_on_the_test_split() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(4, 8, generator=gen)
    y = torch.arange(4).repeat(50)
    x = centers[y] + torch.randn(200, 8, generator=gen)
    test_x, test_y = centers[y[:40]] + torch.randn(40, 8, generator=gen), y[:40]
    a = linear_probe(x, y, test_x, test_y, 4, EvalConfig())
    b = linear_probe(x, y, test_x, test_y[torch.randperm(40, generator=gen)], 4, EvalConfig())
    assert (
        a["linear_weight_decay"] == b["linear_weight_decay"]
        and a["linear_train_acc"] == b["linear_train_acc"]
    )
    assert a["linear_acc"] > 0.9 and a["linear_train_acc"] > 0.9


def test_mlp_regressor_is_seeded_and_leaves_the_global_rng_alone() -> None:
    x = torch.randn(100, 3)
    y = torch.stack((x[:, 0] * x[:, 1], x[:, 2]), dim=1)
    state = torch.get_rng_state()
    cpu = torch.device("cpu")
    a = fit_mlp_regressor(x, y, x, EvalConfig(regressor_steps=50, seed=3), cpu)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, fit_mlp_regressor(x, y, x, EvalConfig(regressor_steps=50, seed=3), cpu))
    assert not torch.equal(a, fit_mlp_regressor(x, y, x, EvalConfig(regressor_steps=50, seed=4), cpu))
    assert r2_score(fit_mlp_regressor(x, y, x, EvalConfig(regressor_lr=1e-2), cpu), y) > 0.8


# ------------------------------------------------------------------------------------------------- rate
def test_time_rate_is_positive_and_does_not_consume_the_global_rng() -> None:
    state = torch.get_rng_state()
    assert time_rate(CodingRateLoss(), (16, 8), torch.device("cpu")) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_rate_schedules() -> None:
    const = RateConfig(weight=0.02)
    warm = RateConfig(weight=0.1, schedule="warmup_cosine", warmup_epochs=1, final_weight=0.01)
    assert rate_weight(const, 0, 100, 10) == rate_weight(const, 99, 100, 10) == 0.02
    assert rate_weight(warm, 0, 100, 10) == 0.0 and rate_weight(warm, 10, 100, 10) == pytest.approx(0.1)
    assert rate_weight(warm, 100, 100, 10) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"set exactly one of rate\.eps and rate\.alpha"):
        RateConfig(eps=0.5, alpha=1.0)


# ------------------------------------------------------------------------------------ loop, diagnostics
def test_step_seeds_are_distinct_and_in_range() -> None:
    seeds = {mix_seed(s, k, r) for s in range(3) for k in range(200) for r in range(3)}
    assert len(seeds) == 3 * 200 * 3 and all(0 <= s < 2**32 for s in seeds)


def test_collapse_is_flagged_only_for_collapsed_embeddings() -> None:
    healthy, none = collapse_record("z", torch.randn(128, 16))
    collapsed, warning = collapse_record("z", torch.ones(128, 16) + 1e-4 * torch.randn(128, 16))
    assert none is None and warning is not None and warning.startswith("z collapsed: normalized std")
    line = torch.randn(256, 1) * torch.ones(1, 64) + 0.01 * torch.randn(256, 64)
    assert collapse_record("z", line)[1].startswith("z collapsed to few dimensions")  # type: ignore[union-attr]
    assert healthy["z.effective_rank"] > 10 > collapsed["z.effective_rank"]


# ------------------------------------------------------------------------------------------- augment
def test_flip_only_augmentation_mirrors_about_half_of_the_images() -> None:
    x = torch.rand(64, 3, 8, 8)
    cfg = AugmentConfig(crop_min_scale=1.0, flip=True, jitter=0.0, grayscale_prob=0.0)
    out = augment(x, cfg, generator=torch.Generator().manual_seed(0))
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((same ^ mirrored).all()) and 16 < int(mirrored.sum()) < 48


def test_augmentation_is_seeded_and_stays_in_range() -> None:
    x = torch.rand(16, 3, 16, 16)
    a = augment(x, AugmentConfig(), generator=torch.Generator().manual_seed(1))
    b = augment(x, AugmentConfig(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, augment(x, AugmentConfig()))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    gray = augment(x, AugmentConfig(crop_min_scale=1.0, flip=False, jitter=0.0, grayscale_prob=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
