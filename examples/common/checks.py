"""Value checks shared by the config dataclasses of the example trainers.

Each check raises a ``ValueError`` whose message names the dotted config key and the bad value, so that a
wrong setting fails when the config is built (before any data is loaded or folder written), and
:mod:`common.config` reports it against the ``--set`` item or preset line that set it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["check_device", "check_encoder", "check_min", "check_range", "check_run_name"]

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_min(prefix: str, minimum: float, reason: str = "", **values: float | None) -> None:
    """Checks that every value that is not ``None`` is at least ``minimum``.

    Args:
        prefix: Group of the keys, e.g. ``"model."`` (``""`` for top-level keys).
        minimum: The smallest valid value.
        reason: Appended to the message, e.g. why the bound exists.
        **values: ``key=value`` pairs.

    Raises:
        ValueError: A value is below ``minimum`` (or NaN).

    Examples:
        >>> check_min("model.", 1, predictor_hidden=-3)
        Traceback (most recent call last):
        ...
        ValueError: model.predictor_hidden must be >= 1, got -3
    """
    for name, value in values.items():
        if value is not None and not value >= minimum:
            raise ValueError(f"{prefix}{name} must be >= {minimum}, got {value!r}{reason}")


def check_range(
    prefix: str, low: float, high: float, *, include_high: bool = True, **values: float | None
) -> None:
    """Checks that every value that is not ``None`` lies in ``[low, high]`` (or ``[low, high)``).

    Raises:
        ValueError: A value lies outside the interval or is not finite.

    Examples:
        >>> check_range("model.", 0.0, 1.0, include_high=False, dropout=1.0)
        Traceback (most recent call last):
        ...
        ValueError: model.dropout must lie in [0.0, 1.0), got 1.0
    """
    for name, value in values.items():
        if value is None:
            continue
        inside = math.isfinite(value) and low <= value and (value <= high if include_high else value < high)
        if not inside:
            bracket = "]" if include_high else ")"
            raise ValueError(f"{prefix}{name} must lie in [{low}, {high}{bracket}, got {value!r}")


def check_encoder(prefix: str, conv_widths: Sequence[int], ema_tau: float, ema_tau_end: float) -> None:
    """The encoder fields both trainers share: non-empty positive ``conv_widths`` and EMA decays in [0, 1].

    Raises:
        ValueError: Naming the first bad key.
    """
    if not conv_widths or min(conv_widths) < 1:
        raise ValueError(
            f"{prefix}conv_widths must be one or more channel counts >= 1, got {list(conv_widths)!r}"
        )
    check_range(prefix, 0.0, 1.0, ema_tau=ema_tau, ema_tau_end=ema_tau_end)


def check_device(device: str, key: str = "device") -> None:
    """Checks the spelling of a device setting: ``auto``, ``cpu``, ``cuda`` or ``cuda:<i>``.

    Raises:
        ValueError: Any other value.
    """
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"{key} must be 'auto', 'cpu', 'cuda' or 'cuda:<i>', got {device!r}")


def check_run_name(name: str | None) -> None:
    """Checks that a run name is one plain folder name, so the run folder stays inside ``out_dir``.

    Raises:
        ValueError: The name is empty, ``.`` or ``..``, or holds a path separator or a NUL.

    Examples:
        >>> check_run_name("demo-ema")
        >>> check_run_name("../escape")
        Traceback (most recent call last):
        ...
        ValueError: name must be a single folder name (no path separator, not '.' or '..'), got '../escape'
    """
    if name is None:
        return
    if name.strip() in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(
            f"name must be a single folder name (no path separator, not '.' or '..'), got {name!r}"
        )
