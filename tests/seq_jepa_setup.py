"""Small float64 SeqJEPA models and batches shared by the seq-JEPA tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jepa_rate.models import SeqJEPA, SeqJEPAOutput, prediction_loss

F64 = torch.float64
# The seq-JEPA tests compare the same float64 operations on the same numbers, possibly batched or ordered
# differently: differences are round-off (~1e-14 on values of order 1). 1e-10 is far below any real
# discrepancy (a wrong target, mask or direction changes the loss by > 1e-3).
TIGHT = {"rtol": 1e-10, "atol": 1e-10}
IMAGE = (3, 4, 4)


class FlatEncoder(nn.Module):
    """A BN-free encoder, so that no batch statistic couples the views in gradient tests."""

    def __init__(self, out_dim: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.Tanh(), nn.Linear(16, out_dim))
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def build_model(encoder: nn.Module | None = None, **kwargs: object) -> SeqJEPA:
    torch.manual_seed(0)
    options: dict[str, object] = {
        "action_dim": 2,
        "action_embed_dim": 4,
        "num_layers": 2,
        "num_heads": 2,
        "predictor_hidden": 16,
        "dropout": 0.0,
    }
    options.update(kwargs)
    model = SeqJEPA(FlatEncoder() if encoder is None else encoder, **options)  # type: ignore[arg-type]
    return model.double()


def jepa_loss(out: SeqJEPAOutput) -> Tensor:
    """The upstream objective: ``1 - cos`` averaged over the batch (and both directions when symmetric)."""
    return prediction_loss(out.prediction, out.target)


def make_batch(batch: int = 6, steps: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    views = torch.randn(batch, steps, *IMAGE, generator=gen, dtype=F64)
    actions = torch.randn(batch, steps, 2, generator=gen, dtype=F64)
    return views, actions
