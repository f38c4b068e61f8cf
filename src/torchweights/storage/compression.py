"""Decoding compressed zip members, bounded: raw deflate inflated piece by piece into caller memory
(:func:`inflate`, for tensor bytes), and the first bytes of a member of any method zip readers meet, stored,
deflate, bzip2 or lzma (:func:`decode`, for pickles, source and byte ranges). Works on an open file and byte
offsets; what a member is and where it lives is :mod:`torchweights.formats._zip`'s to say.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import IO, Any

from ..errors import CorruptCheckpointError, pass_through

__all__ = ["METHODS", "decode", "inflate"]

#: Zip compression methods by number (those :func:`decode` reads).
METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}


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


def decode(fh: IO[bytes], method: int, offset: int, compressed_size: int, want: int, label: str) -> bytes:
    """The first ``want`` bytes of a member's content (inflated when compressed), read from ``fh``: the member's
    data starts at ``offset`` and takes ``compressed_size`` bytes; ``label`` names it in errors (quoted).

    Stored and deflated members (all torch writes) are read here, deflate through :func:`inflate`; bzip2 and lzma
    members, which only other tools write, through :mod:`bz2` and :mod:`lzma`. The CRC is the caller's to check.

    Raises:
        CorruptCheckpointError: the member cannot be read or inflated (code ``bad-member``, ``truncated`` or
            ``zip-compression``).
    """
    if method == 0:
        fh.seek(offset)
        data = fh.read(want)
    elif method == 8:
        out = bytearray(want)
        try:
            for _ in inflate(fh, offset, compressed_size, want, memoryview(out)):
                pass  # one piece: the buffer holds all ``want`` bytes
        except zlib.error as exc:
            raise CorruptCheckpointError(f"member {label} does not inflate: {exc}", code="bad-member") from None
        except EOFError as exc:
            raise CorruptCheckpointError(f"member {label} is cut short: {exc}", code="truncated") from None
        data = bytes(out)
    elif method in (12, 14):
        data = _decode_other(fh, method, offset, offset + compressed_size, want, label)
    else:
        raise CorruptCheckpointError(
            f"member {label} uses {METHODS.get(method, method)} compression, which no zip reader here supports; "
            "only stored, deflated, bzip2 and lzma members are read",
            code="zip-compression",
        )
    if len(data) != want:
        raise CorruptCheckpointError(f"member {label} holds {len(data)} bytes, {want} expected", code="truncated")
    return data


def _decompressor(fh: IO[bytes], method: int, offset: int, label: str) -> tuple[Any, int]:
    """A decompressor for a bzip2 or lzma member, and where its stream starts (lzma members open with a header)."""
    import bz2
    import lzma

    if method == 12:
        return bz2.BZ2Decompressor(), offset
    # zip's lzma: version (2 bytes), properties size (2 bytes), LZMA1 properties (5 bytes), then the raw stream
    fh.seek(offset)
    head = fh.read(4)
    size = int.from_bytes(head[2:4], "little") if len(head) == 4 else 0
    props = fh.read(size) if size == 5 else b""
    if len(props) != 5 or props[0] >= 9 * 5 * 5:
        raise CorruptCheckpointError(f"member {label} has no valid lzma header", code="bad-member")
    lc, rest = props[0] % 9, props[0] // 9
    dict_size = int.from_bytes(props[1:5], "little")
    filters = [{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5, "dict_size": dict_size}]
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters), offset + 9


def _decode_other(fh: IO[bytes], method: int, offset: int, end: int, want: int, label: str) -> bytes:
    """The first ``want`` bytes of a bzip2 or lzma member (never written by torch), inflated in bounded steps."""
    import lzma

    try:
        decompressor, start = _decompressor(fh, method, offset, label)
        out = bytearray()
        fh.seek(start)
        remaining = end - start
        while len(out) < want:
            if decompressor.needs_input:
                if remaining <= 0:
                    break
                piece = fh.read(min(1 << 20, remaining))
                if not piece:
                    break
                remaining -= len(piece)
            else:
                piece = b""
            out += decompressor.decompress(piece, max_length=want - len(out))
            if decompressor.eof:
                break
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        pass_through(exc)  # the member's own header check
        raise CorruptCheckpointError(
            f"member {label} does not inflate: {type(exc).__name__}: {exc}", code="bad-member"
        ) from None
    return bytes(out)
