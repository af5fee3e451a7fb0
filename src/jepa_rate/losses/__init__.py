"""Losses: the coding rate and the MCR² rate reduction."""

from jepa_rate.losses.coding_rate import CodingRateComponents, CodingRateLoss, coding_rate
from jepa_rate.losses.rate_reduction import (
    RateReduction,
    RateReductionComponents,
    RateReductionLoss,
    rate_reduction,
)

__all__ = [
    "CodingRateComponents",
    "CodingRateLoss",
    "RateReduction",
    "RateReductionComponents",
    "RateReductionLoss",
    "coding_rate",
    "rate_reduction",
]
