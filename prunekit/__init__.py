"""prunekit: structured pruning for PyTorch CNNs.

model → augment (gates on coupled-channel groups) → train (method's relaxation) → metrics → collapse
(slim dense network with identical outputs) → compare → save/load.
"""

from prunekit.errors import (
    CheckpointError,
    CollapseError,
    ConfigError,
    DataNotFoundError,
    PrunekitError,
    UnsupportedModelError,
)
from prunekit.train.config import RunConfig, TrainConfig

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CollapseError",
    "ConfigError",
    "DataNotFoundError",
    "PrunekitError",
    "RunConfig",
    "TrainConfig",
    "UnsupportedModelError",
]
