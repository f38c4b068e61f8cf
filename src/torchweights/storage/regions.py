"""TEMPORARY stand-in (plain records only) until helper A's regions lands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..records import TensorRecord

__all__ = ["regions"]


def regions(
    record: TensorRecord, offsets: Sequence[int], sizes: Sequence[int]
) -> list[tuple[TensorRecord, tuple[slice, ...]]]:
    """The pieces that hold the box ``[offsets, offsets + sizes)`` of ``record``'s tensor."""
    if len(offsets) != len(record.shape) or any(o < 0 or o + n > d for o, n, d in zip(offsets, sizes, record.shape)):
        raise ValueError(f"box {list(offsets)}+{list(sizes)} is outside {list(record.shape)}")
    if any(n == 0 for n in sizes) and record.shape:
        return []
    moved = record.storage_offset + sum(o * s for o, s in zip(offsets, record.stride))
    sub = replace(record, shape=tuple(sizes), storage_offset=moved)
    return [(sub, tuple(slice(0, n) for n in sizes))]
