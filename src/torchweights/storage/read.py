"""Reading tensor bytes: the public face of the read engine, straight into the memory of the tensors that will hold
them.

Two entry points share one engine:

- :func:`fill` writes checkpoint records into existing tensors (``load_into``'s copy and meta paths): each
  tensor's bytes are read with ``preadv`` directly into its memory, in file order, over a small thread pool, with
  no intermediate state dict and no second copy. What cannot land as it is (a dtype cast, a big-endian file,
  a compressed zip member, a GPU destination, bytes read only for the CRC check) goes through bounded scratch
  buffers (:class:`IOSettings.scratch_bytes <torchweights.storage.files.IOSettings>`, 64 MiB by default, shared by the
  threads; pinned when a CUDA tensor is filled, so host-to-device copies overlap the next reads). Views that are
  not contiguous are rebuilt from a copy of their storage, never from a copy of the checkpoint.
- :func:`materialize` builds new tensors (``tw.load``), one storage per file storage, so views and tied weights
  share memory exactly as they were saved; with ``mmap=True`` they are views of a private mapping of the file.

Integrity: a zip member records the CRC-32 of its bytes (``StorageRef.crc32``). Whenever a whole storage is read
its CRC is computed and compared; a mismatch is a :class:`~torchweights.errors.CorruptCheckpointError` with code
``bad-crc`` naming the member and its tensors. ``check_crc=False`` skips it for trusted files.

Where each part lives (every name in ``__all__`` is importable from here, as before the split):

- this module: the entry points :func:`fill`, :func:`materialize`, :func:`read_storage_bytes` and
  :func:`read_byte_range` (bytes of a storage without torch, for ``convert``, ``diff`` and ``verify``);
- :mod:`torchweights.storage.results`: :class:`CrcMismatch`, :class:`FillResult` and :func:`crc_error` (re-exported
here);
- :mod:`torchweights.storage.engine`: the read engine: destinations, scratch buffers, the threaded and vectored reads,
  the CRC checks, inflating zip members;
- :mod:`torchweights.storage.mapping`: :func:`mapped_tensors` (re-exported here), the private mappings behind
  ``mmap=True``;
- :mod:`torchweights.storage.tensors`: tensors built from records (views, quantized tensors) and their checks;
- :mod:`torchweights.storage.files`: the file-level pieces, :class:`IOSettings` and :func:`io_settings` (re-exported
here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CorruptCheckpointError, RuleError, UnsupportedCheckpointError
from ..records import StorageRef, TensorRecord
from ..text import quote
from .contents import swap_unit
from .engine import Engine, Group, Target, member_pieces, memory_of, read_member
from .files import IOSettings, crc32, current_settings, io_settings, open_fd, read_exact
from .mapping import Mapper, mapped_tensors
from .results import CrcMismatch, FillResult, crc_error, not_whole_elements, storage_label
from .stamps import check_unchanged
from .tensors import (
    apply_flags_in_place,
    build_sparse,
    build_tensor,
    check_record_view,
    device_resolver,
    needs_flags,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CrcMismatch",
    "FillResult",
    "IOSettings",
    "crc_error",
    "fill",
    "io_settings",
    "mapped_tensors",
    "materialize",
    "read_byte_range",
    "read_storage_bytes",
    "storage_crc",
]


# --------------------------------------------------------------------------------------------------------------
# fill: records into existing tensors
# --------------------------------------------------------------------------------------------------------------


def _check_fits(record: TensorRecord, ref: StorageRef) -> None:
    """Refuse a record whose elements reach past its storage (readers check this; a crafted record must not
    make a read run into the next storage)."""
    if not record.numel:
        return
    last = record.storage_offset + sum((n - 1) * s for n, s in zip(record.shape, record.stride))
    if (last + 1) * record.itemsize > ref.nbytes:
        raise CorruptCheckpointError(
            f"tensor {quote(record.name)} (size {record.shape}, stride {record.stride}, offset "
            f"{record.storage_offset}) reaches past the {ref.nbytes} bytes of its {storage_label(ref)}. "
            "The file is corrupt or "
            "was crafted; re-download or re-save it.",
            code="bad-record",
            path=ref.file,
        )


def fill(
    requests: Iterable[tuple[TensorRecord, torch.Tensor]],
    *,
    check_crc: bool = True,
    settings: IOSettings | None = None,
) -> FillResult:
    """Read each record's bytes into its destination tensor (same number of elements; any dtype and device).

    Contiguous CPU destinations of the record's dtype receive the bytes straight from the file; everything else
    goes through bounded scratch buffers (see the module docstring). CRC mismatches do not stop the reads: they
    are all returned in :attr:`FillResult.bad_crc`, for the caller to decide (see :func:`crc_error`).

    Args:
        requests: ``(record, destination)`` pairs; records without storage or elements are skipped.
        check_crc: compare every fully read storage with the CRC-32 its zip member records.
        settings: I/O settings; default: those of the innermost :func:`io_settings` block.

    Raises:
        CorruptCheckpointError: a record does not fit its storage, or the file is truncated or damaged.
        CheckpointReadError: the operating system failed a read.
    """
    settings = settings or current_settings()
    groups: dict[tuple[str, str], Group] = {}
    cuda = False
    torch_work = False
    flagged: list[tuple[TensorRecord, torch.Tensor]] = []
    written: list[torch.Tensor] = []
    for record, dst in requests:
        ref = record.storage
        if record.sparse:
            raise UnsupportedCheckpointError(
                f"tensor {quote(record.name)} is a {record.layout} tensor, which cannot be read into a dense "
                "destination. Load it with tw.load(path) (it comes back sparse), or skip it.",
                code="unsupported-sparse",
                path=record.parts[0].storage.file if record.parts and record.parts[0].storage else None,
            )
        if ref is None or record.numel == 0:
            continue
        if needs_flags(record):
            flagged.append((record, dst))
        check_record_view(record)
        _check_fits(record, ref)
        if dst.numel() != record.numel:
            raise ValueError(f"{record.name}: destination has {dst.numel()} elements, the record {record.numel}")
        group = groups.get((ref.file, ref.key))
        if group is None:
            group = groups[(ref.file, ref.key)] = Group(ref)
        elif not torch_work:
            torch_work = True  # a storage feeding several tensors: copies between them
        group.pending.append((record, dst))
        group.names.append(record.name)
        written.append(dst)
        device = dst.device.type
        cuda = cuda or device == "cuda"
        if not torch_work:
            torch_work = (
                device != "cpu"
                or ref.compression != 0
                or (ref.byteorder == "big" and record.itemsize > 1)
                or dst.dtype != dtypes.to_torch(record.dtype)
                or not record.is_contiguous
                or not dst.is_contiguous()
            )
    ordered = sorted(groups.values(), key=lambda g: (g.ref.file, g.ref.offset))
    try:
        result = Engine(ordered, check_crc, settings, cuda=cuda, torch_work=torch_work or not settings.direct).run()
    finally:
        # The bytes were written through raw pointers, which autograd cannot see: bump each destination's version
        # counter as an in-place torch op would, so a graph that saved one of them raises at backward() instead
        # of running with the new values (also after a failed read: some bytes may have been written).
        _written(written)
    for record, dst in flagged:
        apply_flags_in_place(record, dst)  # the destination holds the values, not the stored ones
    return result


def _written(tensors: list[torch.Tensor]) -> None:
    """Tell autograd that ``tensors`` were modified in place (one call for all of them)."""
    from torch.autograd.graph import increment_version

    if tensors:
        increment_version(tensors)


# --------------------------------------------------------------------------------------------------------------
# materialize: new tensors (tw.load)
# --------------------------------------------------------------------------------------------------------------


def read_storage_bytes(ref: StorageRef, files: object = None, *, check_crc: bool = True) -> bytearray:
    """Read one storage's bytes (inflating a compressed zip member) into a new writable buffer.

    The bytes are compared with the CRC-32 their zip member records (``bad-crc`` on mismatch); pass
    ``check_crc=False`` for a trusted file, or for a narrowed ``ref`` (a byte range of a storage, whose bytes the
    member's CRC does not describe). ``files`` is accepted for compatibility and unused.
    """
    import torch

    out = bytearray(ref.nbytes)
    if ref.nbytes:
        view = torch.frombuffer(out, dtype=torch.uint8)
        target = Target(0, ref.nbytes, torch.uint8, 1, 1, ref.key, raw=view, mem=memoryview(out), ptr=view.data_ptr())
        if ref.compression:
            target.mem = None
        result = Engine([Group(ref, [target], [ref.key])], check_crc, current_settings()).run()
        if result.bad_crc:
            raise crc_error(result.bad_crc, "Nothing was loaded.")
    return out


def materialize(
    records: Iterable[TensorRecord],
    *,
    map_location: Any = "cpu",
    check_crc: bool = True,
    mmap: bool = False,
) -> dict[str, torch.Tensor]:
    """Read the bytes of every record into tensors, one read per storage, keeping shared storages shared.

    Args:
        records: the records to load.
        map_location: target device (``"cpu"``, ``"cuda:0"``, ``torch.device``), a mapping from saved location to
            target, a callable as ``torch.load`` takes it (``map_location(storage, location)``; see
            :func:`torchweights.storage.tensors.device_resolver`), or None to keep the saved location.
        check_crc: compare every storage with the CRC-32 its zip member records (``bad-crc`` on mismatch).
        mmap: CPU tensors as views of a private mapping of the file where possible (see :func:`mapped_tensors`).

    Returns:
        ``{record.name: tensor}`` in the order of ``records``.
    """
    import torch

    records = list(records)
    if not records:
        return {}
    reads = [part for r in records for part in (r.parts or (r,))]  # a sparse tensor: its components
    first: dict[tuple[str, str], TensorRecord] = {}
    names: dict[tuple[str, str], list[str]] = {}
    for r in reads:
        if r.storage is not None:
            key = (r.storage.file, r.storage.key)
            first.setdefault(key, r)
            names.setdefault(key, []).append(r.name)
    storages: dict[tuple[str, str], tuple[torch.UntypedStorage, int]] = {}
    groups: list[Group] = []
    mapper = Mapper() if mmap else None
    resolve = device_resolver(map_location)
    for key, record in sorted(first.items(), key=lambda kv: (kv[0][0], kv[1].storage.offset if kv[1].storage else 0)):
        ref = record.storage
        assert ref is not None
        unit = swap_unit(record.dtype)
        device = resolve(ref.location)
        if mapper is not None:
            if torch.device(device).type != "cpu":
                raise RuleError(
                    f"mmap=True maps the file into CPU memory, so it cannot place tensors on {quote(str(device))}. "
                    "Pass map_location='cpu' with mmap=True, or leave mmap off to read onto the device.",
                    code="bad-rule",
                )
            mapped = mapper.storage(ref, record.itemsize, unit)
            if mapped is not None:
                storages[key] = (mapped, 0)
                continue
        buf = torch.empty(ref.nbytes, dtype=torch.uint8, device=device)
        storages[key] = (buf.untyped_storage(), 0)
        if not ref.nbytes:
            continue
        swap = unit if ref.byteorder == "big" else 1
        if ref.byteorder == "big" and unit > 1 and ref.nbytes % unit:
            raise not_whole_elements(ref, unit)
        target = Target(0, ref.nbytes, torch.uint8, 1, swap, record.name)
        if buf.device.type == "cpu" and not ref.compression:
            target.raw = buf
            target.mem = memory_of(buf)
            target.ptr = buf.data_ptr()
        else:
            target.flat = buf
        groups.append(Group(ref, [target], names[key]))
    settings = current_settings()
    cuda = any(t.flat is not None and t.flat.device.type == "cuda" for g in groups for t in g.targets)
    torch_work = not settings.direct or any(t.mem is None or t.swap > 1 for g in groups for t in g.targets)
    result = Engine(groups, check_crc, settings, cuda=cuda, torch_work=torch_work).run()
    bad = list(result.bad_crc)
    if mapper is not None and check_crc:
        bad += mapper.check((r.storage for r in first.values() if r.storage is not None), names)
    if bad:
        raise crc_error(bad, "Nothing was loaded.")
    built: dict[str, torch.Tensor] = {}
    for record in reads:
        ref = record.storage
        if ref is None:
            built[record.name] = build_tensor(record, None)
        else:
            storage, base = storages[(ref.file, ref.key)]
            built[record.name] = build_tensor(record, storage, base)
    return {r.name: build_sparse(r, built) if r.sparse else built[r.name] for r in records}


# --------------------------------------------------------------------------------------------------------------
# Byte ranges without torch (for convert, diff and verify: torchweights/_bytes.py)
# --------------------------------------------------------------------------------------------------------------

#: Most bytes :func:`storage_crc` holds at once.
_CRC_PIECE = 16 << 20


def storage_crc(ref: StorageRef) -> int:
    """The CRC-32 of one whole storage as decoded (a compressed member inflated), streamed through one buffer of at
    most 16 MiB, without torch; compare it with ``ref.crc32``.

    Raises:
        CorruptCheckpointError, CheckpointReadError: the bytes cannot be read.
    """
    value = 0
    if ref.nbytes:
        mem = memoryview(bytearray(min(ref.nbytes, _CRC_PIECE)))
        for n in member_pieces(ref, mem):
            value = crc32(mem[:n], value)
    return value


def read_byte_range(ref: StorageRef, start: int, end: int) -> bytearray:
    """Bytes ``[start, end)`` of one storage as stored (no byte swap, no CRC check), without importing torch.

    The file is refused (``file-changed``) when it is not the one the checkpoint was opened from.

    A stored member or plain file is read with one positioned read of exactly that range; a compressed member is
    inflated up to ``end``.

    Raises:
        ValueError: the range is not inside the storage.
        CorruptCheckpointError, CheckpointReadError: the bytes cannot be read.
    """
    if not 0 <= start <= end <= ref.nbytes:
        raise ValueError(f"byte range [{start}, {end}) is outside storage {ref.key!r} of {ref.nbytes} bytes")
    if ref.compression:
        return bytearray(read_member(ref, end)[start:end])
    out = bytearray(end - start)
    if out:
        fd = open_fd(ref.file)
        try:
            check_unchanged(fd, ref)
            read_exact(fd, memoryview(out), ref.offset + start, ref.file, f"storage {quote(ref.key)}")
        finally:
            os.close(fd)
    return out
