"""Typed dataclass configs: presets, --set overrides, typo errors and dumps."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest

from common.config import (
    ConfigError,
    add_config_arguments,
    apply_overrides,
    config_from_args,
    config_keys,
    config_to_dict,
    dump_config,
    load_config,
)
from common.data import DataConfig
from common.paths import REPO_ROOT


@dataclasses.dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    name: str = "demo"
    variant: Literal["ema", "ema_rate", "teacherless"] = "ema"
    epochs: int = 2
    compile: bool = False
    rate_weight: float | None = None
    milestones: list[int] = dataclasses.field(default_factory=lambda: [10, 20])
    eval_lengths: tuple[int, ...] = (3,)
    optim: Optim = dataclasses.field(default_factory=Optim)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def test_overrides_are_coerced_from_field_types() -> None:
    cfg = apply_overrides(
        TrainConfig(),
        [
            "name=123",
            "variant=ema_rate",
            "epochs=1e2",
            "compile=yes",
            "rate_weight=0.05",
            "milestones=[5, 6,7]",
            "eval_lengths=1,3,5",
            "optim.lr=3e-4",
            "optim.betas=0.8,0.95",
            "data.holdout=500",
            "data.train_npz=../shared/data/cifar10/cifar10_train.npz",
        ],
    )
    assert cfg.name == "123" and cfg.variant == "ema_rate" and cfg.epochs == 100 and cfg.compile is True
    assert cfg.rate_weight == 0.05 and cfg.milestones == [5, 6, 7] and cfg.eval_lengths == (1, 3, 5)
    assert cfg.optim == Optim(lr=3e-4, betas=(0.8, 0.95))
    assert cfg.data.holdout == 500 and cfg.data.train_npz == "../shared/data/cifar10/cifar10_train.npz"
    back = apply_overrides(cfg, ["rate_weight=none", "data.holdout=null", "compile=0"])
    assert back.rate_weight is None and back.data.holdout is None and back.compile is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochz=3", "unknown config key 'epochz' in --set; did you mean 'epochs'?"),
        ("optim.lrr=3", "unknown config key 'optim.lrr' in --set; did you mean 'optim.lr'?"),
        ("lr=3", "unknown config key 'lr' in --set; did you mean 'optim.lr'?"),
        ("dta.holdout=3", "unknown config key 'dta.holdout' in --set; did you mean 'data.holdout'?"),
        ("epochs=two", "config key 'epochs': cannot use 'two' as int"),
        ("compile=maybe", "config key 'compile': cannot use 'maybe' as bool"),
        ("variant=byol", "config key 'variant': 'byol' is not one of 'ema', 'ema_rate', 'teacherless'"),
        ("optim.betas=0.9", "config key 'optim.betas': expected 2 items, got 1"),
        ("optim=3", "config key 'optim' is a group"),
        ("epochs=0", "config key 'epochs' = '0': epochs must be >= 1, got 0"),
        ("epochs", "override 'epochs' must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainConfig(), [override])
    assert message in str(info.value)


def test_yaml_preset_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "cpu.yaml").write_text(
        "name: cpu\nepochs: 5\noptim:\n  lr: 0.002\ndata.holdout: 1000\nmilestones: [1, 2]\n"
    )
    cfg = load_config(TrainConfig, "cpu", ["epochs=7"], config_dir=tmp_path)
    assert (cfg.name, cfg.epochs, cfg.optim.lr, cfg.data.holdout, cfg.milestones) == (
        "cpu",
        7,
        0.002,
        1000,
        [1, 2],
    )
    assert cfg.optim.warmup_epochs == 1  # untouched defaults survive a partial group


def test_yaml_typo_names_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("optim:\n  warmup_epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"'optim.warmup_epoch' in .*bad.yaml; did you mean 'optim.warmup_epochs'"
    ):
        load_config(TrainConfig, "bad", config_dir=tmp_path)


def test_unknown_preset_lists_available_ones(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text("epochs: 1\n")
    with pytest.raises(ConfigError, match=r"unknown preset 'dmeo'.*demo.*did you mean 'demo'"):
        load_config(TrainConfig, "dmeo", config_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, str(tmp_path / "missing.yaml"))


def test_dump_roundtrips_through_yaml_and_json(tmp_path: Path) -> None:
    cfg = apply_overrides(TrainConfig(), ["variant=teacherless", "optim.betas=0.5,0.6", "data.test_size=20"])
    path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(TrainConfig, path) == cfg
    dump_config(cfg, tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data == config_to_dict(cfg) and data["optim"]["betas"] == [0.5, 0.6]


def test_mapping_overrides_and_keys() -> None:
    cfg = apply_overrides(TrainConfig(), {"optim": {"lr": 1}, "data.split_seed": 4})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.data.split_seed == 4
    keys = config_keys(TrainConfig)
    assert "optim.betas" in keys and "data.train_npz" in keys and "optim" not in keys


def test_argparse_helpers(tmp_path: Path) -> None:
    (tmp_path / "demo.yaml").write_text("epochs: 3\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, default_preset="demo")
    args = parser.parse_args(["--set", "optim.lr=0.5", "--set", "name=x"])
    cfg = config_from_args(TrainConfig, args, config_dir=tmp_path)
    assert (cfg.epochs, cfg.optim.lr, cfg.name) == (3, 0.5, "x")


def test_relative_preset_paths_start_at_the_repository_root_and_set_paths_at_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cifar_rot_train

    monkeypatch.chdir(tmp_path)  # anywhere but the repository root
    shared = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_train.npz"
    # The cpu preset's comment says its npz path is relative to the repository root.
    assert load_config(cifar_rot_train.TrainConfig, "cpu").data.train_npz == str(shared)
    (tmp_path / "p.yaml").write_text("data:\n  train_npz: ../shared/data/cifar10/cifar10_train.npz\n")
    cfg = load_config(TrainConfig, "p", ["data.test_npz=sub/test.npz"], config_dir=tmp_path)
    assert cfg.data.train_npz == str(shared) and cfg.data.test_npz == str(tmp_path / "sub" / "test.npz")
    saved = load_config(TrainConfig, "p", config_dir=tmp_path, path_base=None)  # a run's config: as recorded
    assert saved.data.train_npz == "../shared/data/cifar10/cifar10_train.npz"
    absolute = str(tmp_path / "x.npz")
    assert load_config(TrainConfig, None, [f"data.train_npz={absolute}", "data.data_dir=none"]).data == (
        DataConfig(train_npz=absolute)
    )
