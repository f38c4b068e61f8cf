"""torch zip files (``torch.save`` since 1.6): ``<root>/data.pkl`` plus one member per storage.

All three generations of format records are read: ``version`` only; ``byteorder`` and
``.data/serialization_id``; ``.format_version`` and ``.storage_alignment``. Any archive root name works.
Storages are located by their zip member's data offset, so nothing but the pickle is read.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from .. import dtypes
from ..containers import short_repr
from ..errors import CheckpointReadError, CorruptCheckpointError, ResourceLimitError
from ..records import Checkpoint, StorageRef
from ..unpickle import PickledStorage, StorageType
from ._pickled import assemble, run_pickle
from ._zip import DEFLATE_MAX_RATIO, check, read_directory

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["ZIP_ERRORS", "check_byteorder", "open_archive", "read", "read_member", "read_text_members"]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_RECORDS = ("version", ".data/version", "byteorder", ".format_version", ".storage_alignment", ".data/serialization_id")
_RECORD_MAX_BYTES = 4096


def _zip_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [
        zipfile.BadZipFile,  # bad signatures, CRC mismatch, local and central names differ
        zlib.error,  # damaged deflate stream
        EOFError,  # compressed stream ends early
        OSError,  # bzip2 errors, seeks outside the file
        ValueError,  # UnicodeDecodeError of names, seek offsets that do not fit, bad zip64 fields
        NotImplementedError,  # unknown compression method, "zip file version", patched data
        RuntimeError,  # encrypted member
        struct.error,
        OverflowError,
    ]
    try:
        import lzma

        errors.append(lzma.LZMAError)
    except ImportError:  # pragma: no cover - Python built without lzma
        pass
    return tuple(errors)


#: Every exception :mod:`zipfile` and its decompressors raise on damaged archives.
ZIP_ERRORS: tuple[type[Exception], ...] = _zip_errors()


def _find_root(names: list[str], path: str) -> str:
    """The archive's root prefix (``"archive/"``): the folder holding ``data.pkl``."""
    candidates = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1 and n.split("/")[1] == "data.pkl"]
    if not candidates:
        candidates = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not candidates:
        raise CorruptCheckpointError(
            f"'{path}' is a zip archive without a 'data.pkl' member, so it is not a torch.save file "
            f"(members: {', '.join(names[:5])}{'...' if len(names) > 5 else ''}).",
            code="zip-no-data-pkl",
            path=path,
        )
    first = min(candidates, key=lambda n: (n.count("/"), names.index(n)))
    return first[: -len("data.pkl")]


def _data_offset(fh: IO[bytes], info: zipfile.ZipInfo, path: str, file_size: int) -> int:
    """Absolute offset of a member's first data byte, from its local header; checked to lie inside the file."""
    if not 0 <= info.header_offset <= file_size - _LOCAL_HEADER.size:
        raise CorruptCheckpointError(
            f"'{path}': the zip directory places member '{info.filename}' at byte {info.header_offset}, outside the "
            f"{file_size}-byte file. The file is truncated or damaged; re-download or re-save it.",
            code="truncated",
            path=path,
        )
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise CorruptCheckpointError(
            f"'{path}': zip member '{info.filename}' is cut off. Re-download or re-save the file.",
            code="truncated",
            path=path,
        )
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise CorruptCheckpointError(
            f"'{path}': zip member '{info.filename}' has no local header where the central directory points "
            f"(byte {info.header_offset}). The file is damaged; re-download or re-save it.",
            code="zip-bad-member",
            path=path,
        )
    return info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]


def _bad_member(path: str, info: zipfile.ZipInfo, why: str, code: str = "bad-member") -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"'{path}': zip member '{info.filename}' cannot be read: {why}. The file is corrupt or truncated; "
        "re-download or re-save it.",
        code=code,
        path=path,
    )


def read_member(
    zf: zipfile.ZipFile, fh: IO[bytes], info: zipfile.ZipInfo, file_size: int, path: str, nbytes: int | None = None
) -> bytes:
    """The bytes of one member (the first ``nbytes``, or all), checked against the file before anything is read.

    The member's place and sizes are checked against the real file before anything is read, so a damaged zip
    directory can neither make a read run past the end of the file nor ask for memory the file cannot fill (a
    stored member is read straight from the file; a deflated one may not claim more than deflate can produce).
    Damaged members raise :class:`CorruptCheckpointError`, never a :mod:`zipfile`, :mod:`zlib` or :mod:`struct`
    exception.
    """
    offset = _data_offset(fh, info, path, file_size)
    if offset + info.compress_size > file_size:
        raise _bad_member(
            path,
            info,
            f"its {info.compress_size} bytes would start at byte {offset} but the file has {file_size}",
            "truncated",
        )
    if info.flag_bits & 0x1:
        raise _bad_member(path, info, "it is encrypted, which torch.save never does", "zip-encrypted")
    want = info.file_size if nbytes is None else min(nbytes, info.file_size)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise _bad_member(
                path,
                info,
                f"it is stored uncompressed, yet the zip directory gives it {info.compress_size} bytes in the file "
                f"and {info.file_size} bytes of content",
            )
        fh.seek(offset)
        data = fh.read(want)
    else:
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > info.compress_size * DEFLATE_MAX_RATIO:
            raise _bad_member(
                path,
                info,
                f"it claims {info.file_size} bytes inflated from {info.compress_size} compressed ones, more than "
                "deflate can produce",
            )
        try:
            with zf.open(info) as member:
                data = member.read(want)
        except ZIP_ERRORS as exc:
            raise _bad_member(path, info, f"{type(exc).__name__}: {exc}") from None
    if len(data) != want:
        raise _bad_member(path, info, f"it holds {len(data)} bytes, {want} expected", "truncated")
    if want == info.file_size and zlib.crc32(data) != info.CRC:
        raise _bad_member(path, info, "its bytes do not match their CRC-32 checksum", "bad-crc")
    return data


class _Storages:
    """persistent_load for torch zip files: ``('storage', type, key, location, numel)`` -> PickledStorage.

    The bytes of storage ``key`` are member ``<root><folder>/<key>`` (``data`` for ``torch.save``; TorchScript keeps
    its constants under ``constants``); storages outside ``data`` are keyed ``<folder>/<key>``, so they never meet
    the ``data`` storage of the same key.
    """

    def __init__(
        self, zf: zipfile.ZipFile, fh: Any, path: str, root: str, byteorder: str, file_size: int, folder: str = "data"
    ) -> None:
        self.folder = folder
        self.zf = zf
        self.fh = fh
        self.path = path
        self.root = root
        self.byteorder = byteorder
        self.file_size = file_size
        self.seen: dict[str, PickledStorage] = {}

    def __call__(self, pid: Any) -> PickledStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptCheckpointError(
                f"'{self.path}': unexpected persistent id "
                f"{short_repr(pid, 80)} (expected ('storage', type, key, location, "
                "numel))",
                code="bad-record",
                path=self.path,
            )
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise CorruptCheckpointError(
                f"'{self.path}': storage "
                f"{short_repr(key, 80)} has type {short_repr(storage_type, 80)}, which is not a torch storage class",
                code="bad-record",
                path=self.path,
            )
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CorruptCheckpointError(
                f"'{self.path}': malformed storage record "
                f"{short_repr(pid, 80)} (expected a string key and a non-negative "
                "integer element count). The file is corrupt; re-download or re-save it.",
                code="bad-record",
                path=self.path,
            )
        dtype = storage_type.dtype or "uint8"
        nbytes = numel * dtypes.itemsize(dtype)
        previous = self.seen.get(key)
        if previous is not None:
            if previous.dtype != dtype or previous.ref.nbytes != nbytes:
                raise CorruptCheckpointError(
                    f"'{self.path}': storage '{key}' is declared twice with different types or sizes",
                    code="bad-record",
                    path=self.path,
                )
            return previous
        member = f"{self.root}{self.folder}/{key}"
        try:
            info = self.zf.getinfo(member)
        except KeyError:
            raise CorruptCheckpointError(
                f"'{self.path}': the pickle refers to storage '{key}' but member '{member}' is missing. The archive "
                "is incomplete or was modified; re-download or re-save it.",
                code="missing-storage",
                path=self.path,
            ) from None
        if info.file_size < nbytes:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' should hold {nbytes} bytes ({numel} x {dtype}) but member "
                f"'{member}' has {info.file_size}. The file is corrupt; re-download or re-save it.",
                code="storage-size",
                path=self.path,
            )
        offset = _data_offset(self.fh, info, self.path, self.file_size)
        end = offset + (info.compress_size if info.compress_type else nbytes)
        if info.compress_type == zipfile.ZIP_DEFLATED and nbytes > info.compress_size * DEFLATE_MAX_RATIO:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' should inflate to {nbytes} bytes from {info.compress_size} compressed "
                f"bytes of member '{member}', more than deflate can produce. The file is corrupt or crafted; "
                "re-download or re-save it.",
                code="storage-size",
                path=self.path,
            )
        if end > self.file_size:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' ends at byte {end} but the file has {self.file_size} bytes. The "
                "file is truncated; re-download it.",
                code="truncated",
                path=self.path,
            )
        ref = StorageRef(
            key=key if self.folder == "data" else f"{self.folder}/{key}",
            file=self.path,
            offset=offset,
            nbytes=nbytes,
            byteorder=self.byteorder,
            member=member,
            compression=info.compress_type,
            compressed_size=info.compress_size,
            crc32=info.CRC if info.file_size == nbytes else None,
            location=location if isinstance(location, str) else "cpu",
        )
        storage = PickledStorage(ref, dtype)
        self.seen[key] = storage
        return storage


@contextmanager
def open_archive(path: str, options: ReadOptions, what: str) -> Iterator[tuple[zipfile.ZipFile, IO[bytes], int]]:
    """``(zip, file handle, file size)`` of a zip checkpoint, its directory checked before anything is read.

    Our own reading of the directory decides first (duplicates, mismatched headers, overlaps, polyglots...: see
    :mod:`._zip`); :mod:`zipfile` is only used on archives that passed.

    Args:
        path: the file.
        options: the reader's options (the inflate budget).
        what: what the archive should be, for the error when it is not a readable zip (``"torch.save file"``).
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, shared with zipfile
    except OSError as exc:
        raise CheckpointReadError(f"cannot read '{path}': {exc.strerror or exc}", path=path) from None
    with fh:
        fh.seek(0, 2)
        file_size = fh.tell()
        check(read_directory(fh, path, file_size, max_inflated=options.limits.max_inflated_bytes))
        try:
            zf = zipfile.ZipFile(fh)
        except ZIP_ERRORS as exc:
            raise CorruptCheckpointError(
                f"'{path}' is not a readable zip archive ({type(exc).__name__}: {exc}). A {what} that fails here is "
                "usually truncated or damaged; re-download or re-save it.",
                code="truncated" if isinstance(exc, (zipfile.BadZipFile, EOFError)) else "bad-zip",
                path=path,
            ) from None
        with zf:
            yield zf, fh, file_size


def read_text_members(
    zf: zipfile.ZipFile, fh: IO[bytes], root: str, names: tuple[str, ...], file_size: int, path: str
) -> dict[str, str]:
    """The small text records of an archive (``version``, ``byteorder``...) that exist, keyed by name."""
    out: dict[str, str] = {}
    for name in names:
        try:
            info = zf.getinfo(root + name)
        except KeyError:
            continue
        if info.file_size <= _RECORD_MAX_BYTES:
            out[name] = read_member(zf, fh, info, file_size, path).decode("utf-8", "replace").strip()
    return out


def check_byteorder(records: dict[str, str], path: str) -> str:
    """The archive's ``byteorder`` record (``"little"`` when absent), refused when it is anything else."""
    byteorder = records.get("byteorder", "little")
    if byteorder not in ("little", "big"):
        raise CorruptCheckpointError(
            f"'{path}': the byteorder record says {byteorder[:40]!r}, not 'little' or 'big'. The file is corrupt; "
            "re-download or re-save it.",
            code="bad-record",
            path=path,
        )
    return byteorder


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a torch zip checkpoint's pickle and locate every storage; no tensor bytes are read."""
    with open_archive(path, options, "torch.save file") as (zf, fh, file_size):
        names = zf.namelist()
        root = _find_root(names, path)
        records = read_text_members(zf, fh, root, _RECORDS, file_size, path)
        byteorder = check_byteorder(records, path)
        pkl = zf.getinfo(root + "data.pkl")
        if pkl.file_size > options.limits.max_pickle_bytes:
            raise ResourceLimitError(
                f"'{path}': data.pkl is {pkl.file_size} bytes, over the {options.limits.max_pickle_bytes}-byte "
                "limit. If you trust the file: tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                code="limit-pickle-size",
                path=path,
            )
        data = read_member(zf, fh, pkl, file_size, path)
        where = f"'{path}' member '{pkl.filename}'"
        storages = _Storages(zf, fh, path, root, byteorder, file_size)
        result = run_pickle(data, options, where, persistent_load=storages)
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **records}
    return assemble(path, "torch-zip", result, options, where=where, files=(path,), metadata=metadata)
