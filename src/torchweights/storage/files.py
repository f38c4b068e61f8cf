"""Positioned reads of file bytes straight into caller memory, and read-ahead hints.

Nothing here knows about tensors or torch. Reads are ``os.preadv`` straight into caller memory (no mapping, so no
4 KiB page-fault storms and no SIGBUS when a file shrinks: a short read is a clean error; where Python has no
``os.preadv``, as on Windows, one positioned read per buffer instead, ``_preadv_fallback``). Where the page cache
does not hold the bytes yet, :func:`read_ahead` hints the kernel to read ahead of the reader threads.
"""

from __future__ import annotations

import io
import os
import threading

from ..errors import CheckpointReadError, CorruptCheckpointError
from ..text import quote

__all__ = ["MAX_VECTORS", "hint", "open_fd", "read_ahead", "read_exact"]


def open_fd(path: str) -> int:
    """A read-only file descriptor, with torchweights errors instead of ``OSError``."""
    try:
        # O_BINARY: Windows opens in text mode (newline translation) without it
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise CheckpointReadError(f"cannot read {quote(path)}: {exc.strerror or exc}", path=path) from None


def hint(fd: int, offset: int, length: int, *, sequential: bool = False) -> None:
    """Tell the kernel a range will be read soon (and, with ``sequential``, read in order). Best effort."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:  # pragma: no cover - macOS, Windows
        return
    try:
        if sequential:
            advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        if length > 0:
            advise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:  # pragma: no cover - filesystems that refuse hints
        pass


#: Most buffers one ``preadv`` call takes (Linux's ``IOV_MAX`` is 1024).
MAX_VECTORS = 1000


def _rest(bufs: list[memoryview], done: int) -> list[memoryview]:
    """``bufs`` without their first ``done`` bytes."""
    if not done:
        return bufs
    for i, buf in enumerate(bufs):
        if done < len(buf):
            return [buf[done:], *bufs[i + 1 :]]
        done -= len(buf)
    return []


#: Serialises seek-then-read on platforms without positioned reads (the file offset is shared by all threads).
_SEEK_LOCK = threading.Lock()


def _read_into(fd: int, buf: memoryview, offset: int) -> int:
    """One positioned read into one buffer without ``os.preadv``: the bytes read (0 at the end of the file)."""
    pread = getattr(os, "pread", None)
    if pread is not None:  # macOS and other POSIX systems whose Python lacks preadv
        data = pread(fd, len(buf), offset)
        buf[: len(data)] = data
        return len(data)
    with _SEEK_LOCK, io.FileIO(fd, "rb", closefd=False) as fh:  # Windows: no pread either
        fh.seek(offset)
        return fh.readinto(buf) or 0


def _preadv_fallback(fd: int, buffers: list[memoryview], offset: int) -> int:
    """:func:`os.preadv` from one positioned read per buffer: the bytes read, fewer only at the end of the file."""
    done = 0
    for buf in buffers:
        want = len(buf)
        got = 0
        while got < want:
            n = _read_into(fd, buf[got:], offset + done + got)
            if n <= 0:
                return done + got
            got += n
        done += got
    return done


#: ``os.preadv`` where Python has it (Linux, the BSDs, recent macOS), else one positioned read per buffer.
_preadv = getattr(os, "preadv", None) or _preadv_fallback


def read_exact(fd: int, buf: memoryview | list[memoryview], offset: int, path: str, what: str) -> None:
    """Fill ``buf`` (one buffer, or several filled in order from consecutive file bytes: one ``preadv`` call for
    all) with the file's bytes from ``offset``, with as many reads as the kernel's short counts need.

    Raises:
        CorruptCheckpointError: ``truncated``: the file ends first (it shrank since it was opened).
        CheckpointReadError: the operating system failed the read.
    """
    bufs = [buf] if isinstance(buf, memoryview) else buf
    done, total = 0, sum(len(b) for b in bufs)
    while done < total:
        try:
            got = _preadv(fd, _rest(bufs, done), offset + done)
        except OSError as exc:
            raise CheckpointReadError(
                f"reading {what} of {quote(path)} at byte {offset + done} failed: {exc.strerror or exc}. Check the "
                "disk or network filesystem, then retry.",
                path=path,
            ) from None
        if got <= 0:
            raise CorruptCheckpointError(
                f"{quote(path)} ended after {done} of the {total} bytes of {what} (from byte {offset}). The file is "
                "truncated or changed since it was opened; re-download it, or open it again if it was rewritten.",
                code="truncated",
                path=path,
            )
        done += got


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_nowait_works = bool(_NOWAIT) and hasattr(os, "preadv")


def read_ahead(
    fd: int, buf: memoryview | list[memoryview], offset: int, path: str, what: str, lookahead: int = 0
) -> None:
    """:func:`read_exact`, with read-ahead hints only when the bytes are not in the page cache already.

    The first attempt is a non-blocking ``preadv2(RWF_NOWAIT)``, which copies whatever the page cache holds and
    never waits for the disk. Warm files are read by it alone, with no hint (``POSIX_FADV_WILLNEED`` over cached
    pages costs a page-cache walk per call). Otherwise the missing bytes and the next ``lookahead`` bytes of the
    file are hinted, so the disk works ahead of the other reader threads, and the rest is read normally.
    """
    global _nowait_works
    bufs = [buf] if isinstance(buf, memoryview) else buf
    total = sum(len(b) for b in bufs)
    done = 0
    if _nowait_works:
        try:
            done = max(0, os.preadv(fd, bufs, offset, _NOWAIT))
        except BlockingIOError:
            done = 0
        except OSError:  # pragma: no cover - filesystems without RWF_NOWAIT (EOPNOTSUPP, EINVAL)
            _nowait_works = False
        if done >= total:
            return
    hint(fd, offset + done, total - done + lookahead)
    read_exact(fd, _rest(bufs, done), offset + done, path, what)
