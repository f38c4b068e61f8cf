"""One reader per checkpoint format, registered in one table.

Each reader is a function ``read(path: str, options: ReadOptions) -> Checkpoint`` that never touches models or
policy and never reads tensor bytes. :func:`open_path` detects the format from content and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import UnsupportedCheckpointError
from ..limits import DEFAULT_LIMITS, Limits
from ..records import Checkpoint
from ..structs import structure

if TYPE_CHECKING:  # pragma: no cover
    from ..unpickle.stream import StreamScan

__all__ = ["READERS", "ReadOptions", "open_path", "reader_for"]


@structure(frozen=True)
class ReadOptions:
    """Options every reader receives.

    Attributes:
        allow_globals: pickle globals (``module.qualname``) the user explicitly allowed to be imported and called.
        limits: resource bounds.
        observer: set by ``scan`` only: every pickle stream a reader runs is read with
            :func:`~torchweights.unpickle.stream.scan_stream` (nothing allowed, nothing imported, dangerous references
            reported instead of refused) and handed to ``observer(where, start, stream)``.
    """

    allow_globals: frozenset[str] = frozenset()
    limits: Limits = DEFAULT_LIMITS
    observer: Callable[[str, int, StreamScan], None] | None = None

    def __post_init__(self) -> None:
        if self.allow_globals:
            from ..unpickle.policy import refuse_dangerous_allowed

            refuse_dangerous_allowed(self.allow_globals)


Reader = Callable[[str, ReadOptions], Checkpoint]


#: ``format -> module`` of its reader (relative to this package); each module is imported when first needed, so
#: opening a safetensors file never imports the pickle machinery.
_READER_MODULES = {
    "torch-zip": "torch_zip",
    "torch-legacy": "legacy",
    "legacy-tar": "legacy_tar",
    "pickle": "pickle_file",
    "safetensors": "safetensors",
    "sharded": "sharded",
    "torchscript": "torchscript",
    "torch-package": "torch_package",
    "npy": "npy",
    "npz": "npy",
    "dcp": "dcp",
}


def reader_for(fmt: str) -> Reader | None:
    """The ``read`` function of format ``fmt`` (imported on first use), or None when there is none."""
    import importlib

    module = _READER_MODULES.get(fmt)
    if module is None:
        return None
    read: Reader = importlib.import_module(f"{__name__}.{module}").read
    return read


def _readers() -> dict[str, Reader]:
    """Every reader, by format (imports them all)."""
    return {fmt: reader for fmt in _READER_MODULES if (reader := reader_for(fmt)) is not None}


READERS: Callable[[], dict[str, Reader]] = _readers


def open_path(path: str, options: ReadOptions) -> Checkpoint:
    """Detect the format of ``path`` from its content and read it into a :class:`Checkpoint`.

    The file is stamped before it is read: every ``StorageRef`` made meanwhile records which version of its file it
    describes (see :mod:`torchweights.storage.stamps`)."""
    from ..storage.stamps import stamping

    with stamping(path):
        return _read_path(path, options)


def _read_path(path: str, options: ReadOptions) -> Checkpoint:
    from ..detect.content import detect

    fmt = detect(path)
    reader = reader_for(fmt)
    if reader is None:
        raise UnsupportedCheckpointError(
            f"'{path}' is a {_FORMAT_NAMES.get(fmt, fmt)}, which torchweights cannot read yet. "
            f"{_FORMAT_FIXES.get(fmt, '')}".rstrip(),
            code=f"unsupported-{fmt}",
            path=path,
        )
    return reader(path, options)


#: How messages name a detected format that has no reader, and what to do about it (none at present).
_FORMAT_NAMES: dict[str, str] = {}
_FORMAT_FIXES: dict[str, str] = {}
