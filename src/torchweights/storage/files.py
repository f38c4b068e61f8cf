"""Low-level I/O for :mod:`torchweights.storage.read`: positioned reads, read-ahead hints, bounded inflation, CRC-32.

Nothing here knows about tensors or torch. Reads are ``os.preadv`` straight into caller memory (no mapping, so no
4 KiB page-fault storms and no SIGBUS when a file shrinks: a short read is a clean error; where Python has no
``os.preadv``, as on Windows, one positioned read per buffer instead, ``_preadv_fallback``), and CRC-32 values of
pieces read in parallel are combined with :func:`crc32_combine` (the GF(2) polynomial arithmetic behind zlib's
function of that name, which Python's :mod:`zlib` does not expose).

CRC-32 itself: :func:`crc32` uses the fastest backend installed: the ``zlib-ng`` package (SIMD, about 7x zlib's
speed here), the system's libdeflate (``libdeflate_crc32`` through :mod:`ctypes`, about 3x), or :func:`zlib.crc32`.
All compute the same checksum and release the GIL.
"""

from __future__ import annotations

import ctypes
import io
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import IO, Any

from ..errors import CheckpointReadError, CorruptCheckpointError
from ..text import quote

__all__ = [
    "MAX_VECTORS",
    "IOSettings",
    "crc32",
    "crc32_backend",
    "crc32_combine",
    "current_settings",
    "hint",
    "inflate",
    "io_settings",
    "open_fd",
    "read_ahead",
    "read_exact",
]

_MiB = 1 << 20


@dataclass(frozen=True)
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
    """

    threads: int = 0
    scratch_bytes: int = 64 * _MiB
    piece_bytes: int = 16 * _MiB
    fadvise: bool = True
    intra_op_threads: int = 0
    direct: bool = True

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


def inflate(fh: IO[bytes], offset: int, compressed_size: int, nbytes: int, out: memoryview) -> Iterator[int]:
    """Inflate a raw-deflate zip member into ``out`` piece by piece, never holding more than ``len(out)`` bytes.

    Yields the number of bytes placed at the start of ``out`` each time it is full (or the member's first
    ``nbytes`` are done); the caller consumes them before the next iteration overwrites them.

    Raises:
        zlib.error: the deflate stream is damaged.
        EOFError: the stream ends before ``nbytes`` bytes.
    """
    dec = zlib.decompressobj(-15)
    remaining_in = compressed_size
    pos_in = offset
    remaining_out = nbytes
    room = len(out)
    filled = 0
    while remaining_out > 0:
        data_in = dec.unconsumed_tail
        if not data_in and remaining_in > 0:
            fh.seek(pos_in)
            data_in = fh.read(min(remaining_in, 1 << 20))
            if not data_in:
                raise EOFError("the file ends inside the compressed stream")
            pos_in += len(data_in)
            remaining_in -= len(data_in)
        want = min(room - filled, remaining_out)
        data = dec.decompress(data_in, want)  # with no input left, this drains what the inflater still holds
        if not data and (dec.eof or (not data_in and not dec.unconsumed_tail)):
            raise EOFError(f"the compressed stream ends {remaining_out} bytes early")
        out[filled : filled + len(data)] = data
        filled += len(data)
        remaining_out -= len(data)
        if filled == room or remaining_out == 0:
            yield filled
            filled = 0


# --------------------------------------------------------------------------------------------------------------
# CRC-32 of concatenated pieces: crc(A + B) from crc(A), crc(B) and len(B). In zlib's reflected representation a
# 32-bit word is a polynomial of degree < 32 with x^0 in the top bit; appending len(B) zero bytes to A multiplies
# crc(A) by x^(8 len(B)) modulo the CRC polynomial, and the CRC of B alone is then added (xor).
# --------------------------------------------------------------------------------------------------------------

_POLY = 0xEDB88320  # x^32 + x^26 + ... + 1, reflected, without the x^32 term
_TOP = 1 << 31  # x^0


def _mulmod(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial."""
    product = 0
    bit = _TOP
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _square_table() -> list[int]:
    table = [_TOP >> 1]  # x^1
    for _ in range(63):
        table.append(_mulmod(table[-1], table[-1]))  # x^(2^k)
    return table


_X_POW2 = _square_table()


def _x_pow(n: int) -> int:
    """x^n modulo the CRC polynomial."""
    result = _TOP
    k = 0
    while n:
        if n & 1:
            result = _mulmod(_X_POW2[k], result)
        n >>= 1
        k += 1
    return result


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (as zlib's ``crc32_combine``)."""
    if len_b <= 0:
        return crc_a
    return _mulmod(_x_pow(8 * len_b), crc_a) ^ crc_b


# --------------------------------------------------------------------------------------------------------------
# CRC-32 of memory
# --------------------------------------------------------------------------------------------------------------

_LIBDEFLATE_NAMES = ("libdeflate.so.0", "libdeflate.so", "libdeflate.dylib", "libdeflate.0.dylib")
#: Backends in order of preference (measured here on 256 MiB: zlib-ng 29 GB/s, libdeflate 1.14 15 GB/s, zlib
#: 4 GB/s on one core). ``TORCHWEIGHTS_CRC32`` names one to use instead (``zlib`` always works).
CRC32_BACKENDS = ("zlib-ng", "libdeflate", "zlib")
_CHECK_VALUE = zlib.crc32(b"123456789")  # the standard CRC-32 check value
_crc: tuple[str, Any, bool] | None = None  # (name, function, takes an address instead of a buffer)


def _load_backend(name: str) -> tuple[Any, bool] | None:
    """The CRC-32 function of one backend, checked against the standard check value, or None if unavailable."""
    fn: Any = None
    by_address = False
    if name == "zlib-ng":
        try:
            from zlib_ng import zlib_ng  # the zlib-ng package (pip install zlib-ng): SIMD CRC-32, GIL released
        except ImportError:
            return None
        fn = zlib_ng.crc32
    elif name == "libdeflate":
        for lib in _LIBDEFLATE_NAMES:
            try:
                fn = ctypes.CDLL(lib).libdeflate_crc32
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_uint32
            fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
            by_address = True  # ctypes cannot take a read-only buffer: the caller passes the memory's address
            break
    elif name == "zlib":
        fn = zlib.crc32
    if fn is None:
        return None
    probe = bytearray(b"123456789")
    value = fn(0, ctypes.addressof(ctypes.c_char.from_buffer(probe)), 9) if by_address else fn(probe)
    return (fn, by_address) if int(value) == _CHECK_VALUE else None


def _backend() -> tuple[str, Any, bool]:
    """The CRC-32 backend in use (chosen once): ``TORCHWEIGHTS_CRC32`` if set and available, else the fastest."""
    global _crc
    if _crc is None:
        wanted = os.environ.get("TORCHWEIGHTS_CRC32", "").strip().lower()
        names = [wanted] if wanted in CRC32_BACKENDS else list(CRC32_BACKENDS)
        for name in [*names, "zlib"]:
            loaded = _load_backend(name)
            if loaded is not None:
                _crc = (name, *loaded)
                break
    assert _crc is not None
    return _crc


def crc32_backend() -> str:
    """What :func:`crc32` uses on this machine: ``"zlib-ng"``, ``"libdeflate"`` or ``"zlib"``."""
    return _backend()[0]


def crc32(mem: memoryview, value: int = 0, address: int | None = None) -> int:
    """CRC-32 of ``mem`` continuing from ``value`` (as :func:`zlib.crc32`), with the fastest backend installed.

    ``address``: where ``mem``'s first byte lives, when known (memory of tensors), so libdeflate can read it in
    place; without it libdeflate is not used (:func:`zlib.crc32` is).
    """
    _, fn, by_address = _backend()
    if not by_address:
        return int(fn(mem, value))
    if address is not None and len(mem):
        return int(fn(value, address, len(mem)))
    return zlib.crc32(mem, value)
