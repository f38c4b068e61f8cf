"""torchweights: load PyTorch weights safely, from any checkpoint format, with an exact account of every key.

>>> import torchweights as tw
>>> ckpt = tw.open("model.safetensors.index.json")   # records: names, dtypes, shapes, byte ranges; no bytes read
>>> sd = tw.load("model.pth")                          # {name: tensor}; nothing from the file is executed

Importing this package does not import torch; only :func:`load` does.
"""

from __future__ import annotations

from .api import load, load_into, open
from .convert import ConvertReport, convert
from .diff import DiffReport, diff
from .errors import (
    CheckpointNotFoundError,
    CheckpointReadError,
    CorruptCheckpointError,
    LoadError,
    NotACheckpointError,
    ResourceLimitError,
    RuleError,
    ShardIndexError,
    TorchWeightsError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    WriteError,
)
from .limits import Limits
from .records import Checkpoint, StorageRef, TensorRecord
from .report import LoadReport
from .scan import Finding, ScanReport, scan
from .verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "ConvertReport",
    "CorruptCheckpointError",
    "DiffReport",
    "Finding",
    "LoadError",
    "LoadReport",
    "Limits",
    "NotACheckpointError",
    "ResourceLimitError",
    "RuleError",
    "ScanReport",
    "ShardIndexError",
    "StorageRef",
    "TensorRecord",
    "TorchWeightsError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "VerifyReport",
    "WriteError",
    "__version__",
    "convert",
    "diff",
    "load",
    "load_into",
    "open",
    "scan",
    "verify",
]
