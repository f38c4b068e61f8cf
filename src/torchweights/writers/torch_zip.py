"""A streaming writer of plain state-dict ``torch.save`` files, without torch.

The archive holds what ``torch.save`` writes for a dict of tensors, and nothing ``torch.load(weights_only=True)``
would refuse: ``<root>/data.pkl`` (a protocol-2 pickle of ``{name: tensor}`` emitted opcode by opcode here),
``.format_version``, ``.storage_alignment``, ``byteorder`` (``little``), one stored (uncompressed) member
``data/<key>`` per storage with its data aligned to 64 bytes, and ``version``. Tensors are rebuilt with
``torch._utils._rebuild_tensor_v2`` over typed storages (``torch.FloatStorage``...) where the dtype has a storage
class, and with ``_rebuild_tensor_v3`` over ``torch.storage.UntypedStorage`` otherwise (uint16/32/64, fp8...),
as torch itself does. Several tensors may view one storage, with any offset and strides.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import IO

from .. import dtypes
from ..structs import structure
from ..text import quote
from . import write_exactly
from .pickle_ops import Pickler

__all__ = ["Storage", "Tensor", "pickle_state_dict", "pickle_tensor", "write_archive", "write_file"]

_DATA_ALIGNMENT = 64
_DATE = (1980, 1, 1, 0, 0, 0)


@structure(frozen=True)
class Storage:
    """One storage to write: its key (member ``data/<key>``), dtype, size and a callable yielding its bytes."""

    key: str
    dtype: str
    nbytes: int
    chunks: Callable[[], Iterable[bytes | bytearray | memoryview]]


@structure(frozen=True)
class Tensor:
    """One entry of the state dict: a view of ``storage`` (offset and strides in elements)."""

    name: str
    storage: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def pickle_state_dict(tensors: Sequence[Tensor], storages: Sequence[Storage]) -> bytes:
    """The ``data.pkl`` of a ``{name: tensor}`` dict."""
    sizes = {s.key: s for s in storages}
    p = Pickler()
    p.out += b"}"  # EMPTY_DICT
    for start in range(0, len(tensors), 1000):
        p.out += b"("  # MARK
        for t in tensors[start : start + 1000]:
            p.text(t.name)
            _tensor(p, t, sizes[t.storage])
        p.out += b"u"  # SETITEMS
    return p.finish()


def pickle_tensor(tensor: Tensor, storage: Storage) -> bytes:
    """The ``data.pkl`` of one tensor (what ``torch.save(tensor)`` writes)."""
    p = Pickler()
    _tensor(p, tensor, storage)
    return p.finish()


def _tensor(p: Pickler, t: Tensor, storage: Storage) -> None:
    """Emit ``t`` as ``torch.save`` pickles a tensor: ``_rebuild_tensor_v2`` over a typed storage, or ``_v3``."""
    info = dtypes.get(t.dtype)
    v2 = info.storage_class is not None
    p.global_("torch._utils", "_rebuild_tensor_v2" if v2 else "_rebuild_tensor_v3")
    p.out += b"(("  # MARK (args), MARK (persistent id)
    p.text("storage")
    if v2:
        p.global_("torch", info.storage_class or "")
    else:
        p.global_("torch.storage", "UntypedStorage")
    p.text(t.storage)
    p.text("cpu")
    p.integer(storage.nbytes // info.itemsize if v2 else storage.nbytes)
    p.out += b"tQ"  # TUPLE, BINPERSID
    p.integer(t.offset)
    p.ints(t.shape)
    p.ints(t.stride)
    p.out += b"\x89"  # NEWFALSE: requires_grad
    p.ordered_dict()  # backward hooks
    if not v2:
        p.global_("torch", info.name)
    p.out += b"tR"  # TUPLE, REDUCE


def _aligned_info(zf: zipfile.ZipFile, name: str, size: int) -> zipfile.ZipInfo:
    """A stored member whose data will start at a multiple of 64 bytes from the archive's start (padding in its
    local extra field)."""
    info = zipfile.ZipInfo(name, _DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for the local header
    start = zf.fp.tell() if zf.fp is not None else 0
    fixed = 30 + len(name.encode("utf-8")) + (20 if zip64 else 0) + 4  # header, name, zip64 field, our field
    pad = -(start + fixed) % _DATA_ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


class _FromHere:
    """``fh`` with positions counted from where it stood when wrapped: an archive written into a larger file
    (a DCP ``.distcp``) is laid out, and aligned, as if it were a file of its own, as ``torch.save`` does."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.base = fh.tell()

    def tell(self) -> int:
        return self.fh.tell() - self.base

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset + self.base if whence == 0 else offset, whence) - self.base

    def write(self, data: bytes) -> int:
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()

    def seekable(self) -> bool:
        return True


def write_file(fh: IO[bytes], tensors: Sequence[Tensor], storages: Sequence[Storage], root: str = "archive") -> None:
    """Write a ``torch.save``-compatible zip of ``tensors`` over ``storages`` to ``fh`` (seekable).

    Raises:
        WriteError: a storage's source yields more or fewer bytes than declared.
    """
    write_archive(fh, pickle_state_dict(tensors, storages), storages, root)


def write_archive(fh: IO[bytes], data_pkl: bytes, storages: Sequence[Storage], root: str = "archive") -> None:
    """Write a ``torch.save`` zip holding the pickle ``data_pkl`` and ``storages`` to ``fh`` (seekable), from its
    current position (offsets and alignment count from there).

    Raises:
        WriteError: a storage's source yields more or fewer bytes than declared.
    """
    small = {
        ".format_version": b"1",
        ".storage_alignment": str(_DATA_ALIGNMENT).encode(),
        "byteorder": b"little",
    }
    out = _FromHere(fh)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[call-overload]
        zf.writestr(zipfile.ZipInfo(f"{root}/data.pkl", _DATE), data_pkl)
        for name, value in small.items():
            zf.writestr(zipfile.ZipInfo(f"{root}/{name}", _DATE), value)
        for storage in storages:
            info = _aligned_info(zf, f"{root}/data/{storage.key}", storage.nbytes)
            with zf.open(info, "w") as member:
                write_exactly(member.write, storage.chunks(), storage.nbytes, f"storage {quote(storage.key)}")
        zf.writestr(zipfile.ZipInfo(f"{root}/version", _DATE), b"3\n")
