"""Two-view self-supervised learning on CIFAR-10 (SimSiam / BYOL style) where a coding rate can replace the
EMA teacher or the stop-gradient.

Two augmented views go through an encoder and a projector (``z``); a predictor maps each view's ``z`` to
the other's target ``t``: ``stopgrad(z)`` (``simsiam``), an EMA copy's (``byol``), or ``z`` itself with the
rate (``rate``) or without it (``none``: the control). The loss, in :func:`train`:
``(D(p1, t2) + D(p2, t1)) / 2 - w * (R(z1) + R(z2)) / 2``. See docs/two_view.md.

Usage::

    python examples/two_view_rate.py                              # demo preset, variant rate
    python examples/two_view_rate.py --preset cpu --variant simsiam
    torchrun --nproc_per_node=2 examples/two_view_rate.py --preset cpu

Presets live in ``examples/configs/two_view``; outputs go to ``runs/two_view-<preset>-<variant>/``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from common.augment import AugmentConfig, augment
from common.config import EncoderConfig, RunConfig, check_min, parse_config
from common.data import batch_indices, mix_seed, normalize
from common.dist import DistInfo, wrap
from common.evaluation import (
    OnlineProbe,
    accuracy,
    classification_metrics,
    collapse_diagnostics,
    collect_features,
)
from common.optim import build_optimizer, learning_rate, rate_weight
from common.run import Run, StopRequest, guarded, open_run
from jepa_rate import CodingRateLoss, EMATarget, prediction_loss

VARIANTS = ("simsiam", "byol", "rate", "none")
STEP_PLOTS = ("loss", "pred_loss", "rate", "norm_rate", "lr", "tau", "probe_class_loss")
EPOCH_PLOTS = (
    "train.pred_loss", "train.rate", "online.linear_acc", "encoder.effective_rank",
    "projection.effective_rank", "projection.normalized_std", "projection.mean_cosine",
)  # fmt: skip


@dataclass(frozen=True)
class NetConfig(EncoderConfig):
    """The encoder (:class:`common.config.EncoderConfig`, its EMA copy for ``byol``), the projector
    ``D -> proj_hidden -> proj_dim`` and the predictor ``proj_dim -> pred_hidden -> proj_dim``."""

    ema_tau: float = 0.99
    proj_dim: int = 128
    proj_hidden: int = 256
    pred_hidden: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min(self, "model.", 1, "proj_dim proj_hidden pred_hidden")


@dataclass(frozen=True)
class TwoViewConfig(RunConfig):
    variant: Literal["simsiam", "byol", "rate", "none"] = "rate"
    model: NetConfig = field(default_factory=NetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# ------------------------------------------------------------------------------------------------ model
def mlp(d_in: int, hidden: int, d_out: int, *, last_norm: bool) -> nn.Sequential:
    """``Linear -> BN -> ReLU -> Linear``, then a BN without affine parameters if ``last_norm``."""
    norm = [nn.BatchNorm1d(d_out, affine=False)] if last_norm else []
    layers = [nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out, bias=not last_norm), *norm)


class TwoViewOutput(NamedTuple):
    """Per view (rows ``[view 1; view 2]``): encoder features, projections ``z``, predictions ``p`` and the
    targets ``t`` of the variant (``z`` itself, detached, or the EMA copy's)."""

    features: Tensor
    z: Tensor
    p: Tensor
    t: Tensor


class TwoViewNet(nn.Module):
    """Encoder + projector + predictor, with the variant's target (see the module docstring)."""

    def __init__(self, cfg: TwoViewConfig, total_steps: int) -> None:
        super().__init__()
        m = cfg.model
        self.variant = cfg.variant
        self.encoder = m.build_encoder()
        self.projector = mlp(m.feature_dim, m.proj_hidden, m.proj_dim, last_norm=True)
        self.predictor = mlp(m.proj_dim, m.pred_hidden, m.proj_dim, last_norm=False)
        self.target: EMATarget | None = None
        if cfg.variant == "byol":
            self.target = EMATarget(nn.Sequential(self.encoder, self.projector), m.ema_decay(total_steps))

    def forward(self, views: Tensor) -> TwoViewOutput:
        """``views`` ``(2, B, C, H, W)``, in one pass (BatchNorm sees both views, as in SimSiam)."""
        both = views.flatten(0, 1)
        features = self.encoder(both)
        z = self.projector(features)
        t = self.target(both).detach() if self.target is not None else z
        t = t.detach() if self.variant == "simsiam" else t  # rate and none: gradients through both branches
        return TwoViewOutput(features, z, self.predictor(z), t)


class Parts(NamedTuple):
    model: TwoViewNet
    net: nn.Module
    optimizer: torch.optim.Optimizer
    rate_loss: CodingRateLoss
    probe: OnlineProbe

    def state(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "class_probe": self.probe}


def build(cfg: TwoViewConfig, total_steps: int, num_classes: int, info: DistInfo) -> Parts:
    model = TwoViewNet(cfg, total_steps).to(info.device)
    head = nn.Linear(cfg.model.feature_dim, num_classes).to(info.device)
    probe = OnlineProbe(head, lr=cfg.probe.lr, weight_decay=cfg.probe.weight_decay)
    return Parts(model, wrap(model, info, cfg.compile), build_optimizer(model, cfg.optim),
                 cfg.rate.loss(info.distributed), probe)  # fmt: skip


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def encode(cfg: TwoViewConfig, model: TwoViewNet, images: Tensor) -> dict[str, Tensor]:
    """Encoder features and projections of the unaugmented images, in eval mode."""

    def batch(idx: Tensor) -> dict[str, Tensor]:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            h = model.encoder(normalize(images[idx.to(images.device)]))
            return {"encoder": h.float(), "projection": model.projector(h).float()}

    return collect_features(model, batch, len(images), cfg.eval.batch_size)


def evaluate_epoch(cfg: TwoViewConfig, parts: Parts, run: Run, epoch: int) -> dict[str, Any]:
    """The online probe and collapse diagnostics on the evaluation split (rank 0, no collectives)."""
    device, test = run.info.device, run.data.test
    f = encode(cfg, parts.model, test.images.to(device))
    record = {"online.linear_acc": accuracy(parts.probe.predict(f["encoder"].to(device)), test.labels)}
    return {**record, **collapse_diagnostics(f, run.progress.write, epoch)}


def offline_evaluation(cfg: TwoViewConfig, model: TwoViewNet, run: Run) -> dict[str, Any]:
    """Linear probe and k-NN on frozen encoder features."""
    print("offline evaluation on frozen features ...", file=sys.stderr, flush=True)
    device, data = run.info.device, run.data
    train, test = (encode(cfg, model, s.images.to(device))["encoder"] for s in (data.train, data.test))
    return {"encoder": classification_metrics(train, test, data, cfg.eval, device)}


# ---------------------------------------------------------------------------------------- the training run
def train(cfg: TwoViewConfig, run: Run, parts: Parts, stop_after: int | None) -> int | None:
    """The training loop; returns an exit code when it stops early, ``None`` when it completes."""
    info, device, model = run.info, run.info.device, parts.model
    images, labels = run.data.train.images.to(device), run.data.train.labels.to(device)
    with StopRequest() as stop:
        for step in range(run.start, run.total):
            torch.manual_seed(mix_seed(cfg.seed, step, 1 + info.rank))  # the augmentations of this step
            idx = batch_indices(len(images), cfg.batch_size, cfg.seed, step, info.rank, info.world_size)
            x, y = images[idx.to(device)].float().div_(255), labels[idx.to(device)]
            lr = learning_rate(cfg.optim, step, run.total, run.per_epoch)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            began = time.perf_counter()
            views = torch.stack([normalize(augment(x, cfg.augment)) for _ in range(2)])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = parts.net(views)
                (p1, p2), (t1, t2) = out.p.chunk(2), out.t.chunk(2)
                pred_loss = 0.5 * (prediction_loss(p1, t2) + prediction_loss(p2, t1))
            z = torch.stack(out.z.float().chunk(2))  # (2, B, d): the rate of each view, in one batched call
            with torch.set_grad_enabled(cfg.variant == "rate"):  # logged for every variant
                terms = parts.rate_loss.forward_components(z)
            w = rate_weight(cfg.rate, step, run.total, run.per_epoch) if cfg.variant == "rate" else 0.0
            loss = pred_loss - w * terms.rate
            parts.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if cfg.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            parts.optimizer.step()
            tau = {"tau": model.target.current_decay()} if model.target is not None else {}
            if model.target is not None:
                model.target.update()
            metrics = {
                "loss": loss.detach(), "pred_loss": pred_loss.detach(), **tau, "rate": terms.rate.detach(),
                "norm_rate": terms.normalized_rate.detach(), "rate_weight": w,
                "probe_class_loss": parts.probe.step(out.features[: len(x)], y),
            }  # fmt: skip
            run.log_step(step, began, parts.rate_loss, z.shape, {**metrics, "lr": lr})
            if (step + 1) % run.per_epoch == 0:
                record = run.epoch_record(step + 1)
                if info.is_main:  # evaluation on rank 0 only, without collectives
                    record.update(evaluate_epoch(cfg, parts, run, record["epoch"]))
                run.log_epoch(record)
            if run.save(step + 1, parts.state(), stop, stop_after):
                return run.stopped(stop.signal_name, step + 1)
    run.progress.close()
    return None


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config(TwoViewConfig, argv, __doc__.splitlines()[0], list(VARIANTS), "two_view")
    with guarded(args.resume or Path(cfg.out_dir) / str(cfg.name)):
        run = open_run(cfg, resume=args.resume, overwrite=args.overwrite)
        info = run.info
        parts = build(cfg, run.total, run.data.num_classes, info)
        run.begin(parts.state(), overwrite=args.overwrite)
        code = train(cfg, run, parts, args.stop_after)
        if code is None:
            offline = offline_evaluation(cfg, parts.model, run) if info.is_main and cfg.eval.offline else None
            run.finish(parts.model, offline, ("encoder", "projection"), STEP_PLOTS, EPOCH_PLOTS)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
