"""What every pickle-based reader shares: run the pickle, name the tensors, assemble the Checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..containers import flatten, record_maker
from ..records import Checkpoint, StorageRef
from ..unpickle import PickledTensor, UnpickleResult, scan_stream, unpickle

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["assemble", "run_pickle"]


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
    flat = flatten(
        result.value,
        record_maker(where, resolve),
        limits=options.limits,
        budget=4 * result.opcodes + 10_000,
    )
    return Checkpoint(
        path=path,
        format=fmt,
        files=files,
        records=flat.records,
        extras=flat.extras,
        globals=tuple(sorted(result.globals | (globals_seen or set()))),
        metadata=metadata,
        warnings=flat.warnings,
    )
