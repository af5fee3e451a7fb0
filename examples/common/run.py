"""A run's folder ``runs/<name>/`` and the bookkeeping of a training loop. Only rank 0 writes;
:func:`open_run` checks everything and writes nothing, :meth:`Run.begin` writes once the state is restored.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from common.checkpoint import ResumeError, atomic_write, load_checkpoint, restore, save_checkpoint
from common.config import RunConfig, flat_keys, to_dict
from common.data import CifarData, check_batch_size, load_cifar10
from common.dist import DistInfo, all_reduce_mean, any_rank, barrier, cleanup, init_distributed
from common.optim import synchronize, time_rate
from common.report import Progress, format_metrics, format_report, plot_run
from jepa_rate import CodingRateLoss


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (``[]`` if absent); a torn last line from a crash is ignored."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return records


class RunDir:
    """The output folder of one run (writes nothing when ``enabled`` is false: non-zero ranks)."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled
        self.records = read_jsonl(path / "metrics.jsonl")
        self.checkpoint = path / "last.pt"

    def begin(self, cfg: RunConfig, step: int, *, overwrite: bool = False) -> None:
        """Writes the config, drops records logged after ``step`` (a resumed run's logs then equal an
        uninterrupted run's) and deletes temporaries a killed write left behind."""
        if not self.enabled:
            return
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(".*.tmp"):  # temporaries of a killed atomic_write
            stale.unlink()
        self.records = [r for r in self.records if int(r.get("step", 0)) <= step]
        self._write_logs()
        config = to_dict(cfg)
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        atomic_write(self.path / "config.json", (json.dumps(config, indent=2) + "\n").encode())

    def _write_logs(self) -> None:
        jsonl = "".join(json.dumps(r) + "\n" for r in self.records)
        atomic_write(self.path / "metrics.jsonl", jsonl.encode())
        rows = [flat_keys(r) for r in self.records]
        columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, list)))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path / "metrics.csv", buffer.getvalue().encode())

    def log(self, record: Mapping[str, Any]) -> None:
        """Adds a record to ``metrics.jsonl`` and ``metrics.csv`` (whose columns may widen)."""
        self.records.append(dict(record))
        if self.enabled:
            self._write_logs()


def open_run(cfg: RunConfig, *, resume: Path | None, overwrite: bool) -> Run:
    """Starts DDP (under torchrun), loads the data, checks the run folder and the checkpoint to ``resume``;
    writes nothing. A problem with the user's files or settings exits with one ``error:`` line."""
    try:
        info = init_distributed(cfg.device)
        data = load_cifar10(cfg.data)
        check_batch_size(cfg.batch_size, len(data.train), info.world_size)
        path = resume if resume is not None else Path(cfg.out_dir) / str(cfg.name)
        checkpoint = None
        if resume is not None:
            checkpoint = load_checkpoint(path / "last.pt")
            check_resume_config(cfg, checkpoint["config"], path)
        elif path.exists() and any(path.iterdir()):
            why = "it is not a run folder (no config.yaml)" if overwrite else "it already exists"
            if not overwrite or not (path / "config.yaml").is_file():
                raise FileExistsError(f"run folder '{path}': {why}; continue it with --resume {path}, "
                                     "start over with --overwrite, or choose another --name")  # fmt: skip
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    torch.manual_seed(cfg.seed)  # the initial weights
    return Run(cfg, info, data, RunDir(path, enabled=info.is_main), checkpoint)


def check_resume_config(cfg: RunConfig, saved: Mapping[str, Any], path: Path) -> None:
    """Raises :class:`ResumeError` naming each key that differs from the saved config but must not."""
    mutable = type(cfg).RESUME_MUTABLE
    before, now = flat_keys(dict(saved)), flat_keys(to_dict(cfg))
    may_change = [
        k for k in now if any(k == m or (m.endswith("*") and k.startswith(m[:-1])) for m in mutable)
    ]
    if fixed := [k for k, v in now.items() if k in before and v != before[k] and k not in may_change]:
        items = ", ".join(f"{k}={now[k]!r} (saved {before[k]!r})" for k in fixed)
        raise ResumeError(
            f"cannot resume '{path}' with {items}: a resumed run keeps its settings except "
            f"{', '.join(mutable)}; start a new run (another --name) to change the others"
        )


@contextmanager
def guarded(run: Path) -> Iterator[None]:
    """Around a run: SIGTERM acts as Ctrl-C, which exits 130 with one line outside the training steps; a NaN
    loss or an unfit checkpoint is one ``error:`` line; the process group is torn down."""
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    except (FloatingPointError, ResumeError) as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        message = f"interrupted; the last checkpoint is kept: finish the run with --resume {run}"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        cleanup()


class Run:
    """A prepared run and what its loop does besides the step: logs, epoch records, checkpoints, summary. Its
    state (``meter`` in a checkpoint): metric sums, the first NaN/Inf step (on the device), timers."""

    def __init__(self, cfg: Any, info: DistInfo, data: CifarData, folder: RunDir, resumed: Any) -> None:
        self.cfg, self.info, self.data, self.folder, self.resumed = cfg, info, data, folder, resumed
        self.per_epoch = len(data.train) // cfg.batch_size
        self.total = cfg.epochs * self.per_epoch
        self.start = int(resumed["step"]) if resumed is not None else 0
        self.saved_step: int | None = self.start or None
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.seconds = {"train": 0.0, "timed": 0.0, "rate": 0.0, "timed_steps": 0.0, "wall": 0.0}
        self.first_bad = torch.full((), -1, dtype=torch.long, device=info.device)
        self.started = time.perf_counter()
        self.progress = Progress(self.total, self.start, cfg.log_every, enabled=False)

    def begin(self, state: Mapping[str, Any], *, overwrite: bool) -> None:
        """Restores a resumed run into ``state`` (model, optimizer, probes) and itself, writes the config and
        prints the run's first line."""
        if self.resumed is not None:
            restore(self.folder.checkpoint, self.resumed["state"], {**state, "meter": self})
        self.folder.begin(self.cfg, self.start, overwrite=overwrite)
        barrier()
        cfg, info = self.cfg, self.info
        self.progress = Progress(self.total, self.start, cfg.log_every, enabled=info.is_main)
        resumed = f" | resumed at step {self.start}" if self.start else ""
        what = f"{self.data.description} | {cfg.variant} | {self.total} steps of {cfg.batch_size}"
        self.progress.write(f"run {self.folder.path}: {what} on {info.device} x{info.world_size}{resumed}")

    def log_step(
        self, step: int, began: float, rate_loss: CodingRateLoss, shape: torch.Size, metrics: dict[str, Any]
    ) -> None:
        """Adds the step's seconds (and every ``timing_every`` steps the rate's) and metrics to the epoch's;
        every ``log_every`` steps also checks the loss and logs the metrics averaged over ranks."""
        warm, every = min(2, self.total - 1), self.cfg.timing_every  # warm: allocator and kernel warm-up
        timing = every > 0 and step >= warm and (step - warm) % every == 0
        if timing:
            synchronize(self.info.device)
        elapsed = time.perf_counter() - began
        self.seconds["train"] += elapsed
        if timing:  # the rate alone on a leaf of the shape it saw: its share of the step time
            self.seconds["timed"] += elapsed
            self.seconds["rate"] += time_rate(rate_loss, shape, self.info.device)
            self.seconds["timed_steps"] += 1
        for key, value in metrics.items():
            v = torch.as_tensor(value, device=self.info.device).detach().float()
            self.sums[key] = self.sums[key] + v if key in self.sums else v
        self.count += 1
        bad = ~torch.isfinite(torch.as_tensor(metrics["loss"], device=self.info.device))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        values: dict[str, float] = {}
        if (step + 1) % self.cfg.log_every == 0 or step + 1 == self.total:
            self.check_finite(step + 1)
            values = self.mean(metrics)
            epoch, elapsed = round((step + 1) / self.per_epoch, 4), round(self.wall_seconds(), 3)
            self.folder.log({"step": step + 1, "epoch": epoch, **values, "elapsed": elapsed})
        shown = {k: values[k] for k in ("loss", "rate", "lr", "tau") if k in values}
        self.progress.update(self.cfg.batch_size, shown)

    def mean(self, metrics: Mapping[str, Tensor | float] | None = None) -> dict[str, float]:
        """``metrics`` (default: the epoch's means) averaged over ranks, as floats (one collective)."""
        values = metrics if metrics is not None else {k: v / self.count for k, v in self.sums.items()}
        if not values:
            return {}
        device = self.info.device
        stacked = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=device) for v in values.values()]
        )
        return dict(zip(values, all_reduce_mean(stacked).tolist(), strict=True))

    def check_finite(self, step: int) -> None:
        """Raises ``FloatingPointError`` naming the first step whose loss was NaN/Inf (on any rank) and the
        checkpoint that is kept."""
        first = int(self.first_bad)
        if not any_rank(first >= 0, self.info.device):
            return
        where = f"at step {first + 1}" if first >= 0 else "on another rank"
        kept = "no checkpoint had been written yet"
        if self.saved_step is not None:
            kept = f"the last good checkpoint, {self.folder.checkpoint} (step {self.saved_step}), is kept"
        raise FloatingPointError(
            f"the loss became NaN/Inf {where} (detected at step {step}); stopping: {kept}. "
            "Lower optim.lr, set optim.grad_clip or lower rate.weight, then --resume or start over."
        )

    def epoch_record(self, step: int) -> dict[str, Any]:
        """The record of the epoch that ends at ``step``: the means of its training metrics."""
        self.check_finite(step)
        means = self.mean()
        self.sums, self.count = {}, 0
        return {"step": step, "epoch": step // self.per_epoch, **{f"train.{k}": v for k, v in means.items()}}

    def log_epoch(self, record: dict[str, Any]) -> None:
        barrier()
        self.folder.log({**record, "elapsed": round(self.wall_seconds(), 3)})
        self.progress.write(f"epoch {record['epoch']}/{self.cfg.epochs} | " + format_metrics(record))

    def save(self, step: int, state: Mapping[str, Any], stop: StopRequest, stop_after: int | None) -> bool:
        """Checks the loss and writes ``last.pt`` at an epoch end, every ``ckpt_every`` steps and on a stop
        (a signal or ``stop_after``, on any rank); returns whether to stop."""
        stopping = any_rank(stop.signal_name is not None or step == stop_after, self.info.device)
        every = self.cfg.ckpt_every
        if stopping or step % self.per_epoch == 0 or (every and step % every == 0):
            self.check_finite(step)
            if self.folder.enabled:
                states = {name: obj.state_dict() for name, obj in {**state, "meter": self}.items()}
                saved = {"step": step, "config": to_dict(self.cfg), "state": states}
                save_checkpoint(self.folder.checkpoint, saved)
            self.saved_step = step
        return stopping

    def stopped(self, signal_name: str | None, step: int) -> int:
        """Reports a run stopped early; returns its exit code (130 after a signal)."""
        self.progress.close()
        why = f"interrupted ({signal_name})" if signal_name else f"stopped after step {step}"
        self.progress.write(
            f"{why}; checkpoint {self.folder.checkpoint}. Continue with --resume {self.folder.path}"
        )
        return 130 if signal_name else 0

    def finish(self, model: torch.nn.Module, offline: dict[str, Any] | None, representations: tuple[str, ...],
               step_keys: tuple[str, ...], epoch_keys: tuple[str, ...]) -> None:  # fmt: skip
        """Writes ``summary.json`` (the last epoch's evaluation, the ``offline`` one, throughput, size), the
        plots and prints the report (rank 0)."""
        cfg, records, s = self.cfg, self.folder.records, self.seconds
        last = next((r for r in reversed(records) if isinstance(r.get("epoch"), int)), {})
        summary: dict[str, Any] = {
            "variant": cfg.variant, "data": self.data.description,
            "online": {k[7:]: v for k, v in last.items() if k.startswith("online.")},
            "effective_rank": {n: last.get(f"{n}.effective_rank") for n in representations},
            "collapsed": {n: last.get(f"{n}.collapsed") for n in representations},
            **({"offline": offline} if offline is not None else {}),
            "steps": self.total, "epochs": cfg.epochs, "world_size": self.info.world_size,
            "wall_time_s": round(self.wall_seconds(), 3), "train_time_s": round(s["train"], 3),
            "images_per_s": self.total * cfg.batch_size / s["train"] if s["train"] > 0 else None,
            "rate_time_share": s["rate"] / s["timed"] if s["timed"] > 0 else None,
            "rate_timed_steps": int(s["timed_steps"]),
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }  # fmt: skip
        if self.folder.enabled:
            atomic_write(self.folder.path / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
            plot_run(records, self.folder.path, step_keys, epoch_keys, representations)
        if self.info.is_main:
            print(format_report(self.folder.path, summary), flush=True)

    def wall_seconds(self) -> float:
        return self.seconds["wall"] + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        seconds = {**self.seconds, "wall": self.wall_seconds()}
        return {"sums": dict(self.sums), "count": self.count, "seconds": seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {k: v.to(self.info.device) for k, v in state["sums"].items()}
        self.count, self.seconds = int(state["count"]), {k: float(v) for k, v in state["seconds"].items()}
        self.started = time.perf_counter()


class StopRequest:
    """Inside ``with``: the first SIGINT / SIGTERM sets :attr:`signal_name` (the loop saves and stops after
    its step); a second raises ``KeyboardInterrupt``. Outside the main thread it is inert."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
