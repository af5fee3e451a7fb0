"""Train seq-JEPA on CIFAR-10 rotation sequences, with an EMA teacher or a coding-rate regularizer.

Each image is seen as ``M + 1`` views rotated by random quarter turns (view 0 unrotated, the last the
target); seq-JEPA aggregates the ``M`` observed views with their relative actions into ``z_AGG`` and
predicts the target's embedding. The loss, in :func:`train`: ``prediction_loss - w * R(z_AGG)``. ``VARIANTS``
lists the variants; docs/trainer.md explains them, the outputs and how to read them.

Usage::

    python examples/cifar_rot_train.py                            # demo preset: embedded subset, ~1 min CPU
    python examples/cifar_rot_train.py --config cpu --variant ema_rate --set rate.weight=0.1
    torchrun --nproc_per_node=2 examples/cifar_rot_train.py --config cpu
    python examples/cifar_rot_train.py --resume runs/demo-teacherless_rate   # continue a stopped run

Outputs go to ``runs/<name>/`` (default ``<preset>-<variant>``); ``examples/compare_runs.py`` compares runs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from common.config import EncoderConfig, RunConfig, check_min, check_range, parse_config
from common.data import batch_indices, mix_seed
from common.dist import DistInfo, wrap
from common.evaluation import (
    OnlineProbe,
    accuracy,
    classification_metrics,
    collapse_diagnostics,
    collect_features,
    fit_mlp_regressor,
    r2_score,
    rotation_accuracy,
)
from common.optim import build_optimizer, learning_rate, rate_weight
from common.run import Run, StopRequest, guarded, open_run
from common.views import ROTATION_SINCOS, draw_rotations, rotation_actions, rotation_views
from jepa_rate import CodingRateLoss, SeqJEPA, prediction_loss


# ----------------------------------------------------------------------------------------------- config
class Variant(NamedTuple):
    target: Literal["ema", "stopgrad"]
    rate: bool
    symmetric: bool


VARIANTS = {
    "ema": Variant("ema", rate=False, symmetric=False),
    "ema_rate": Variant("ema", rate=True, symmetric=False),
    "teacherless_rate": Variant("stopgrad", rate=True, symmetric=False),
    "teacherless": Variant("stopgrad", rate=False, symmetric=False),
    "symmetric_rate": Variant("stopgrad", rate=True, symmetric=True),
}
#: What the plots show: the step records (train_curves.png) and the epoch records (epoch_metrics.png).
STEP_PLOTS = (
    "loss", "pred_loss", "rate", "norm_rate", "lr", "tau", "probe_class_loss", "probe_rotation_loss",
)  # fmt: skip
EPOCH_PLOTS = (
    "train.pred_loss", "val_pred_loss", "train.rate", "online.linear_acc", "online.rotation_r2",
    "online.rotation_acc", "encoder.effective_rank", "z_agg.effective_rank", "z_agg.normalized_std",
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig(EncoderConfig):
    """The seq-JEPA architecture (see :class:`jepa_rate.SeqJEPA`) on the encoder of
    :class:`common.config.EncoderConfig`. ``rate_on``: ``agg`` (z_AGG) or ``encoder`` (the encodings)."""

    action_embed_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    dim_feedforward: int | None = None
    dropout: float = 0.1
    predictor_hidden: int = 256
    predictor_norm: Literal["batch", "layer", "none"] = "batch"
    target_pass: Literal["joint", "separate"] = "joint"  # a stop-gradient target's encoder pass
    loss: Literal["cosine", "mse", "smooth_l1"] = "cosine"
    rate_on: Literal["agg", "encoder"] = "agg"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min(self, "model.", 1, "action_embed_dim num_layers num_heads dim_feedforward predictor_hidden")
        check_range(self, "model.", 0.0, 1.0, "dropout", open_high=True)


@dataclass(frozen=True)
class SeqConfig:
    """Rotation sequences: ``M`` observed views (``eval_num_observations``: another ``M`` to evaluate with),
    action codes (``auto``: ``sincos``, or ``onehot`` for ``symmetric_rate``), per-view crop and flip."""

    num_observations: int = 3
    eval_num_observations: int | None = None
    actions: Literal["auto", "sincos", "onehot"] = "auto"
    crop: bool = False
    flip: bool = False

    def __post_init__(self) -> None:
        reason = " (the rotation probe compares observed views 0 and 1)"
        check_min(self, "seq.", 2, "num_observations eval_num_observations", reason)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """The shared run settings (:class:`common.config.RunConfig`) plus the method's."""

    variant: Literal["ema", "ema_rate", "teacherless_rate", "teacherless", "symmetric_rate"] = (
        "teacherless_rate"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    seq: SeqConfig = field(default_factory=SeqConfig)

    def validate(self) -> None:
        variant, m = VARIANTS[self.variant], self.model
        if variant.symmetric and self.seq.actions == "sincos":
            raise ValueError(
                "variant symmetric_rate inverts actions by negation, which is wrong for sincos codes "
                "(the identity becomes 180 degrees): use seq.actions=onehot or auto"
            )
        if (width := m.feature_dim + m.action_embed_dim) % m.num_heads:
            raise ValueError(
                f"model.num_heads={m.num_heads} must divide the aggregator width {width} "
                f"(encoder features + model.action_embed_dim={m.action_embed_dim})"
            )

    @property
    def action_kind(self) -> Literal["sincos", "onehot"]:
        if self.seq.actions != "auto":
            return self.seq.actions
        return "onehot" if VARIANTS[self.variant].symmetric else "sincos"


# ------------------------------------------------------------------------------------------------ model
class Parts(NamedTuple):
    """What a training step updates: the model (``net``: wrapped by DDP / compile), its optimizer, the
    coding-rate loss and the two online probes (classes from z_AGG, rotation 0 -> 1 from [z_0, z_1])."""

    model: SeqJEPA
    net: nn.Module
    optimizer: torch.optim.Optimizer
    rate_loss: CodingRateLoss
    class_probe: OnlineProbe
    rotation_probe: OnlineProbe

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds (besides the step, the config and the run's meter)."""
        names = ("model", "optimizer", "class_probe", "rotation_probe")
        return {name: getattr(self, name) for name in names}


def build(cfg: TrainConfig, total_steps: int, num_classes: int, info: DistInfo) -> Parts:
    m, variant = cfg.model, VARIANTS[cfg.variant]
    model = SeqJEPA(
        m.build_encoder(), action_dim=4 if cfg.action_kind == "onehot" else 2, relative_actions=True,
        action_embed_dim=m.action_embed_dim,
        num_layers=m.num_layers, num_heads=m.num_heads, dim_feedforward=m.dim_feedforward, dropout=m.dropout,
        predictor_hidden=m.predictor_hidden, predictor_norm=m.predictor_norm, symmetric=variant.symmetric,
        target=variant.target, ema_decay=m.ema_decay(total_steps),
        # An EMA teacher always encodes the target in its own pass: the key applies to stop-gradient ones.
        target_pass=m.target_pass if variant.target == "stopgrad" else "joint",
    ).to(info.device)  # fmt: skip
    hidden, probe = cfg.probe.hidden, {"lr": cfg.probe.lr, "weight_decay": cfg.probe.weight_decay}
    class_head = nn.Linear(model.aggregator.d_model, num_classes).to(info.device)
    rotation_head = nn.Sequential(nn.Linear(2 * model.embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    return Parts(model, wrap(model, info, cfg.compile), build_optimizer(model, cfg.optim),
                 cfg.rate.loss(info.distributed), OnlineProbe(class_head, **probe),
                 OnlineProbe(rotation_head.to(info.device), **probe))  # fmt: skip


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def encode(cfg: TrainConfig, model: SeqJEPA, images: Tensor, salt: int) -> dict[str, Tensor]:
    """z_AGG, z_0, z_1 and prediction loss of fixed (seeded) evaluation sequences of every image, in eval
    mode. The rate belongs to training and is not computed here, so any number of sequences works."""
    num_views = (cfg.seq.eval_num_observations or cfg.seq.num_observations) + 1
    # One draw for the whole split: each image's sequence is the same for any eval.batch_size.
    all_turns = draw_rotations(len(images), num_views, mix_seed(cfg.eval.seed, salt))

    def batch(idx: Tensor) -> dict[str, Tensor]:
        turns = all_turns[idx]
        views = rotation_views(images[idx.to(images.device)], turns)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(views, rotation_actions(turns.to(images.device), cfg.action_kind))
            loss = prediction_loss(out.prediction, out.target, cfg.model.loss).float()
        z0, z1 = out.encodings.float()[:, 0], out.encodings.float()[:, 1]
        z_agg, loss = out.z_agg[: len(idx)].float(), loss.expand(len(idx))
        return {"z_agg": z_agg, "z0": z0, "z1": z1, "turns": turns[:, 1], "loss": loss}

    return collect_features(model, batch, len(images), cfg.eval.batch_size)


def evaluate_epoch(cfg: TrainConfig, parts: Parts, run: Run, epoch: int) -> dict[str, Any]:
    """The online probes and collapse diagnostics on the evaluation split (rank 0, no collectives)."""
    device, data = run.info.device, run.data
    f = encode(cfg, parts.model, data.test.images.to(device), salt=2)
    pred = parts.rotation_probe.predict(torch.cat((f["z0"], f["z1"]), dim=1).to(device)).cpu()
    record: dict[str, Any] = {
        "val_pred_loss": float(f["loss"].mean()),
        "online.linear_acc": accuracy(parts.class_probe.predict(f["z_agg"].to(device)), data.test.labels),
        "online.rotation_r2": r2_score(pred, ROTATION_SINCOS[f["turns"]]),
        "online.rotation_acc": rotation_accuracy(pred, f["turns"]),
    }
    representations = {"z_agg": f["z_agg"], "encoder": f["z0"]}
    return {**record, **collapse_diagnostics(representations, run.progress.write, epoch)}


def offline_evaluation(cfg: TrainConfig, model: SeqJEPA, run: Run) -> dict[str, Any]:
    """Linear probe and k-NN on frozen z_AGG and encoder features; rotation R² from frozen [z_0, z_1]."""
    print("offline evaluation on frozen features ...", file=sys.stderr, flush=True)
    device, data = run.info.device, run.data
    train = encode(cfg, model, data.train.images.to(device), 1)
    test = encode(cfg, model, data.test.images.to(device), 2)
    out: dict[str, Any] = {
        name: classification_metrics(train[key], test[key], data, cfg.eval, device)
        for name, key in (("z_agg", "z_agg"), ("encoder", "z0"))
    }
    pairs = [torch.cat((f["z0"], f["z1"]), dim=1) for f in (train, test)]
    pred = fit_mlp_regressor(pairs[0], ROTATION_SINCOS[train["turns"]], pairs[1], cfg.eval, device)
    out["rotation_r2"] = r2_score(pred, ROTATION_SINCOS[test["turns"]])
    return {**out, "rotation_acc": rotation_accuracy(pred, test["turns"])}


# ---------------------------------------------------------------------------------------- the training run
def train(cfg: TrainConfig, run: Run, parts: Parts, stop_after: int | None) -> int | None:
    """The training loop; returns an exit code when it stops early, ``None`` when it completes."""
    info, device, model, variant = run.info, run.info.device, parts.model, VARIANTS[cfg.variant]
    images, labels = run.data.train.images.to(device), run.data.train.labels.to(device)
    local = cfg.batch_size // info.world_size
    share = slice(info.rank * local, (info.rank + 1) * local)  # this rank's rows of the global batch
    with StopRequest() as stop:
        for step in range(run.start, run.total):
            torch.manual_seed(mix_seed(cfg.seed, step, 1 + info.rank))  # nothing random depends on the past
            idx = batch_indices(len(images), cfg.batch_size, cfg.seed, step, info.rank, info.world_size)
            x, y = images[idx.to(device)], labels[idx.to(device)]
            turns = draw_rotations(cfg.batch_size, cfg.seq.num_observations + 1, mix_seed(cfg.seed, step))
            turns = turns[share].to(device)  # drawn for the global batch
            lr = learning_rate(cfg.optim, step, run.total, run.per_epoch)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            began = time.perf_counter()
            views = rotation_views(x, turns, crop=cfg.seq.crop, flip=cfg.seq.flip)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = parts.net(views, rotation_actions(turns, cfg.action_kind))
                pred_loss = prediction_loss(out.prediction, out.target, cfg.model.loss)
            z = out.z_agg if cfg.model.rate_on == "agg" else out.encodings.flatten(0, 1)
            with torch.set_grad_enabled(variant.rate):  # logged for every variant, trained with some
                terms = parts.rate_loss.forward_components(z.float())
            w = rate_weight(cfg.rate, step, run.total, run.per_epoch) if variant.rate else 0.0
            loss = pred_loss - w * terms.rate
            parts.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if cfg.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            parts.optimizer.step()
            tau = {"tau": model.target_encoder.current_decay()} if model.target_encoder is not None else {}
            model.update_target()
            pair = torch.cat((out.encodings[:, 0], out.encodings[:, 1]), dim=1)  # probes: detached inputs
            rotation = ROTATION_SINCOS.to(device)[turns[:, 1]]
            metrics = {
                "loss": loss.detach(), "pred_loss": pred_loss.detach(), **tau, "rate": terms.rate.detach(),
                "norm_rate": terms.normalized_rate.detach(), "rate_scale": terms.scale, "rate_weight": w,
                "probe_class_loss": parts.class_probe.step(out.z_agg[: len(x)], y),
                "probe_rotation_loss": parts.rotation_probe.step(pair, rotation),
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
    cfg, args = parse_config(TrainConfig, argv, __doc__.splitlines()[0], list(VARIANTS))
    with guarded(args.resume or Path(cfg.out_dir) / str(cfg.name)):
        run = open_run(cfg, resume=args.resume, overwrite=args.overwrite)
        info = run.info
        parts = build(cfg, run.total, run.data.num_classes, info)
        run.begin(parts.state(), overwrite=args.overwrite)
        code = train(cfg, run, parts, args.stop_after)
        if code is None:
            offline = offline_evaluation(cfg, parts.model, run) if info.is_main and cfg.eval.offline else None
            run.finish(parts.model, offline, ("z_agg", "encoder"), STEP_PLOTS, EPOCH_PLOTS)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
