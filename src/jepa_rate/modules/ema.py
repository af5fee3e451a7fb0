"""Exponential-moving-average (EMA) target networks, as in BYOL, I-JEPA and seq-JEPA."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor, nn

from jepa_rate._validation import check_choice
from jepa_rate.schedules import Schedule, as_schedule

__all__ = ["EMATarget", "ema_update_", "unwrap_module"]

BufferPolicy = Literal["none", "ema", "copy"]


def unwrap_module(module: nn.Module) -> nn.Module:
    """Strips ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers from a module.

    Args:
        module: A module, possibly wrapped (any nesting of the wrappers).

    Returns:
        The innermost plain module, whose parameters are the ones the wrappers train.

    Examples:
        >>> net = nn.Linear(2, 2)
        >>> unwrap_module(torch.compile(net)) is net
        True
    """
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod  # type: ignore[assignment]
        else:
            return module


def _check_decay(decay: object) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise TypeError(f"EMA decay must be a real number, got {type(decay).__name__} ({decay!r})")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay!r}")
    return float(decay)


@torch.no_grad()
def ema_update_(
    target: nn.Module, online: nn.Module, decay: float, *, buffers: BufferPolicy = "none"
) -> None:
    """In-place EMA step ``target <- decay * target + (1 - decay) * online`` with ``torch._foreach`` kernels.

    ``decay = 0`` copies the online weights exactly and ``decay = 1`` leaves the target bit-for-bit unchanged
    (``lerp`` is exact at both ends).

    Args:
        target: Module updated in place.
        online: Module with the same parameter (and buffer) structure.
        decay: EMA decay in ``[0, 1]``.
        buffers: What to do with buffers: ``"none"`` leaves them to the target's own forward passes (e.g. BN
            running statistics tracked on target batches, as upstream seq-JEPA does); ``"ema"`` averages
            floating buffers with the same decay and copies the others (e.g. ``num_batches_tracked``);
            ``"copy"`` copies all buffers from ``online``.

    Raises:
        TypeError: If ``decay`` is not a real number.
        ValueError: If ``decay`` is outside ``[0, 1]``, ``buffers`` is unknown, the structures differ or
            a pair of parameters differs in shape, dtype or device.

    Examples:
        >>> online, target = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> ema_update_(target, online, decay=0.0)
        >>> torch.equal(target.weight, online.weight)
        True
    """
    check_choice(buffers, "buffers", ("none", "ema", "copy"))
    _ema_step(target, online, _check_decay(decay), buffers)


def _ema_step(target: nn.Module, online: nn.Module, decay: float, buffers: BufferPolicy) -> None:
    """:func:`ema_update_` on checked arguments (``decay`` in ``[0, 1]``, a known ``buffers`` policy)."""
    target_params: list[Tensor] = list(target.parameters())
    online_params: list[Tensor] = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError(
            f"target has {len(target_params)} parameters but online has {len(online_params)}: "
            "structures differ"
        )
    if target_params:
        try:
            torch._foreach_lerp_(target_params, [p.detach() for p in online_params], 1.0 - decay)
        except RuntimeError as exc:
            # Found only on failure, so the common case pays for no per-parameter check.
            mismatch = next(
                (
                    (i, t, o)
                    for i, (t, o) in enumerate(zip(target_params, online_params, strict=True))
                    if (t.shape, t.dtype, t.device) != (o.shape, o.dtype, o.device)
                ),
                None,
            )
            if mismatch is None:
                raise
            i, t, o = mismatch
            raise ValueError(
                f"target and online parameter {i} differ: target {tuple(t.shape)} {t.dtype} on {t.device}, "
                f"online {tuple(o.shape)} {o.dtype} on {o.device}; move both modules with the same .to()"
            ) from exc
    if buffers == "none":
        return
    target_bufs, online_bufs = list(target.buffers()), list(online.buffers())
    if len(target_bufs) != len(online_bufs):
        raise ValueError(
            f"target has {len(target_bufs)} buffers but online has {len(online_bufs)}: structures differ"
        )
    floating = [(t, o) for t, o in zip(target_bufs, online_bufs, strict=True) if t.is_floating_point()]
    others = [(t, o) for t, o in zip(target_bufs, online_bufs, strict=True) if not t.is_floating_point()]
    if buffers == "copy":
        others, floating = others + floating, []
    if floating:
        torch._foreach_lerp_([t for t, _ in floating], [o for _, o in floating], 1.0 - decay)
    if others:
        torch._foreach_copy_([t for t, _ in others], [o for _, o in others])


class EMATarget(nn.Module):
    """A frozen EMA copy of a module, used as the stop-gradient target of a JEPA.

    Holds a deep copy of ``online`` (unwrapped from DDP / ``torch.compile``) with ``requires_grad=False``;
    :meth:`update` moves it towards the online weights with decay ``tau_k = decay(k)``, where ``k`` is the
    number of updates so far. The schedule is a pure function of ``k``, and ``k`` and the last decay are
    buffers, so a ``state_dict`` round trip resumes the exact same sequence of decays. :meth:`update` does
    nothing in eval mode, and :meth:`forward` runs the copy under ``torch.no_grad()``.

    The copy follows this module's train / eval mode, so in training it normalises with batch statistics,
    like the upstream seq-JEPA and BYOL targets. Only the parameters listed by ``online.parameters()`` are
    averaged; see ``buffers`` for the buffers.

    Args:
        online: The module trained by the optimiser. Only a reference is kept (not registered as a
            submodule), so its parameters appear once in the parent's ``parameters()``.
        decay: Constant decay in ``[0, 1]``, or a schedule ``step -> decay`` such as
            ``CosineSchedule(total_steps)`` (BYOL: 0.996 -> 1).
        buffers: Buffer policy of :func:`ema_update_`: ``"none"`` (default), ``"ema"`` or ``"copy"``.

    Attributes:
        step: Buffer, the number of updates applied so far.
        decay: Buffer, the decay of the latest update; before the first update, the decay it will use.

    Raises:
        TypeError: If ``online`` is not a module or ``decay`` has the wrong type.
        ValueError: If the decay at step 0 is outside ``[0, 1]`` or ``buffers`` is unknown.

    Examples:
        >>> online = nn.Linear(4, 2)
        >>> ema = EMATarget(online, decay=0.5)
        >>> with torch.no_grad():
        ...     _ = online.weight.add_(1.0)
        >>> ema.update()
        True
        >>> torch.allclose(ema.module.weight, online.weight - 0.5)
        True
        >>> int(ema.step), ema(torch.randn(3, 4)).requires_grad
        (1, False)
    """

    step: Tensor
    decay: Tensor

    def __init__(
        self, online: nn.Module, decay: float | Schedule = 0.996, *, buffers: BufferPolicy = "none"
    ) -> None:
        super().__init__()
        if not isinstance(online, nn.Module):
            raise TypeError(f"online must be an nn.Module, got {type(online).__name__}")
        # A constant is checked once, under its own name (as_schedule would call it "value"); a schedule's
        # value at step 0 is checked now, each later one by the update that uses it.
        first = _check_decay(decay(0) if callable(decay) else decay)
        self.schedule = as_schedule(decay if callable(decay) else first)
        self.buffer_policy: BufferPolicy = check_choice(buffers, "buffers", ("none", "ema", "copy"))  # type: ignore[assignment]
        base = unwrap_module(online)
        self.module = copy.deepcopy(base)
        self.module.requires_grad_(False)
        for param in self.module.parameters():
            param.grad = None
        # A plain attribute, so the online weights are neither registered twice nor saved in this state_dict.
        self.__dict__["_online"] = online
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("decay", torch.tensor(first, dtype=torch.float32))
        # Host mirror of ``step`` so that computing the decay needs no device synchronisation.
        self._num_updates = 0

    @property
    def online(self) -> nn.Module:
        """The (possibly wrapped) online module this target follows."""
        online: nn.Module = self.__dict__["_online"]
        return online

    @property
    def num_updates(self) -> int:
        """Number of :meth:`update` calls applied so far (the step ``k`` of the schedule)."""
        return self._num_updates

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return _check_decay(self.schedule(self._num_updates))

    @torch.no_grad()
    def update(self) -> bool:
        """Moves the target one EMA step towards the online module.

        Returns:
            ``True`` if an update was applied, ``False`` in eval mode (nothing changes then).

        Raises:
            ValueError: If the schedule returns a decay outside ``[0, 1]``.
        """
        if not self.training:
            return False
        decay = self.current_decay()
        _ema_step(self.module, unwrap_module(self.online), decay, self.buffer_policy)
        self._num_updates += 1
        self.step.fill_(self._num_updates)
        self.decay.fill_(decay)
        return True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the target copy under ``torch.no_grad()``."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Loading replaces the ``step`` buffer; resync the host mirror once here.
        self._num_updates = int(self.step)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, buffers={self.buffer_policy!r}, num_updates={self._num_updates}"
