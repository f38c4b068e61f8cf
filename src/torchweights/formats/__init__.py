"""One reader per checkpoint format, registered in one table.

Each reader is a function ``read(path: str, options: ReadOptions) -> Checkpoint`` that never touches models or
policy and never reads tensor bytes. :func:`open_path` detects the format from content and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UnsupportedCheckpointError
from ..limits import DEFAULT_LIMITS, Limits
from ..records import Checkpoint
from ..unpickle import StreamScan

__all__ = ["READERS", "ReadOptions", "open_path"]


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader receives.

    Attributes:
        allow_globals: pickle globals (``module.qualname``) the user explicitly allowed to be imported and called.
        limits: resource bounds.
        observer: set by ``scan`` only: every pickle stream a reader runs is read with
            :func:`~torchweights.unpickle.scan_stream` (nothing allowed, nothing imported, dangerous references
            reported instead of refused) and handed to ``observer(where, start, stream)``.
    """

    allow_globals: frozenset[str] = frozenset()
    limits: Limits = DEFAULT_LIMITS
    observer: Callable[[str, int, StreamScan], None] | None = None


Reader = Callable[[str, ReadOptions], Checkpoint]


def _readers() -> dict[str, Reader]:
    from . import legacy, legacy_tar, pickle_file, safetensors, sharded, torch_package, torch_zip, torchscript

    return {
        "torch-zip": torch_zip.read,
        "torch-legacy": legacy.read,
        "legacy-tar": legacy_tar.read,
        "pickle": pickle_file.read,
        "safetensors": safetensors.read,
        "sharded": sharded.read,
        "torchscript": torchscript.read,
        "torch-package": torch_package.read,
    }


READERS: Callable[[], dict[str, Reader]] = _readers


def open_path(path: str, options: ReadOptions) -> Checkpoint:
    """Detect the format of ``path`` from its content and read it into a :class:`Checkpoint`."""
    from ..detect import detect

    fmt = detect(path)
    reader = _readers().get(fmt)
    if reader is None:
        raise UnsupportedCheckpointError(
            f"'{path}' is a {_FORMAT_NAMES.get(fmt, fmt)}, which torchweights cannot read yet. "
            f"{_FORMAT_FIXES.get(fmt, '')}".rstrip(),
            code=f"unsupported-{fmt}",
            path=path,
        )
    return reader(path, options)


_FORMAT_NAMES = {
    "dcp": "torch.distributed.checkpoint folder",
}
_FORMAT_FIXES = {
    "dcp": "Convert it with torch.distributed.checkpoint.format_utils.dcp_to_torch_save(folder, 'model.pt').",
}
