"""Model assemblies (seq-JEPA) and image encoders."""

from jepa_rate.models.encoders import ConvEncoder, cifar_resnet18
from jepa_rate.models.seq_jepa import PredictionLossKind, SeqJEPA, SeqJEPAOutput, prediction_loss

__all__ = [
    "ConvEncoder",
    "PredictionLossKind",
    "SeqJEPA",
    "SeqJEPAOutput",
    "cifar_resnet18",
    "prediction_loss",
]
