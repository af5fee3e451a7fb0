"""The command line of the example trainers: flags, config resolution, and the guarded entry point.

Every trainer takes ``--config``/``--preset NAME_OR_PATH``, repeatable ``--set KEY=VALUE``, ``--variant``,
``--name``, ``--resume RUN_DIR``, ``--stop-after STEPS`` and ``--overwrite``; :func:`launch` turns the
expected failures (a bad flag, key or value, missing or malformed data, an existing run folder, a resume
that does not fit its checkpoint, a NaN loss) into ``error: ...`` messages instead of tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .config import CONFIG_DIR, ConfigError, add_config_arguments, load_config
from .data import CifarData, load_cifar10
from .dist import cleanup
from .loop import NonFiniteLossError
from .outputs import RunDir
from .run import RunContext, start_run

__all__ = ["build_parser", "launch", "resolve_config"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser(
    description: str, default_preset: str, variants: Iterable[str], config_dir: Path = CONFIG_DIR
) -> argparse.ArgumentParser:
    """The flags every trainer takes (see the module docstring)."""
    parser = argparse.ArgumentParser(description=description)
    add_config_arguments(parser, default_preset)
    parser.add_argument(
        "--preset", dest="config", default=argparse.SUPPRESS, metavar="NAME_OR_PATH",
        help=f"same as --config (presets: {', '.join(sorted(p.stem for p in config_dir.glob('*.yaml')))})",
    )  # fmt: skip
    parser.add_argument("--variant", choices=sorted(variants), help="shorthand for --set variant=...")
    parser.add_argument("--name", default=None, help="run folder name under out_dir (sets the `name` key)")
    parser.add_argument(
        "--resume", type=Path, default=None, metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last.pt, with its saved config (plus any --set)",
    )  # fmt: skip
    parser.add_argument(
        "--stop-after", type=_positive_int, default=None, metavar="STEPS",
        help="save a checkpoint and stop once STEPS global steps are done (resume with --resume)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    return parser


def resolve_config(cls: type[Any], args: argparse.Namespace, config_dir: Path = CONFIG_DIR) -> Any:
    """The config: the preset (or the resumed run's ``config.yaml``), then ``--variant``, ``--set`` and
    ``--name``; then the config's checks across keys (``validate()``).

    Relative data paths in a preset are relative to the repository root; those given with ``--set``, to the
    working directory (see :mod:`common.config`). A resumed run's saved paths are used as recorded.

    Raises:
        ConfigError: Unknown preset or key, bad value, or a ``--resume`` folder without ``config.yaml``.
    """
    overrides = [f"variant={args.variant}"] if args.variant else []
    overrides += args.overrides
    if args.name is not None:
        overrides.append(f"name={args.name}")
    if args.resume is not None:
        saved = Path(args.resume) / RunDir.CONFIG
        if not saved.is_file():
            raise ConfigError(f"cannot resume '{args.resume}': it has no {RunDir.CONFIG}")
        cfg = load_config(cls, saved, overrides, path_base=None)
    else:
        cfg = load_config(cls, args.config, overrides, config_dir=config_dir)
    try:
        cfg.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return cfg


def launch(
    cls: type[Any],
    train: Callable[[Any, RunContext, CifarData, int | None], int],
    argv: Sequence[str] | None,
    *,
    description: str,
    default_preset: str,
    variants: Iterable[str],
    config_dir: Path = CONFIG_DIR,
    name_prefix: str = "",
) -> int:
    """Parses the flags, builds the config, loads the data, opens the run and calls ``train``.

    Args:
        cls: The trainer's config class (a :class:`common.run.RunConfig` subclass with a ``variant``).
        train: ``(cfg, ctx, data, stop_after) -> exit code``.
        argv: The arguments (``None``: ``sys.argv[1:]``).
        description: The ``--help`` description.
        default_preset: The preset used without ``--config``.
        variants: The allowed ``--variant`` values.
        config_dir: Where the presets live.
        name_prefix: Prefix of the default run name ``<prefix><preset>-<variant>``.

    Returns:
        ``train``'s exit code.

    Raises:
        SystemExit: With code 2 for a bad flag, key or value (argparse's usage error), or with an
            ``error: ...`` message (exit code 1) for missing or malformed data, data too small for the
            batch, an existing run folder, a resume that does not fit its checkpoint, or a NaN/Inf loss.
    """
    parser = build_parser(description, default_preset, variants, config_dir)
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(cls, args, config_dir)
    except ConfigError as err:
        parser.error(str(err))
    if cfg.name is None:
        cfg = dataclasses.replace(cfg, name=f"{name_prefix}{Path(str(args.config)).stem}-{cfg.variant}")
    try:
        try:
            data = load_cifar10(cfg.data)
            ctx = start_run(cfg, resume=args.resume, overwrite=args.overwrite, num_samples=len(data.train))
        # Before training, these are all about the user's files and settings (DataNotFoundError,
        # DataFormatError, RunExistsError, ResumeError, sizes that do not fit), and each message names them.
        except (OSError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        return train(cfg, ctx, data, args.stop_after)
    except NonFiniteLossError as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        cleanup()
