"""Online probes and the evaluation of frozen features (linear probe, k-NN, R², collapse diagnostics), all
deterministic given their seeds; docs/trainer.md describes each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from common.config import EvalConfig
from common.data import CifarData, balanced_subset
from common.views import ROTATION_SINCOS
from jepa_rate import collapse_metrics


class OnlineProbe:
    """A head trained step by step on detached inputs: cross-entropy on labels or MSE on float targets.

    Examples:
        >>> probe = OnlineProbe(nn.Linear(4, 3), lr=0.1)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> first = probe.step(x, y)
        >>> bool(min(probe.step(x, y) for _ in range(30)) < first)
        True
    """

    def __init__(self, head: nn.Module, *, lr: float, weight_decay: float = 0.0) -> None:
        self.head = head
        self.optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)

    def step(self, x: Tensor, target: Tensor) -> Tensor:
        """One Adam step; returns the loss before it (detached)."""
        self.head.train()
        with torch.autocast(x.device.type, enabled=False):
            out = self.head(x.detach().float())
            loss = F.cross_entropy(out, target) if not target.is_floating_point() else F.mse_loss(out, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if dist.is_available() and dist.is_initialized():
            for p in self.head.parameters():
                dist.all_reduce(p.grad)  # type: ignore[arg-type]
                p.grad /= dist.get_world_size()  # type: ignore[operator]
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        self.head.eval()
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())  # type: ignore[no-any-return]

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def collect_features(
    model: nn.Module, fn: Callable[[Tensor], Mapping[str, Tensor]], num: int, batch_size: int
) -> dict[str, Tensor]:
    """``fn`` on consecutive index batches of ``range(num)`` with ``model`` in eval mode (training mode
    again afterwards), its named outputs concatenated on the CPU."""
    parts: dict[str, list[Tensor]] = {}
    model.eval()
    try:
        for start in range(0, num, batch_size):
            for key, value in fn(torch.arange(start, min(start + batch_size, num))).items():
                parts.setdefault(key, []).append(value.detach().cpu())
    finally:
        model.train()
    return {key: torch.cat(values) for key, values in parts.items()}


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=1).cpu() == labels.cpu()).double().mean())


def _standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    return tuple((t - mean) / std for t in (train, *others))


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int) -> nn.Linear:
    head = nn.Linear(x.shape[1], num_classes, device=x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6,
                                  tolerance_change=1e-9)  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return head


def linear_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int, cfg: EvalConfig
) -> dict[str, float]:
    """Test accuracy of a logistic regression (L-BFGS from zero on standardized features) refit with the L2
    penalty that scored best on a seeded 10% validation part of the training features.

    Examples:
        >>> x = torch.cat([torch.randn(50, 3) + 4, torch.randn(50, 3) - 4])
        >>> y = torch.arange(2).repeat_interleave(50)
        >>> linear_probe(x, y, x, y, 2, EvalConfig())["linear_acc"]
        1.0
    """
    train_x, test_x = train_x.float(), test_x.float()
    decays, device = cfg.linear_weight_decays, train_y.device
    best = decays[0]
    if len(decays) > 1:
        val = balanced_subset(train_y.cpu(), max(num_classes, len(train_y) // 10), cfg.seed).to(device)
        fit = torch.ones(len(train_y), dtype=torch.bool, device=device)
        fit[val] = False
        xf, xv = _standardize(train_x[fit], train_x[val])
        heads = [_fit_logistic(xf, train_y[fit], num_classes, wd, cfg.linear_max_iter) for wd in decays]
        scores = [accuracy(head(xv).detach(), train_y[val]) for head in heads]
        best = decays[scores.index(max(scores))]  # ties: the first
    xtr, xte = _standardize(train_x, test_x)
    head = _fit_logistic(xtr, train_y, num_classes, best, cfg.linear_max_iter)
    with torch.no_grad():
        test_acc, train_acc = accuracy(head(xte), test_y), accuracy(head(xtr), train_y)
    return {"linear_acc": test_acc, "linear_train_acc": train_acc, "linear_weight_decay": best}


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 20) -> float:
    """k-NN accuracy with cosine similarity and majority vote (ties: the larger summed similarity)."""
    k, num_classes = min(k, len(train_x)), int(train_y.max()) + 1
    ref, correct = F.normalize(train_x.float(), dim=1), 0
    for start in range(0, len(test_x), 1024):
        sims, idx = (F.normalize(test_x[start : start + 1024].float(), dim=1) @ ref.T).topk(k, dim=1)
        onehot = F.one_hot(train_y[idx], num_classes).double()
        # A summed similarity lies in [-k, k]: scaling the counts by 2k + 1 makes it a tie-break only.
        score = (2 * k + 1) * onehot.sum(1) + (onehot * sims.double().unsqueeze(-1)).sum(1)
        correct += int((score.argmax(dim=1) == test_y[start : start + 1024]).sum())
    return correct / max(1, len(test_x))


def classification_metrics(
    train_x: Tensor, test_x: Tensor, data: CifarData, cfg: EvalConfig, device: torch.device
) -> dict[str, float]:
    """Linear-probe and k-NN accuracy of features of ``data``'s splits, computed on ``device``."""
    train_x, test_x = train_x.to(device), test_x.to(device)
    train_y, test_y = data.train.labels.to(device), data.test.labels.to(device)
    out = linear_probe(train_x, train_y, test_x, test_y, data.num_classes, cfg)
    return {**out, "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, k=cfg.knn_k)}


def r2_score(pred: Tensor, target: Tensor) -> float:
    """R² averaged over outputs, in float64; a constant target scores 1 if predicted exactly, else 0.

    Examples:
        >>> t = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]])
        >>> r2_score(t, t), abs(r2_score(t.mean(0).expand(3, 2), t)) < 1e-12
        (1.0, True)
    """
    p, t = pred.double().reshape(len(pred), -1), target.double().reshape(len(target), -1)
    ss_res, ss_tot = (t - p).square().sum(0), (t - t.mean(0)).square().sum(0)
    exact = (ss_res == 0).double()
    return float(torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), exact).mean())


def rotation_accuracy(pred_sincos: Tensor, turns: Tensor) -> float:
    """Share of ``[sin, cos]`` predictions whose nearest rotation code is the true quarter turn."""
    nearest = torch.cdist(pred_sincos.float().cpu(), ROTATION_SINCOS).argmin(dim=1)
    return float((nearest == torch.remainder(turns.cpu(), 4)).double().mean())


def fit_mlp_regressor(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, cfg: EvalConfig, device: torch.device
) -> Tensor:
    """Fits a one-hidden-layer MLP (MSE, full-batch Adam, cosine lr) on at most ``regressor_max_train`` rows
    and predicts ``test_x`` (on the CPU); the global RNG is left as it was."""
    if len(train_x) > cfg.regressor_max_train:
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))
        train_x, train_y = train_x[keep[: cfg.regressor_max_train]], train_y[keep[: cfg.regressor_max_train]]
    xtr, xte = _standardize(train_x.float().to(device), test_x.float().to(device))
    target = train_y.float().to(device)
    hidden, lr, steps = cfg.regressor_hidden, cfg.regressor_lr, cfg.regressor_steps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = nn.Sequential(nn.Linear(xtr.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, target.shape[1]))
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
            optimizer.zero_grad()
            F.mse_loss(net(xtr), target).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    with torch.no_grad():
        return net(xte).cpu()  # type: ignore[no-any-return]


def collapse_diagnostics(
    representations: Mapping[str, Tensor], warn: Callable[[str], None], epoch: int
) -> dict[str, Any]:
    """:func:`collapse_record` of each named representation as one record; ``warn`` prints the warnings."""
    record: dict[str, Any] = {}
    for name, z in representations.items():
        diagnostics, warning = collapse_record(name, z)
        record.update(diagnostics)
        if warning:
            warn(f"epoch {epoch}: warning: {warning}")
    return record


def collapse_record(name: str, z: Tensor) -> tuple[dict[str, Any], str | None]:
    """Collapse diagnostics of ``z`` ``(n, d)`` as ``{"<name>.<metric>": value}``, and a warning line when it
    collapsed completely (normalized std below the threshold) or to a few dimensions (effective rank below
    5% of ``d``, at least 2).

    Examples:
        >>> record, warning = collapse_record("z", torch.ones(16, 4))
        >>> sorted(record)[:2], warning
        (['z.collapsed', 'z.effective_rank'], 'z collapsed: normalized std 0, effective rank 1.0 of 4')
    """
    m = collapse_metrics(z.detach().float())
    record = {
        f"{name}.effective_rank": float(m.effective_rank), f"{name}.normalized_std": float(m.normalized_std),
        f"{name}.mean_cosine": float(m.mean_cosine), f"{name}.collapsed": bool(m.collapsed),
        f"{name}.spectrum": m.spectrum.cpu().tolist(), f"{name}.std": m.std.cpu().tolist(),
    }  # fmt: skip
    rank, std, dim = float(m.effective_rank), float(m.normalized_std), z.shape[1]
    warning = None
    if m.collapsed:
        warning = f"{name} collapsed: normalized std {std:.3g}, effective rank {rank:.1f} of {dim}"
    elif rank < max(2.0, 0.05 * dim):
        warning = f"{name} collapsed to few dimensions: effective rank {rank:.1f} of {dim}, std {std:.3g}"
    return record, warning
