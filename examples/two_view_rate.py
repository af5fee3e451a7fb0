"""Two-view self-supervised learning on CIFAR-10 (SimSiam / BYOL style) where a coding rate can replace the
EMA teacher or the stop-gradient.

Two augmented views of each image go through an encoder and a projector (``z``); a predictor maps each
view's ``z`` to the other's, with the negative-cosine loss ``(D(p_1, t_2) + D(p_2, t_1)) / 2``. What keeps
the trivial solution (every image mapped to one point) away depends on the variant (``--variant`` or
``--set variant=...``):

================ ======================================================================================
variant          target ``t`` of the prediction, and what prevents collapse
================ ======================================================================================
``simsiam``      ``t = stopgrad(z)`` of the other view (SimSiam's stop-gradient)
``byol``         ``t`` = an EMA copy of encoder + projector (:class:`jepa_rate.EMATarget`, tau ramp to 1)
``rate``         ``t = z``, gradients through both branches, and ``- weight * R(z)`` in the loss: the
                 coding rate of each view's projections (:class:`jepa_rate.CodingRateLoss`)
``none``         ``t = z``, nothing else: the control, expected to collapse
================ ======================================================================================

It shares its data loading, training loop, progress, outputs, probes and evaluation with
``examples/cifar_rot_train.py`` (through ``examples/common``). Presets live in ``examples/configs/two_view``.

Usage::

    python examples/two_view_rate.py                              # demo preset, variant rate
    python examples/two_view_rate.py --preset cpu --variant simsiam
    torchrun --nproc_per_node=2 examples/two_view_rate.py --preset cpu

Outputs go to ``runs/two_view-<preset>-<variant>/`` (see ``examples/common/outputs.py``).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from common import CONFIG_DIR, CifarData, normalize
from common.augment import AugmentConfig, augment
from common.checks import check_encoder, check_min
from common.cli import launch
from common.evaluation import accuracy, classification_metrics, collect_features
from common.loop import StepOutput, TrainingLoop
from common.optim import build_optimizer, learning_rate, set_learning_rate
from common.probes import linear_classifier
from common.rate import MonitoredRate, rate_schedule, time_rate
from common.run import RunConfig, RunContext
from jepa_rate import ConvEncoder, CosineSchedule, EMATarget, cifar_resnet18, prediction_loss

# ----------------------------------------------------------------------------------------------- config
Variant = Literal["simsiam", "byol", "rate", "none"]
VARIANTS = ("simsiam", "byol", "rate", "none")
STEP_PLOTS = ("loss", "pred_loss", "rate", "norm_rate", "lr", "tau", "probe_class_loss")
EPOCH_PLOTS = (
    "train.pred_loss", "train.rate", "online.linear_acc", "encoder.effective_rank",
    "projection.effective_rank", "projection.normalized_std", "projection.mean_cosine",
)  # fmt: skip


@dataclass(frozen=True)
class NetConfig:
    """Encoder (``conv``: :class:`jepa_rate.ConvEncoder` with ``conv_widths``; or ``resnet18``), projector
    ``D -> proj_hidden -> proj_dim`` and predictor ``proj_dim -> pred_hidden -> proj_dim`` (MLPs with
    BatchNorm), and the EMA decay ramp of ``byol``."""

    encoder: Literal["conv", "resnet18"] = "conv"
    conv_widths: tuple[int, ...] = (16, 32, 64, 128)
    proj_dim: int = 128
    proj_hidden: int = 256
    pred_hidden: int = 64
    ema_tau: float = 0.99
    ema_tau_end: float = 1.0

    def __post_init__(self) -> None:
        check_encoder("model.", self.conv_widths, self.ema_tau, self.ema_tau_end)
        sizes = {"proj_dim": self.proj_dim, "proj_hidden": self.proj_hidden, "pred_hidden": self.pred_hidden}
        check_min("model.", 1, **sizes)


@dataclass(frozen=True)
class TwoViewConfig(RunConfig):
    """The run settings of :class:`common.run.RunConfig`, plus the method's."""

    variant: Variant = "rate"
    model: NetConfig = field(default_factory=NetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ------------------------------------------------------------------------------------------------ model
def mlp(sizes: tuple[int, ...], *, last_norm: bool) -> nn.Sequential:
    """``Linear -> BN -> ReLU`` blocks, then a last ``Linear`` (followed by BN if ``last_norm``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=last and not last_norm))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_norm:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


class TwoViewOutput(NamedTuple):
    """One step's loss terms and representations (the encoder features of the first view, for the probe)."""

    loss: Tensor
    prediction_loss: Tensor
    projections: Tensor
    features: Tensor


class TwoViewNet(nn.Module):
    """Encoder + projector + predictor, with the variant's target (see the module docstring)."""

    def __init__(self, cfg: TwoViewConfig, total_steps: int, rate_loss: MonitoredRate) -> None:
        super().__init__()
        m = cfg.model
        self.variant = cfg.variant
        self.encoder = cifar_resnet18() if m.encoder == "resnet18" else ConvEncoder(widths=m.conv_widths)
        self.feature_dim = 512 if m.encoder == "resnet18" else m.conv_widths[-1]
        self.projector = mlp((self.feature_dim, m.proj_hidden, m.proj_dim), last_norm=True)
        self.predictor = mlp((m.proj_dim, m.pred_hidden, m.proj_dim), last_norm=False)
        self.rate_loss = rate_loss if cfg.variant == "rate" else None
        self.target: EMATarget | None = None
        if cfg.variant == "byol":
            decay = CosineSchedule(total_steps, start=m.ema_tau, end=m.ema_tau_end)
            self.target = EMATarget(nn.Sequential(self.encoder, self.projector), decay)

    def forward(self, views: Tensor, rate_weight: float = 0.0) -> TwoViewOutput:
        """``views`` ``(2, B, C, H, W)``: the two views of each image."""
        both = views.flatten(0, 1)  # one pass: BatchNorm sees both views, as SimSiam's shared encoder does
        features = self.encoder(both)
        z = self.projector(features)
        p = self.predictor(z)
        if self.target is not None:
            t = self.target(both).detach()
        elif self.variant == "simsiam":
            t = z.detach()
        else:
            t = z
        (p1, p2), (t1, t2) = p.chunk(2), t.chunk(2)
        pred = 0.5 * (prediction_loss(p1, t2) + prediction_loss(p2, t1))
        loss = pred
        if self.rate_loss is not None:
            loss = loss + rate_weight * self.rate_loss(torch.stack(z.chunk(2)))
        return TwoViewOutput(loss, pred, z, features[: views.shape[1]])


# ---------------------------------------------------------------------------------------------- training
def main(argv: list[str] | None = None) -> int:
    return launch(
        TwoViewConfig, train, argv, description=__doc__.splitlines()[0], default_preset="demo",
        variants=VARIANTS, config_dir=CONFIG_DIR / "two_view", name_prefix="two_view-",
    )  # fmt: skip


def train(cfg: TwoViewConfig, ctx: RunContext, data: CifarData, stop_after: int | None) -> int:
    device = ctx.device
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    loop = TrainingLoop(ctx, len(data.train))
    steps, per_epoch = loop.total_steps, loop.steps_per_epoch
    loop.write(f"run {ctx.run.path}: {data.description} | {cfg.variant} | {steps} steps of {cfg.batch_size}")

    rate_loss = cfg.rate.loss(gather_distributed=ctx.dist.distributed)
    model = TwoViewNet(cfg, steps, rate_loss).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    weight_of = rate_schedule(cfg.rate, steps, per_epoch)
    net = loop.wrap(model)
    probe = linear_classifier(model.feature_dim, data.num_classes, cfg.probe, device)
    loop.restore({"model": model, "optimizer": optimizer, "class_probe": probe})

    def train_step(idx: Tensor, step: int, timing: bool) -> StepOutput:
        lr = set_learning_rate(optimizer, learning_rate(cfg.optim, step, steps, per_epoch))
        idx = idx.to(device)
        x = images[idx].float().div_(255)
        views = torch.stack([normalize(augment(x, cfg.augment)) for _ in range(2)])
        weight = weight_of(step) if cfg.variant == "rate" else 0.0
        tau = model.target.current_decay() if model.target is not None else None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out: TwoViewOutput = net(views, weight)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # type: ignore[no-untyped-call]
        if cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        if model.target is not None:
            model.target.update()
        z = torch.stack(out.projections.float().chunk(2))
        parts = rate_loss.last if cfg.variant == "rate" else rate_loss.observe(z)
        if parts is None:
            raise RuntimeError("the coding rate recorded nothing in a training step")
        metrics: dict[str, Tensor | float] = {
            "loss": out.loss.detach(),
            "pred_loss": out.prediction_loss.detach(),
        }
        if tau is not None:
            metrics["tau"] = tau
        metrics.update(rate=parts.rate, norm_rate=parts.normalized_rate, rate_weight=weight, lr=lr)
        metrics["probe_class_loss"] = probe.step(out.features, labels[idx])
        return StepOutput(metrics, time_rate(rate_loss, device) if timing else None)

    @torch.no_grad()
    def encode(split_images: Tensor) -> dict[str, Tensor]:
        """Encoder features and projections of the unaugmented images, in eval mode."""
        model.eval()

        def batch(idx: Tensor) -> dict[str, Tensor]:
            x = normalize(split_images[idx.to(device)])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                h = model.encoder(x)
                return {"encoder": h.float(), "projection": model.projector(h).float()}

        try:
            return collect_features(batch, split_images.shape[0], cfg.eval.batch_size)
        finally:
            model.train()

    test_images = data.test.images.to(device)

    def end_of_epoch(epoch: int) -> dict[str, Any]:
        f = encode(test_images)
        record: dict[str, Any] = {
            "online.linear_acc": accuracy(probe.predict(f["encoder"].to(device)).cpu(), data.test.labels)
        }
        record.update(loop.diagnose(epoch, f))
        return record

    def offline() -> dict[str, Any]:
        train_f, test_f = encode(images), encode(test_images)
        return {
            "encoder": classification_metrics(
                train_f["encoder"], data.train.labels, test_f["encoder"], data.test.labels, data.num_classes,
                cfg.eval, device,
            )
        }  # fmt: skip

    return loop.finish(
        loop.run(train_step, end_of_epoch, stop_after=stop_after),
        model=model, data=data.description, representations=("encoder", "projection"), offline=offline,
        step_keys=STEP_PLOTS, epoch_keys=EPOCH_PLOTS,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
