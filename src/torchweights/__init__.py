"""torchweights: load PyTorch weights safely, from any checkpoint format, with an exact account of every key.

>>> import torchweights as tw
>>> ckpt = tw.open("model.safetensors.index.json")   # records: names, dtypes, shapes, byte ranges; no bytes read
>>> sd = tw.load("model.pth")                          # {name: tensor}; nothing from the file is executed

Importing this package does not import torch; only :func:`load` does.
"""

from __future__ import annotations

from .api import load, open
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
from .limits import Limits
from .records import Checkpoint, StorageRef, TensorRecord

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "CorruptCheckpointError",
    "Limits",
    "NotACheckpointError",
    "ResourceLimitError",
    "ShardIndexError",
    "StorageRef",
    "TensorRecord",
    "TorchWeightsError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "__version__",
    "load",
    "open",
]
