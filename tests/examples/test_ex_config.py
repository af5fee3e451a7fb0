"""Configs from OmegaConf structured dataclasses: presets, --set overrides, one-line errors, saved configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import cifar_rot_train
import two_view_rate
from common.config import CONFIG_DIR, REPO_ROOT, ConfigError, load_config, to_dict

Train = cifar_rot_train.TrainConfig


def test_every_preset_of_both_trainers_loads() -> None:
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        assert load_config(Train, path, []).epochs >= 1, path
    for path in sorted((CONFIG_DIR / "two_view").glob("*.yaml")):
        assert load_config(two_view_rate.TwoViewConfig, path, []).epochs >= 1, path


def test_overrides_are_typed_and_applied_in_order() -> None:
    cfg = load_config(
        Train,
        CONFIG_DIR / "tiny.yaml",
        ["optim.lr=3e-4", "model.conv_widths=[4,8]", "optim.grad_clip=null", "optim.lr=1e-4", "bf16=true"],
    )
    assert cfg.optim.lr == 1e-4 and cfg.model.conv_widths == (4, 8) and cfg.bf16 is True
    assert cfg.optim.grad_clip is None and cfg.epochs == 2  # from the preset


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("epochs: 2\nepochs: 3\n", "found duplicate key epochs (line 2)"),
        ("optim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", "found duplicate key lr (line 3)"),
        ("optim:\n  lrr: 1\n", "unknown config key 'optim.lrr' in {path}; did you mean 'optim.lr'?"),
        ("epochs: [1\n", "{path}: "),
        ("- 1\n- 2\n", "a preset must be a mapping"),
        ("optim: 3\n", "{path}: "),
        ("model:\n  dropout: 2\n", "model.dropout must lie in [0.0, 1.0), got 2.0"),
    ],
)
def test_a_bad_preset_is_one_line_that_names_the_file_and_key(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(Train, path, [])
    assert message.format(path=path) in str(info.value) and "\n" not in str(info.value)


def test_relative_data_paths_resolve_from_the_repository_or_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("data:\n  train_npz: data/a.npz\n  data_dir: /abs/cifar\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Train, preset, ["data.test_npz=b.npz"])
    assert cfg.data.train_npz == os.path.join(REPO_ROOT, "data", "a.npz")
    assert cfg.data.test_npz == str(tmp_path / "b.npz") and cfg.data.data_dir == "/abs/cifar"


def test_a_saved_config_loads_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(Train, CONFIG_DIR / "gpu.yaml", ["variant=symmetric_rate", "model.ema_tau_end=null"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(Train, saved, [], saved=True) == cfg


def test_checks_across_keys_run_once_the_config_is_complete() -> None:
    # num_heads=3 does not fit the default width; with the width changed in the same command it does.
    cfg = load_config(
        Train, None, ["model.num_heads=3", "model.conv_widths=[8,16]", "model.action_embed_dim=8"]
    )
    assert cfg.model.num_heads == 3
    with pytest.raises(ConfigError, match=r"model\.num_heads=3 must divide the aggregator width 160"):
        load_config(Train, None, ["model.num_heads=3"])


def test_new_recipe_knobs_are_config_keys() -> None:
    cfg = load_config(
        Train,
        None,
        [
            "optim.name=adam",
            "optim.schedule_unit=epoch",
            "model.predictor_norm=layer",
            "model.target_pass=separate",
        ],
    )
    assert (cfg.optim.name, cfg.optim.schedule_unit) == ("adam", "epoch")
    assert (cfg.model.predictor_norm, cfg.model.target_pass) == ("layer", "separate")
