"""The public verbs: :func:`open` (records, no tensor bytes) and :func:`load` (tensors)."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .formats import ReadOptions, open_path
from .limits import DEFAULT_LIMITS, Limits
from .records import Checkpoint

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["load", "open"]


def open(
    path: str | os.PathLike[str],
    *,
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> Checkpoint:
    """Describe a checkpoint without reading tensor bytes and without importing torch.

    Args:
        path: a checkpoint file, a sharded index (``*.index.json``) or a folder holding one.
        allow_globals: pickle globals (``"module.qualname"``) you trust: only these may be imported and called.
            Everything else unknown becomes an inert stub; known-dangerous globals are refused.
        limits: resource bounds for hostile files.

    Returns:
        A :class:`Checkpoint` with records, extras, globals and metadata.

    Raises:
        TorchWeightsError: a subclass naming what is wrong with the file and what to do.
    """
    if isinstance(allow_globals, str):
        allow_globals = [allow_globals]
    options = ReadOptions(allow_globals=frozenset(allow_globals), limits=limits)
    return open_path(os.fspath(path), options)


def load(
    source: str | os.PathLike[str] | Checkpoint,
    *,
    map_location: str | torch.device | Mapping[str, Any] | None = "cpu",
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint into memory, executing nothing from the file.

    Args:
        source: a path (as for :func:`open`) or an already opened :class:`Checkpoint`.
        map_location: device for the tensors (``"cpu"``, ``"cuda:0"``, a ``torch.device``), or None for the
            device each tensor was saved from.
        allow_globals: pickle globals you trust (see :func:`open`).
        limits: resource bounds for hostile files.

    Returns:
        ``{dotted name: tensor}`` in file order; tensors that shared a storage in the file share it here.
    """
    from .storage import materialize

    ckpt = source if isinstance(source, Checkpoint) else open(source, allow_globals=allow_globals, limits=limits)
    return materialize(builtins.list(ckpt.records.values()), map_location=map_location)
