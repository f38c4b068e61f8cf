"""Which stored pieces hold a box of a tensor: the reads behind a shard of a sharded model (FSDP2, DTensor) and
behind a tensor stored in pieces (:attr:`TensorRecord.chunks <torchweights.records.TensorRecord>`, a
torch.distributed.checkpoint saved by several ranks).

:func:`regions` answers with records, not bytes: each piece is a narrowed view of the record (or of one chunk's
record) with the same storage and strides, so the read engine (:func:`torchweights.storage.read.fill`) reads only
the bytes of that piece. A box of whole rows (dimension 0) of a C-contiguous record is itself a contiguous record,
read as one byte range. No torch, no reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..records import TensorRecord

__all__ = ["narrow", "regions"]


def narrow(record: TensorRecord, offsets: Sequence[int], sizes: Sequence[int]) -> TensorRecord:
    """``record`` narrowed to the box ``[offsets, offsets + sizes)``: the same storage and strides, the box's
    shape, the storage offset moved to the box's first element (bounds are the caller's to check)."""
    moved = sum(o * s for o, s in zip(offsets, record.stride))
    return replace(record, shape=tuple(sizes), storage_offset=record.storage_offset + moved)


def _check_box(record: TensorRecord, offsets: Sequence[int], sizes: Sequence[int]) -> None:
    shape = record.shape
    if len(offsets) != len(shape) or len(sizes) != len(shape):
        raise ValueError(
            f"tensor {record.name!r} has {len(shape)} dimensions, but the box has {len(offsets)} offsets and "
            f"{len(sizes)} sizes"
        )
    for dim, (o, n, size) in enumerate(zip(offsets, sizes, shape)):
        if type(o) is not int or type(n) is not int or o < 0 or n < 0 or o + n > size:
            raise ValueError(
                f"the box at offsets {list(offsets)} of sizes {list(sizes)} does not fit tensor {record.name!r} of "
                f"shape {list(shape)} (dimension {dim})"
            )
    if record.sparse:
        raise ValueError(f"tensor {record.name!r} is a {record.layout} tensor: it has no boxes of elements")
    if record.quantization is not None and (any(offsets) or tuple(sizes) != shape):
        raise ValueError(f"tensor {record.name!r} is quantized: only the whole tensor can be read, not a box of it")


def regions(
    record: TensorRecord, offsets: Sequence[int], sizes: Sequence[int]
) -> list[tuple[TensorRecord, tuple[slice, ...]]]:
    """The pieces that hold the box ``[offsets, offsets + sizes)`` of ``record``'s (global) tensor.

    Each piece is ``(part, slices)``: ``part`` a record whose elements are exactly one part of the box (a narrowed
    view of ``record``, or of one of its :attr:`~torchweights.records.TensorRecord.chunks`: same storage, shape =
    the part, storage offset moved, same strides), ``slices`` the part's place in a destination of the box's
    shape, so ``fill([(part, dst[slices]) for part, slices in regions(...)])`` fills ``dst``. The parts do not
    overlap and cover the box; an empty box gives ``[]``; a 0-dim tensor's box is ``offsets=sizes=()``.

    Raises:
        ValueError: the box does not fit the tensor (wrong number of dimensions, negative, past a bound), or the
            tensor is sparse, or quantized and the box is not all of it.
    """
    _check_box(record, offsets, sizes)
    if any(n == 0 for n in sizes):
        return []
    if record.chunks is None:
        return [(narrow(record, offsets, sizes), tuple(slice(0, n) for n in sizes))]
    out: list[tuple[TensorRecord, tuple[slice, ...]]] = []
    for at, chunk in record.chunks:
        lo = [max(o, c) for o, c in zip(offsets, at)]
        hi = [min(o + n, c + m) for o, n, c, m in zip(offsets, sizes, at, chunk.shape)]
        if any(b <= a for a, b in zip(lo, hi)):
            continue
        part = narrow(chunk, [a - c for a, c in zip(lo, at)], [b - a for a, b in zip(lo, hi)])
        out.append((part, tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offsets))))
    return out
