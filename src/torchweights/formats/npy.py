"""NumPy files: ``.npy`` arrays and ``.npz`` archives (``numpy.save``, ``numpy.savez``, ``numpy.savez_compressed``).

Read with ``numpy.load(path, allow_pickle=False)`` semantics, without numpy: the header (a Python dict literal) is
parsed with :func:`ast.literal_eval`, as numpy does, and each array becomes a :class:`TensorRecord` over the bytes
that follow it (C or Fortran order, either byte order). An ``.npy`` file's array is named ``array``; a member
``<key>.npy`` of an ``.npz`` is named by its key, as ``numpy.load(path)[key]``. Object arrays hold a pickle: they
are listed (an inert :class:`~torchweights.unpickle.values.Stub` in ``extras``) and refused by ``tw.load``; dtypes
torch has no equivalent for (strings, structured and datetime dtypes, ``float128``) are refused with the array named.

npz archives go through the checked zip directory (:mod:`._zip`); a compressed member's storage is the whole
inflated member (its CRC-32 is then checked as it is read), with the array starting after the header.
"""

from __future__ import annotations

import ast
import math
import os
import sys
from typing import TYPE_CHECKING, Any

from ..errors import CorruptCheckpointError, UnsupportedCheckpointError
from ..records import Checkpoint, StorageRef, TensorRecord
from ..unpickle.values import Stub
from ._zip import ZipMember

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["MAGIC", "parse_header", "read"]

MAGIC = b"\x93NUMPY"
#: numpy's own bound on a header it will parse (``numpy.lib.format``'s ``max_header_size``).
MAX_HEADER_BYTES = 10_000
_PREFIX = 12  # magic, version, and a header length of at most 4 bytes

#: numpy type code -> torch dtype name (``kind`` + itemsize in bytes).
_DTYPES = {
    "b1": "bool",
    "i1": "int8",
    "i2": "int16",
    "i4": "int32",
    "i8": "int64",
    "u1": "uint8",
    "u2": "uint16",
    "u4": "uint32",
    "u8": "uint64",
    "f2": "float16",
    "f4": "float32",
    "f8": "float64",
    "c8": "complex64",
    "c16": "complex128",
}
_KINDS = {
    "f": "extended-precision floats (float128/longdouble)",
    "c": "extended-precision complex numbers (complex256)",
    "U": "Unicode strings",
    "S": "byte strings",
    "a": "byte strings",
    "V": "raw or structured records",
    "M": "datetimes",
    "m": "time deltas",
    "[": "structured records",
}


def _corrupt(where: str, why: str, path: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{where} is not a valid NumPy array: {why}. The file is corrupt or was crafted; re-download or re-save it.",
        code="bad-header",
        path=path,
    )


def parse_header(head: bytes, where: str, path: str) -> tuple[str, bool, tuple[int, ...], int]:
    """``(descr, fortran_order, shape, data offset)`` from the first bytes of a ``.npy`` array.

    Versions 1.0 (2-byte header length), 2.0 (4-byte) and 3.0 (4-byte, UTF-8 header). ``descr`` is the type string
    (``'<f4'``), or ``'|O'``-style codes, or ``repr`` of a structured descriptor (a list).
    """
    if not head.startswith(MAGIC) or len(head) < 10:
        raise _corrupt(where, "it does not start with the NumPy magic and version", path)
    major = head[6]
    if major not in (1, 2, 3):
        raise _corrupt(where, f"format version {major}.{head[7]} is not one numpy writes (1.0, 2.0, 3.0)", path)
    size_len = 2 if major == 1 else 4
    start = 8 + size_len
    if len(head) < start:
        raise _corrupt(where, "the header is cut short", path)
    length = int.from_bytes(head[8:start], "little")
    if length > MAX_HEADER_BYTES:
        raise _corrupt(where, f"its header claims {length} bytes, more than numpy's limit of {MAX_HEADER_BYTES}", path)
    if len(head) < start + length:
        raise _corrupt(where, f"the {length}-byte header is cut short", path)
    try:
        text = head[start : start + length].decode("utf-8" if major == 3 else "latin-1")
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise _corrupt(where, "its header is not a Python dict literal", path) from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _corrupt(where, "its header is not a dict of exactly 'descr', 'fortran_order' and 'shape'", path)
    shape, fortran, descr = header["shape"], header["fortran_order"], header["descr"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 64:
        raise _corrupt(where, f"its shape {str(shape)[:80]} is not a tuple of non-negative integers", path)
    if type(fortran) is not bool:
        raise _corrupt(where, "its 'fortran_order' is not True or False", path)
    if not isinstance(descr, str):
        descr = repr(descr)[:200]  # a structured dtype: refused by the caller
    return descr, fortran, shape, start + length


def _dtype(descr: str) -> tuple[str | None, str]:
    """``(torch dtype name, byte order)`` for a type string; ``(None, "object")`` for an object array and
    ``(None, why)`` for a dtype no torch tensor can hold."""
    order, code = (descr[0], descr[1:]) if descr[:1] in "<>|=" else ("=", descr)
    if code in ("O", "O4", "O8"):
        return None, "object"
    dtype = _DTYPES.get(code)
    if dtype is None:
        return None, f"{_KINDS.get(code[:1], 'a NumPy type')} (dtype {descr[:80]!r}), which no torch dtype can hold"
    byteorder = {"<": "little", ">": "big", "|": sys.byteorder, "=": sys.byteorder}[order]
    return dtype, byteorder


def _strides(shape: tuple[int, ...], fortran: bool) -> tuple[int, ...]:
    """Element strides as numpy lays the array out (a dimension of size 0 counts as 1, as numpy counts it, so an
    empty array gets the strides ``torch.from_numpy`` gives it)."""
    dims = list(range(len(shape)))
    stride = [0] * len(shape)
    step = 1
    for d in dims if fortran else reversed(dims):
        stride[d] = step
        step *= max(shape[d], 1)
    return tuple(stride)


def _unreadable(name: str, shape: tuple[int, ...], why: str) -> Stub:
    """The inert entry of an array no tensor can hold: an object array (its data is a pickle, which
    ``allow_pickle=False`` never reads), or a dtype torch lacks (``why`` says which)."""
    if why == "object":
        return Stub("numpy.object_array", (name, shape))
    return Stub("numpy.unsupported_array", (name, shape, why))


def _array(
    name: str,
    head: bytes,
    where: str,
    path: str,
    available: int,
    make_ref: Any,
) -> TensorRecord | Stub:
    """One array: its record over ``make_ref(data_offset, nbytes, byteorder, itemsize)``, or an object-array stub."""
    from .. import dtypes

    descr, fortran, shape, data_offset = parse_header(head, where, path)
    dtype, byteorder = _dtype(descr)
    if dtype is None:
        return _unreadable(name, shape, byteorder)
    itemsize = dtypes.itemsize(dtype)
    nbytes = math.prod(shape) * itemsize
    if data_offset + nbytes > available:
        raise CorruptCheckpointError(
            f"{where} is truncated: array {name!r} ({descr}, shape {shape}) needs {nbytes} bytes from byte "
            f"{data_offset}, but only {max(0, available - data_offset)} are there. Re-download or re-save it.",
            code="truncated",
            path=path,
        )
    ref, element_offset = make_ref(data_offset, nbytes, byteorder, itemsize)
    return TensorRecord(
        name=name,
        path=(name,),
        dtype=dtype,
        shape=shape,
        stride=_strides(shape, fortran),
        storage_offset=element_offset,
        storage=ref,
    )


def _read_npy(path: str) -> Checkpoint:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(_PREFIX + MAX_HEADER_BYTES)
    where = f"'{path}'"

    def make_ref(offset: int, nbytes: int, byteorder: str, itemsize: int) -> tuple[StorageRef, int]:
        return StorageRef(key="array", file=path, offset=offset, nbytes=nbytes, byteorder=byteorder), 0

    found = _array("array", head, where, path, size, make_ref)
    return _checkpoint(path, "npy", [found], {"numpy_version": f"{head[6]}.{head[7]}"})


def _member_head(archive: Any, m: ZipMember) -> bytes:
    """The first bytes of a member, enough for any header numpy reads (the whole member, CRC-checked, if small)."""
    return archive.read(m, _PREFIX + MAX_HEADER_BYTES) if m.size > _PREFIX + MAX_HEADER_BYTES else archive.read(m)


def _read_npz(path: str, options: ReadOptions) -> Checkpoint:
    from .torch_zip import open_archive

    found: list[TensorRecord | Stub] = []
    with open_archive(path, options) as archive:
        for m in archive.members():
            if not m.name.endswith(".npy"):
                raise UnsupportedCheckpointError(
                    f"'{path}' is a NumPy .npz archive, but member {m.name!r} is not an array (.npy). Read it "
                    "with numpy.load(path).",
                    code="unsupported-npz-member",
                    path=path,
                )
            name = m.name[: -len(".npy")]
            where = f"'{path}' member {m.name!r}"
            head = _member_head(archive, m)

            def make_ref(
                offset: int, nbytes: int, byteorder: str, itemsize: int, m: ZipMember = m, where: str = where
            ) -> tuple[StorageRef, int]:
                if not m.compress_type:
                    ref = StorageRef(
                        key=m.name,
                        file=path,
                        offset=m.data_offset + offset,
                        nbytes=nbytes,
                        byteorder=byteorder,
                        member=m.name,
                    )
                    return ref, 0
                # Compressed: the storage is the whole inflated member (CRC-32 checked), the array after the header.
                if offset % itemsize or m.size % itemsize:
                    raise UnsupportedCheckpointError(
                        f"{where} is compressed and its array does not start on a whole element after the "
                        f"{offset}-byte header (numpy pads headers to 64 bytes), so tw.load cannot place it. "
                        "Re-save it with numpy.savez_compressed, or load it with numpy.load(path).",
                        code="unsupported-npz-member",
                        path=path,
                    )
                ref = StorageRef(
                    key=m.name,
                    file=path,
                    offset=m.data_offset,
                    nbytes=m.size,
                    byteorder=byteorder,
                    member=m.name,
                    compression=m.compress_type,
                    compressed_size=m.compressed_size,
                    crc32=m.crc32,
                )
                return ref, offset // itemsize

            found.append(_array(name, head, where, path, m.size, make_ref))
    return _checkpoint(path, "npz", found, {"members": len(found)})


def _checkpoint(path: str, fmt: str, found: list[TensorRecord | Stub], metadata: dict[str, Any]) -> Checkpoint:
    records = {r.name: r for r in found if isinstance(r, TensorRecord)}
    extras: dict[str, Any] = {}
    warnings: list[str] = []
    for stub in found:
        if isinstance(stub, Stub):
            name = stub.args[0]
            extras[name] = stub
            if stub.cls == "numpy.object_array":
                warnings.append(
                    f"'{name}' is a NumPy object array: its data is a pickle, which is not read (numpy.load's "
                    "allow_pickle=False); tw.load refuses it"
                )
            else:
                warnings.append(f"'{name}' holds {stub.args[2]}; tw.load refuses it")
    return Checkpoint(
        path=path,
        format=fmt,
        files=(path,),
        records=records,
        extras=extras,
        metadata=metadata,
        warnings=warnings,
    )


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a ``.npy`` file or an ``.npz`` archive into records; no array bytes are read."""
    with open(path, "rb") as fh:
        start = fh.read(len(MAGIC))
    if start == MAGIC:
        return _read_npy(path)
    return _read_npz(path, options)
