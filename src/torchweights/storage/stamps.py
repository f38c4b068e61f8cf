"""Which version of a file a checkpoint's records describe.

Records keep a path and byte offsets; the bytes are read later, by opening the path again. A file rewritten or
replaced in between would be read at the old offsets, silently. So :func:`torchweights.formats.open_path` reads a
checkpoint inside :func:`stamping`: every :class:`~torchweights.records.StorageRef` made meanwhile gets the
:data:`FileStamp` of its file (``st_dev``, ``st_ino``, ``st_size``, ``st_mtime_ns``, taken with one ``stat`` per file
before the file is parsed), and every reader of tensor bytes calls :func:`check_unchanged` with one ``fstat`` on the
descriptor it opened: a file changed in place, truncated, grown or replaced by a rename is ``file-changed``.

A rewrite that keeps the size and lands within the filesystem's timestamp granularity (a few milliseconds on Linux)
cannot be told apart from the original by these four numbers; the CRC-32 of torch zip members still catches changed
bytes there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from ..errors import CorruptCheckpointError
from ..text import format_bytes, quote

if TYPE_CHECKING:  # pragma: no cover
    from ..records import StorageRef

__all__ = ["FileStamp", "check_unchanged", "stamp_for", "stamping"]

#: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of a file.
FileStamp = tuple[int, int, int, int]

#: The stamps of the open in progress (None outside one), by path as the readers spell it.
_TABLE: ContextVar[dict[str, FileStamp | None] | None] = ContextVar("torchweights_stamps", default=None)


def _of(st: os.stat_result) -> FileStamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _stat(path: str) -> FileStamp | None:
    try:
        return _of(os.stat(path))
    except (OSError, ValueError):
        return None  # the reader reports it; a ref without a stamp is simply not checked


@contextmanager
def stamping(path: str) -> Iterator[None]:
    """Stamp ``path`` now, and every other file when the first record of it is made, until the block ends.

    Nested blocks (the shards of an index) share the outer block's table.
    """
    table = _TABLE.get()
    if table is not None:
        if path not in table:
            table[path] = _stat(path)
        yield
        return
    token = _TABLE.set({path: _stat(path)})
    try:
        yield
    finally:
        _TABLE.reset(token)


def stamp_for(path: str) -> FileStamp | None:
    """The stamp of ``path`` in the open in progress (taken now if it is the first record of that file), or None
    outside :func:`stamping`."""
    table = _TABLE.get()
    if table is None or not path:
        return None
    if path not in table:
        table[path] = _stat(path)
    return table[path]


def check_unchanged(fd: int, ref: StorageRef, st: os.stat_result | None = None) -> None:
    """Refuse to read ``ref``'s bytes through ``fd`` when its file is not the one that was opened.

    One ``fstat`` (none when the caller has ``st`` already); nothing for a ref without a stamp.

    Raises:
        CorruptCheckpointError: ``file-changed``.
    """
    expected = ref.stamp
    if expected is None:
        return
    now = _of(st if st is not None else os.fstat(fd))
    if now == expected:
        return
    if now[:2] != expected[:2]:
        how = "it was replaced by another file (a new inode: a rename, a new download or save over it)"
    elif now[2] != expected[2]:
        how = f"its size went from {format_bytes(expected[2])} to {format_bytes(now[2])}"
    else:
        how = "it was modified in place (a new modification time)"
    raise CorruptCheckpointError(
        f"{quote(ref.file)} changed since it was opened: {how}. Its records give the offsets of the bytes as they "
        "were, so reading it now could return other bytes. Open it again with tw.open(path) (tw.load and "
        "tw.load_into given a path do) and read from the new Checkpoint; if a process is still writing it, wait "
        "until it is done.",
        code="file-changed",
        path=ref.file,
    )
