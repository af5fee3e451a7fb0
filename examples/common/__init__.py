"""Shared infrastructure of the CIFAR-10 example trainers: data, views, config, progress, outputs, DDP.

The example scripts run as ``python examples/<script>.py``, which puts ``examples/`` on ``sys.path``, and
import from here with ``from common import ...``. Each concept lives in its own module; the most used names
are re-exported below.
"""

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, seed_all, set_rng_state
from .config import (
    CONFIG_DIR,
    ConfigError,
    add_config_arguments,
    apply_overrides,
    config_from_args,
    config_keys,
    config_to_dict,
    dump_config,
    load_config,
)
from .data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    EMBEDDED_SUBSET,
    CifarData,
    DataConfig,
    DataFormatError,
    DataNotFoundError,
    ImageSplit,
    load_cifar10,
    load_npz,
    normalize,
)
from .dist import (
    DistInfo,
    all_reduce_mean,
    any_rank,
    barrier,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_main,
)
from .interrupt import GracefulInterrupt
from .loader import ShardedBatchLoader
from .outputs import MetricsLogger, RunDir, read_jsonl
from .plots import plot_comparison, plot_metrics, plot_spectrum
from .progress import ProgressReporter
from .splits import balanced_split, balanced_subset, default_holdout_size
from .views import (
    RotationSequence,
    action_dim,
    make_rotation_sequence,
    random_crop_flip,
    relative_rotations,
    rotate,
    rotation_actions,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CONFIG_DIR",
    "EMBEDDED_SUBSET",
    "CifarData",
    "ConfigError",
    "DataConfig",
    "DataFormatError",
    "DataNotFoundError",
    "DistInfo",
    "GracefulInterrupt",
    "ImageSplit",
    "MetricsLogger",
    "ProgressReporter",
    "RotationSequence",
    "RunDir",
    "ShardedBatchLoader",
    "action_dim",
    "add_config_arguments",
    "all_reduce_mean",
    "any_rank",
    "apply_overrides",
    "balanced_split",
    "balanced_subset",
    "barrier",
    "cleanup",
    "config_from_args",
    "config_keys",
    "config_to_dict",
    "default_holdout_size",
    "dump_config",
    "get_rank",
    "get_rng_state",
    "get_world_size",
    "init_distributed",
    "is_main",
    "load_checkpoint",
    "load_cifar10",
    "load_config",
    "load_npz",
    "make_rotation_sequence",
    "normalize",
    "plot_comparison",
    "plot_metrics",
    "plot_spectrum",
    "random_crop_flip",
    "read_jsonl",
    "relative_rotations",
    "rotate",
    "rotation_actions",
    "save_checkpoint",
    "seed_all",
    "set_rng_state",
]
