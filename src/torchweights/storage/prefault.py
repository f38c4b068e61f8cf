"""Fresh destination memory, faulted in before the bytes are read into it.

A tensor that a load allocates (``tw.load``, or ``tw.load_into`` of a model on the meta device) is new memory:
``torch.empty`` reserves address space, and the kernel only backs it, one 4 KiB page at a time, when it is first
written. Without help that first write is the ``preadv`` that fills it, so every page faults inside the kernel's
copy to user memory, one exception per page: on a 1 GB load this costs more than reading the bytes.

- :func:`populate` (the reader threads call it on each piece just before reading into it) asks the kernel to back
  the piece's pages in one call, ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14 and later), which is several times
  cheaper per page than faulting inside the copy, and runs in every reader thread at once. Memory that is backed
  already (an allocated model) is left alone: one ``mincore`` call on the piece's last page tells which is which,
  because populating backed memory still walks its page tables.
- :func:`fresh` (called where a load allocates a tensor) marks its memory for transparent huge pages,
  ``madvise(MADV_HUGEPAGE)``, when :attr:`IOSettings.huge_pages <torchweights.storage.settings.IOSettings>` is on:
  one fault and one page-table entry per 2 MiB instead of 512. Only the 2 MiB-aligned interior of the tensor's
  own bytes is advised, so the tensor's memory stays torch's (its allocator still frees it) and no page outside the
  bytes the load writes can be backed by it: resident memory does not grow. Opt-in, because whether it pays
  depends on the machine: the kernel may stall to compact memory for a huge page, and under a hypervisor that takes
  back freed memory each huge page is backed again on the host.

Both are hints: where ``madvise`` or ``mincore`` is missing or refuses (other systems, older kernels, a filesystem
mapping), they do nothing and the reads fault the pages in as before. Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING, Any

from .settings import current_settings

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["advise_huge", "fresh", "populate"]

MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23
PAGE = 4096
HUGE_PAGE = 2 << 20

#: Fewer bytes than this are not worth a system call (the faults cost less).
_SMALL = 256 << 10


class _Calls:
    """libc's ``madvise`` and ``mincore``, loaded on first use; each turned off for good after it fails."""

    def __init__(self) -> None:
        self.loaded = False
        self.madvise: Any = None
        self.mincore: Any = None
        self.populate_works = True
        self.huge_works = True

    def load(self) -> None:
        self.loaded = True
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            madvise, mincore = libc.madvise, libc.mincore
        except (OSError, AttributeError):  # pragma: no cover - no usable libc
            return
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        mincore.restype = ctypes.c_int
        self.madvise, self.mincore = madvise, mincore


#: The libc calls in use (tests replace them to see the fallbacks).
LIBC = _Calls()


def _libc() -> _Calls:
    if not LIBC.loaded:
        LIBC.load()
    return LIBC


def _backed(calls: _Calls, page: int) -> bool:
    """Whether the page at ``page`` (page-aligned) is backed already (True when it cannot be told)."""
    vec = ctypes.c_ubyte(0)
    try:
        if calls.mincore(page, PAGE, ctypes.byref(vec)) != 0:
            return True
    except (OSError, ctypes.ArgumentError):  # pragma: no cover - defensive: a libc that refuses the call
        return True
    return bool(vec.value & 1)


def populate(address: int, nbytes: int) -> None:
    """Back the whole pages of ``[address, address + nbytes)`` before they are written, unless they are backed
    already. Best effort: turned off for the rest of the process where the kernel refuses ``MADV_POPULATE_WRITE``
    (``EINVAL`` before Linux 5.14)."""
    calls = _libc()
    if nbytes < _SMALL or not calls.populate_works or calls.madvise is None:
        return
    lo = (address + PAGE - 1) & ~(PAGE - 1)
    hi = (address + nbytes) & ~(PAGE - 1)
    if hi <= lo or _backed(calls, hi - PAGE):
        return
    try:
        failed = calls.madvise(lo, hi - lo, MADV_POPULATE_WRITE) != 0
    except (OSError, ctypes.ArgumentError):  # pragma: no cover - defensive
        failed = True
    if failed:  # EINVAL (older kernels), ENOSYS, EPERM...: the copy faults the pages in instead
        calls.populate_works = False


def advise_huge(address: int, nbytes: int) -> bool:
    """Mark the 2 MiB-aligned interior of ``[address, address + nbytes)`` for transparent huge pages; whether
    anything was advised. Call it before the memory is first written."""
    calls = _libc()
    if not calls.huge_works or calls.madvise is None:
        return False
    lo = (address + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    hi = (address + nbytes) & ~(HUGE_PAGE - 1)
    if hi <= lo:
        return False
    try:
        failed = calls.madvise(lo, hi - lo, MADV_HUGEPAGE) != 0
    except (OSError, ctypes.ArgumentError):  # pragma: no cover - defensive
        failed = True
    if failed:  # EINVAL: a kernel without transparent huge pages
        calls.huge_works = False
        return False
    return True


def fresh(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, just allocated by a load and not written yet; where :func:`io_settings(huge_pages=True)
    <torchweights.storage.settings.io_settings>` is in effect, its CPU memory is marked for transparent huge pages
    (:func:`advise_huge`). Returns the tensor, so an allocation site stays one line."""
    if current_settings().huge_pages and tensor.device.type == "cpu":
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes >= HUGE_PAGE:
            advise_huge(tensor.data_ptr(), nbytes)
    return tensor
