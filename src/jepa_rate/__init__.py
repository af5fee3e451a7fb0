"""jepa_rate: a fast, numerically trustworthy coding-rate regularizer and seq-JEPA building blocks."""

from jepa_rate.losses import (
    CodingRateComponents,
    CodingRateLoss,
    RateReduction,
    RateReductionComponents,
    RateReductionLoss,
    coding_rate,
    rate_reduction,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "CodingRateComponents",
    "CodingRateLoss",
    "RateReduction",
    "RateReductionComponents",
    "RateReductionLoss",
    "__version__",
    "coding_rate",
    "rate_reduction",
]
