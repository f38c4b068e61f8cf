"""What every pickle-based reader shares: run the pickle, name the tensors, assemble the Checkpoint.

A pickle of any format may hold storages pickled on their own (``pickle.dumps(tensor)``:
``torch.storage._load_from_bytes(<legacy torch.save stream>)``): :func:`read_embedded` reads such a stream for the
unpickler (which is handed it, as it sits below the readers), and :func:`assemble` finds its bytes in the file.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedCheckpointError
from ..limits import DEFAULT_LIMITS
from ..records import Checkpoint, StorageRef
from ..unpickle.stream import scan_stream, unpickle
from ..unpickle.values import EmbeddedStorage, PickledTensor, UnpickleResult
from . import _legacy_stream
from .structure import keep_tree
from .tree import flatten, record_maker

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["assemble", "read_embedded", "run_pickle"]


class _Embedded:
    """Where the storages pickled with ``pickle.dumps`` (:class:`EmbeddedStorage`) are in the file: their stream's
    bytes are found in the file itself (any copy of identical bytes holds the same elements), searching on from the
    previous one, so a file of many is searched once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.view: mmap.mmap | None = None
        self.found: dict[int, StorageRef] = {}
        self.after = 0

    def locate(self, storage: EmbeddedStorage) -> StorageRef:
        ref = self.found.get(id(storage))
        if ref is not None:
            return ref
        if self.view is None:
            with open(self.path, "rb") as fh:
                self.view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        at = self.view.find(storage.blob, self.after)
        if at < 0:
            at = self.view.find(storage.blob)
        if at < 0:
            raise UnsupportedCheckpointError(
                f"'{self.path}' holds a tensor pickled with pickle.dumps whose storage bytes are not in the file as "
                "they are (pickle protocol 2 spells bytes as text through _codecs.encode; a compressed zip member "
                "deflates them), so they cannot be read in place. Re-pickle it with protocol 3 or higher, or save "
                "it with torch.save.",
                code="unsupported-embedded-storage",
                path=self.path,
            )
        self.after = at + len(storage.blob)
        ref = replace(storage.ref, key=f"pickled@{at}", file=self.path, offset=at + storage.ref.offset)
        self.found[id(storage)] = ref
        return ref

    def close(self) -> None:
        if self.view is not None:
            self.view.close()


def read_embedded(blob: Any) -> EmbeddedStorage:
    """The unpickler's hook for ``torch.storage._load_from_bytes(blob)``
    (:data:`~torchweights.unpickle.guards.EmbeddedReader`): the storage in ``blob``, a legacy ``torch.save`` stream
    whose pickles are read with the default options whatever the caller's (no global allowed, default limits, as
    :func:`run_pickle` reads them with ``ReadOptions()``). It needs nothing from above ``formats._pickled``, so the
    detector may hand it to the unpickler too."""

    def run(data: bytes | memoryview, where: str, **at: Any) -> UnpickleResult:
        limits = DEFAULT_LIMITS
        return unpickle(
            data,
            where=where,
            max_bytes=limits.max_pickle_bytes,
            max_opcodes=limits.max_pickle_opcodes,
            read_embedded=read_embedded,
            **at,
        )

    return _legacy_stream.read_embedded(blob, run)


def run_pickle(
    data: bytes | memoryview,
    options: ReadOptions,
    where: str,
    *,
    start: int = 0,
    end: int | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> UnpickleResult:
    """Unpickle one stream with the user's allowed globals and limits (for ``scan``: report it to the observer)."""
    if options.observer is not None:
        seen = scan_stream(
            data,
            start=start,
            end=end,
            persistent_load=persistent_load,
            max_bytes=options.limits.max_pickle_bytes,
            where=where,
            max_opcodes=options.limits.max_pickle_opcodes,
            read_embedded=read_embedded,
        )
        options.observer(where, start, seen)
        if seen.error is not None:
            raise seen.error
        assert seen.end is not None
        return UnpickleResult(seen.value, seen.end, {r.name for r in seen.references}, seen.opcodes, seen.references)
    return unpickle(
        data,
        start=start,
        end=end,
        persistent_load=persistent_load,
        allow_globals=options.allow_globals,
        max_bytes=options.limits.max_pickle_bytes,
        where=where,
        max_opcodes=options.limits.max_pickle_opcodes,
        read_embedded=read_embedded,
    )


def assemble(
    path: str,
    fmt: str,
    result: UnpickleResult,
    options: ReadOptions,
    *,
    where: str,
    files: tuple[str, ...],
    metadata: dict[str, Any],
    globals_seen: set[str] | None = None,
    resolve: Callable[[PickledTensor], tuple[StorageRef, int]] | None = None,
) -> Checkpoint:
    """Name every tensor of an unpickled root and build the :class:`Checkpoint`."""
    embedded = _Embedded(path)

    def locate(tensor: PickledTensor) -> tuple[StorageRef, int]:
        if isinstance(tensor.storage, EmbeddedStorage):
            return embedded.locate(tensor.storage), 0
        if resolve is not None:
            return resolve(tensor)
        assert tensor.storage is not None
        return tensor.storage.ref, 0

    make = record_maker(where, locate)
    try:
        flat = flatten(result.value, make, limits=options.limits, budget=4 * result.opcodes + 10_000)
        kept = keep_tree(result.value, flat.names, flat.records, make, options.limits)
    finally:
        embedded.close()
    return Checkpoint(
        path=path,
        format=fmt,
        files=files,
        records=flat.records,
        extras=flat.extras,
        globals=tuple(sorted(result.globals | (globals_seen or set()))),
        metadata=metadata,
        warnings=flat.warnings,
        structure=kept,
    )
