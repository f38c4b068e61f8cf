"""One reader per checkpoint format, registered in one table.

Each reader is a function ``read(path: str, options: ReadOptions) -> Checkpoint`` that never touches models or
policy and never reads tensor bytes. :func:`open_path` detects the format from content and dispatches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..limits import DEFAULT_LIMITS, Limits
from ..records import Checkpoint

__all__ = ["READERS", "ReadOptions", "open_path"]


@dataclass(frozen=True)
class ReadOptions:
    """Options every reader receives.

    Attributes:
        allow_globals: pickle globals (``module.qualname``) the user explicitly allowed to be imported and called.
        limits: resource bounds.
    """

    allow_globals: frozenset[str] = frozenset()
    limits: Limits = DEFAULT_LIMITS


Reader = Callable[[str, ReadOptions], Checkpoint]


def _readers() -> dict[str, Reader]:
    from . import legacy, safetensors, sharded, torch_zip

    return {
        "torch-zip": torch_zip.read,
        "torch-legacy": legacy.read,
        "safetensors": safetensors.read,
        "sharded": sharded.read,
    }


READERS: Callable[[], dict[str, Reader]] = _readers


def open_path(path: str, options: ReadOptions) -> Checkpoint:
    """Detect the format of ``path`` from its content and read it into a :class:`Checkpoint`."""
    from ..detect import detect

    fmt = detect(path)
    return _readers()[fmt](path, options)
