"""MLP predictor conditioned on an action: ``[z ⊕ action] -> predicted target embedding``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from jepa_rate._validation import check_choice, check_int

__all__ = ["ActionConditionedPredictor"]

PredictorNorm = Literal["batch", "layer", "none"]


class ActionConditionedPredictor(nn.Module):
    """Predicts a target embedding from a context vector and the embedding of the action to apply.

    ``num_layers - 1`` hidden blocks ``Linear -> norm -> ReLU`` followed by an output ``Linear``. Upstream
    seq-JEPA uses ``Linear(640 + 128 -> 1024, bias=False) -> BatchNorm1d(1024) -> ReLU ->
    Linear(1024 -> 512)``, which is ``ActionConditionedPredictor(640, 128, 512)``. Hidden linears have a
    bias only when no norm follows them (a norm's shift makes it redundant).

    Args:
        in_dim: Size of the context vector (``z_AGG``).
        action_dim: Size of the action embedding; ``0`` for an unconditioned predictor.
        out_dim: Size of the predicted embedding.
        hidden_dim: Width of the hidden blocks.
        num_layers: Number of linear layers, ``>= 1`` (``1`` is a single linear map).
        norm: ``"batch"`` (upstream), ``"layer"`` or ``"none"``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a size is invalid or ``norm`` is unknown.

    Shape:
        - z: ``(B, in_dim)``; action: ``(B, action_dim)`` (omit when ``action_dim == 0``)
        - output: ``(B, out_dim)``

    Examples:
        >>> pred = ActionConditionedPredictor(in_dim=16, action_dim=4, out_dim=8, hidden_dim=32)
        >>> pred(torch.randn(5, 16), torch.randn(5, 4)).shape
        torch.Size([5, 8])
    """

    def __init__(
        self,
        in_dim: int = 640,
        action_dim: int = 128,
        out_dim: int = 512,
        hidden_dim: int = 1024,
        num_layers: int = 2,
        *,
        norm: PredictorNorm = "batch",
    ) -> None:
        super().__init__()
        check_int(in_dim, "in_dim", 1)
        check_int(action_dim, "action_dim", 0)
        check_int(out_dim, "out_dim", 1)
        check_int(hidden_dim, "hidden_dim", 1)
        check_int(num_layers, "num_layers", 1)
        check_choice(norm, "norm", ("batch", "layer", "none"))
        self.in_dim = in_dim
        self.action_dim = action_dim
        self.out_dim = out_dim
        blocks: list[nn.Module] = []
        width = in_dim + action_dim
        for _ in range(num_layers - 1):
            blocks.append(nn.Linear(width, hidden_dim, bias=norm == "none"))
            if norm == "batch":
                blocks.append(nn.BatchNorm1d(hidden_dim))
            elif norm == "layer":
                blocks.append(nn.LayerNorm(hidden_dim))
            blocks.append(nn.ReLU(inplace=True))
            width = hidden_dim
        blocks.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*blocks)

    def forward(self, z: Tensor, action: Tensor | None = None) -> Tensor:
        """Predicts the target embedding.

        Args:
            z: Context vectors ``(B, in_dim)``.
            action: Action embeddings ``(B, action_dim)``; required iff ``action_dim > 0``.

        Returns:
            ``(B, out_dim)`` predictions.

        Raises:
            ValueError: If a shape is wrong or ``action`` is missing / unexpected.
        """
        if z.ndim != 2 or z.shape[1] != self.in_dim:
            raise ValueError(f"z must have shape (B, {self.in_dim}), got {tuple(z.shape)}")
        if self.action_dim > 0:
            if action is None:
                raise ValueError(f"action of shape (B, {self.action_dim}) is required, got None")
            if action.shape != (z.shape[0], self.action_dim):
                raise ValueError(
                    f"action must have shape {(z.shape[0], self.action_dim)}, got {tuple(action.shape)}"
                )
            z = torch.cat((z, action), dim=-1)
        elif action is not None:
            raise ValueError(
                f"this predictor has action_dim=0 but got an action of shape {tuple(action.shape)}"
            )
        out: Tensor = self.mlp(z)
        return out
