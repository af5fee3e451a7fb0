"""Typed configs: frozen dataclasses merged by OmegaConf as ``defaults <- preset YAML <- --set key=value``;
OmegaConf checks keys and types, ``__post_init__`` the ranges, and every failure is one line naming the key.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from jepa_rate import CodingRateLoss, ConvEncoder, CosineSchedule, cifar_resnet18

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
REPO_ROOT = CONFIG_DIR.parents[1]
PATH_KEYS = ("data.train_npz", "data.test_npz", "data.data_dir")
C = TypeVar("C", bound="RunConfig")


def check_min(cfg: Any, prefix: str, minimum: float, names: str, reason: str = "") -> None:
    """Raises ``ValueError`` naming ``<prefix><name>`` for the first of ``names`` below ``minimum``.

    Examples:
        >>> check_min(ProbeConfig(), "probe.", 300, "hidden")
        Traceback (most recent call last):
        ...
        ValueError: probe.hidden must be >= 300, got 256
    """
    for name in names.split():
        value = getattr(cfg, name)
        if value is not None and not value >= minimum:
            raise ValueError(f"{prefix}{name} must be >= {minimum}, got {value!r}{reason}")


def check_range(cfg: Any, prefix: str, low: float, high: float, names: str, open_high: bool = False) -> None:
    """Raises ``ValueError`` naming the first of ``names`` outside ``[low, high]`` (``[low, high)``)."""
    close = ")" if open_high else "]"
    for name in names.split():
        v = getattr(cfg, name)
        if v is not None and not (math.isfinite(v) and low <= v and (v < high if open_high else v <= high)):
            raise ValueError(f"{prefix}{name} must lie in [{low}, {high}{close}, got {v!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from (see :func:`common.data.load_cifar10`); relative paths of a preset are
    taken from the repository root, those of ``--set`` from the working directory."""

    train_npz: str | None = None
    test_npz: str | None = None
    data_dir: str | None = None
    download: bool = False
    holdout: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        check_min(self, "data.", 0, "holdout train_size test_size")


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation of frozen features after training (``offline``): linear probe, k-NN and the MLP
    regressor of the rotation R²; ``seed`` fixes the evaluation views and every draw."""

    offline: bool = True
    batch_size: int = 500
    knn_k: int = 20
    linear_weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    linear_max_iter: int = 300
    regressor_hidden: int = 128
    regressor_steps: int = 300
    regressor_lr: float = 3e-3
    regressor_max_train: int = 10_000
    seed: int = 1234

    def __post_init__(self) -> None:
        check_min(self, "eval.", 1, "batch_size knn_k linear_max_iter regressor_hidden regressor_steps")
        check_min(self, "eval.", 2, "regressor_max_train")
        if not (decays := self.linear_weight_decays) or min(decays) < 0:
            raise ValueError(f"eval.linear_weight_decays must be non-empty and >= 0, got {decays}")


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer and its learning rate (see :func:`common.optim.learning_rate`)."""

    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    schedule_unit: Literal["step", "epoch"] = "step"
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_min(self, "optim.", 0, "lr min_lr weight_decay warmup_epochs")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        check_min(self, "optim.", 1e-12, "grad_clip")


@dataclass(frozen=True)
class RateConfig:
    """The coding-rate term ``- weight * R(z)`` of the loss: its weight through ``schedule`` (see
    :func:`common.optim.rate_weight`) and the settings of :class:`jepa_rate.CodingRateLoss`."""

    weight: float = 0.06
    schedule: Literal["constant", "warmup", "warmup_cosine"] = "constant"
    warmup_epochs: float = 0.0
    final_weight: float = 0.0
    eps: float | None = None
    alpha: float | None = 1.0
    center: bool = True
    normalize: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "warmup_epochs", "final_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"rate.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if (self.eps is None) == (self.alpha is None):
            raise ValueError(
                f"set exactly one of rate.eps and rate.alpha, got eps={self.eps}, alpha={self.alpha}"
            )
        for name in ("eps", "alpha"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"rate.{name} must be a finite number > 0, got {value!r}")

    def loss(self, distributed: bool) -> CodingRateLoss:
        """The rate (of the global batch under DDP); its own weight stays 1: the trainers apply ``weight``."""
        return CodingRateLoss(eps=self.eps, alpha=self.alpha, center=self.center, normalize=self.normalize,
                              gather_distributed=distributed)  # fmt: skip


@dataclass(frozen=True)
class ProbeConfig:
    """Online probes: Adam learning rate and weight decay, hidden width of MLP probes."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 256

    def __post_init__(self) -> None:
        check_min(self, "probe.", 0, "weight_decay")
        check_min(self, "probe.", 1, "hidden")
        check_min(self, "probe.", 1e-12, "lr")


@dataclass(frozen=True)
class EncoderConfig:
    """The ``model`` keys both trainers share: the encoder (:class:`jepa_rate.ConvEncoder`, with or without
    BatchNorm, or the CIFAR ResNet-18) and a teacher's EMA decay, ramped from ``ema_tau`` to ``ema_tau_end``
    (``null``: fixed)."""

    encoder: Literal["conv", "resnet18"] = "conv"
    conv_widths: tuple[int, ...] = (16, 32, 64, 128)
    encoder_norm: Literal["batch", "none"] = "batch"  # none: the collapse control of the results
    ema_tau: float = 0.996
    ema_tau_end: float | None = 1.0

    def __post_init__(self) -> None:
        if not (widths := self.conv_widths) or min(widths) < 1:
            raise ValueError(f"model.conv_widths must be one or more channel counts >= 1, got {list(widths)}")
        check_range(self, "model.", 0.0, 1.0, "ema_tau ema_tau_end")
        if self.encoder == "resnet18" and self.encoder_norm != "batch":
            raise ValueError("model.encoder_norm=none is a setting of the conv encoder, not of resnet18")

    @property
    def feature_dim(self) -> int:
        return 512 if self.encoder == "resnet18" else self.conv_widths[-1]

    def build_encoder(self) -> nn.Module:
        if self.encoder == "resnet18":
            return cifar_resnet18()
        return ConvEncoder(widths=self.conv_widths, norm=self.encoder_norm)

    def ema_decay(self, total_steps: int) -> float | CosineSchedule:
        end = self.ema_tau_end
        return self.ema_tau if end is None else CosineSchedule(total_steps, start=self.ema_tau, end=end)


@dataclass(frozen=True)
class RunConfig:
    """Settings every trainer shares (``batch_size`` is global over DDP ranks); a trainer subclasses it with
    ``variant`` and its model's groups."""

    name: str | None = None
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    epochs: int = 10
    batch_size: int = 256
    bf16: bool = False
    compile: bool = False
    log_every: int = 10
    ckpt_every: int = 0
    timing_every: int = 50
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rate: RateConfig = field(default_factory=RateConfig)

    #: Keys a ``--resume`` may change (``group.*``: all of the group): they shape neither the saved state nor
    #: the data, and include the remedies for a NaN loss.
    RESUME_MUTABLE: ClassVar[tuple[str, ...]] = (
        "device", "compile", "bf16", "log_every", "ckpt_every", "timing_every",
        "optim.lr", "optim.min_lr", "optim.warmup_epochs", "optim.grad_clip", "rate.*", "eval.*",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.name is not None and (self.name.strip() in ("", ".", "..") or set("/\\\0") & set(self.name)):
            raise ValueError(
                f"name must be a single folder name (no path separator, not '.' or '..'), got {self.name!r}"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {self.device!r}")
        check_min(self, "", 1, "epochs log_every")
        check_min(self, "", 2, "batch_size", " (BatchNorm needs 2 images per batch)")
        check_min(self, "", 0, "ckpt_every timing_every")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must lie in [0, 2**32), got {self.seed}")

    def validate(self) -> None:
        """Checks across keys, once the config is complete (raises ``ValueError``)."""


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line that names it."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts / lists / scalars (YAML, JSON and checkpoint safe)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def flat_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.001, ...}`` of a nested dict."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        nested = isinstance(value, dict)
        out.update(flat_keys(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value})
    return out


def _one_line(err: Exception, where: str, schema: Any) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0].strip()
    if msg.startswith("Key '") and "not in" in msg:
        known = list(flat_keys(to_dict(schema)))
        guess = difflib.get_close_matches(key, known, n=1, cutoff=0.5) or [
            k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]
        ]
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        return ConfigError(f"unknown config key '{key}' in {where}{hint}")
    return ConfigError(f"config key '{key}' in {where}: {msg}" if key else f"{where}: {msg}")


def _absolute_paths(conf: DictConfig, base: Path) -> None:
    for key in PATH_KEYS:
        value = OmegaConf.select(conf, key, default=None)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            OmegaConf.update(conf, key, os.path.abspath(base / value))


def preset_path(preset: str, config_dir: Path = CONFIG_DIR) -> Path:
    """The YAML file of ``preset``: a path to one, or the name of a file in ``config_dir``."""
    path = Path(preset).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        return path
    if (config_dir / f"{preset}.yaml").is_file():
        return config_dir / f"{preset}.yaml"
    names = sorted(p.stem for p in config_dir.glob("*.yaml"))
    raise ConfigError(f"unknown preset '{preset}' (available in {config_dir}: {', '.join(names)})")


def load_config(cls: type[C], source: Path | None, overrides: list[str], saved: bool = False) -> C:
    """``cls()`` <- the YAML file ``source`` <- ``overrides`` (``key=value``), checked; ``saved``: ``source``
    is a run's ``config.yaml`` (paths kept as recorded). Raises :class:`ConfigError`."""
    if bad := [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]:
        raise ConfigError(f"--set {bad[0]!r} must look like key=value")
    where = str(source)
    try:
        conf = OmegaConf.structured(cls)
        if source is not None:
            preset = OmegaConf.load(source)
            if not isinstance(preset, DictConfig):
                raise ConfigError(f"{source}: a preset must be a mapping of keys to values")
            if not saved:
                _absolute_paths(preset, REPO_ROOT)
            conf = OmegaConf.merge(conf, preset)
        where = "--set"
        dotlist = OmegaConf.from_dotlist(overrides)
        _absolute_paths(dotlist, Path.cwd())
        cfg: C = OmegaConf.to_object(OmegaConf.merge(conf, dotlist))  # type: ignore[assignment]
        cfg.validate()
    except OmegaConfBaseException as err:
        raise _one_line(err, where, cls()) from None
    except yaml.MarkedYAMLError as err:  # duplicate keys included: "found duplicate key K"
        line = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        raise ConfigError(f"{where}: {err.problem}{line}") from None
    except (ValueError, TypeError) as err:  # __post_init__ and validate() name the key themselves
        raise ConfigError(str(err)) from None
    return cfg


def parse_config(
    cls: type[C], argv: list[str] | None, description: str, variants: list[str], group: str = ""
) -> tuple[C, argparse.Namespace]:
    """Parses the command line every trainer shares and builds its config, from the presets in
    ``configs/<group>``; a bad flag, preset, key or value exits with a one-line usage error (code 2)."""
    config_dir, name_prefix = CONFIG_DIR / group, f"{group}-" if group else ""
    presets = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--config", "--preset", default="demo", metavar="PRESET", help=f"{presets}, or a YAML file")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="optim.lr=3e-4")
    add("--variant", choices=variants, help="shorthand for --set variant=...")
    add("--name", help="run folder name under out_dir (default: <preset>-<variant>)")
    add("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add("--stop-after", type=int, metavar="STEPS", help="save and stop after STEPS global steps")
    add("--overwrite", action="store_true", help="replace an existing run folder")
    args = parser.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"argument --stop-after: must be >= 1, got {args.stop_after}")
    overrides = [*([f"variant={args.variant}"] if args.variant else []), *args.overrides]
    try:
        if args.resume is not None:
            saved = args.resume / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"cannot resume '{args.resume}': it has no config.yaml")
            cfg = load_config(cls, saved, overrides, saved=True)
        else:
            cfg = load_config(cls, preset_path(args.config, config_dir), overrides)
        if args.name is not None:
            cfg = replace(cfg, name=args.name)
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    if cfg.name is None:
        cfg = replace(cfg, name=f"{name_prefix}{Path(args.config).stem}-{getattr(cfg, 'variant', 'run')}")
    return cfg, args
