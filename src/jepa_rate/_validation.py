"""Argument checks shared by the public API.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the offending argument and its
value or shape, so that a user sees at once what to fix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_compute_dtype",
    "check_feature_tensor",
    "check_floating_tensor",
    "check_nonnegative",
    "check_positive",
    "check_probability",
    "finite_real",
]


def check_feature_tensor(z: object, name: str = "z", *, min_rows: int = 2) -> Tensor:
    """Checks that ``z`` is a floating tensor of shape ``(..., n, d)`` with ``n >= min_rows`` and ``d >=
    1``."""
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {z.dtype}"
        )
    if z.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., n, d) with at least 2 dims, got shape {tuple(z.shape)}"
        )
    n, d = z.shape[-2], z.shape[-1]
    if n < min_rows:
        raise ValueError(
            f"{name} needs at least {min_rows} rows (n) per set, got n={n} in shape {tuple(z.shape)}"
        )
    if d < 1:
        raise ValueError(f"{name} needs at least one feature (d >= 1), got shape {tuple(z.shape)}")
    return z


def check_floating_tensor(value: object, name: str) -> Tensor:
    """Checks that ``value`` is a tensor with a floating dtype and returns it."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a floating torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor, got dtype {value.dtype}")
    return value


def check_int(value: object, name: str, minimum: int | None = 1) -> int:
    """Checks that ``value`` is an int (not a bool) that is at least ``minimum`` (``None``: any) and returns
    it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def finite_real(value: object, name: str, requirement: str = "") -> float:
    """``value`` as a finite float; any real number but a bool is accepted (NumPy scalars included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    try:
        out = float(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        out = math.inf
    # Comparisons rather than math.isfinite: under torch.compile(dynamic=True) a float may be symbolic.
    if out != out or abs(out) == math.inf:
        raise ValueError(
            f"{name} must be a finite number{' ' + requirement if requirement else ''}, got {value!r}"
        )
    return out


def check_positive(value: object, name: str) -> float:
    """Checks that ``value`` is a finite real number > 0 and returns it as a float."""
    out = finite_real(value, name, "> 0")
    if out <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return out


def check_nonnegative(value: object, name: str) -> float:
    """Checks that ``value`` is a finite real number >= 0 and returns it as a float."""
    out = finite_real(value, name, ">= 0")
    if out < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return out


def check_probability(value: object, name: str) -> float:
    """Checks that ``value`` is a real number in ``[0, 1]`` and returns it as a float."""
    out = check_nonnegative(value, name)
    if out > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return out


def check_bool(value: object, name: str) -> bool:
    """Checks that ``value`` is a bool and returns it (``bool("no")`` would read as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """Checks that ``value`` is one of the strings in ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_compute_dtype(value: object) -> torch.dtype | None:
    """Checks the ``compute_dtype`` argument: ``None``, ``torch.float32`` or ``torch.float64``."""
    if value is None or value in (torch.float32, torch.float64):
        return value
    raise ValueError(f"compute_dtype must be None, torch.float32 or torch.float64, got {value!r}")
