"""torchweights: load PyTorch weights safely, from any checkpoint format, with an exact account of every key.

>>> import torchweights as tw
>>> ckpt = tw.open("model.safetensors.index.json")   # records: names, dtypes, shapes, byte ranges; no bytes read
>>> sd = tw.load("model.pth")                          # {name: tensor}; nothing from the file is executed

Importing this package does not import torch; only :func:`load` does. It imports little else either: apart from
the exceptions, every name below is resolved from its module on first use (PEP 562), so ``import torchweights``
and the command line start fast.
"""

from __future__ import annotations

import sys as _sys
import types as _types

# Every byte-order decision (swap a storage or not, map it or not, the order writers record) compares a file's
# order with "little": the one host order this package is built and tested for. Refuse any other host here, once,
# rather than return byte-swapped values silently.
if _sys.byteorder != "little":
    raise ImportError(
        f"torchweights supports little-endian machines only, and this one is {_sys.byteorder}-endian: tensor bytes "
        "would be read in the wrong order. Load on this machine with torch.load(path, weights_only=True), or use "
        "torchweights on a little-endian machine (x86-64, ARM64)."
    )

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

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs start-up time; type checkers read it as True
if TYPE_CHECKING:
    from .api import load, load_into, open
    from .convert import ConvertReport, convert
    from .diff import DiffReport, diff
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

#: Public names resolved on first access: ``name -> submodule`` (relative to this package) that defines it.
_LAZY: dict[str, str] = {
    "load": "api",
    "load_into": "api",
    "open": "api",
    "convert": "convert",
    "ConvertReport": "convert",
    "diff": "diff",
    "DiffReport": "diff",
    "Limits": "limits",
    "Checkpoint": "records",
    "StorageRef": "records",
    "TensorRecord": "records",
    "LoadReport": "report",
    "scan": "scan",
    "Finding": "scan",
    "ScanReport": "scan",
    "verify": "verify",
    "VerifyReport": "verify",
}

#: Functions named like the submodule that defines them. Importing a submodule makes the import system set the
#: package attribute of that name to the module; for these the package keeps the function instead.
_SHADOWED = frozenset(name for name, module in _LAZY.items() if name == module)


def _resolve(name: str) -> object:
    """Import the module that defines ``name``, cache the value in this module's globals and return it."""
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


class _Package(_types.ModuleType):
    """The class of this package's module object: keeps :data:`_SHADOWED` names bound to their functions."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _SHADOWED and isinstance(value, _types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            # ``import torchweights.scan`` (or any ``from torchweights.scan import ...``) just finished: the package
            # attribute is the function ``scan.scan``, as it was before lazy loading, not the module.
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            return _resolve(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


del TYPE_CHECKING
