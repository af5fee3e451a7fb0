"""The training loop of the example trainers: steps, metrics, checkpoints, exact resume, Ctrl-C and NaNs.

The loop owns everything around a training step; the trainer supplies the step itself and the end-of-epoch
evaluation. Its guarantees:

- **Exact resume.** Step ``k`` draws its batch from :class:`~common.loader.ShardedBatchLoader` at
  ``divmod(k, steps_per_epoch)``, and the global RNG is reseeded from ``(seed, k, rank)`` before it, so
  nothing random depends on the past. A checkpoint holds the step, the trainer's state dicts, the epoch's
  running sums and the timers; resuming truncates the metrics logs to the checkpoint's step. On the CPU a
  run stopped at any step and resumed ends bit-identical to an uninterrupted one.
- **Checkpoints** (``last.pt``, atomic) at every epoch end, every ``ckpt_every`` steps, on Ctrl-C / SIGTERM
  and at ``--stop-after``; only after checking that no loss so far was NaN/Inf, so ``last.pt`` is always a
  good state.
- **Non-finite loss.** A device-side flag records the first step with a NaN/Inf loss without syncing; it is
  read at every log step, epoch end and checkpoint, and a hit raises :class:`NonFiniteLossError` naming the
  step and the checkpoint that was kept.
- **DDP.** Metrics are averaged over ranks when logged; stop decisions are taken by all ranks together;
  the end-of-epoch evaluation, the logs and the checkpoints happen on rank 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .config import config_to_dict
from .diagnostics import collapse_warning, representation_record
from .dist import all_reduce_mean, any_rank, barrier
from .interrupt import GracefulInterrupt
from .loader import ShardedBatchLoader
from .progress import ProgressReporter, format_metrics
from .rate import synchronize
from .run import RunContext, epoch_summary, format_report, write_outputs

__all__ = ["LoopResult", "NonFiniteLossError", "Stateful", "StepOutput", "TrainingLoop", "step_seed"]

_MASK64 = 2**64 - 1


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for ``(seed, step, stream)`` (splitmix64 rounds).

    Examples:
        >>> step_seed(0, 1) != step_seed(0, 2) != step_seed(1, 1), step_seed(0, 1) == step_seed(0, 1)
        (True, True)
    """
    z = 0
    for part in (seed, step, stream):
        z = (z ^ (part & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z >> 1


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (modules, optimizers, probes)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the checkpoint that was kept."""


@dataclass
class StepOutput:
    """What a training step returns.

    Attributes:
        metrics: Named scalars (tensors or floats); ``"loss"`` is required and checked for NaN/Inf. They are
            averaged per epoch (``train.<name>`` in the epoch record) and logged every ``log_every`` steps.
        rate_seconds: Seconds of the coding-rate timing done in this step (see :func:`common.rate.time_rate`),
            or ``None`` when the step did not time it.
    """

    metrics: dict[str, Tensor | float]
    rate_seconds: float | None = None


@dataclass(frozen=True)
class LoopResult:
    """How the loop ended, and the run-level numbers for ``summary.json``."""

    completed: bool
    reason: str
    step: int
    total_steps: int
    summary: dict[str, Any] = field(default_factory=dict)


class TrainingLoop:
    """Runs ``epochs x steps_per_epoch`` steps of a trainer (see the module docstring).

    Args:
        ctx: The run (config with ``epochs``, ``batch_size``, ``seed``, ``log_every``, ``ckpt_every``,
            ``timing_every``; process group; run folder; checkpoint to resume).
        num_samples: Training set size.
    """

    def __init__(self, ctx: RunContext, num_samples: int) -> None:
        cfg = ctx.cfg
        self.ctx = ctx
        self.loader = ShardedBatchLoader(
            num_samples, cfg.batch_size, seed=cfg.seed, rank=ctx.dist.rank, world_size=ctx.dist.world_size
        )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.step = 0
        self.state: Mapping[str, Stateful] = {}
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0
        self._train_seconds = 0.0
        self._wall_before = 0.0
        self._rate_seconds = 0.0
        self._timed_step_seconds = 0.0
        self._timed_steps = 0
        self._saved_step: int | None = None
        self._first_bad = torch.full((), -1, dtype=torch.long, device=ctx.device)
        self._progress: ProgressReporter | None = None

    # ---------------------------------------------------------------- state
    def restore(self, state: Mapping[str, Stateful]) -> int:
        """Registers what a checkpoint holds and, when resuming, loads it; returns the step to start at."""
        self.state = state
        ckpt = self.ctx.checkpoint
        if ckpt is None:
            return 0
        self.loader.load_state_dict(ckpt["loader"])
        for name, obj in state.items():
            obj.load_state_dict(ckpt["state"][name])
        loop = ckpt["loop"]
        self.step = int(ckpt["step"])
        self._sums, self._count = dict(loop["sums"]), int(loop["count"])
        self._train_seconds, self._wall_before = float(loop["train_seconds"]), float(loop["wall_seconds"])
        self._rate_seconds, self._timed_step_seconds = (
            float(loop["rate_seconds"]),
            float(loop["step_seconds"]),
        )
        self._timed_steps = int(loop["timed_steps"])
        self._saved_step = self.step
        self.ctx.run.metrics.truncate(lambda r: int(r.get("step", 0)) <= self.step)
        return self.step

    def wall_seconds(self) -> float:
        """Wall time of the run so far, over all resumed segments."""
        return self._wall_before + time.perf_counter() - self.ctx.started

    def save(self) -> None:
        """Checks the loss flag and writes ``last.pt`` (rank 0)."""
        self._check_finite()
        if self.ctx.is_main:
            self.ctx.run.save_checkpoint(
                {
                    "format": 1,
                    "step": self.step,
                    "config": config_to_dict(self.ctx.cfg),
                    "loader": self.loader.state_dict(),
                    "state": {name: obj.state_dict() for name, obj in self.state.items()},
                    "loop": {
                        "sums": self._sums, "count": self._count, "train_seconds": self._train_seconds,
                        "wall_seconds": self.wall_seconds(), "rate_seconds": self._rate_seconds,
                        "step_seconds": self._timed_step_seconds, "timed_steps": self._timed_steps,
                    },
                }
            )  # fmt: skip
        self._saved_step = self.step

    # ---------------------------------------------------------------- checks
    def _track_finite(self, loss: Tensor | float, step: int) -> None:
        bad = ~torch.isfinite(torch.as_tensor(loss, device=self._first_bad.device))
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)

    def _check_finite(self) -> None:
        first = int(self._first_bad)
        if not any_rank(first >= 0, self.ctx.device):
            return
        where = f"at step {first + 1}" if first >= 0 else "on another rank"
        if self._saved_step is None:
            kept = "no checkpoint had been written yet"
        else:
            kept = f"the last good checkpoint, {self.ctx.run.checkpoint} (step {self._saved_step}), is kept"
        raise NonFiniteLossError(
            f"the loss became NaN/Inf {where} (detected at step {self.step}); stopping: {kept}. Lower "
            "optim.lr, set optim.grad_clip or lower rate.weight, then --resume or start over."
        )

    def _timing_due(self, step: int) -> bool:
        every = int(self.ctx.cfg.timing_every)
        warm = min(2, self.total_steps - 1)  # skip the first steps: allocator and kernel warm-up
        return every > 0 and step >= warm and (step - warm) % every == 0

    # ---------------------------------------------------------------- metrics
    def _accumulate(self, metrics: Mapping[str, Tensor | float]) -> None:
        for key, value in metrics.items():
            v = value.detach().float() if isinstance(value, Tensor) else float(value)
            self._sums[key] = self._sums[key] + v if key in self._sums else v
        self._count += 1

    def _reduce(self, values: Mapping[str, Tensor | float]) -> dict[str, float]:
        """Averages scalars over ranks (one collective) and returns Python floats."""
        if not values:
            return {}
        stacked = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=self.ctx.device) for v in values.values()]
        )
        return dict(zip(values, all_reduce_mean(stacked).tolist(), strict=True))

    def write(self, message: str) -> None:
        """Prints a line on rank 0 without breaking the progress bar."""
        if self._progress is not None:
            self._progress.write(message)
        elif self.ctx.is_main:
            print(message, flush=True)

    def _end_epoch(self, epoch: int, end_of_epoch: Callable[[int], dict[str, Any]]) -> None:
        means = self._reduce({k: v / max(1, self._count) for k, v in self._sums.items()})
        record: dict[str, Any] = {"step": self.step, "epoch": epoch + 1}
        record.update({f"train.{k}": v for k, v in means.items()})
        if self.ctx.is_main:
            record.update(end_of_epoch(epoch))
        barrier()
        record["elapsed"] = round(self.wall_seconds(), 3)
        self.ctx.run.log(record)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.write(f"epoch {epoch + 1}/{self.ctx.cfg.epochs} | " + format_metrics(scalars))
        self._sums, self._count = {}, 0

    # ---------------------------------------------------------------- the loop
    def run(
        self,
        train_step: Callable[[Tensor, int, bool], StepOutput],
        end_of_epoch: Callable[[int], dict[str, Any]],
        *,
        stop_after: int | None = None,
        shown: tuple[str, ...] = ("loss", "rate", "lr", "tau"),
    ) -> LoopResult:
        """Trains from the current step to the end, or until a stop.

        Args:
            train_step: ``(indices, step, timing) -> StepOutput``: this rank's batch indices, the global
                0-based step, and whether to time the coding rate in this step.
            end_of_epoch: ``epoch -> record`` (0-based epoch), called on rank 0 only after the epoch's last
                step: evaluation and diagnostics (no collectives: use the unwrapped model).
            stop_after: Save and stop once this many global steps are done.
            shown: Metrics shown in the progress bar / lines.

        Returns:
            A :class:`LoopResult` whose ``summary`` holds the steps, wall and training time, images/s and
            the share of step time spent in the coding rate.

        Raises:
            NonFiniteLossError: The loss became NaN/Inf (the last good checkpoint is kept).
        """
        cfg, device = self.ctx.cfg, self.ctx.device
        reason = "completed"
        with (
            GracefulInterrupt() as interrupt,
            ProgressReporter(
                self.total_steps, desc="train", initial=self.step, enabled=self.ctx.is_main,
                log_every=cfg.log_every,
            ) as progress,
        ):  # fmt: skip
            self._progress = progress
            while self.step < self.total_steps:
                epoch, index = divmod(self.step, self.steps_per_epoch)
                batch = self.loader.indices(epoch, index)
                torch.manual_seed(step_seed(cfg.seed, self.step, 1 + self.ctx.dist.rank))
                timing = self._timing_due(self.step)
                if timing:
                    synchronize(device)
                start = time.perf_counter()
                out = train_step(batch, self.step, timing)
                if timing:
                    synchronize(device)
                seconds = time.perf_counter() - start - (out.rate_seconds or 0.0)
                if timing and out.rate_seconds is not None:
                    self._rate_seconds += out.rate_seconds
                    self._timed_step_seconds += seconds
                    self._timed_steps += 1
                self._train_seconds += seconds
                self._track_finite(out.metrics["loss"], self.step)
                self._accumulate(out.metrics)
                self.step += 1

                values: dict[str, float] = {}
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._check_finite()
                    values = self._reduce(out.metrics)
                    epoch_pos = round(self.step / self.steps_per_epoch, 4)
                    self.ctx.run.log(
                        {
                            "step": self.step,
                            "epoch": epoch_pos,
                            **values,
                            "elapsed": round(self.wall_seconds(), 3),
                        }
                    )
                shown_now: dict[str, Any] = {k: values[k] for k in shown if k in values}
                progress.update(1, samples=cfg.batch_size, **shown_now)

                saved = False
                if self.step % self.steps_per_epoch == 0:
                    self._check_finite()
                    self._end_epoch(epoch, end_of_epoch)
                    self.save()
                    saved = True
                elif cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                    saved = True
                stop_now = stop_after is not None and self.step >= stop_after
                if any_rank(interrupt.requested or stop_now, device):
                    if not saved:
                        self.save()
                    reason = (
                        f"interrupted ({interrupt.signal_name})"
                        if interrupt.requested
                        else (f"stopped after step {self.step}")
                    )
                    break
            self._progress = None
        return LoopResult(
            completed=self.step >= self.total_steps,
            reason=reason,
            step=self.step,
            total_steps=self.total_steps,
            summary=self._summary(),
        )

    def _summary(self) -> dict[str, Any]:
        images = self.step * self.ctx.cfg.batch_size
        timed = self._timed_step_seconds
        return {
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "world_size": self.ctx.dist.world_size,
            "train_time_s": round(self._train_seconds, 3),
            "images_per_s": images / self._train_seconds if self._train_seconds > 0 else None,
            "rate_time_share": self._rate_seconds / timed if timed > 0 else None,
            "rate_timed_steps": self._timed_steps,
        }

    # ---------------------------------------------------------------- around the loop
    def wrap(self, model: nn.Module) -> nn.Module:
        """What the training step calls: ``model`` in DDP when distributed, compiled if ``cfg.compile``."""
        net: nn.Module = model
        if self.ctx.dist.distributed:
            cuda = self.ctx.device.type == "cuda"
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.ctx.device] if cuda else None)
        if self.ctx.cfg.compile:
            net = torch.compile(net)  # type: ignore[assignment]
        return net

    def diagnose(self, epoch: int, representations: Mapping[str, Tensor]) -> dict[str, Any]:
        """Collapse diagnostics of each named ``(n, d)`` representation, as record entries; prints a warning
        for each collapsed one (see :mod:`common.diagnostics`)."""
        record: dict[str, Any] = {}
        for name, z in representations.items():
            record.update(representation_record(name, z))
            warning = collapse_warning(name, record, z.shape[1])
            if warning:
                self.write(f"epoch {epoch + 1}: {warning}")
        return record

    def stopped(self, result: LoopResult) -> int:
        """Reports a run that stopped early; returns 130 after an interrupt, else 0."""
        run = self.ctx.run
        self.write(f"{result.reason}; checkpoint {run.checkpoint}. Continue with --resume {run.path}")
        return 130 if result.reason.startswith("interrupted") else 0

    def finish(
        self,
        result: LoopResult,
        *,
        model: nn.Module,
        data: str,
        representations: Sequence[str],
        offline: Callable[[], dict[str, Any]] | None,
        step_keys: Sequence[str],
        epoch_keys: Sequence[str],
    ) -> int:
        """Ends the run: :meth:`stopped` if it stopped early; else builds ``summary.json`` (variant, data,
        the last epoch's online metrics and ranks, ``offline()`` on rank 0 when ``eval.offline``, the loop's
        numbers, wall time, trainable parameters), writes it with the plots and prints the report.

        Args:
            result: What :meth:`run` returned.
            model: The trained (unwrapped) model, for the parameter count.
            data: The provenance line of the data.
            representations: Names diagnosed at each epoch end (their ranks go in the summary and their
                spectra in ``spectrum.png``).
            offline: The offline evaluation, returning the ``offline`` summary group.
            step_keys: Metrics of ``train_curves.png``.
            epoch_keys: Metrics of ``epoch_metrics.png``.

        Returns:
            The exit code.
        """
        if not result.completed:
            return self.stopped(result)
        summary: dict[str, Any] = {"variant": self.ctx.cfg.variant, "data": data}
        summary.update(epoch_summary(self.ctx, representations))
        if self.ctx.is_main and self.ctx.cfg.eval.offline and offline is not None:
            self.write("offline evaluation on frozen features ...")
            summary["offline"] = offline()
        summary.update(result.summary)
        summary["wall_time_s"] = round(self.wall_seconds(), 3)
        summary["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        write_outputs(self.ctx, summary, step_keys=step_keys, epoch_keys=epoch_keys, spectra=representations)
        self.write(format_report(self.ctx.run.path, summary, ("online", "offline", "effective_rank")))
        return 0
