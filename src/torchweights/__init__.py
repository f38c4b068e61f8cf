"""torchweights: load PyTorch weights safely, from any checkpoint format, with an exact account of every key."""

from __future__ import annotations

from .errors import (
    CheckpointNotFoundError,
    CheckpointReadError,
    CorruptCheckpointError,
    NotACheckpointError,
    ResourceLimitError,
    ShardIndexError,
    TorchWeightsError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from .records import Checkpoint, StorageRef, TensorRecord

__version__ = "0.1.0"
