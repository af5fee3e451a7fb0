"""Ctrl-C (SIGINT) and SIGTERM that let the training loop finish its step, save, and exit cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["GracefulInterrupt"]


class GracefulInterrupt:
    """Turns the first SIGINT/SIGTERM into a flag that the loop polls; a second one interrupts at once.

    Inside the ``with`` block the loop checks :attr:`requested` after each step, and if set, writes its
    checkpoint and leaves. Outside the main thread (where handlers cannot be installed) it is inert. Under
    DDP every rank gets the signal from the launcher; combine the flags with ``any_rank(flag)`` so all ranks
    stop at the same step.

    Args:
        signals: The signals to catch (default SIGINT and SIGTERM).

    Examples:
        >>> import os
        >>> with GracefulInterrupt() as interrupt:
        ...     os.kill(os.getpid(), signal.SIGINT)
        ...     interrupt.requested, interrupt.signal_name
        (True, 'SIGINT')
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            # A second signal means "stop now": fall back to the default behaviour.
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
