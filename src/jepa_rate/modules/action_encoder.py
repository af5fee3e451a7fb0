"""Embeddings of the actions (transformations) that link consecutive views of a sequence."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from jepa_rate._validation import check_bool, check_choice, check_floating_tensor, check_int
from jepa_rate.modules._padding import check_padding_mask, last_valid_index

__all__ = ["ActionEmbeddings", "ActionEncoder", "relative_actions"]

ActionNorm = Literal["batch", "layer", "none"]


class ActionEmbeddings(NamedTuple):
    """Output of :class:`ActionEncoder`.

    Attributes:
        tokens: ``(B, T - 1, E)`` embedding of the action that leaves each observed view ``t`` (the one
            leading to view ``t + 1``), to be concatenated to that view's token. The last observed view and
            padded positions carry zeros: the action leaving the last observed view is the prediction query.
        next: ``(B, E)`` embedding of the action from the last observed view to the target view.
    """

    tokens: Tensor
    next: Tensor


def relative_actions(actions: Tensor) -> Tensor:
    """Relative actions ``r_t = a_{t+1} - a_t`` of a sequence of absolute actions.

    The difference is a plain subtraction: encode periodic quantities (angles) as ``(cos, sin)`` pairs or pass
    relative actions directly when subtraction is not the group's composition.

    Args:
        actions: Absolute action (transformation parameters) of each view.

    Returns:
        The relative actions.

    Raises:
        TypeError: If ``actions`` is not a floating tensor.
        ValueError: If it has fewer than 2 dims or fewer than 2 steps.

    Shape:
        - actions: ``(..., T, A)``
        - output: ``(..., T - 1, A)``

    Examples:
        >>> relative_actions(torch.tensor([[0.0], [90.0], [270.0]]))
        tensor([[ 90.],
                [180.]])
    """
    check_floating_tensor(actions, "actions")
    if actions.ndim < 2 or actions.shape[-2] < 2:
        raise ValueError(f"actions must have shape (..., T, A) with T >= 2, got {tuple(actions.shape)}")
    return _differences(actions)


def _differences(actions: Tensor) -> Tensor:
    return actions[..., 1:, :] - actions[..., :-1, :]


class ActionEncoder(nn.Module):
    """Projects per-step actions to embeddings that tag the tokens of a sequence model.

    Upstream seq-JEPA projects relative actions with ``Linear(action_dim, 128, bias=False)`` followed by
    ``BatchNorm1d(128, affine=False)``; those are the defaults here. The input is either absolute actions, one
    per view, from which relative actions are computed, or the relative actions themselves.

    The batch-norm statistics are taken over all real transitions of the batch in one pass (padded positions
    excluded). Upstream normalises the observed transitions and the query transition in two separate passes
    and includes the zero placeholder of the last observed view in the first; the result differs only in
    the batch statistics.

    Args:
        action_dim: Number of action parameters ``A``.
        embed_dim: Embedding size ``E``.
        relative_input: If ``True``, ``forward`` takes relative actions ``(B, T - 1, A)``; else absolute
            actions ``(B, T, A)``.
        norm: ``"batch"`` (``BatchNorm1d`` without affine, upstream), ``"layer"`` (``LayerNorm`` without
            affine) or ``"none"``.
        bias: Whether the projection has a bias (upstream: no).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a size is not positive or ``norm`` is unknown.

    Shape:
        - actions: ``(B, T, A)`` absolute, or ``(B, T - 1, A)`` relative, ``T >= 2`` views.
        - padding_mask: ``(B, T)`` over views, ``True`` = padding; valid views must come first, at least 2.
        - output: :class:`ActionEmbeddings` with ``tokens`` ``(B, T - 1, E)`` and ``next`` ``(B, E)``.

    Examples:
        >>> enc = ActionEncoder(action_dim=4, embed_dim=8)
        >>> out = enc(torch.randn(16, 5, 4))  # 5 views: 4 observed, the 5th is the target
        >>> out.tokens.shape, out.next.shape
        (torch.Size([16, 4, 8]), torch.Size([16, 8]))
        >>> bool(out.tokens[:, -1].eq(0).all())  # the last observed view carries a zero action
        True
    """

    def __init__(
        self,
        action_dim: int,
        embed_dim: int = 128,
        *,
        relative_input: bool = False,
        norm: ActionNorm = "batch",
        bias: bool = False,
    ) -> None:
        super().__init__()
        check_int(action_dim, "action_dim")
        check_int(embed_dim, "embed_dim")
        check_choice(norm, "norm", ("batch", "layer", "none"))
        self.action_dim = action_dim
        self.embed_dim = embed_dim
        self.relative_input = check_bool(relative_input, "relative_input")
        self.proj = nn.Linear(action_dim, embed_dim, bias=bias)
        self.norm: nn.Module
        if norm == "batch":
            self.norm = nn.BatchNorm1d(embed_dim, affine=False)
        elif norm == "layer":
            self.norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        else:
            self.norm = nn.Identity()

    def embed(self, transitions: Tensor, valid: Tensor | None = None) -> Tensor:
        """Embeds relative actions; the normalisation sees only the ``valid`` ones.

        Args:
            transitions: Relative actions ``(B, L, A)``.
            valid: Optional bool ``(B, L)``; invalid positions (whatever they hold, NaN included) are
                excluded from the batch statistics and set to zero in the output.

        Returns:
            ``(B, L, E)`` embeddings.
        """
        batch, steps, _ = transitions.shape
        if valid is not None:
            # Projected, a NaN in a padded slot would reach the weight's gradient (0 * NaN = NaN): zero it.
            transitions = transitions.masked_fill(~valid[..., None], 0.0)
        flat: Tensor = self.proj(transitions.reshape(batch * steps, self.action_dim))
        if valid is None:
            normed: Tensor = self.norm(flat)
            return normed.reshape(batch, steps, self.embed_dim)
        keep = valid.reshape(batch * steps)
        normed_valid: Tensor = self.norm(flat[keep])
        out = flat.new_zeros(flat.shape).index_put((keep,), normed_valid)
        return out.reshape(batch, steps, self.embed_dim)

    def forward(self, actions: Tensor, *, padding_mask: Tensor | None = None) -> ActionEmbeddings:
        """Embeds the actions of a sequence whose last valid view is the prediction target.

        Args:
            actions: Absolute actions ``(B, T, A)`` (``actions[:, t]`` = parameters of view ``t``) or, with
                ``relative_input=True``, relative actions ``(B, T - 1, A)`` (``actions[:, t]`` = action taking
                view ``t`` to view ``t + 1``).
            padding_mask: Optional ``(B, T)`` bool mask over views, ``True`` = padding.

        Returns:
            :class:`ActionEmbeddings`.

        Raises:
            TypeError: If ``actions`` is not a floating tensor or the mask is not bool.
            ValueError: If a shape is wrong or a sequence has fewer than 2 valid views.
        """
        check_floating_tensor(actions, "actions")
        expected = "(B, T - 1, A)" if self.relative_input else "(B, T, A)"
        if actions.ndim != 3 or actions.shape[-1] != self.action_dim:
            raise ValueError(
                f"actions must have shape {expected} with A = {self.action_dim}, got {tuple(actions.shape)}"
            )
        num_views = actions.shape[1] + (1 if self.relative_input else 0)
        if num_views < 2:
            raise ValueError(f"actions must describe at least 2 views, got shape {tuple(actions.shape)}")
        lengths = None
        if padding_mask is not None:
            lengths = check_padding_mask(
                padding_mask, actions.shape[0], num_views, min_valid=2, name="padding_mask"
            )
        return self._embed_checked(actions, lengths)

    def _embed_checked(self, actions: Tensor, lengths: Tensor | None) -> ActionEmbeddings:
        """:meth:`forward` on checked inputs; ``lengths`` ``(B,)`` counts the valid views (``None``: all)."""
        transitions = actions if self.relative_input else _differences(actions)
        batch, steps = transitions.shape[0], transitions.shape[1]
        positions = torch.arange(steps, device=actions.device)
        if lengths is None:
            emb = self.embed(transitions)
            next_emb = emb[:, -1]
            keep = (positions < steps - 1).expand(batch, steps)
        else:
            last = last_valid_index(lengths, offset=2)  # the query transition; real ones are 0..last
            emb = self.embed(transitions, positions[None, :] <= last[:, None])
            next_emb = emb[torch.arange(batch, device=emb.device), last]
            keep = positions[None, :] < last[:, None]
        tokens = emb * keep.unsqueeze(-1).to(emb.dtype)
        return ActionEmbeddings(tokens=tokens, next=next_emb)
