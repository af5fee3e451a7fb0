"""What every example trainer shares around its model: the base config and the run folder.

A trainer's config subclasses :class:`RunConfig` (adding its model and method fields). :func:`start_run`
starts DDP when launched by torchrun, opens ``runs/<name>/`` (refusing to clobber an existing run unless
asked) and loads the checkpoint to resume from, after checking that the config still fits it (see
:attr:`RunConfig.RESUME_MUTABLE`); only then does it write the config into the run folder. At the end,
:func:`epoch_summary` collects the last evaluation, :func:`write_outputs` writes ``summary.json`` and the
plots, and :func:`format_report` gives the closing lines.
"""

from __future__ import annotations

import math
import pickle
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from .checkpoint import load_checkpoint, seed_all
from .checks import check_device, check_min, check_run_name
from .config import config_to_dict
from .data import DataConfig
from .diagnostics import plot_run_spectra
from .dist import DistInfo, barrier, init_distributed
from .evaluation import EvalConfig
from .optim import OptimConfig
from .outputs import RunDir
from .plots import plot_metrics
from .probes import ProbeConfig
from .rate import RateConfig

__all__ = [
    "ResumeError",
    "RunConfig",
    "RunContext",
    "RunExistsError",
    "check_batch_size",
    "check_resume_config",
    "epoch_summary",
    "format_report",
    "start_run",
    "write_outputs",
]


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by the example trainers; subclass it to add a method's own fields.

    Args:
        name: Run folder name under ``out_dir`` (one folder name, no path); ``None`` lets the trainer derive
            one (preset and variant).
        out_dir: Parent folder of the run folders.
        seed: Seed of the initial weights, the data order and every random draw of the training steps.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        epochs: Training epochs.
        batch_size: Global batch size (over all DDP ranks); at least 2 per rank, for BatchNorm.
        bf16: Autocast the model's forward pass to bfloat16 (the coding rate stays float32 regardless).
        compile: ``torch.compile`` the model.
        log_every: Steps between metrics records and progress lines.
        ckpt_every: Steps between checkpoints besides the one at each epoch end (0: epoch ends only).
        timing_every: Steps between measurements of the share of step time spent in the coding rate.
        data: Where the images come from and how they are split.
        optim: AdamW and learning-rate schedule.
        probe: Online probes.
        eval: Offline evaluation on frozen features.
        rate: The coding-rate regularizer (weight, schedule, scale).
    """

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

    #: Keys that may differ from the checkpoint's config on ``--resume`` (``group.*``: the whole group). They
    #: shape neither the saved state nor the data, and include the remedies for a NaN loss; every other key
    #: (the variant, model, data, batch, seed, epochs, and the run's name and folder) must stay as saved.
    RESUME_MUTABLE: ClassVar[tuple[str, ...]] = (
        "device", "compile", "bf16", "log_every", "ckpt_every", "timing_every",
        "optim.lr", "optim.min_lr", "optim.warmup_epochs", "optim.grad_clip", "rate.*", "eval.*",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_run_name(self.name)
        check_device(self.device)
        check_min("", 1, epochs=self.epochs, log_every=self.log_every)
        check_min("", 2, reason=" (BatchNorm needs 2 images per batch)", batch_size=self.batch_size)
        check_min("", 0, ckpt_every=self.ckpt_every, timing_every=self.timing_every)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must lie in [0, 2**32), got {self.seed}")

    def validate(self) -> None:
        """Checks that involve several keys, run once the config is fully resolved (single keys are checked
        in ``__post_init__`` as they are set, where a check across keys would depend on their order).

        Raises:
            ValueError: Naming the keys and values that do not fit together.
        """


class ResumeError(ValueError):
    """The run cannot be resumed: an unreadable checkpoint, or a config that does not fit it."""


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


@dataclass
class RunContext:
    """One process's view of a run: config, process group, device, output folder, checkpoint to resume."""

    cfg: Any
    dist: DistInfo
    run: RunDir
    checkpoint: dict[str, Any] | None
    started: float

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def is_main(self) -> bool:
        return self.dist.is_main


def _prepare_folder(path: Path, *, resume: bool, overwrite: bool, is_main: bool) -> None:
    if resume:
        if not (path / RunDir.CHECKPOINT).is_file():
            raise FileNotFoundError(f"cannot resume '{path}': it has no checkpoint {RunDir.CHECKPOINT}")
        return
    if not path.exists() or not any(path.iterdir()):
        return
    if not overwrite:
        raise RunExistsError(
            f"run folder '{path}' already exists: continue it with --resume {path}, start over with "
            "--overwrite, or choose another --name"
        )
    if not (path / RunDir.CONFIG).is_file():
        raise RunExistsError(f"refusing to overwrite '{path}': it is not a run folder (no {RunDir.CONFIG})")
    if is_main:
        shutil.rmtree(path)


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(cfg: Any, saved: Mapping[str, Any], path: Path) -> None:
    """Checks that ``cfg`` differs from the config a checkpoint was written with only in the keys of
    ``RESUME_MUTABLE`` (keys missing on either side, from another version of the config, are not compared).

    Raises:
        ResumeError: Naming each changed key with its new and saved value.

    Examples:
        >>> saved = config_to_dict(RunConfig(name="a"))
        >>> check_resume_config(RunConfig(name="a", optim=OptimConfig(lr=1e-4)), saved, Path("runs/a"))
        >>> check_resume_config(RunConfig(name="b", batch_size=8), saved, Path("runs/a"))
        Traceback (most recent call last):
        ...
        common.run.ResumeError: cannot resume 'runs/a' with name='b' (saved 'a'), batch_size=8 (saved ...
    """
    mutable = getattr(type(cfg), "RESUME_MUTABLE", ())
    before = _flat(saved)

    def fixed(key: str) -> bool:
        return not any(key == m or (m.endswith(".*") and key.startswith(m[:-1])) for m in mutable)

    now = _flat(config_to_dict(cfg))
    changed = [k for k, v in now.items() if k in before and v != before[k] and fixed(k)]
    if changed:
        items = ", ".join(f"{k}={now[k]!r} (saved {before[k]!r})" for k in changed)
        raise ResumeError(
            f"cannot resume '{path}' with {items}: a resumed run keeps its settings except "
            f"{', '.join(mutable)}; start a new run (another --name) to change the others"
        )


def check_batch_size(batch_size: int, num_samples: int, world_size: int) -> None:
    """Checks that the global batch fits the training set and splits into per-rank batches of 2 or more.

    Raises:
        ValueError: Naming ``batch_size`` and the number it does not fit.
    """
    if batch_size > num_samples:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {num_samples} training images: lower batch_size or use "
            "more data (data.train_size, data.holdout)"
        )
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {world_size} processes")
    if batch_size // world_size < 2:
        raise ValueError(
            f"batch_size={batch_size} leaves {batch_size // world_size} image per process; BatchNorm needs 2"
        )


def _resume_checkpoint(cfg: Any, path: Path) -> dict[str, Any]:
    ckpt_path = path / RunDir.CHECKPOINT
    try:
        checkpoint = load_checkpoint(ckpt_path)
    except (RuntimeError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise ResumeError(f"cannot resume '{path}': {ckpt_path} cannot be loaded ({err})") from err
    if isinstance(checkpoint.get("config"), Mapping):
        check_resume_config(cfg, checkpoint["config"], path)
    return checkpoint


def start_run(
    cfg: Any, *, resume: Path | None = None, overwrite: bool = False, num_samples: int | None = None
) -> RunContext:
    """Starts DDP if launched by torchrun, prepares ``<out_dir>/<name>/`` and loads the resume checkpoint.

    Everything that can be checked is checked before the run folder is written to: a resumed run's
    ``config.yaml`` is rewritten only once its checkpoint has loaded and the config fits it, so a refused
    resume leaves the run resumable as it was.

    Args:
        cfg: The resolved config (a :class:`RunConfig` subclass with ``name`` set).
        resume: A run folder to continue from its ``last.pt`` (then ``out_dir`` / ``name`` are not used).
        overwrite: Replace an existing run folder instead of refusing.
        num_samples: The training set size, to check ``batch_size`` against (see :func:`check_batch_size`).

    Raises:
        RunExistsError: The folder holds a run and neither ``resume`` nor ``overwrite`` was given.
        FileNotFoundError: ``resume`` names a folder without a checkpoint.
        ResumeError: The checkpoint cannot be loaded, or ``cfg`` changes a key that must stay as saved.
        ValueError: ``batch_size`` does not fit the data or the number of processes.
    """
    started = time.perf_counter()
    info = init_distributed(cfg.device)
    if num_samples is not None:
        check_batch_size(cfg.batch_size, num_samples, info.world_size)
    path = Path(resume) if resume is not None else Path(cfg.out_dir) / str(cfg.name)
    _prepare_folder(path, resume=resume is not None, overwrite=overwrite, is_main=info.is_main)
    checkpoint = _resume_checkpoint(cfg, path) if resume is not None else None
    barrier()
    run = RunDir(path, enabled=info.is_main)
    run.save_config(cfg)
    seed_all(cfg.seed)
    return RunContext(cfg=cfg, dist=info, run=run, checkpoint=checkpoint, started=started)


def write_outputs(
    ctx: RunContext,
    summary: Mapping[str, Any],
    *,
    step_keys: Sequence[str] | None = None,
    epoch_keys: Sequence[str] | None = None,
    spectra: Sequence[str] = (),
) -> None:
    """Writes ``summary.json`` and the plots (rank 0 only).

    Plots: ``train_curves.png`` (``step_keys`` of the step records against the step), ``epoch_metrics.png``
    (``epoch_keys`` of the epoch records against the epoch) and ``spectrum.png`` (the covariance spectra of
    the representations named in ``spectra``, first and last epoch). ``None`` keys plot every numeric metric.
    """
    if not ctx.is_main:
        return
    ctx.run.write_summary(summary)
    records = ctx.run.records()
    steps = [r for r in records if not isinstance(r.get("epoch"), int)]
    epochs = [r for r in records if isinstance(r.get("epoch"), int)]
    title = ctx.run.path.name
    for rows, keys, name, x in (
        (steps, step_keys, "train_curves.png", "step"),
        (epochs, epoch_keys, "epoch_metrics.png", "epoch"),
    ):
        present = None if keys is None else [k for k in keys if any(k in r for r in rows)]
        if rows and (present is None or present):
            plot_metrics(rows, ctx.run.file(name), keys=present, x=x, title=title)
    plot_run_spectra(epochs, spectra, ctx.run.file("spectrum.png"))


def epoch_summary(ctx: RunContext, representations: Sequence[str]) -> dict[str, Any]:
    """The last epoch's evaluation for ``summary.json``: ``online`` (the ``online.*`` metrics), and the
    ``effective_rank`` and ``collapsed`` flag of each named representation (rank 0; ``{}`` elsewhere)."""
    if not ctx.is_main:
        return {}
    last = next((r for r in reversed(ctx.run.records()) if isinstance(r.get("epoch"), int)), None)
    if last is None:
        return {}
    return {
        "online": {k.split(".", 1)[1]: v for k, v in last.items() if k.startswith("online.")},
        "effective_rank": {n: last.get(f"{n}.effective_rank") for n in representations},
        "collapsed": {n: last.get(f"{n}.collapsed") for n in representations},
    }


# Kept in summary.json but left out of the closing lines.
_DETAILS = frozenset({"linear_train_acc", "linear_weight_decay"})


def _fmt(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if key.endswith(("acc", "share")):
        return f"{100 * value:.1f}%"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"


def format_report(path: Path, summary: Mapping[str, Any], groups: Sequence[str]) -> str:
    """The closing lines of a run: one line per summary group (accuracies as percentages), then throughput.

    Examples:
        >>> print(format_report(Path("runs/a"), {"wall_time_s": 61.2, "online": {"linear_acc": 0.25},
        ...                     "images_per_s": 640.0, "rate_time_share": 0.004}, ["online"]))
        done: a in 61 s
          online: linear_acc 25.0%
          640 img/s | coding rate 0.4% of step time
          outputs: runs/a/ (summary.json, metrics.jsonl, metrics.csv, *.png, last.pt)
    """
    lines = [f"done: {path.name} in {summary.get('wall_time_s', 0):.0f} s"]
    for group in groups:
        values = summary.get(group)
        if not isinstance(values, Mapping):
            continue
        parts = []
        for key, value in values.items():
            if isinstance(value, Mapping):
                inner = " ".join(f"{k} {_fmt(k, v)}" for k, v in value.items() if k not in _DETAILS)
                parts.append(f"{key} [{inner}]")
            else:
                parts.append(f"{key} {_fmt(key, value)}")
        lines.append(f"  {group}: " + " | ".join(parts))
    rate = summary.get("rate_time_share")
    lines.append(
        f"  {_fmt('', summary.get('images_per_s'))} img/s | coding rate {_fmt('share', rate)} of step time"
    )
    lines.append(f"  outputs: {path}/ (summary.json, metrics.jsonl, metrics.csv, *.png, last.pt)")
    return "\n".join(lines)
