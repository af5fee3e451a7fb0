"""Train seq-JEPA on CIFAR-10 rotation sequences, with an EMA teacher or a coding-rate regularizer.

The question behind it: can a coding-rate regularizer replace the EMA teacher without collapse? Each sample
is one image seen as ``M + 1`` views (view 0 unrotated, the others rotated by random quarter turns; the last
view is the target). seq-JEPA encodes the ``M`` observed views, aggregates them with their relative actions
into ``z_AGG`` and predicts the target view's embedding from ``z_AGG`` and the last action.

Variants (``--variant`` or ``--set variant=...``):

=================== ================================ =========== =========
variant             target of the prediction         coding rate symmetric
=================== ================================ =========== =========
``ema``             EMA teacher (upstream seq-JEPA)  no          no
``ema_rate``        EMA teacher                      on z_AGG    no
``teacherless_rate`` online encoder, stop-gradient   on z_AGG    no
``teacherless``     online encoder, stop-gradient    no          no
``symmetric_rate``  online encoder, stop-gradient    on z_AGG    yes
=================== ================================ =========== =========

``teacherless`` is the control: without a teacher or a regularizer it is expected to collapse.
``symmetric_rate`` also predicts the first view from the reversed sequence. seq-JEPA inverts the actions
of the reversed sequence by negation, which for ``[sin, cos]`` codes maps the identity onto 180 degrees, so
with ``seq.actions=auto`` this variant uses one-hot codes (whose negations are distinct codes).

Usage::

    python examples/cifar_rot_train.py                            # demo preset: embedded subset, ~1 min CPU
    python examples/cifar_rot_train.py --config cpu --variant ema_rate
    python examples/cifar_rot_train.py --config demo --set optim.lr=3e-4 --set rate.weight=0.1
    torchrun --nproc_per_node=2 examples/cifar_rot_train.py --config cpu
    python examples/cifar_rot_train.py --resume runs/demo-teacherless_rate   # continue a stopped run

Outputs go to ``runs/<name>/`` (``name`` defaults to ``<preset>-<variant>``): ``config.yaml``,
``metrics.jsonl`` / ``metrics.csv``, ``summary.json``, ``last.pt`` and plots; compare finished runs with
``python examples/compare_runs.py runs/a runs/b``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from common import (
    CifarData,
    action_dim,
    normalize,
    random_crop_flip,
    rotate,
    rotation_actions,
)
from common.checks import check_encoder, check_min, check_range
from common.cli import launch
from common.evaluation import (
    ROTATION_SINCOS,
    accuracy,
    classification_metrics,
    collect_features,
    fit_mlp_regressor,
    r2_score,
    rotation_accuracy,
)
from common.loop import StepOutput, TrainingLoop, step_seed
from common.optim import build_optimizer, learning_rate, set_learning_rate
from common.probes import linear_classifier, mlp_regressor
from common.rate import MonitoredRate, rate_schedule, time_rate
from common.run import RunConfig, RunContext
from jepa_rate import ConvEncoder, CosineSchedule, SeqJEPA, SeqJEPAOutput, cifar_resnet18

# ----------------------------------------------------------------------------------------------- config
Variant = Literal["ema", "ema_rate", "teacherless_rate", "teacherless", "symmetric_rate"]
#: variant -> (prediction target, coding rate in the loss, symmetric prediction)
VARIANTS: dict[str, tuple[Literal["ema", "stopgrad"], bool, bool]] = {
    "ema": ("ema", False, False),
    "ema_rate": ("ema", True, False),
    "teacherless_rate": ("stopgrad", True, False),
    "teacherless": ("stopgrad", False, False),
    "symmetric_rate": ("stopgrad", True, True),
}
#: What the plots show: the training curves (every log step) and the per-epoch evaluation.
STEP_PLOTS = (
    "loss",
    "pred_loss",
    "rate",
    "norm_rate",
    "lr",
    "tau",
    "probe_class_loss",
    "probe_rotation_loss",
)
EPOCH_PLOTS = (
    "train.pred_loss", "val_pred_loss", "train.rate", "online.linear_acc", "online.rotation_r2",
    "online.rotation_acc", "encoder.effective_rank", "z_agg.effective_rank", "z_agg.normalized_std",
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """seq-JEPA architecture. ``encoder="conv"`` is :class:`jepa_rate.ConvEncoder` with ``conv_widths``;
    ``"resnet18"`` the upstream CIFAR ResNet-18. ``ema_tau`` ramps to ``ema_tau_end`` on a cosine."""

    encoder: Literal["conv", "resnet18"] = "conv"
    conv_widths: tuple[int, ...] = (16, 32, 64, 128)
    action_embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    dim_feedforward: int | None = None
    dropout: float = 0.1
    predictor_hidden: int = 256
    loss: Literal["cosine", "mse", "smooth_l1"] = "cosine"
    rate_on: Literal["agg", "encoder"] = "agg"
    ema_tau: float = 0.996
    ema_tau_end: float = 1.0

    def __post_init__(self) -> None:
        check_encoder("model.", self.conv_widths, self.ema_tau, self.ema_tau_end)
        check_min(
            "model.", 1, action_embed_dim=self.action_embed_dim, num_layers=self.num_layers,
            num_heads=self.num_heads, dim_feedforward=self.dim_feedforward,
            predictor_hidden=self.predictor_hidden,
        )  # fmt: skip
        check_range("model.", 0.0, 1.0, include_high=False, dropout=self.dropout)


@dataclass(frozen=True)
class SeqConfig:
    """Rotation sequences: ``M >= 2`` observations (another ``M`` may be used for evaluation), action codes
    (``auto``: ``sincos``, or ``onehot`` for ``symmetric_rate``), and per-view crop / flip."""

    num_observations: int = 3
    eval_num_observations: int | None = None
    actions: Literal["auto", "sincos", "onehot"] = "auto"
    crop: bool = False
    flip: bool = False

    def __post_init__(self) -> None:
        check_min(
            "seq.", 2, reason=" (the rotation probe compares observed views 0 and 1)",
            num_observations=self.num_observations, eval_num_observations=self.eval_num_observations,
        )  # fmt: skip


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """The run settings of :class:`common.run.RunConfig`, plus the method's."""

    variant: Variant = "teacherless_rate"
    model: ModelConfig = field(default_factory=ModelConfig)
    seq: SeqConfig = field(default_factory=SeqConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if VARIANTS[self.variant][2] and self.seq.actions == "sincos":
            raise ValueError(
                "variant symmetric_rate inverts actions by negation, which is wrong for sincos codes "
                "(the identity becomes 180 degrees): use seq.actions=onehot or auto"
            )

    def validate(self) -> None:
        super().validate()
        m = self.model
        width = (512 if m.encoder == "resnet18" else m.conv_widths[-1]) + m.action_embed_dim
        if width % m.num_heads:
            raise ValueError(
                f"model.num_heads={m.num_heads} must divide the aggregator width {width} (encoder features "
                f"+ model.action_embed_dim={m.action_embed_dim})"
            )

    @property
    def action_kind(self) -> Literal["sincos", "onehot"]:
        if self.seq.actions != "auto":
            return self.seq.actions
        return "onehot" if VARIANTS[self.variant][2] else "sincos"


# ----------------------------------------------------------------------------------------------- data
def draw_rotations(batch: int, num_views: int, seed: int) -> Tensor:
    """``(batch, num_views)`` quarter turns from a CPU generator seeded with ``seed``; view 0 unrotated."""
    turns = torch.randint(0, 4, (batch, num_views), generator=torch.Generator().manual_seed(seed))
    turns[:, 0] = 0
    return turns


def rotation_views(images: Tensor, turns: Tensor, seq: SeqConfig, *, augment: bool) -> Tensor:
    """Normalized views ``(b, V, C, H, W)`` of uint8 ``images`` ``(b, C, H, W)``, batched on their device:
    optional crop / flip per view (global RNG), then the rotation of each view."""
    turns = turns.to(images.device)
    if augment and (seq.crop or seq.flip):
        views = images.unsqueeze(1).expand(-1, turns.shape[1], -1, -1, -1)
        return normalize(rotate(random_crop_flip(views, crop=seq.crop, flip=seq.flip), turns))
    # Without per-view crops all views share one image: rotate it 4 times, then pick (4x less work).
    quarter = torch.stack([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)], dim=1)
    return normalize(quarter[torch.arange(images.shape[0], device=images.device)[:, None], turns])


def build_model(
    cfg: TrainConfig, total_steps: int, *, device: torch.device, gather_distributed: bool
) -> tuple[SeqJEPA, MonitoredRate]:
    """The variant's seq-JEPA on ``device`` (channels_last on CUDA) and the coding-rate loss it trains with,
    or, when the variant's loss has no rate, only logs (on the same batch, the global one under DDP)."""
    target, with_rate, symmetric = VARIANTS[cfg.variant]
    m = cfg.model
    encoder = cifar_resnet18() if m.encoder == "resnet18" else ConvEncoder(widths=m.conv_widths)
    rate_loss = cfg.rate.loss(gather_distributed=gather_distributed)
    model = SeqJEPA(
        encoder,
        action_dim=action_dim(cfg.action_kind),
        action_embed_dim=m.action_embed_dim,
        relative_actions=True,
        target=target,
        ema_decay=CosineSchedule(total_steps, start=m.ema_tau, end=m.ema_tau_end),
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        dim_feedforward=m.dim_feedforward,
        dropout=m.dropout,
        predictor_hidden=m.predictor_hidden,
        loss=m.loss,
        symmetric=symmetric,
        rate_on=m.rate_on if with_rate else None,
        rate_loss=rate_loss if with_rate else None,
    ).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, rate_loss


def optimization_step(
    net: nn.Module,
    model: SeqJEPA,
    optimizer: torch.optim.Optimizer,
    views: Tensor,
    actions: Tensor,
    cfg: TrainConfig,
    rate_weight: float | None,
) -> SeqJEPAOutput:
    """Forward (``net``: the model, maybe wrapped by DDP / compile), backward, clipping, AdamW, EMA steps."""
    with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        out: SeqJEPAOutput = net(views, actions, rate_weight=rate_weight)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()  # type: ignore[no-untyped-call]
    if cfg.optim.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    model.update_target()
    return out


def main(argv: list[str] | None = None) -> int:
    return launch(
        TrainConfig,
        train,
        argv,
        description=__doc__.splitlines()[0],
        default_preset="demo",
        variants=VARIANTS,
    )


def train(cfg: TrainConfig, ctx: RunContext, data: CifarData, stop_after: int | None) -> int:
    device, rank, world = ctx.device, ctx.dist.rank, ctx.dist.world_size
    with_rate = VARIANTS[cfg.variant][1]
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    loop = TrainingLoop(ctx, len(data.train))
    steps, per_epoch = loop.total_steps, loop.steps_per_epoch
    ctx_line = f"{data.description} | {cfg.variant} | {steps} steps of {cfg.batch_size} on {device} x{world}"
    loop.write(f"run {ctx.run.path}: {ctx_line}")

    # ------------------------------------------------------------------------------------------- model
    model, rate_loss = build_model(cfg, steps, device=device, gather_distributed=ctx.dist.distributed)
    optimizer = build_optimizer(model, cfg.optim)
    weight_of = rate_schedule(cfg.rate, steps, per_epoch)
    net = loop.wrap(model)
    # Online probes (own optimizers, detached inputs): classes from z_AGG; rotation 0 -> 1 from [z_0, z_1].
    class_probe = linear_classifier(model.aggregator.d_model, data.num_classes, cfg.probe, device)
    rotation_probe = mlp_regressor(2 * model.embed_dim, 2, cfg.probe, device)
    loop.restore(
        {"model": model, "optimizer": optimizer, "class_probe": class_probe, "rotation_probe": rotation_probe}
    )
    if ctx.checkpoint is not None:
        loop.write(f"resumed at step {loop.step} of {steps}")
    sincos = ROTATION_SINCOS.to(device)
    local = cfg.batch_size // world

    # -------------------------------------------------------------------------------------- train step
    def train_step(idx: Tensor, step: int, timing: bool) -> StepOutput:
        lr = set_learning_rate(optimizer, learning_rate(cfg.optim, step, steps, per_epoch))
        # Rotations are drawn for the global batch and sliced, so DDP sees the data of one process.
        turns = draw_rotations(cfg.batch_size, cfg.seq.num_observations + 1, step_seed(cfg.seed, step))
        turns = turns[rank * local : (rank + 1) * local]
        idx = idx.to(device)
        views = rotation_views(images[idx], turns, cfg.seq, augment=True)
        actions = rotation_actions(turns.to(device), cfg.action_kind)
        weight = weight_of(step)
        tau = model.target_encoder.current_decay() if model.target_encoder is not None else None
        out = optimization_step(net, model, optimizer, views, actions, cfg, weight if with_rate else None)
        metrics: dict[str, Tensor | float] = {
            "loss": out.loss.detach(),
            "pred_loss": out.prediction_loss.detach(),
        }
        if tau is not None:
            metrics["tau"] = tau
        parts = rate_loss.last if with_rate else rate_loss.observe(out.z_agg.float())
        if parts is None:
            raise RuntimeError("the coding rate recorded nothing in a training step")
        metrics.update(rate=parts.rate, norm_rate=parts.normalized_rate, rate_scale=parts.scale)
        metrics.update(rate_weight=weight if with_rate else 0.0, lr=lr)
        metrics["probe_class_loss"] = class_probe.step(out.z_agg, labels[idx])
        pair = torch.cat((out.encodings[:, 0], out.encodings[:, 1]), dim=1)
        metrics["probe_rotation_loss"] = rotation_probe.step(pair, sincos[turns[:, 1].to(device)])
        seconds = time_rate(rate_loss, device) if timing else None
        return StepOutput(metrics, seconds)

    # -------------------------------------------------------------------------------------- evaluation
    eval_views = (cfg.seq.eval_num_observations or cfg.seq.num_observations) + 1

    @torch.no_grad()
    def encode(split_images: Tensor, salt: int) -> dict[str, Tensor]:
        """z_AGG, z_0, z_1 of fixed (seeded) evaluation sequences of every image, in eval mode."""
        model.eval()
        # One draw for the whole split, so that each image's sequence is the same for any eval.batch_size.
        all_turns = draw_rotations(split_images.shape[0], eval_views, step_seed(cfg.eval.seed, salt))

        def batch(idx: Tensor) -> dict[str, Tensor]:
            turns = all_turns[idx]
            views = rotation_views(split_images[idx.to(device)], turns, cfg.seq, augment=False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = model(views, rotation_actions(turns.to(device), cfg.action_kind))
            enc = out.encodings.float()
            loss = out.prediction_loss.float().expand(len(idx))
            return {
                "z_agg": out.z_agg.float(),
                "z0": enc[:, 0],
                "z1": enc[:, 1],
                "turns": turns[:, 1],
                "loss": loss,
            }

        try:
            return collect_features(batch, split_images.shape[0], cfg.eval.batch_size)
        finally:
            model.train()

    test_images, test_labels = data.test.images.to(device), data.test.labels

    def end_of_epoch(epoch: int) -> dict[str, Any]:
        f = encode(test_images, salt=2)
        pair = torch.cat((f["z0"], f["z1"]), dim=1).to(device)
        pred = rotation_probe.predict(pair).cpu()
        record: dict[str, Any] = {
            "val_pred_loss": float(f["loss"].mean()),
            "online.linear_acc": accuracy(class_probe.predict(f["z_agg"].to(device)).cpu(), test_labels),
            "online.rotation_r2": r2_score(pred, ROTATION_SINCOS[f["turns"]]),
            "online.rotation_acc": rotation_accuracy(pred, f["turns"]),
        }
        record.update(loop.diagnose(epoch, {"z_agg": f["z_agg"], "encoder": f["z0"]}))
        return record

    # --------------------------------------------------------------------- training, evaluation, summary
    return loop.finish(
        loop.run(train_step, end_of_epoch, stop_after=stop_after),
        model=model, data=data.description, representations=("z_agg", "encoder"),
        offline=lambda: offline_evaluation(cfg, encode, images, data),
        step_keys=STEP_PLOTS, epoch_keys=EPOCH_PLOTS,
    )  # fmt: skip


def offline_evaluation(
    cfg: TrainConfig,
    encode: Callable[[Tensor, int], dict[str, Tensor]],
    train_images: Tensor,
    data: CifarData,
) -> dict[str, Any]:
    """Linear probe and k-NN on frozen z_AGG and encoder features; rotation R² from frozen [z_0, z_1]."""
    train, test = encode(train_images, 1), encode(data.test.images.to(train_images.device), 2)
    out: dict[str, Any] = {}
    device = train_images.device
    for name, key in (("z_agg", "z_agg"), ("encoder", "z0")):
        out[name] = classification_metrics(
            train[key], data.train.labels, test[key], data.test.labels, data.num_classes, cfg.eval, device
        )
    pred = fit_mlp_regressor(
        torch.cat((train["z0"], train["z1"]), dim=1), ROTATION_SINCOS[train["turns"]],
        torch.cat((test["z0"], test["z1"]), dim=1),
        hidden=cfg.eval.regressor_hidden, steps=cfg.eval.regressor_steps, lr=cfg.eval.regressor_lr,
        max_train=cfg.eval.regressor_max_train, seed=cfg.eval.seed, device=device,
    )  # fmt: skip
    out["rotation_r2"] = r2_score(pred, ROTATION_SINCOS[test["turns"]])
    out["rotation_acc"] = rotation_accuracy(pred, test["turns"])
    return out


if __name__ == "__main__":
    sys.exit(main())
