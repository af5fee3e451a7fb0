"""jepa_rate: a fast, numerically trustworthy coding-rate regularizer and seq-JEPA building blocks.

The public API is re-exported here; the subpackages follow the layering numerics -> losses -> modules ->
models, with metrics and schedules beside them.
"""

from jepa_rate import metrics
from jepa_rate.losses import (
    CodingRateComponents,
    CodingRateLoss,
    RateReduction,
    RateReductionComponents,
    RateReductionLoss,
    coding_rate,
    rate_reduction,
)
from jepa_rate.metrics import CollapseMetrics, collapse_metrics, effective_rank
from jepa_rate.models import ConvEncoder, SeqJEPA, SeqJEPAOutput, cifar_resnet18, prediction_loss
from jepa_rate.modules import (
    ActionConditionedPredictor,
    ActionEmbeddings,
    ActionEncoder,
    AggregatorOutput,
    EMATarget,
    SeqAggregator,
    TransformerLayer,
    relative_actions,
)
from jepa_rate.schedules import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    Schedule,
    WarmupCosineSchedule,
    as_schedule,
    cosine_ramp,
    linear_ramp,
    warmup_cosine,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ActionConditionedPredictor",
    "ActionEmbeddings",
    "ActionEncoder",
    "AggregatorOutput",
    "CodingRateComponents",
    "CodingRateLoss",
    "CollapseMetrics",
    "ConstantSchedule",
    "ConvEncoder",
    "CosineSchedule",
    "EMATarget",
    "LinearSchedule",
    "RateReduction",
    "RateReductionComponents",
    "RateReductionLoss",
    "Schedule",
    "SeqAggregator",
    "SeqJEPA",
    "SeqJEPAOutput",
    "TransformerLayer",
    "WarmupCosineSchedule",
    "__version__",
    "as_schedule",
    "cifar_resnet18",
    "coding_rate",
    "collapse_metrics",
    "cosine_ramp",
    "effective_rank",
    "linear_ramp",
    "metrics",
    "prediction_loss",
    "rate_reduction",
    "relative_actions",
    "warmup_cosine",
]
