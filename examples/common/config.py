"""Typed dataclass configs: YAML presets, ``--set key=value`` overrides, and dumps.

A config is a (possibly frozen) dataclass whose fields are ``bool``, ``int``, ``float``, ``str``, ``Literal``,
``Optional``/unions of these, ``tuple``/``list`` of them, or nested config dataclasses. Nested fields are
addressed with dotted keys (``data.train_npz``) both in ``--set`` and, optionally, in YAML; a YAML preset may
also nest them as mappings. Resolution order: the dataclass defaults, then the preset, then each override in
order. Every value is checked against its field's type (strings are coerced: ``true/false/yes/no/on/off/1/0``
for bools, ``none``/``null``/``~``/empty for ``None``, ``1,2,3`` or ``[1, 2, 3]`` for sequences), and an
unknown key is an error that names it and suggests the closest valid one.
Path fields (:func:`common.paths.path_field`) are recorded as absolute paths; see :mod:`common.paths`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .paths import REPO_ROOT, absolute_path, is_path_field

__all__ = [
    "CONFIG_DIR",
    "REPO_ROOT",
    "ConfigError",
    "add_config_arguments",
    "apply_overrides",
    "config_from_args",
    "config_keys",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_overrides",
    "resolve_preset",
]

#: Where named presets live: ``examples/configs/<name>.yaml``.
CONFIG_DIR: Path = Path(__file__).resolve().parent.parent / "configs"

C = TypeVar("C")

_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n"}
_NONE = {"none", "null", "~", ""}


class ConfigError(ValueError):
    """A bad preset, key or value; the message names it."""


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def config_keys(cls: type) -> list[str]:
    """All dotted leaf keys of config class ``cls``, in field order.

    Examples:
        >>> from common.data import DataConfig
        >>> config_keys(DataConfig)[:3]
        ['train_npz', 'test_npz', 'data_dir']
    """
    keys: list[str] = []
    for name, tp in _fields(cls).items():
        if _is_config(tp):
            keys.extend(f"{name}.{sub}" for sub in config_keys(tp))
        else:
            keys.append(name)
    return keys


def _unknown(key: str, cls: type, where: str) -> ConfigError:
    valid = config_keys(cls)
    guess = [k for k in valid if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    guess = guess or difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{guess[0]}'?" if guess else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against ``tp``, converting strings (from ``--set``) and YAML scalars."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"config key '{key}': cannot use {value!r} as {_type_name(tp)}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (
            isinstance(value, str) and value.strip().lower() in _NONE and type(None) in args
        ):
            if type(None) in args:
                return None
            raise bad
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        raise bad
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value.strip()):
                return choice
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        items = value
        if isinstance(value, str):
            # "[1, 2]" is parsed as YAML, "1,2" split on commas; an empty string is an empty sequence.
            text = value.strip()
            try:
                items = (
                    yaml.safe_load(text)
                    if text.startswith("[")
                    else [p for p in text.split(",") if p.strip()]
                )
            except yaml.YAMLError:
                raise bad from None
        if not isinstance(items, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(
                    f"config key '{key}': expected {len(args)} items, got {len(items)} ({value!r})"
                )
            return tuple(_coerce(v, a, key) for v, a in zip(items, args, strict=True))
        elem = args[0] if args else Any
        out = [_coerce(v.strip() if isinstance(v, str) else v, elem, key) for v in items]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    raise bad from None
                if number.is_integer():
                    return int(number)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise ConfigError(f"config key '{key}': unsupported field type {_type_name(tp)}")


def _flatten(
    mapping: Mapping[str, Any], cls: type, where: str, root: type, prefix: str = ""
) -> list[tuple[str, Any]]:
    """Turns a (nested) mapping into ``(dotted_key, value)`` leaves, rejecting unknown keys."""
    items: list[tuple[str, Any]] = []
    fields = _fields(cls)
    for raw_key, value in mapping.items():
        key = str(raw_key)
        head, _, rest = key.partition(".")
        if head not in fields:
            raise _unknown(prefix + key, root, where)
        tp = fields[head]
        if _is_config(tp):
            if rest:
                items.extend(_flatten({rest: value}, tp, where, root, prefix + head + "."))
            elif isinstance(value, Mapping):
                items.extend(_flatten(value, tp, where, root, prefix + head + "."))
            else:
                raise ConfigError(f"config key '{prefix + key}' is a group: give a mapping or set its fields")
        elif rest:
            raise _unknown(prefix + key, root, where)
        else:
            items.append((prefix + key, value))
    return items


def _set(cfg: Any, path: list[str], value: Any, key: str, base: Path | None = None) -> Any:
    tp = _fields(type(cfg))[path[0]]
    if len(path) > 1:
        new = _set(getattr(cfg, path[0]), path[1:], value, key, base)
    else:
        new = _coerce(value, tp, key)
        if base is not None and isinstance(new, str) and new and is_path_field(type(cfg), path[0]):
            new = absolute_path(new, base)
    try:
        return dataclasses.replace(cfg, **{path[0]: new})
    except (TypeError, ValueError) as err:
        # The config's own __post_init__ checks surface here, tagged with the key that triggered them.
        raise ConfigError(f"config key '{key}' = {value!r}: {err}") from err


def _apply(cfg: C, items: list[tuple[str, Any]], base: Path | None = None) -> C:
    for key, value in items:
        cfg = _set(cfg, key.split("."), value, key, base)
    return cfg


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """Splits ``["a.b=1", ...]`` into ``[("a.b", "1"), ...]``.

    Raises:
        ConfigError: An item has no ``=`` or an empty key.
    """
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        pairs.append((key.strip(), value))
    return pairs


def apply_overrides(cfg: C, overrides: Sequence[str] | Mapping[str, Any]) -> C:
    """Returns a copy of ``cfg`` with ``key=value`` overrides (strings) or a mapping of values applied.

    Args:
        cfg: A config dataclass instance.
        overrides: ``["lr=3e-4", "data.holdout=none", "betas=0.9,0.95"]`` or ``{"lr": 3e-4}``.

    Raises:
        ConfigError: Unknown key (with a suggestion), malformed item, or a value of the wrong type.

    Examples:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Cfg:
        ...     lr: float = 1e-3
        ...     steps: int | None = None
        >>> apply_overrides(Cfg(), ["lr=3e-4", "steps=100"])
        Cfg(lr=0.0003, steps=100)
        >>> try:
        ...     apply_overrides(Cfg(), ["lrr=1"])
        ... except ConfigError as err:
        ...     print(err)
        unknown config key 'lrr' in --set; did you mean 'lr'?
    """
    cls = type(cfg)
    if isinstance(overrides, Mapping):
        items = _flatten(overrides, cls, "overrides", cls)
    else:
        items = _flatten(dict(parse_overrides(overrides)), cls, "--set", cls)
    return _apply(cfg, items)


def resolve_preset(preset: str | Path, config_dir: str | Path = CONFIG_DIR) -> Path:
    """Finds a preset: a path to a YAML file, or a name looked up as ``config_dir/<name>.yaml``.

    Raises:
        ConfigError: No such file (the message lists the available presets).
    """
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if candidate.is_file():
            return candidate
        raise ConfigError(f"config file '{candidate}' does not exist")
    path = Path(config_dir) / f"{preset}.yaml"
    if path.is_file():
        return path
    names = sorted(p.stem for p in Path(config_dir).glob("*.yaml"))
    guess = difflib.get_close_matches(str(preset), names, n=1)
    hint = f"; did you mean '{guess[0]}'?" if guess else ""
    raise ConfigError(
        f"unknown preset '{preset}' (available in {config_dir}: {', '.join(names) or 'none'}){hint}"
    )


def load_config(
    cls: type[C],
    preset: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path = CONFIG_DIR,
    path_base: str | Path | None = REPO_ROOT,
) -> C:
    """Builds a config: ``cls()`` defaults, then the YAML preset, then ``--set`` overrides.

    Args:
        cls: The config dataclass (all fields need defaults).
        preset: A preset name (``examples/configs/<name>.yaml``), a YAML path, or ``None``.
        overrides: ``key=value`` strings applied last, in order.
        config_dir: Where named presets are looked up.
        path_base: What relative path fields of the preset (:mod:`common.paths`) are relative to (those
            of ``overrides`` are relative to the working directory); ``None`` keeps the preset's values as
            they are (a saved run config, whose paths were recorded as given).

    Returns:
        The resolved config instance.

    Raises:
        ConfigError: Unknown preset or key (with a suggestion), malformed YAML, or a value of the wrong type.
    """
    cfg = cls()
    if preset is not None:
        path = resolve_preset(preset, config_dir)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{path}: a preset must be a mapping of keys to values, got {type(data).__name__}"
            )
        cfg = _apply(cfg, _flatten(data, cls, str(path), cls), None if path_base is None else Path(path_base))
    return _apply(cfg, _flatten(dict(parse_overrides(overrides)), cls, "--set", cls), Path.cwd())


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as nested plain dicts/lists/scalars (YAML/JSON/checkpoint safe)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Writes the resolved config to ``path``: JSON if it ends in ``.json``, else YAML (loadable as a preset).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    data = config_to_dict(cfg)
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """Adds ``--config NAME_OR_PATH`` and repeatable ``--set KEY=VALUE`` to ``parser``."""
    parser.add_argument(
        "--config",
        default=default_preset,
        metavar="NAME_OR_PATH",
        help=f"preset name in {CONFIG_DIR} or a YAML file (default: {default_preset})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=3e-4 (repeatable; dotted keys for groups)",
    )


def config_from_args(cls: type[C], args: argparse.Namespace, *, config_dir: str | Path = CONFIG_DIR) -> C:
    """:func:`load_config` with the ``--config`` and ``--set`` values of :func:`add_config_arguments`."""
    return load_config(cls, args.config, args.overrides, config_dir=config_dir)
