"""Offline evaluation of frozen features: linear probe, k-NN, regression R² and rotation accuracy.

Everything here takes feature tensors already extracted (see :func:`collect_features`) and is deterministic:
the linear probe is a convex problem solved from zero by full-batch L-BFGS, the k-NN has no randomness, and
the MLP regressor draws its initial weights from a seeded generator without touching the global RNG.

- **Linear probe**: multinomial logistic regression on standardized features (mean and std of the training
  features), L2-penalized, trained to convergence. The penalty is chosen from ``linear_weight_decays`` by
  accuracy on a seeded, class-balanced 10% validation part of the *training* features, then the probe is
  refit on all training features; the evaluation split is never used for a choice.
- **k-NN**: cosine similarity, ``k`` nearest training features, majority vote (ties go to the class whose
  tied neighbours are more similar).
- **Regression**: R² of each output, averaged uniformly over outputs (scikit-learn's ``r2_score`` with
  ``multioutput="uniform_average"``); a constant target scores 1 if predicted exactly, else 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import check_min
from .splits import balanced_split

__all__ = [
    "ROTATION_SINCOS",
    "EvalConfig",
    "LinearProbeResult",
    "accuracy",
    "classification_metrics",
    "collect_features",
    "fit_mlp_regressor",
    "knn_accuracy",
    "linear_probe",
    "r2_score",
    "rotation_accuracy",
    "standardize",
]

#: ``[sin, cos]`` of ``0, 90, 180, 270`` degrees: the codes of the four rotations, indexed by quarter turns.
ROTATION_SINCOS = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation on frozen features; nest it in a trainer config as ``eval``.

    Args:
        offline: Run the offline evaluation after training (linear probe, k-NN, rotation R²).
        batch_size: Images per batch when extracting features.
        knn_k: Neighbours of the k-NN classifier.
        linear_weight_decays: L2 penalties tried by the linear probe (one value skips the selection).
        linear_max_iter: Maximum L-BFGS iterations of the linear probe.
        regressor_hidden: Hidden width of the MLP regressor (rotation R²).
        regressor_steps: Full-batch Adam steps of the MLP regressor.
        regressor_lr: Peak learning rate of the MLP regressor (cosine-decayed to 0).
        regressor_max_train: At most this many training pairs fit the regressor (a seeded subset).
        seed: Seed of the evaluation views, the validation split and the regressor initialisation.
    """

    offline: bool = True
    batch_size: int = 500
    knn_k: int = 20
    linear_weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    linear_max_iter: int = 300
    regressor_hidden: int = 128
    regressor_steps: int = 300
    regressor_lr: float = 3e-3
    regressor_max_train: int = 10_000
    seed: int = 1234

    def __post_init__(self) -> None:
        counts = ("batch_size", "knn_k", "linear_max_iter", "regressor_hidden", "regressor_steps")
        check_min("eval.", 1, **{name: getattr(self, name) for name in counts})
        if not self.linear_weight_decays or min(self.linear_weight_decays) < 0:
            raise ValueError(
                f"eval.linear_weight_decays must be non-empty and >= 0, got {self.linear_weight_decays}"
            )
        check_min("eval.", 2, regressor_max_train=self.regressor_max_train)


def collect_features(
    fn: Callable[[Tensor], Mapping[str, Tensor]], num_samples: int, batch_size: int
) -> dict[str, Tensor]:
    """Calls ``fn`` on consecutive index batches of ``range(num_samples)`` and concatenates its outputs.

    Args:
        fn: Maps a ``(b,)`` int64 index batch to named ``(b, ...)`` tensors (on any device).
        num_samples: Dataset size.
        batch_size: Indices per call.

    Returns:
        The named outputs for all samples, on the CPU.

    Examples:
        >>> out = collect_features(lambda idx: {"x": idx * 2}, 5, 2)
        >>> out["x"].tolist()
        [0, 2, 4, 6, 8]
    """
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, num_samples, batch_size):
        idx = torch.arange(start, min(start + batch_size, num_samples))
        for key, value in fn(idx).items():
            parts.setdefault(key, []).append(value.detach().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose arg-max equals the label.

    Examples:
        >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
        0.5
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"need logits (N, C) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    return float((logits.argmax(dim=1) == labels).double().mean())


def standardize(train: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """Standardizes ``train`` and ``others`` with the per-feature mean and std of ``train`` (float32)."""
    train = train.float()
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(eps)
    return tuple((t.float() - mean) / std for t in (train, *others))


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS from zero weights (a convex problem)."""
    head = nn.Linear(x.shape[1], num_classes, device=x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        optimizer.step(closure)  # type: ignore[no-untyped-call]
    return head


@dataclass(frozen=True)
class LinearProbeResult:
    """Accuracies of a linear probe and the L2 penalty it was refit with."""

    train_accuracy: float
    test_accuracy: float
    weight_decay: float


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2),
    max_iter: int = 300,
    seed: int = 0,
) -> LinearProbeResult:
    """Trains a linear classifier on frozen features to convergence and scores it (see the module docstring).

    Args:
        train_x: ``(N, D)`` training features.
        train_y: ``(N,)`` int64 labels in ``[0, num_classes)``.
        test_x: ``(M, D)`` evaluation features.
        test_y: ``(M,)`` labels.
        num_classes: Number of classes.
        weight_decays: L2 penalties to choose from on a validation part of the training features.
        max_iter: Maximum L-BFGS iterations per fit.
        seed: Seed of the validation split.

    Returns:
        Train and test accuracy of the refit probe, and its penalty.

    Raises:
        ValueError: Mismatched shapes or no penalty to try.

    Examples:
        >>> x = torch.cat([torch.randn(50, 3) + 4, torch.randn(50, 3) - 4])
        >>> y = torch.arange(2).repeat_interleave(50)
        >>> linear_probe(x, y, x, y, 2, weight_decays=(1e-3,)).test_accuracy
        1.0
    """
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"features must be (N, D) and (M, D), got {tuple(train_x.shape)}, {tuple(test_x.shape)}"
        )
    if train_y.shape != train_x.shape[:1] or test_y.shape != test_x.shape[:1]:
        raise ValueError(
            f"labels must match the feature rows: {tuple(train_y.shape)} vs {train_x.shape[0]}, "
            f"{tuple(test_y.shape)} vs {test_x.shape[0]}"
        )
    if not weight_decays:
        raise ValueError("weight_decays must hold at least one value")
    best = weight_decays[0]
    if len(weight_decays) > 1:
        fit_idx, val_idx = balanced_split(train_y.cpu(), max(num_classes, len(train_y) // 10), seed)
        xf, xv = standardize(train_x[fit_idx], train_x[val_idx])
        scores = []
        for wd in weight_decays:
            head = _fit_logistic(xf, train_y[fit_idx], num_classes, wd, max_iter)
            with torch.no_grad():
                scores.append(accuracy(head(xv), train_y[val_idx]))
        # The first of equally good penalties (the smallest, when given in increasing order) wins.
        best = weight_decays[max(range(len(scores)), key=lambda i: (scores[i], -i))]
    xtr, xte = standardize(train_x, test_x)
    head = _fit_logistic(xtr, train_y, num_classes, best, max_iter)
    with torch.no_grad():
        return LinearProbeResult(accuracy(head(xtr), train_y), accuracy(head(xte), test_y), best)


def knn_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, k: int = 20, chunk: int = 1024
) -> float:
    """k-NN classification accuracy with cosine similarity and majority vote (see the module docstring).

    Args:
        train_x: ``(N, D)`` reference features.
        train_y: ``(N,)`` int64 labels.
        test_x: ``(M, D)`` query features.
        test_y: ``(M,)`` labels.
        k: Neighbours (capped at ``N``).
        chunk: Queries per similarity block (bounds memory at ``chunk x N``).

    Returns:
        The accuracy on the queries.

    Examples:
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_accuracy(train, torch.tensor([0, 0, 1]), torch.tensor([[1.0, 0.2]]), torch.tensor([0]), k=2)
        1.0
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, train_x.shape[0])
    num_classes = int(train_y.max()) + 1
    ref = F.normalize(train_x.float(), dim=1)
    correct = 0
    for start in range(0, test_x.shape[0], chunk):
        queries = F.normalize(test_x[start : start + chunk].float(), dim=1)
        sims, idx = (queries @ ref.T).topk(k, dim=1)
        onehot = F.one_hot(train_y[idx], num_classes).double()
        # A class's summed similarity lies in [-k, k], so scaling the counts by 2k + 1 makes it a tie-break.
        score = (2 * k + 1) * onehot.sum(dim=1) + (onehot * sims.double().unsqueeze(-1)).sum(dim=1)
        correct += int((score.argmax(dim=1) == test_y[start : start + chunk]).sum())
    return correct / max(1, test_x.shape[0])


def r2_score(pred: Tensor, target: Tensor) -> float:
    """Coefficient of determination, averaged uniformly over outputs, computed in float64.

    Args:
        pred: ``(N, K)`` or ``(N,)`` predictions.
        target: Targets of the same shape.

    Returns:
        ``mean_k (1 - SS_res[k] / SS_tot[k])``.

    Raises:
        ValueError: Shapes differ or fewer than 2 rows.

    Examples:
        >>> t = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]])
        >>> r2_score(t, t), abs(r2_score(t.mean(0).expand(3, 2), t)) < 1e-12  # the mean predictor scores 0
        (1.0, True)
    """
    if pred.shape != target.shape or pred.shape[0] < 2:
        raise ValueError(
            "pred and target must have the same shape with >= 2 rows, "
            f"got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    p = pred.detach().double().reshape(pred.shape[0], -1)
    t = target.detach().double().reshape(target.shape[0], -1)
    ss_res = (t - p).square().sum(dim=0)
    ss_tot = (t - t.mean(dim=0)).square().sum(dim=0)
    exact = torch.where(ss_res == 0, 1.0, 0.0).to(torch.float64)
    per_output = torch.where(ss_tot > 0, 1.0 - ss_res / ss_tot.clamp_min(1e-300), exact)
    return float(per_output.mean())


def rotation_accuracy(pred_sincos: Tensor, quarter_turns: Tensor) -> float:
    """Share of ``[sin, cos]`` predictions whose nearest rotation code is the true quarter turn.

    Examples:
        >>> rotation_accuracy(torch.tensor([[0.9, 0.2], [0.1, -0.7]]), torch.tensor([1, 1]))
        0.5
    """
    if pred_sincos.ndim != 2 or pred_sincos.shape[1] != 2 or quarter_turns.shape != pred_sincos.shape[:1]:
        raise ValueError(
            f"need predictions (N, 2) and quarter turns (N,), got {tuple(pred_sincos.shape)}, "
            f"{tuple(quarter_turns.shape)}"
        )
    codes = ROTATION_SINCOS.to(pred_sincos.device, torch.float32)
    nearest = torch.cdist(pred_sincos.float(), codes).argmin(dim=1)
    return float((nearest == torch.remainder(quarter_turns, 4).to(nearest.device)).double().mean())


def fit_mlp_regressor(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    *,
    hidden: int = 128,
    steps: int = 300,
    lr: float = 3e-3,
    max_train: int = 10_000,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Fits a one-hidden-layer MLP ``x -> y`` (MSE, full-batch Adam, cosine lr) and predicts ``test_x``.

    Inputs are standardized with the training statistics. At most ``max_train`` training rows (a seeded
    subset) are used. The weights are initialised from ``seed`` inside a forked RNG, so the global RNG is
    left as it was.

    Args:
        train_x: ``(N, D)`` training inputs.
        train_y: ``(N, K)`` training targets.
        test_x: ``(M, D)`` inputs to predict.
        hidden: Hidden width.
        steps: Optimization steps.
        lr: Peak learning rate.
        max_train: Cap on the training rows.
        seed: Seed of the subset and of the initial weights.
        device: Where to fit (default: where ``train_x`` is).

    Returns:
        ``(M, K)`` predictions, on the CPU.

    Examples:
        >>> x = torch.randn(200, 4)
        >>> y = x[:, :2] * 2.0
        >>> pred = fit_mlp_regressor(x, y, x, steps=200, lr=1e-2)
        >>> r2_score(pred, y) > 0.95
        True
    """
    if train_x.ndim != 2 or train_y.ndim != 2 or train_y.shape[0] != train_x.shape[0]:
        raise ValueError(
            f"need train_x (N, D) and train_y (N, K), got {tuple(train_x.shape)}, {tuple(train_y.shape)}"
        )
    if train_x.shape[0] > max_train:
        keep = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_train]
        train_x, train_y = train_x[keep], train_y[keep]
    device = train_x.device if device is None else torch.device(device)
    xtr, xte = standardize(train_x.to(device), test_x.to(device))
    target = train_y.to(device).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(xtr.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, target.shape[1]))
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
            optimizer.zero_grad()
            F.mse_loss(net(xtr), target).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    with torch.no_grad():
        out: Tensor = net(xte).cpu()
    return out


def classification_metrics(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    cfg: EvalConfig,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Linear-probe and k-NN accuracy of one feature set, as ``{"linear_acc", "knn_acc", ...}``.

    The tensors are moved to ``device`` first (e.g. the GPU the model trained on) when it is given.
    """
    if device is not None:
        train_x, train_y, test_x, test_y = (t.to(device) for t in (train_x, train_y, test_x, test_y))
    probe = linear_probe(
        train_x, train_y, test_x, test_y, num_classes,
        weight_decays=cfg.linear_weight_decays, max_iter=cfg.linear_max_iter, seed=cfg.seed,
    )  # fmt: skip
    return {
        "linear_acc": probe.test_accuracy,
        "linear_train_acc": probe.train_accuracy,
        "linear_weight_decay": probe.weight_decay,
        "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, k=cfg.knn_k),
    }
