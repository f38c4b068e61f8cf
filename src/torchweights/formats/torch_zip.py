"""torch zip files (``torch.save`` since 1.6): ``<root>/data.pkl`` plus one member per storage.

All three generations of format records are read: ``version`` only; ``byteorder`` and
``.data/serialization_id``; ``.format_version`` and ``.storage_alignment``. Any archive root name works.
Storages are located by their zip member's data offset, so nothing but the pickle is read.
"""

from __future__ import annotations

import struct
import zipfile
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CheckpointReadError, CorruptCheckpointError, ResourceLimitError
from ..records import Checkpoint, StorageRef
from ..unpickle import PickledStorage, StorageType
from ._pickled import assemble, run_pickle

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["read"]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_RECORDS = ("version", ".data/version", "byteorder", ".format_version", ".storage_alignment", ".data/serialization_id")


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
        )
    first = min(candidates, key=lambda n: (n.count("/"), names.index(n)))
    return first[: -len("data.pkl")]


def _data_offset(fh: Any, info: zipfile.ZipInfo, path: str) -> int:
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        raise CorruptCheckpointError(f"'{path}': zip member '{info.filename}' is cut off", code="truncated")
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        raise CorruptCheckpointError(
            f"'{path}': zip member '{info.filename}' has no local header where the central directory points",
            code="zip-bad-member",
        )
    return info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]


class _Storages:
    """persistent_load for torch zip files: ``('storage', type, key, location, numel)`` -> PickledStorage."""

    def __init__(self, zf: zipfile.ZipFile, fh: Any, path: str, root: str, byteorder: str, file_size: int) -> None:
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
                f"'{self.path}': unexpected persistent id {pid!r:.80} (expected ('storage', type, key, location, "
                "numel))",
                code="bad-record",
            )
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise CorruptCheckpointError(
                f"'{self.path}': storage {key!r} has type {storage_type!r}, which is not a torch storage class",
                code="bad-record",
            )
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CorruptCheckpointError(f"'{self.path}': malformed storage record {pid!r:.80}", code="bad-record")
        dtype = storage_type.dtype or "uint8"
        nbytes = numel * dtypes.itemsize(dtype)
        previous = self.seen.get(key)
        if previous is not None:
            if previous.dtype != dtype or previous.ref.nbytes != nbytes:
                raise CorruptCheckpointError(
                    f"'{self.path}': storage '{key}' is declared twice with different types or sizes",
                    code="bad-record",
                )
            return previous
        member = f"{self.root}data/{key}"
        try:
            info = self.zf.getinfo(member)
        except KeyError:
            raise CorruptCheckpointError(
                f"'{self.path}': the pickle refers to storage '{key}' but member '{member}' is missing. The archive "
                "is incomplete or was modified; re-download or re-save it.",
                code="missing-storage",
            ) from None
        if info.file_size < nbytes:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' should hold {nbytes} bytes ({numel} x {dtype}) but member "
                f"'{member}' has {info.file_size}. The file is corrupt; re-download or re-save it.",
                code="storage-size",
            )
        offset = _data_offset(self.fh, info, self.path)
        end = offset + (info.compress_size if info.compress_type else nbytes)
        if end > self.file_size:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' ends at byte {end} but the file has {self.file_size} bytes. The "
                "file is truncated; re-download it.",
                code="truncated",
            )
        ref = StorageRef(
            key=key,
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


def _read_records(zf: zipfile.ZipFile, root: str, names: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for record in _RECORDS:
        member = root + record
        if member in names and zf.getinfo(member).file_size <= 4096:
            out[record] = zf.read(member).decode("utf-8", "replace").strip()
    return out


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a torch zip checkpoint's pickle and locate every storage; no tensor bytes are read."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, shared with zipfile
    except OSError as exc:
        raise CheckpointReadError(f"cannot read '{path}': {exc.strerror or exc}", path=path) from None
    with fh:
        fh.seek(0, 2)
        file_size = fh.tell()
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise CorruptCheckpointError(
                f"'{path}' is not a readable zip archive ({exc}). A torch.save file that fails here is usually "
                "truncated; re-download or re-save it.",
                code="truncated",
                path=path,
            ) from None
        with zf:
            names = zf.namelist()
            root = _find_root(names, path)
            records = _read_records(zf, root, set(names))
            byteorder = records.get("byteorder", "little")
            if byteorder not in ("little", "big"):
                raise CorruptCheckpointError(f"'{path}': byteorder record says {byteorder!r}", code="bad-record")
            pkl = zf.getinfo(root + "data.pkl")
            if pkl.file_size > options.limits.max_pickle_bytes:
                raise ResourceLimitError(
                    f"'{path}': data.pkl is {pkl.file_size} bytes, over the {options.limits.max_pickle_bytes}-byte "
                    "limit. If you trust the file: tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                    code="limit-pickle-size",
                )
            try:
                data = zf.read(pkl)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise CorruptCheckpointError(
                    f"'{path}': member '{pkl.filename}' cannot be read ({exc}); the file is corrupt or truncated. "
                    "Re-download or re-save it.",
                    code="bad-member",
                ) from None
            where = f"'{path}' member '{pkl.filename}'"
            storages = _Storages(zf, fh, path, root, byteorder, file_size)
            result = run_pickle(data, options, where, persistent_load=storages)
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **records}
    return assemble(path, "torch-zip", result, options, where=where, files=(path,), metadata=metadata)
