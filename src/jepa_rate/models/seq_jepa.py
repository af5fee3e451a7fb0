"""seq-JEPA: predict the embedding of the next view of a sequence from an [AGG] summary and the next action.

Ghaemi et al., "seq-JEPA: Autoregressive Predictive Learning of Invariant-Equivariant World Models"
(NeurIPS 2025). Reference code: github.com/hafezgh/seq-jepa.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_rate._validation import (
    check_bool,
    check_choice,
    check_floating_tensor,
    check_int,
    check_positive,
    check_probability,
)
from jepa_rate.modules._padding import check_padding_mask, reverse_valid_prefix
from jepa_rate.modules.action_encoder import ActionEncoder
from jepa_rate.modules.aggregator import SeqAggregator
from jepa_rate.modules.ema import BufferPolicy, EMATarget
from jepa_rate.modules.predictor import ActionConditionedPredictor, PredictorNorm
from jepa_rate.schedules import Schedule

__all__ = ["PredictionLossKind", "SeqJEPA", "SeqJEPAOutput", "prediction_loss"]

PredictionLossKind = Literal["cosine", "mse", "smooth_l1"]
TargetMode = Literal["ema", "stopgrad"]
TargetPass = Literal["joint", "separate"]


def prediction_loss(
    prediction: Tensor, target: Tensor, kind: PredictionLossKind = "cosine", *, beta: float = 1.0
) -> Tensor:
    """Per-sample JEPA prediction loss between L2-normalised embeddings, averaged over the batch.

    - ``"cosine"``: ``1 - cos(p, t)`` (upstream seq-JEPA).
    - ``"mse"``: ``||p/|p| - t/|t| ||²`` summed over features, which equals ``2 - 2 cos(p, t)``.
    - ``"smooth_l1"``: Smooth-L1 (Huber with threshold ``beta``) between the normalised vectors, summed
      over features.

    Args:
        prediction: Predicted embeddings ``(B, D)``.
        target: Target embeddings ``(B, D)``; the caller detaches them.
        kind: Loss kind.
        beta: Threshold of the Smooth-L1 loss.

    Returns:
        Scalar loss, in float32 for lower-precision inputs (float64 for float64 ones).

    Raises:
        ValueError: If the shapes differ, ``kind`` is unknown or ``beta`` is not positive.

    Examples:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> prediction_loss(p, p), prediction_loss(p, -p, "mse")
        (tensor(0.), tensor(4.))
    """
    check_choice(kind, "kind", ("cosine", "mse", "smooth_l1"))
    beta = check_positive(beta, "beta")
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise ValueError(
            f"prediction and target must have the same shape (B, D), got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    # At least float32: under bf16 autocast the encoders return bf16, whose 8-bit mantissa rounds a small
    # loss such as 1 - cos = 1e-3 to exactly 0 and stalls both the gradient and the logged value.
    dtype = torch.promote_types(torch.promote_types(prediction.dtype, target.dtype), torch.float32)
    prediction, target = prediction.to(dtype), target.to(dtype)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(prediction, target, dim=-1).mean()
    p, t = F.normalize(prediction, dim=-1), F.normalize(target, dim=-1)
    if kind == "mse":
        return (p - t).square().sum(dim=-1).mean()
    return F.smooth_l1_loss(p, t, reduction="none", beta=beta).sum(dim=-1).mean()


def _embed_dim(encoder: nn.Module, embed_dim: int | None) -> int:
    """The checked encoder output size: ``embed_dim``, or the encoder's ``out_dim`` attribute."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
    if embed_dim is None:
        embed_dim = getattr(encoder, "out_dim", None)
        if not isinstance(embed_dim, int):
            raise ValueError(
                f"embed_dim is required: {type(encoder).__name__} has no int `out_dim` attribute to read"
            )
    return check_int(embed_dim, "embed_dim")


@contextmanager
def _named_as(**names: str) -> Iterator[None]:
    """Re-raises a sub-module's argument error under the name the user passed to :class:`SeqJEPA`.

    The sub-modules check their arguments; their messages start with their own parameter names
    (``hidden_dim must be >= 1``), which would point a :class:`SeqJEPA` user at the wrong argument.
    """
    try:
        yield
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for inner, outer in names.items():
            if message.startswith(f"{inner} "):
                raise type(exc)(outer + message[len(inner) :]) from exc
        raise


def _last_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``x[b, lengths[b] - 1]`` for every row ``b`` (``x[:, -1]`` without padding)."""
    if lengths is None:
        return x[:, -1]
    return x[torch.arange(x.shape[0], device=x.device), lengths - 1]


class SeqJEPAOutput(NamedTuple):
    """Everything one :class:`SeqJEPA` step computes; the caller composes the objective from it.

    Attributes:
        prediction: ``(B, D)`` predicted embedding of each sequence's last valid view; with
            ``symmetric=True`` ``(2B, D)``: the ``B`` forward rows, then the ``B`` rows of the reversed
            direction (predicting view 0).
        target: Same shape as ``prediction``, the stop-gradient target embeddings (detached).
        z_agg: ``(B, d_model)`` [AGG] outputs (the invariant representation), or ``(2B, d_model)`` with
            ``symmetric=True``, in the same row order; probes use ``z_agg[:B]``.
        encodings: ``(B, T - 1, D)`` online encodings of the observed views (the equivariant
            representations), zero at padded positions.
    """

    prediction: Tensor
    target: Tensor
    z_agg: Tensor
    encodings: Tensor


class SeqJEPA(nn.Module):
    """seq-JEPA: encoder + action embeddings + [AGG] transformer + action-conditioned predictor.

    Each of the ``T`` views of a sequence is encoded; the first ``T - 1`` (observed) encodings, each
    concatenated with the embedding of the action leaving that view (zero for the last observed view), are
    aggregated by :class:`~jepa_rate.modules.SeqAggregator`; from ``z_AGG`` and the embedding of the action
    from the last observed view to the last view, :class:`~jepa_rate.modules.ActionConditionedPredictor`
    predicts the embedding of the last view, given by a stop-gradient target: an EMA copy of the encoder
    (``target="ema"``, call :meth:`update_target` after each optimiser step) or the online encoder's own
    output, detached (``target="stopgrad"``). With ``symmetric=True`` the first view is also predicted from
    the reversed sequence with inverted actions.

    The model is the architecture only: :meth:`forward` returns the predictions, targets and
    representations (:class:`SeqJEPAOutput`) and the caller composes the objective, e.g.
    ``prediction_loss(out.prediction, out.target) - w * coding_rate(out.z_agg)``.

    With the upstream CIFAR ResNet-18 (:func:`~jepa_rate.models.cifar_resnet18`) and the defaults, the
    architecture and parameter count equal upstream's: 27.26 M online parameters for 9-d actions.

    Args:
        encoder: Any module mapping images ``(N, C, H, W)`` to features ``(N, D)``.
        action_dim: Number of action parameters ``A``.
        embed_dim: Encoder output size ``D``; ``None`` reads the encoder's ``out_dim`` attribute.
        action_embed_dim: Size of the action embeddings (upstream: 128).
        relative_actions: Whether ``forward`` gets relative actions instead of absolute ones.
        target: ``"ema"`` or ``"stopgrad"``.
        target_pass: How ``target="stopgrad"`` encodes the target views. ``"joint"``: in the same encoder
            call as the observed views, so batch-norm statistics are shared by all views and running
            statistics are updated once per step. ``"separate"``: in a second encoder call under
            ``torch.no_grad()`` after the online one, as upstream's non-EMA mode and the seq-JEPA fork at
            github.com/kaikun213/seq-jepa do: in training the targets are normalised with their own batch
            statistics and the encoder's running statistics are updated twice per step. With
            ``target="ema"`` the EMA copy always encodes the targets in its own pass; only ``"joint"`` (the
            default) is accepted there.
        ema_decay: EMA decay or schedule ``step -> decay`` (``target="ema"`` only).
        ema_buffers: Buffer policy of :class:`~jepa_rate.modules.EMATarget` (``target="ema"`` only).
        num_layers: Aggregator depth. The aggregator (:class:`~jepa_rate.modules.SeqAggregator`) works on
            ``d_model = D + action_embed_dim``.
        num_heads: Aggregator attention heads; must divide ``d_model``.
        dim_feedforward: Aggregator feed-forward size; ``None`` means ``4 * d_model``.
        dropout: Aggregator dropout.
        norm_first: Pre-norm aggregator layers (upstream: post-norm).
        max_len: Learned position embedding for at most ``max_len`` observed views (upstream: none).
        predictor_hidden: Hidden width of the predictor
            (:class:`~jepa_rate.modules.ActionConditionedPredictor`).
        predictor_layers: Number of linear layers of the predictor.
        predictor_norm: Hidden norm of the predictor, ``"batch"``, ``"layer"`` or ``"none"``.
        symmetric: Also predict the first view from the reversed sequence (inverted actions).
        inverse_action: With ``symmetric=True`` and relative actions, the map from an action to its inverse
            (applied elementwise over ``(..., A)``). Default: negation, right for additive parameters
            (angles, offsets). For ``[sin θ, cos θ]`` codes the inverse is ``[-sin θ, cos θ]``: pass
            ``lambda a: a * a.new_tensor([-1.0, 1.0])``; for one-hot codes, the permutation to the inverse.

    Raises:
        TypeError: If ``encoder`` is not a module or an argument has the wrong type.
        ValueError: If an option is unknown, a size is invalid, or ``embed_dim`` is missing.

    Shape:
        - views: ``(B, T, C, H, W)``, ``T >= 2``; ``views[:, -1]`` (the last valid view) is the target.
        - actions: absolute ``(B, T, A)``, ``actions[:, t]`` = transformation parameters of view ``t``
          (relative actions ``a_{t+1} - a_t`` are computed); or, with ``relative_actions=True``,
          ``(B, T - 1, A)``, ``actions[:, t]`` = action taking view ``t`` to view ``t + 1``. Symmetric
          prediction inverts relative actions with ``inverse_action`` (negation by default).
        - padding_mask: optional bool ``(B, T)`` over views, ``True`` = padding; valid views first, at
          least 2 per sequence; the last valid view of each sequence is its target.
        - output: :class:`SeqJEPAOutput`.

    Examples:
        >>> from jepa_rate import coding_rate
        >>> from jepa_rate.models import ConvEncoder
        >>> model = SeqJEPA(ConvEncoder(widths=(8, 16)), action_dim=2, action_embed_dim=8,
        ...                 num_layers=1, num_heads=2, predictor_hidden=32)
        >>> out = model(torch.randn(4, 3, 3, 16, 16), torch.randn(4, 3, 2))
        >>> out.prediction.shape, out.z_agg.shape, out.encodings.shape
        (torch.Size([4, 16]), torch.Size([4, 24]), torch.Size([4, 2, 16]))
        >>> loss = prediction_loss(out.prediction, out.target) - 0.05 * coding_rate(out.z_agg)
        >>> loss.backward(); model.update_target()
        True
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        action_dim: int,
        embed_dim: int | None = None,
        action_embed_dim: int = 128,
        relative_actions: bool = False,
        target: TargetMode = "ema",
        target_pass: TargetPass = "joint",
        ema_decay: float | Schedule = 0.996,
        ema_buffers: BufferPolicy = "none",
        num_layers: int = 3,
        num_heads: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
        norm_first: bool = False,
        max_len: int | None = None,
        predictor_hidden: int = 1024,
        predictor_layers: int = 2,
        predictor_norm: PredictorNorm = "batch",
        symmetric: bool = False,
        inverse_action: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim = _embed_dim(encoder, embed_dim)
        self.target_mode: TargetMode = check_choice(target, "target", ("ema", "stopgrad"))  # type: ignore[assignment]
        self.target_pass: TargetPass = check_choice(target_pass, "target_pass", ("joint", "separate"))  # type: ignore[assignment]
        if target == "ema" and target_pass == "separate":
            raise ValueError(
                "target_pass='separate' applies to target='stopgrad' only, got target='ema': the EMA copy "
                "always encodes the target views in its own pass"
            )
        self.symmetric = check_bool(symmetric, "symmetric")
        if inverse_action is not None and not callable(inverse_action):
            raise TypeError(f"inverse_action must be callable or None, got {type(inverse_action).__name__}")
        self.inverse_action = inverse_action
        self.encoder = encoder
        with _named_as(embed_dim="action_embed_dim", relative_input="relative_actions"):
            self.action_encoder = ActionEncoder(action_dim, action_embed_dim, relative_input=relative_actions)
        d_model = embed_dim + action_embed_dim
        self.aggregator = SeqAggregator(
            d_model, num_layers, num_heads, dim_feedforward, dropout, norm_first=norm_first, max_len=max_len
        )
        with _named_as(hidden_dim="predictor_hidden", num_layers="predictor_layers", norm="predictor_norm"):
            self.predictor = ActionConditionedPredictor(
                d_model, action_embed_dim, embed_dim, predictor_hidden, predictor_layers, norm=predictor_norm
            )
        if target == "ema":
            with _named_as(buffers="ema_buffers"):
                self.target_encoder: EMATarget | None = EMATarget(encoder, ema_decay, buffers=ema_buffers)
        else:
            # Unused without a teacher, but a typo in a config should still fail here, not pass unnoticed.
            check_choice(ema_buffers, "ema_buffers", ("none", "ema", "copy"))
            if not callable(ema_decay):
                check_probability(ema_decay, "ema_decay")
            self.target_encoder = None

    @torch.no_grad()
    def update_target(self) -> bool:
        """EMA step of the target encoder; returns whether it changed (never in stopgrad or eval mode)."""
        return self.target_encoder.update() if self.target_encoder is not None else False

    def _features(self, images: Tensor) -> Tensor:
        """Online encoder features ``(N, D)`` of ``images`` ``(N, C, H, W)``."""
        feats: Tensor = self.encoder(images)
        if feats.ndim != 2 or feats.shape[1] != self.embed_dim:
            raise ValueError(
                f"encoder must map (N, C, H, W) to (N, {self.embed_dim}), got output {tuple(feats.shape)}"
            )
        return feats

    def _encode(self, views: Tensor, valid: Tensor | None) -> Tensor:
        """Online encodings ``(B, S, D)`` of ``views`` ``(B, S, C, H, W)``; invalid entries stay zero."""
        batch, steps = views.shape[:2]
        feats = self._features(views.flatten(0, 1) if valid is None else views[valid])
        if valid is None:
            return feats.view(batch, steps, self.embed_dim)
        return feats.new_zeros(batch, steps, self.embed_dim).index_put((valid,), feats)

    def _check_inputs(self, views: Tensor, actions: Tensor) -> tuple[int, int]:
        check_floating_tensor(views, "views")
        if views.ndim != 5 or views.shape[1] < 2:
            raise ValueError(f"views must have shape (B, T, C, H, W) with T >= 2, got {tuple(views.shape)}")
        batch, steps = views.shape[:2]
        expected = (
            batch,
            steps - 1 if self.action_encoder.relative_input else steps,
            self.action_encoder.action_dim,
        )
        check_floating_tensor(actions, "actions")
        if actions.shape != expected:
            raise ValueError(
                f"actions must have shape {expected} (A = action_dim) for views of shape "
                f"{tuple(views.shape)}, got {tuple(actions.shape)}"
            )
        return batch, steps

    def forward(self, views: Tensor, actions: Tensor, *, padding_mask: Tensor | None = None) -> SeqJEPAOutput:
        """One seq-JEPA step: encodes, aggregates and predicts the sequence(s); computes no loss.

        Args:
            views: ``(B, T, C, H, W)`` views; the last valid one of each sequence is the target.
            actions: Absolute ``(B, T, A)`` or relative ``(B, T - 1, A)`` actions (see the class docs).
            padding_mask: Optional bool ``(B, T)``, ``True`` = padded view.

        Returns:
            :class:`SeqJEPAOutput`.

        Raises:
            TypeError: If an input has the wrong type.
            ValueError: If a shape is wrong or a sequence has fewer than 2 valid views.
        """
        batch, steps = self._check_inputs(views, actions)
        lengths = None
        obs_pad = None  # padding of the T - 1 observation slots: each row's last valid view is its target
        if padding_mask is not None:
            lengths = check_padding_mask(padding_mask, batch, steps, min_valid=2, name="padding_mask")
            obs_pad = torch.arange(steps - 1, device=views.device)[None, :] >= (lengths[:, None] - 1)

        # All views when a joint target or the reversed direction needs their online encodings, else observed.
        if self.symmetric or (self.target_mode == "stopgrad" and self.target_pass == "joint"):
            z = self._encode(views, None if padding_mask is None else ~padding_mask)
        else:
            z = self._encode(views[:, :-1], None if obs_pad is None else ~obs_pad)

        # Forward direction: predict the last valid view. Reversed direction (symmetric): predict the first.
        z_obs, acts, lens, pad = z[:, : steps - 1], actions, lengths, obs_pad
        if self.symmetric:
            z_obs = torch.cat((z_obs, reverse_valid_prefix(z, lengths)[:, : steps - 1]))
            acts = torch.cat((actions, self._reversed_actions(actions, lengths)))
            lens = None if lens is None else lens.repeat(2)
            pad = None if pad is None else pad.repeat(2, 1)
        # Inputs and mask are checked above, once: the action encoder's own forward would check them again.
        act_emb = self.action_encoder._embed_checked(acts, lens)
        agg = self.aggregator(z_obs, act_emb.tokens, key_padding_mask=pad).agg
        pred = self.predictor(agg, act_emb.next)

        tgt = self._target(views, z, lengths)
        encodings = z[:, : steps - 1]
        if obs_pad is not None:
            encodings = encodings.masked_fill(obs_pad[..., None], 0.0)
        return SeqJEPAOutput(prediction=pred, target=tgt, z_agg=agg, encodings=encodings)

    def _target(self, views: Tensor, z: Tensor, lengths: Tensor | None) -> Tensor:
        """Stop-gradient embeddings of the last valid views (then of the first views, when symmetric)."""
        joint = self.target_encoder is None and self.target_pass == "joint"
        source = z if joint else views
        tgt_in = _last_valid(source, lengths)
        if self.symmetric:
            tgt_in = torch.cat((tgt_in, source[:, 0]))
        if joint:
            return tgt_in.detach()
        if self.target_encoder is not None:
            out: Tensor = self.target_encoder(tgt_in)
            return out.detach()
        # A second call of the online encoder, after the online one (the order of the running-stat updates).
        with torch.no_grad():
            return self._features(tgt_in)

    def _reversed_actions(self, actions: Tensor, lengths: Tensor | None) -> Tensor:
        """Actions of the reversed sequence: absolute ones reversed, relative ones reversed and inverted."""
        if not self.action_encoder.relative_input:
            return reverse_valid_prefix(actions, lengths)
        reversed_actions = reverse_valid_prefix(actions, None if lengths is None else lengths - 1)
        if self.inverse_action is None:
            return -reversed_actions
        return self.inverse_action(reversed_actions)
