"""Where the bytes of a storage go: :class:`Target` (one destination: a byte range of one storage, landing as it is
in CPU memory, converted into a tensor of any dtype and device, or rebuilt as a view that is not contiguous) and
:class:`Group` (one file storage and every target it feeds), built from ``(record, destination)`` pairs; and
:func:`deliver`, which hands a piece of storage bytes to a target (copying, byte-swapping, casting, or queueing a
host-to-device copy from a pinned scratch buffer). torch is imported inside the functions, never at import time.
"""

from __future__ import annotations

import ctypes
from dataclasses import field
from typing import TYPE_CHECKING

from .. import dtypes
from ..records import StorageRef, TensorRecord
from ..structs import structure

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .scratch import Buffer

__all__ = ["Group", "Target", "deliver", "lands_as_is", "memory_of", "swap_in_place", "target_for"]


def memory_of(raw: torch.Tensor) -> memoryview:
    """A writable memoryview over a contiguous CPU uint8 tensor (kept alive by the caller)."""
    return _memory_at(raw.data_ptr(), raw.numel())


def _memory_at(address: int, nbytes: int) -> memoryview:
    """A writable memoryview over ``nbytes`` of CPU memory at ``address`` (kept alive by the caller)."""
    if nbytes == 0:
        return memoryview(bytearray(0))
    return memoryview((ctypes.c_ubyte * nbytes).from_address(address)).cast("B")


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's bytes, for any dtype (no autograd)."""
    import torch

    t = tensor.detach()
    nbytes = t.numel() * t.element_size()
    out = torch.empty(0, dtype=torch.uint8, device=t.device)
    out.set_(t.untyped_storage(), t.storage_offset() * t.element_size(), (nbytes,), (1,))
    return out


@structure
class Target:
    """Where the bytes ``[start, end)`` of one storage go.

    ``raw`` (with ``mem``) is set when the bytes can land as they are in CPU memory (same dtype, contiguous):
    they are read straight into it, then byte-swapped in place if ``swap`` > 1. Otherwise ``flat`` (contiguous,
    any device and dtype) receives converted pieces; ``record`` + ``dst`` are set for views that are not
    contiguous on either side, rebuilt from a copy of the whole storage.
    """

    start: int
    end: int
    src_dtype: torch.dtype
    itemsize: int
    swap: int
    name: str
    raw: torch.Tensor | None = None
    mem: memoryview | None = None
    flat: torch.Tensor | None = None
    record: TensorRecord | None = None
    dst: torch.Tensor | None = None
    ptr: int = 0  # address of the destination's first byte, when ``mem`` is set

    @property
    def contiguous(self) -> bool:
        return self.mem is not None or self.raw is not None or self.flat is not None

    def byte_dst(self) -> torch.Tensor | None:
        """The destination's bytes as a flat uint8 tensor, when they can land as they are (made on first use:
        plain reads need only ``mem``)."""
        if self.raw is None and self.mem is not None and self.dst is not None:
            self.raw = _raw_bytes(self.dst)
        return self.raw


@structure
class Group:
    """One file storage and every target it feeds (``pending``: requests whose targets are made just in time)."""

    ref: StorageRef
    targets: list[Target] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    #: ``(record, destination, plain)``, plain as :func:`lands_as_is` says (the caller asked torch once)
    pending: list[tuple[TensorRecord, torch.Tensor, bool]] = field(default_factory=list)

    def prepare(self) -> None:
        self.targets += [target_for(record, dst, plain) for record, dst, plain in self.pending]
        self.pending.clear()


def lands_as_is(record: TensorRecord, ref: StorageRef, dst: torch.Tensor) -> bool:
    """Whether ``record``'s bytes can be read straight into ``dst``: a contiguous CPU destination of the record's
    dtype, from a contiguous record of an uncompressed storage (a big-endian file's are byte-swapped in place
    after)."""
    return (
        dst.device.type == "cpu"
        and not ref.compression
        and record.is_contiguous
        and dst.dtype == dtypes.to_torch(record.dtype)
        and dst.is_contiguous()
    )


def target_for(record: TensorRecord, dst: torch.Tensor, plain: bool) -> Target:
    """The target of ``record``'s bytes in ``dst``; ``plain``: :func:`lands_as_is` of the pair."""
    ref = record.storage
    assert ref is not None
    src_dtype = dtypes.to_torch(record.dtype)
    size = record.itemsize
    swap = dtypes.swap_unit(record.dtype) if ref.byteorder == "big" else 1
    start = record.storage_offset * size
    if not plain and not (record.is_contiguous and dst.is_contiguous()):  # a view: rebuilt from its whole storage
        return Target(start, start, src_dtype, size, max(swap, 1), record.name, record=record, dst=dst)
    target = Target(start, start + record.nbytes, src_dtype, size, max(swap, 1), record.name, record=record, dst=dst)
    if plain:
        target.ptr = dst.data_ptr()
        target.mem = _memory_at(target.ptr, record.nbytes)
    else:  # contiguous, converted on the way (a cast, another device, a compressed member)
        target.flat = dst.detach().view(-1)
    return target


def swap_in_place(raw: torch.Tensor, unit: int) -> None:
    rows = raw.view(-1, unit)
    rows.copy_(rows.flip(1))


def deliver(target: Target, a: int, b: int, src: torch.Tensor, buf: Buffer | None) -> None:
    """Give ``target`` its part of the storage bytes ``[a, b)``, held in the uint8 tensor ``src``."""
    lo, hi = max(a, target.start), min(b, target.end)
    if lo >= hi:
        return
    piece = src[lo - a : hi - a]
    raw = target.byte_dst()
    if raw is not None:
        dst = raw[lo - target.start : hi - target.start]
        dst.copy_(piece)
        if target.swap > 1:
            swap_in_place(dst, target.swap)
        return
    assert target.flat is not None
    if target.swap > 1:
        piece = piece.view(-1, target.swap).flip(1).reshape(-1)
        buf = None  # no longer the pinned buffer
    size = target.itemsize
    values = piece.view(target.src_dtype)
    dst = target.flat[(lo - target.start) // size : (hi - target.start) // size]
    if dst.device.type == "cuda" and buf is not None and buf.raw.is_pinned():
        import torch

        dst.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        buf.fence = event
    else:
        dst.copy_(values)
