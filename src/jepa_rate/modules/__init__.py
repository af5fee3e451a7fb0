"""Reusable seq-JEPA building blocks: action embeddings, [AGG] aggregation, predictor and EMA targets."""

from jepa_rate.modules.action_encoder import ActionEmbeddings, ActionEncoder, relative_actions
from jepa_rate.modules.aggregator import AggregatorOutput, SeqAggregator, TransformerLayer
from jepa_rate.modules.ema import EMATarget, ema_update_, unwrap_module
from jepa_rate.modules.predictor import ActionConditionedPredictor

__all__ = [
    "ActionConditionedPredictor",
    "ActionEmbeddings",
    "ActionEncoder",
    "AggregatorOutput",
    "EMATarget",
    "SeqAggregator",
    "TransformerLayer",
    "ema_update_",
    "relative_actions",
    "unwrap_module",
]
