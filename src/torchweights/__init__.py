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
    from .limits import Limits
    from .rebuild.load import load_model
    from .records import Checkpoint, StorageRef, TensorRecord
    from .report.load import LoadReport
    from .tools.convert.report import ConvertReport
    from .tools.convert.run import convert
    from .tools.diff import DiffReport, diff
    from .tools.html_report import HtmlReport, html_report
    from .tools.scan.report import Finding, ScanReport
    from .tools.scan.scanner import scan
    from .tools.scan.tree import TreeScan, scan_tree
    from .tools.verify import VerifyReport, verify
    from .values.file import stats
    from .values.stats import StatsReport

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "ConvertReport",
    "CorruptCheckpointError",
    "DiffReport",
    "Finding",
    "HtmlReport",
    "LoadError",
    "LoadReport",
    "Limits",
    "NotACheckpointError",
    "ResourceLimitError",
    "RuleError",
    "ScanReport",
    "ShardIndexError",
    "StatsReport",
    "StorageRef",
    "TensorRecord",
    "TorchWeightsError",
    "TreeScan",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "VerifyReport",
    "WriteError",
    "__version__",
    "convert",
    "diff",
    "html_report",
    "load",
    "load_into",
    "load_model",
    "open",
    "scan",
    "scan_tree",
    "stats",
    "verify",
]

#: Public names resolved on first access: ``name -> submodule`` (relative to this package) that defines it. No verb
#: shares its name with a module (the verbs' modules live in :mod:`torchweights.tools`), so importing a submodule
#: never rebinds a public name.
_LAZY: dict[str, str] = {
    "load": "api",
    "load_into": "api",
    "load_model": "rebuild.load",
    "open": "api",
    "convert": "tools.convert.run",
    "ConvertReport": "tools.convert.report",
    "diff": "tools.diff",
    "DiffReport": "tools.diff",
    "html_report": "tools.html_report",
    "HtmlReport": "tools.html_report",
    "Limits": "limits",
    "Checkpoint": "records",
    "StorageRef": "records",
    "TensorRecord": "records",
    "LoadReport": "report.load",
    "scan": "tools.scan.scanner",
    "Finding": "tools.scan.report",
    "ScanReport": "tools.scan.report",
    "scan_tree": "tools.scan.tree",
    "TreeScan": "tools.scan.tree",
    "stats": "values.file",
    "StatsReport": "values.stats",
    "verify": "tools.verify",
    "VerifyReport": "tools.verify",
}

if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name stays an error there

    def __getattr__(name: str) -> object:
        """PEP 562: import the module that defines a public name on first use, and keep the value."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


del TYPE_CHECKING
