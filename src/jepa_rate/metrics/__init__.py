"""Representation diagnostics: effective rank, covariance spectrum and collapse indicators."""

from jepa_rate.metrics.collapse import (
    DEFAULT_COLLAPSE_THRESHOLD,
    CollapseMetrics,
    collapse_metrics,
    covariance_spectrum,
    effective_rank,
    embedding_std,
    is_collapsed,
    mean_pairwise_cosine,
    normalized_std,
)

__all__ = [
    "DEFAULT_COLLAPSE_THRESHOLD",
    "CollapseMetrics",
    "collapse_metrics",
    "covariance_spectrum",
    "effective_rank",
    "embedding_std",
    "is_collapsed",
    "mean_pairwise_cosine",
    "normalized_std",
]
