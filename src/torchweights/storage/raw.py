"""A storage's bytes as stored, without torch: whole (:func:`read_storage_bytes`, CRC-checked), a byte range
(:func:`read_byte_range`), streamed piece by piece (:func:`member_pieces`, :func:`storage_crc`), a compressed zip
member inflated (:func:`read_member`). For ``convert``, ``diff``, ``verify`` and ``scan``
(:mod:`torchweights.storage.contents`), and for the small tensors :mod:`torchweights.storage.tensors` reads itself.
Every file is checked against the stamp taken when the checkpoint was opened (``file-changed``).
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator, Sequence

from ..errors import CheckpointReadError, CorruptCheckpointError
from ..records import StorageRef
from ..text import quote
from .compression import decode, inflate
from .crc import crc32
from .files import open_fd, read_exact
from .results import CrcMismatch, crc_error, storage_label
from .stamps import check_unchanged

__all__ = [
    "DEFLATED",
    "bad_member",
    "member_pieces",
    "open_checked",
    "read_byte_range",
    "read_member",
    "read_storage_bytes",
    "storage_crc",
]

#: The zip compression method of deflated members (all torch writes when it compresses).
DEFLATED = 8


def open_checked(ref: StorageRef) -> io.BufferedReader:
    """A buffered handle on ``ref``'s file (for inflating), refused if the file changed since it was opened."""
    try:
        fh = open(ref.file, "rb")  # noqa: SIM115 - returned, closed by the caller
    except OSError as exc:
        raise CheckpointReadError(f"cannot read {quote(ref.file)}: {exc.strerror or exc}", path=ref.file) from None
    try:
        check_unchanged(fh.fileno(), ref)
    except BaseException:
        fh.close()
        raise
    return fh


def bad_member(ref: StorageRef, exc: BaseException) -> CorruptCheckpointError:
    """The ``bad-member`` error for a compressed storage that cannot be inflated (``exc`` says why)."""
    return CorruptCheckpointError(
        f"{quote(ref.file)}: compressed member {quote(ref.member or ref.key)} cannot be inflated "
        f"({type(exc).__name__}: {exc}). "
        "The file changed since it was opened or is damaged; re-download or re-save it.",
        code="bad-member",
        path=ref.file,
    )


def member_pieces(ref: StorageRef, mem: memoryview) -> Iterator[int]:
    """Every decoded byte of a storage (inflating a compressed member), through ``mem`` piece by piece, without
    torch: yields the number of bytes placed at the start of ``mem`` each time; the caller consumes them before the
    next iteration overwrites them. The CRC is the caller's to check."""
    if ref.compression == 0:
        fd = open_fd(ref.file)
        try:
            check_unchanged(fd, ref)
            for at in range(0, ref.nbytes, len(mem)):
                n = min(len(mem), ref.nbytes - at)
                read_exact(fd, mem[:n], ref.offset + at, ref.file, storage_label(ref))
                yield n
        finally:
            os.close(fd)
    elif ref.compression == DEFLATED:
        with open_checked(ref) as fh:
            try:
                yield from inflate(fh, ref.offset, ref.compressed_size, ref.nbytes, mem)
            except (zlib.error, EOFError) as exc:
                raise bad_member(ref, exc) from None
    else:  # bzip2 / lzma: rare enough to inflate whole
        whole = memoryview(read_member(ref))
        for at in range(0, len(whole), len(mem)):
            n = min(len(mem), len(whole) - at)
            mem[:n] = whole[at : at + n]
            yield n


def read_member(ref: StorageRef, nbytes: int | None = None) -> bytes:
    """The first ``nbytes`` (default: all ``ref.nbytes``) inflated bytes of a compressed storage's zip member, read
    whole (bzip2 and lzma members, byte ranges of compressed ones). The CRC is the caller's to check."""
    want = ref.nbytes if nbytes is None else nbytes
    with open_checked(ref) as handle:
        try:
            return decode(handle, ref.compression, ref.offset, ref.compressed_size, want, quote(ref.member or ref.key))
        except CorruptCheckpointError as exc:
            raise bad_member(ref, exc) from None


#: Most bytes :func:`storage_crc` holds at once.
_CRC_PIECE = 16 << 20


def storage_crc(ref: StorageRef) -> int:
    """The CRC-32 of one whole storage as decoded (a compressed member inflated), streamed through one buffer of at
    most 16 MiB, without torch; compare it with ``ref.crc32``.

    Raises:
        CorruptCheckpointError, CheckpointReadError: the bytes cannot be read.
    """
    value = 0
    if ref.nbytes:
        mem = memoryview(bytearray(min(ref.nbytes, _CRC_PIECE)))
        for n in member_pieces(ref, mem):
            value = crc32(mem[:n], value)
    return value


def read_byte_range(ref: StorageRef, start: int, end: int) -> bytearray:
    """Bytes ``[start, end)`` of one storage as stored (no byte swap, no CRC check), without importing torch.

    The file is refused (``file-changed``) when it is not the one the checkpoint was opened from.

    A stored member or plain file is read with one positioned read of exactly that range; a compressed member is
    inflated up to ``end``.

    Raises:
        ValueError: the range is not inside the storage.
        CorruptCheckpointError, CheckpointReadError: the bytes cannot be read.
    """
    if not 0 <= start <= end <= ref.nbytes:
        raise ValueError(f"byte range [{start}, {end}) is outside storage {ref.key!r} of {ref.nbytes} bytes")
    if ref.compression:
        return bytearray(read_member(ref, end)[start:end])
    out = bytearray(end - start)
    if out:
        fd = open_fd(ref.file)
        try:
            check_unchanged(fd, ref)
            read_exact(fd, memoryview(out), ref.offset + start, ref.file, f"storage {quote(ref.key)}")
        finally:
            os.close(fd)
    return out


def read_storage_bytes(
    ref: StorageRef, files: object = None, *, check_crc: bool = True, tensors: Sequence[str] = ()
) -> bytearray:
    """Read one storage's bytes (inflating a compressed zip member) into a new writable buffer.

    The bytes are compared with the CRC-32 their zip member records (``bad-crc`` on mismatch, naming ``tensors``,
    or the storage's key); pass ``check_crc=False`` for a trusted file, or for a narrowed ``ref`` (a byte range of a
    storage, whose bytes the member's CRC does not describe). ``files`` is accepted for compatibility and unused.
    """
    out = bytearray(ref.nbytes)
    if ref.nbytes:
        mem = memoryview(out)
        for n in member_pieces(ref, mem):  # one piece: ``mem`` holds the whole storage
            assert n == ref.nbytes
        if check_crc and ref.crc32 is not None:
            value = crc32(mem)
            if value != ref.crc32:
                mismatch = CrcMismatch(ref, ref.crc32, value, tuple(tensors) or (ref.key,))
                raise crc_error([mismatch], "Nothing was loaded.")
    return out
