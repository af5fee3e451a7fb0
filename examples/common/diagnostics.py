"""Per-epoch collapse diagnostics of a representation, as flat metrics-record entries, and the warning.

For embeddings ``z`` of the evaluation images the record holds, under the prefix ``<name>.``: the RankMe
``effective_rank``, ``normalized_std`` (about 1 for isotropic embeddings, 0 when collapsed), the
``mean_cosine`` between distinct embeddings, ``collapsed`` (``normalized_std`` below the threshold), and two
lists that stay in ``metrics.jsonl`` (the CSV keeps scalars only): ``spectrum`` (covariance eigenvalues,
descending) and ``std`` (per-dimension std of the L2-normalized embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from jepa_rate import collapse_metrics, metrics

from .plots import plot_spectrum

__all__ = ["collapse_warning", "plot_run_spectra", "representation_record"]


def representation_record(
    name: str, z: Tensor, *, threshold: float = metrics.DEFAULT_COLLAPSE_THRESHOLD
) -> dict[str, Any]:
    """Collapse diagnostics of ``z`` ``(n, d)`` as ``{"<name>.<metric>": value}``.

    Examples:
        >>> rec = representation_record("z", torch.randn(256, 8))
        >>> sorted(rec)
        ['z.collapsed', 'z.effective_rank', 'z.mean_cosine', 'z.normalized_std', 'z.spectrum', 'z.std']
        >>> rec["z.collapsed"], len(rec["z.spectrum"])
        (False, 8)
    """
    m = collapse_metrics(z.detach().float(), threshold=threshold)
    return {
        f"{name}.effective_rank": float(m.effective_rank),
        f"{name}.normalized_std": float(m.normalized_std),
        f"{name}.mean_cosine": float(m.mean_cosine),
        f"{name}.collapsed": bool(m.collapsed),
        f"{name}.spectrum": m.spectrum.cpu().tolist(),
        f"{name}.std": m.std.cpu().tolist(),
    }


def collapse_warning(
    name: str, record: Mapping[str, Any], dim: int, *, min_rank_fraction: float = 0.05
) -> str | None:
    """A one-line warning when ``record`` (from :func:`representation_record`) shows ``name`` collapsed.

    Two forms are caught: complete collapse (``collapsed``: the normalized std is below the threshold, all
    embeddings close to one point) and dimensional collapse (an effective rank below ``min_rank_fraction``
    of the dimension, at least 2: the embeddings spread along very few directions; batch-normalized
    embeddings, whose per-dimension spread is fixed, can only collapse this way).

    Examples:
        >>> print(collapse_warning("z", representation_record("z", torch.ones(16, 4)), 4))
        warning: z collapsed: normalized std 0 < 0.1, effective rank 1.0 of 4, mean cosine 1.000
        >>> line = torch.randn(256, 1) * torch.ones(1, 64) + 0.01 * torch.randn(256, 64)
        >>> print(collapse_warning("z", representation_record("z", line), 64))  # doctest: +ELLIPSIS
        warning: z collapsed to few dimensions: effective rank 1... of 64, normalized std ...
    """
    rank, std = record[f"{name}.effective_rank"], record[f"{name}.normalized_std"]
    cosine = record[f"{name}.mean_cosine"]
    if record.get(f"{name}.collapsed"):
        return (
            f"warning: {name} collapsed: normalized std {std:.3g} < {metrics.DEFAULT_COLLAPSE_THRESHOLD}, "
            f"effective rank {rank:.1f} of {dim}, mean cosine {cosine:.3f}"
        )
    if rank < max(2.0, min_rank_fraction * dim):
        return (
            f"warning: {name} collapsed to few dimensions: effective rank {rank:.1f} of {dim}, "
            f"normalized std {std:.3g}, mean cosine {cosine:.3f}"
        )
    return None


def plot_run_spectra(
    records: Sequence[Mapping[str, Any]], names: Sequence[str], path: str | Path
) -> Path | None:
    """Plots the spectra of ``names`` at the first and the last epoch record that has them.

    Returns:
        The PNG path, or ``None`` when no record holds a spectrum.
    """
    spectra: dict[str, Any] = {}
    for name in names:
        key = f"{name}.spectrum"
        found = [r for r in records if isinstance(r.get(key), list) and r[key]]
        if not found:
            continue
        first, last = found[0], found[-1]
        if first is not last:
            spectra[f"{name} epoch {first.get('epoch')}"] = torch.tensor(first[key])
        spectra[f"{name} epoch {last.get('epoch')}"] = torch.tensor(last[key])
    if not spectra:
        return None
    return plot_spectrum(spectra, path, title="covariance spectrum of the evaluation embeddings")
