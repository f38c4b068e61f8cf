"""How reads of tensor bytes are tuned: :class:`IOSettings` (threads, scratch memory, piece size, read-ahead
hints, fresh memory) and :func:`io_settings`, the ``with`` block that changes them for the loads inside it (a
context variable, so threads and tasks each see their own). Public as ``torchweights.storage.io_settings``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from ..structs import structure

__all__ = ["IOSettings", "current_settings", "io_settings"]

_MiB = 1 << 20


@structure(frozen=True)
class IOSettings:
    """How :mod:`torchweights.storage.read` reads tensor bytes.

    Attributes:
        threads: reader threads (0: ``min(4, max(2, os.cpu_count()))``).
        scratch_bytes: total bytes of scratch buffers for tensors that cannot be read in place (dtype casts,
            big-endian files, compressed members, storages shared by several parameters, CRC-only gaps); shared
            by the reader threads, so each gets ``scratch_bytes // threads``.
        piece_bytes: the largest single read straight into a tensor (big tensors are split into pieces of this
            size, read by several threads).
        fadvise: give the kernel ``POSIX_FADV_SEQUENTIAL`` / ``POSIX_FADV_WILLNEED`` read-ahead hints.
        intra_op_threads: torch intra-op threads while loading; 0 (the default) leaves torch's setting alone. A
            positive value is an opt-in: ``torch.set_num_threads`` is process-wide, so it is set around each read
            that makes torch copies (casts, big-endian or compressed storages, GPU destinations) and restored
            afterwards, and it affects every other thread of the process meanwhile (and two loads that set it
            at once restore each other's value). It can help where several reader threads each fan out over
            torch's pool on a machine with few cores.
        direct: read straight into CPU tensors that can take the bytes as they are. False routes every tensor
            through the scratch buffers, as for a GPU destination (to test and measure that path on a CPU).
        prefault: back fresh destination memory (tensors the load allocates) with one ``madvise`` call per piece,
            in the reader thread, before reading into it, instead of one page fault per 4 KiB inside the read
            (:mod:`torchweights.storage.prefault`; Linux 5.14 and later, a no-op elsewhere).
        huge_pages: opt-in: mark the tensors a load allocates for transparent huge pages (``MADV_HUGEPAGE`` on the
            2 MiB-aligned interior of each, so resident memory does not grow): 512 times fewer page faults. Off by
            default because it can cost more than it saves where the kernel must compact memory to find huge pages,
            or where a hypervisor takes back freed memory; measure on your machine.
    """

    threads: int = 0
    scratch_bytes: int = 64 * _MiB
    piece_bytes: int = 16 * _MiB
    fadvise: bool = True
    intra_op_threads: int = 0
    direct: bool = True
    prefault: bool = True
    huge_pages: bool = False

    def worker_count(self) -> int:
        """The number of reader threads to use."""
        if self.threads > 0:
            return self.threads
        return min(4, max(2, _CPUS))

    def piece_size(self) -> int:
        """:attr:`piece_bytes` rounded down to a multiple of 64 (so pieces never split an element)."""
        return max(64, self.piece_bytes - self.piece_bytes % 64)

    def chunk_bytes(self) -> int:
        """Bytes of one thread's scratch buffer (a multiple of 64, at least 64 KiB)."""
        per = self.scratch_bytes // max(1, self.worker_count())
        return max(64 << 10, per - per % 64)


#: Cores online, read once (``os.cpu_count`` reads a file under /sys on every call).
_CPUS = os.cpu_count() or 1

_SETTINGS: ContextVar[IOSettings] = ContextVar("torchweights_io_settings", default=IOSettings())  # noqa: B039 - frozen


def current_settings() -> IOSettings:
    """The :class:`IOSettings` in effect (see :func:`io_settings`)."""
    return _SETTINGS.get()


@contextmanager
def io_settings(**changes: Any) -> Iterator[IOSettings]:
    """Change :class:`IOSettings` fields for the loads inside the ``with`` block.

    Example::

        with torchweights.storage.io_settings(threads=2, scratch_bytes=16 << 20):
            tw.load_into(model, "model.pt")
    """
    settings = replace(_SETTINGS.get(), **changes)
    if settings.scratch_bytes < 0 or settings.piece_bytes < 64 or settings.threads < 0:
        raise ValueError(f"invalid I/O settings {settings!r}: sizes and thread counts must be positive")
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)
