"""A streaming ``.safetensors`` writer of our own: no torch, no safetensors package.

The file is laid out as the official writer lays it out: an 8-byte little-endian header length, the header JSON
(``__metadata__`` first, then one entry per tensor) padded with spaces to a multiple of 8 bytes, then the tensors'
bytes back to back, largest element size first and by name within one size, so that every tensor starts at a
multiple of its element size (and of 8 bytes from the file's start for 8-byte types). Shapes and dtypes are known
before any byte is read, so the header is written first and each tensor is streamed from its source.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO

from .. import dtypes
from ..errors import WriteError
from ..structs import structure
from ..text import quote
from . import write_exactly

__all__ = ["Entry", "header_bytes", "layout", "write_file"]

#: The header (with its 8-byte length) is padded to a multiple of this, as the official writer does.
ALIGNMENT = 8


@structure(frozen=True)
class Entry:
    """One tensor to write.

    Attributes:
        name: the key in the file.
        dtype: torch dtype name (must have a safetensors code).
        shape: its shape.
        chunks: called once, yields the tensor's logical bytes (C order, little-endian) in pieces.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[bytes | bytearray | memoryview]]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return math.prod(self.shape) * dtypes.itemsize(self.dtype)


def layout(entries: Sequence[Entry]) -> list[Entry]:
    """The order tensors take in the data buffer: largest element size first, then by name."""
    return sorted(entries, key=lambda e: (-dtypes.itemsize(e.dtype), e.name))


def header_bytes(entries: Sequence[Entry], metadata: Mapping[str, str]) -> bytes:
    """The 8-byte length and the space-padded JSON header for ``entries`` in the given (data) order.

    Raises:
        WriteError: a dtype has no safetensors code, or a name or metadata value cannot be encoded as UTF-8.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    begin = 0
    for entry in entries:
        code = dtypes.get(entry.dtype).safetensors
        if code is None:
            raise WriteError(
                f"tensor {quote(entry.name)} has dtype {entry.dtype}, which safetensors cannot store.",
                code="write-failed",
            )
        end = begin + entry.nbytes
        header[entry.name] = {"dtype": code, "shape": list(entry.shape), "data_offsets": [begin, end]}
        begin = end
    try:
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WriteError(
            f"a tensor name or metadata value is not valid Unicode text ({exc.reason} at position {exc.start}), so "
            "it cannot be written into a safetensors header. Rename the tensor or leave it out with select=[...].",
            code="write-failed",
        ) from None
    padded = len(raw) + (-(len(raw) + 8) % ALIGNMENT)
    return struct.pack("<Q", padded) + raw + b" " * (padded - len(raw))


def write_file(fh: IO[bytes], entries: Sequence[Entry], metadata: Mapping[str, str]) -> list[Entry]:
    """Write one safetensors file to ``fh``; returns the entries in the order their bytes were written.

    Raises:
        WriteError: a tensor's source yields more or fewer bytes than its dtype and shape need.
    """
    ordered = layout(entries)
    fh.write(header_bytes(ordered, metadata))
    for entry in ordered:
        write_exactly(fh.write, entry.chunks(), entry.nbytes, f"tensor {quote(entry.name)}")
    return ordered
