"""Training progress: a tqdm bar on a terminal, plain periodic lines in logs, nothing on non-zero ranks."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO

__all__ = ["ProgressReporter", "format_metrics"]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4g}"


def format_metrics(metrics: Mapping[str, Any], sep: str = " | ") -> str:
    """Formats ``{"loss": 0.123456, "lr": 3e-4}`` as ``"loss 0.1235 | lr 3.00e-04"``.

    Examples:
        >>> format_metrics({"loss": 0.123456, "lr": 3e-4, "step": 7})
        'loss 0.1235 | lr 3.00e-04 | step 7'
    """
    return sep.join(f"{k} {_fmt(v)}" for k, v in metrics.items())


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressReporter:
    """Reports training progress; use one per run (or per epoch) and feed it after every step.

    On a TTY it drives a tqdm bar whose postfix shows the latest metrics and the throughput; otherwise it
    prints one plain line every ``log_every`` steps (and at the last step), which reads well in CI logs.
    With ``enabled=False`` (non-zero ranks) every method does nothing.

    Args:
        total: Total number of steps.
        desc: Prefix of the bar or lines, e.g. ``"train"``.
        initial: Steps already done (when resuming).
        enabled: Report at all; pass ``is_main()`` so that only rank 0 prints.
        stream: Where to write (default ``sys.stderr``).
        use_tqdm: Force the bar on or off; ``None`` picks the bar exactly when ``stream`` is a TTY.
        log_every: Steps between plain lines.

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> with ProgressReporter(4, desc="train", stream=out, log_every=2) as progress:
        ...     for _ in range(4):
        ...         progress.update(samples=32, loss=0.5)
        >>> print(out.getvalue().splitlines()[-1])  # doctest: +ELLIPSIS
        train step 4/4 (100%) | loss 0.5 | img/s ... | elapsed ...
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        initial: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        use_tqdm: bool | None = None,
        log_every: int = 50,
    ) -> None:
        if total < 0 or initial < 0 or log_every < 1:
            raise ValueError(
                f"need total >= 0, initial >= 0, log_every >= 1; got {total}, {initial}, {log_every}"
            )
        self.total = total
        self.desc = desc
        self.step = initial
        self._initial = initial
        self.enabled = enabled
        self.log_every = log_every
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.metrics: dict[str, Any] = {}
        self._start = time.perf_counter()
        self._window_start = self._start
        self._window_samples = 0
        self._rate: float | None = None
        self._bar: Any = None
        if enabled:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
            if use_tqdm if use_tqdm is not None else tty:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=total, initial=initial, desc=desc or None, file=self.stream, dynamic_ncols=True
                )

    @property
    def samples_per_second(self) -> float | None:
        """Throughput over the latest reporting window (``None`` before the first window closes)."""
        return self._rate

    def update(self, steps: int = 1, *, samples: int = 0, **metrics: Any) -> None:
        """Advances by ``steps`` and records the latest metrics (shown as the postfix / in the next line).

        Args:
            steps: Steps done since the last call.
            samples: Images processed in those steps (for the ``img/s`` column); count the global batch.
            **metrics: Latest values, e.g. ``loss=..., rate=..., lr=..., tau=...``; tensors should be
                converted with ``.item()`` by the caller, and only on reporting steps to avoid device syncs.
        """
        if not self.enabled:
            return
        self.step += steps
        self._window_samples += samples
        self.metrics.update(metrics)
        due = self.step % self.log_every == 0 or self.step >= self.total
        if self._bar is not None:
            now = time.perf_counter()
            if now - self._window_start >= 1.0 or due:
                self._close_window(now)
                postfix = ", ".join(f"{k}={_fmt(v)}" for k, v in self._display().items())
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(steps)
        elif due:
            self._close_window(time.perf_counter())
            self._print_line()

    def _close_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if self._window_samples and elapsed > 0:
            self._rate = self._window_samples / elapsed
        self._window_start, self._window_samples = now, 0

    def _display(self) -> dict[str, Any]:
        shown = dict(self.metrics)
        if self._rate is not None:
            shown["img/s"] = round(self._rate)
        return shown

    def _print_line(self) -> None:
        elapsed = time.perf_counter() - self._start
        pct = 100 * self.step / self.total if self.total else 100.0
        parts = [f"{self.desc + ' ' if self.desc else ''}step {self.step}/{self.total} ({pct:.0f}%)"]
        if self._display():
            parts.append(format_metrics(self._display()))
        parts.append(f"elapsed {_hms(elapsed)}")
        done = self.step - self._initial
        if done > 0 and self.step < self.total:
            parts.append(f"eta {_hms(elapsed / done * (self.total - self.step))}")
        print(" | ".join(parts), file=self.stream, flush=True)

    def write(self, message: str) -> None:
        """Prints a line (e.g. an epoch summary) without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Closes the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
