"""A tensor's logical contents as little-endian bytes in C order, read in bounded chunks, without torch.

``convert``, ``diff`` and ``verify`` need the bytes a tensor *means* (its elements in row-major order), not the bytes
of its storage. All reading goes through :func:`torchweights.storage.raw.read_byte_range` (only the byte range
the tensor spans, in chunks of at most :data:`CHUNK_BYTES`), so peak memory is one chunk for contiguous tensors and
one view span for strided views, never the checkpoint.

Strided views are gathered in pure Python with strided :class:`memoryview` slices over the innermost dimension
(after dropping size-1 dimensions and merging dimensions that are contiguous with each other), so a transposed
matrix costs one slice per row; torch is used only for casts. Big-endian storages are byte-swapped with
:mod:`array`.

A tensor stored in pieces (:attr:`TensorRecord.chunks <torchweights.records.TensorRecord>`, a DCP folder saved by
several ranks) comes piece after piece when the pieces split it only along dimension 0, else one band of rows at a
time assembled from the pieces that cross it: bounded memory either way.

Integrity: a storage whose zip member records a CRC-32 is checked before its last piece is handed out (``bad-crc``),
as ``tw.load`` checks it: on the way when the tensor spans the whole storage, else by one streamed pass over the
member first (its CRC covers bytes outside the tensor too). So ``convert`` cannot write, nor ``diff`` compare,
bytes ``tw.load`` would refuse.
"""

from __future__ import annotations

import array
import itertools
import math
from collections.abc import Iterator
from typing import Literal

from .. import dtypes
from ..records import StorageRef, TensorRecord
from .crc import crc32
from .raw import read_byte_range, storage_crc
from .regions import regions
from .results import CrcMismatch, crc_error

__all__ = ["CHUNK_BYTES", "logical_bytes", "logical_chunks", "span", "to_little_endian"]

#: Largest piece read at once for a contiguous tensor (a multiple of every element size).
CHUNK_BYTES = 16 << 20

_FORMATS: dict[int, Literal["B", "H", "I", "Q"]] = {1: "B", 2: "H", 4: "I", 8: "Q"}
_ARRAY_CODES = {2: "H", 4: "I", 8: "Q"}


def to_little_endian(data: bytearray, ref: StorageRef, dtype: str) -> bytearray:
    """``data`` (whole elements of ``dtype`` from storage ``ref``) in little-endian order, swapped in place."""
    unit = dtypes.swap_unit(dtype)
    if ref.byteorder != "big" or unit == 1 or not data:
        return data
    code = _ARRAY_CODES.get(unit)
    if code is None or array.array(code).itemsize != unit:  # pragma: no cover - exotic platforms
        view = memoryview(data)
        for i in range(0, len(data), unit):
            view[i : i + unit] = bytes(reversed(view[i : i + unit]))
        return data
    values = array.array(code)
    values.frombytes(data)
    values.byteswap()  # reverses the bytes of every unit, whatever the machine's own order
    data[:] = values.tobytes()
    return data


def span(record: TensorRecord) -> tuple[int, int]:
    """``(first, end)`` byte offsets, relative to the storage, of the bytes ``record``'s elements occupy."""
    size = record.itemsize
    first = record.storage_offset * size
    if record.numel == 0:
        return first, first
    last = record.storage_offset + sum((n - 1) * s for n, s in zip(record.shape, record.stride))
    return first, (last + 1) * size


def _layout(record: TensorRecord) -> tuple[list[int], list[int], int]:
    """Shape and strides (in elements of ``_FORMATS``-sized units) with size-1 dimensions dropped and mergeable
    dimensions merged, and the unit size."""
    size = record.itemsize
    shape, stride = list(record.shape), list(record.stride)
    unit = size
    if size not in _FORMATS:  # complex128 and other 16-byte elements: gather them as pairs of 8-byte units
        parts = size // 8
        shape, stride, unit = [*shape, parts], [s * parts for s in stride] + [1], 8
    dims = [(n, s) for n, s in zip(shape, stride) if n != 1]
    merged: list[tuple[int, int]] = []
    for n, s in dims:
        if merged and merged[-1][1] == s * n:
            merged[-1] = (merged[-1][0] * n, s)
        else:
            merged.append((n, s))
    if not merged:
        merged = [(1, 1)]
    return [n for n, _ in merged], [s for _, s in merged], unit


#: Outer iterations of the pure-Python gather above which torch (when installed) gathers instead.
_TORCH_GATHER_ABOVE = 1 << 16


def _gather(buf: bytearray, record: TensorRecord) -> bytearray:
    """The elements of a strided view, in C order, from ``buf`` (little-endian storage bytes starting at the
    view's first element)."""
    shape, stride, unit = _layout(record)
    outer_count = math.prod(shape[:-1])
    if outer_count > _TORCH_GATHER_ABOVE:
        gathered = _torch_gather(buf, record)
        if gathered is not None:
            return gathered
    fmt = _FORMATS[unit]
    src = memoryview(buf).cast(fmt)
    out = bytearray(record.numel * record.itemsize)
    dst = memoryview(out).cast(fmt)
    inner_n, inner_s = shape[-1], stride[-1]
    pos = 0
    for index in itertools.product(*(range(n) for n in shape[:-1])):
        start = sum(i * s for i, s in zip(index, stride))
        if inner_s:
            dst[pos : pos + inner_n] = src[start : start + (inner_n - 1) * inner_s + 1 : inner_s]
        else:  # a broadcast (expanded) dimension: one element repeated
            dst[pos : pos + inner_n] = memoryview(src[start : start + 1].tobytes() * inner_n).cast(fmt)
        pos += inner_n
    return out


def _torch_gather(buf: bytearray, record: TensorRecord) -> bytearray | None:
    """The same gather done by torch, for views with very many rows; None when torch is not installed."""
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        return None
    raw = torch.frombuffer(buf, dtype=torch.uint8)
    view = torch.as_strided(raw.view(dtypes.to_torch(record.dtype)), record.shape, record.stride, 0)
    out = bytearray(record.numel * record.itemsize)
    torch.frombuffer(out, dtype=torch.uint8).view(view.dtype).view(view.shape).copy_(view)
    return out


def _check(ref: StorageRef, value: int, record: TensorRecord) -> None:
    """Raise ``bad-crc`` when ``value`` is not the CRC-32 ``ref``'s zip member records."""
    if ref.crc32 is not None and value != ref.crc32:
        raise crc_error(
            [CrcMismatch(ref, ref.crc32, value, (record.name,))],
            "Nothing was written or compared from it.",
            "If you trust the file as it is, tw.load(path, check_crc=False) reads it anyway.",
        )


def logical_chunks(
    record: TensorRecord, chunk_bytes: int = CHUNK_BYTES, *, check_crc: bool = True
) -> Iterator[bytearray]:
    """The elements of ``record`` in C order as little-endian bytes, in pieces of whole elements.

    Contiguous tensors come in pieces of at most ``chunk_bytes``; a strided view comes as one gathered piece (its
    span is read once). Nothing is yielded for an empty tensor. With ``check_crc`` (default) the storage's bytes
    are compared with the CRC-32 its zip member records before the last piece is yielded (see the module
    docstring).

    Raises:
        ValueError: the record has no storage (a meta tensor saved without data).
        CorruptCheckpointError: ``bad-crc``: the storage does not match its CRC-32.
        TorchWeightsError: the bytes cannot be read (see :func:`torchweights.storage.raw.read_byte_range`).
    """
    if record.chunks is not None:
        yield from _pieced(record, record.chunks, chunk_bytes, check_crc)
        return
    ref = record.storage
    if ref is None:
        raise ValueError(f"tensor {record.name!r} was saved without data (meta device)")
    if record.numel == 0:
        return
    first, end = span(record)
    crc = check_crc and ref.crc32 is not None
    if crc and (first, end) != (0, ref.nbytes):  # the CRC covers bytes outside the tensor: one pass over them all
        _check(ref, storage_crc(ref), record)
        crc = False
    if not record.is_contiguous or ref.compression:  # one read (one inflation) of the span
        data = read_byte_range(ref, first, end)
        if crc:
            _check(ref, crc32(memoryview(data)), record)
        if not record.is_contiguous:
            yield _gather(to_little_endian(data, ref, record.dtype), record)
            return
        step = max(record.itemsize, chunk_bytes - chunk_bytes % record.itemsize)
        for at in range(0, len(data), step):
            yield to_little_endian(data[at : at + step], ref, record.dtype)
        return
    size = record.itemsize
    step = max(size, chunk_bytes - chunk_bytes % size)
    value = 0
    for at in range(first, end, step):
        piece = read_byte_range(ref, at, min(end, at + step))
        if crc:
            value = crc32(memoryview(piece), value)
            if at + step >= end:
                _check(ref, value, record)
        yield to_little_endian(piece, ref, record.dtype)


def _pieced(
    record: TensorRecord,
    chunks: tuple[tuple[tuple[int, ...], TensorRecord], ...],
    chunk_bytes: int,
    check_crc: bool,
) -> Iterator[bytearray]:
    """:func:`logical_chunks` of a tensor stored in pieces: each piece in turn when they split it only along
    dimension 0 (whole rows), else one band of rows at a time assembled from the pieces that cross it (at most
    ``chunk_bytes`` of rows, at least one row), each piece's storage CRC-checked once first."""
    if record.numel == 0:
        return
    shape = record.shape
    if all(not any(at[1:]) and piece.shape[1:] == shape[1:] for at, piece in chunks):
        for _, piece in sorted(chunks, key=lambda c: c[0]):
            yield from logical_chunks(piece, chunk_bytes, check_crc=check_crc)
        return
    if check_crc:
        for _, piece in chunks:
            ref = piece.storage
            if ref is not None and ref.crc32 is not None and piece.numel:
                _check(ref, storage_crc(ref), piece)
    row = math.prod(shape[1:]) * record.itemsize
    rows = max(1, chunk_bytes // max(row, 1))
    for start in range(0, shape[0], rows):
        count = min(rows, shape[0] - start)
        band = bytearray(count * row)
        box = (start, *(0,) * (len(shape) - 1))
        for part, slices in regions(record, box, (count, *shape[1:])):
            _place(band, (count, *shape[1:]), logical_bytes(part, check_crc=False), slices, record.itemsize)
        yield band


def _place(out: bytearray, shape: tuple[int, ...], data: bytearray, slices: tuple[slice, ...], itemsize: int) -> None:
    """Copy ``data`` (a box's elements in C order) into ``out`` (a C-order tensor of ``shape``) at ``slices``, one
    run of contiguous elements at a time."""
    sizes = [s.stop - s.start for s in slices]
    strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
    inner = len(shape) - 1  # the dimensions from ``inner`` on are copied as one run
    while inner > 0 and sizes[inner] == shape[inner]:
        inner -= 1
    run = math.prod(sizes[inner:]) * itemsize
    src = memoryview(data)
    dst = memoryview(out)
    at = 0
    for index in itertools.product(*(range(n) for n in sizes[:inner])):
        first = sum((s.start + i) * k for s, i, k in zip(slices, index, strides))
        first += slices[inner].start * strides[inner]
        dst[first * itemsize : first * itemsize + run] = src[at : at + run]
        at += run


def logical_bytes(record: TensorRecord, *, check_crc: bool = True) -> bytearray:
    """All of :func:`logical_chunks` in one buffer (for small tensors and tests)."""
    out = bytearray()
    for piece in logical_chunks(record, check_crc=check_crc):
        out += piece
    return out
