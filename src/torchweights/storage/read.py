"""Reading tensor bytes: the entry points of the read engine, straight into the memory of the tensors that will
hold them.

Two entry points share one engine (:mod:`torchweights.storage.engine`):

- :func:`fill` writes checkpoint records into existing tensors (``load_into``'s copy and meta paths): each
  tensor's bytes are read with ``preadv`` directly into its memory, in file order, over a small thread pool, with
  no intermediate state dict and no second copy. What cannot land as it is (a dtype cast, a big-endian file,
  a compressed zip member, a GPU destination, bytes read only for the CRC check) goes through bounded scratch
  buffers (:class:`IOSettings.scratch_bytes <torchweights.storage.settings.IOSettings>`, 64 MiB by default, shared
  by the threads; pinned when a CUDA tensor is filled, so host-to-device copies overlap the next reads). Views that
  are not contiguous are rebuilt from a copy of their storage, never from a copy of the checkpoint.
- :func:`materialize` builds new tensors (``tw.load``), one storage per file storage, so views and tied weights
  share memory exactly as they were saved; with ``mmap=True`` they are views of a private mapping of the file
  (:mod:`torchweights.storage.mapping`). A tensor stored in pieces (:attr:`TensorRecord.chunks
  <torchweights.records.TensorRecord>`) becomes one new contiguous tensor, read (not mapped) piece by piece.

Integrity: a zip member records the CRC-32 of its bytes (``StorageRef.crc32``). Whenever a whole storage is read
its CRC is computed and compared; a mismatch is a :class:`~torchweights.errors.CorruptCheckpointError` with code
``bad-crc`` naming the member and its tensors. ``check_crc=False`` skips it for trusted files.

A storage's bytes without torch (for ``convert``, ``diff``, ``verify`` and ``scan``) are
:mod:`torchweights.storage.raw`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CorruptCheckpointError, RuleError, UnsupportedCheckpointError
from ..records import StorageRef, TensorRecord
from ..text import quote
from .engine import Engine
from .prefault import fresh
from .results import FillResult, crc_error, not_whole_elements, storage_label
from .settings import IOSettings, current_settings
from .targets import Group, Target, lands_as_is, memory_of
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

__all__ = ["fill", "materialize"]


# --------------------------------------------------------------------------------------------------------------
# fill: records into existing tensors
# --------------------------------------------------------------------------------------------------------------


def _check_fits(record: TensorRecord, ref: StorageRef) -> None:
    """Refuse a record whose elements reach past its storage (readers check this; a crafted record must not
    make a read run into the next storage)."""
    numel = record.numel
    if not numel:
        return
    if record.is_contiguous:
        last = record.storage_offset + numel - 1
    else:
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
    goes through bounded scratch buffers (see the module docstring). A contiguous record bound for a destination
    that is not contiguous (a slice of a bigger tensor, as :func:`torchweights.storage.regions.regions` gives
    them) is read into a scratch tensor of its own size, then copied. A tensor stored in pieces
    (:attr:`TensorRecord.chunks`) is read piece by piece into its slices of the destination. CRC mismatches do
    not stop the reads: they are all returned in :attr:`FillResult.bad_crc`, for the caller to decide (see
    :func:`crc_error`).

    Args:
        requests: ``(record, destination)`` pairs; records without data or elements are skipped.
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
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []  # (scratch, destination): copied once all is read
    for record, dst in _pieces(requests):
        ref = record.storage
        if record.sparse:
            raise UnsupportedCheckpointError(
                f"tensor {quote(record.name)} is a {record.layout} tensor, which cannot be read into a dense "
                "destination. Load it with tw.load(path) (it comes back sparse), or skip it.",
                code="unsupported-sparse",
                path=record.parts[0].storage.file if record.parts and record.parts[0].storage else None,
            )
        numel = record.numel
        if ref is None or numel == 0:
            continue
        if needs_flags(record):
            flagged.append((record, dst))
        check_record_view(record)
        _check_fits(record, ref)
        if dst.numel() != numel:
            raise ValueError(f"{record.name}: destination has {dst.numel()} elements, the record {numel}")
        written.append(dst)
        if record.is_contiguous and not dst.is_contiguous():  # a slice of a bigger tensor: read only these bytes
            staged.append((dst.new_empty(dst.shape), dst))
            dst = staged[-1][0]
        key = (ref.file, ref.key)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(ref)
        elif not torch_work:
            torch_work = True  # a storage feeding several tensors: copies between them
        device = dst.device.type
        plain = lands_as_is(record, ref, dst)
        group.pending.append((record, dst, plain))
        group.names.append(record.name)
        cuda = cuda or device == "cuda"
        if not torch_work:
            torch_work = not plain or (ref.byteorder == "big" and record.itemsize > 1)
    ordered = sorted(groups.values(), key=lambda g: (g.ref.file, g.ref.offset))
    try:
        result = Engine(ordered, check_crc, settings, cuda=cuda, torch_work=torch_work or not settings.direct).run()
        for scratch, dst in staged:
            dst.detach().copy_(scratch)
    finally:
        # The bytes were written through raw pointers, which autograd cannot see: bump each destination's version
        # counter as an in-place torch op would, so a graph that saved one of them raises at backward() instead
        # of running with the new values (also after a failed read: some bytes may have been written).
        _written(written)
    for record, dst in flagged:
        apply_flags_in_place(record, dst)  # the destination holds the values, not the stored ones
    return result


def _pieces(requests: Iterable[tuple[TensorRecord, torch.Tensor]]) -> Iterator[tuple[TensorRecord, torch.Tensor]]:
    """``requests`` with each tensor stored in pieces (:attr:`TensorRecord.chunks`) replaced by its pieces, each
    bound for its slice of the destination (viewed in the record's shape)."""
    for record, dst in requests:
        if record.chunks is None:
            yield record, dst
            continue
        from .regions import regions  # only for tensors stored in pieces: not on a plain load's path

        if dst.numel() != record.numel:
            raise ValueError(f"{record.name}: destination has {dst.numel()} elements, the record {record.numel}")
        whole = dst if tuple(dst.shape) == record.shape else dst.view(record.shape)
        for part, slices in regions(record, [0] * len(record.shape), record.shape):
            yield part, whole[slices]


def _written(tensors: list[torch.Tensor]) -> None:
    """Tell autograd that ``tensors`` were modified in place (one call for all of them)."""
    from torch.autograd.graph import increment_version

    if tensors:
        increment_version(tensors)


# --------------------------------------------------------------------------------------------------------------
# materialize: new tensors (tw.load)
# --------------------------------------------------------------------------------------------------------------


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
    pieced = {r.name: _assembled(r, map_location, check_crc) for r in records if r.chunks is not None}
    reads = [part for r in records if r.chunks is None for part in (r.parts or (r,))]  # sparse: its components
    first: dict[tuple[str, str], TensorRecord] = {}
    names: dict[tuple[str, str], list[str]] = {}
    for r in reads:
        if r.storage is not None:
            key = (r.storage.file, r.storage.key)
            first.setdefault(key, r)
            names.setdefault(key, []).append(r.name)
    storages: dict[tuple[str, str], tuple[torch.UntypedStorage, int]] = {}
    groups: list[Group] = []
    mapper = None
    if mmap:
        from .mapping import Mapper  # only for mmap=True

        mapper = Mapper()
    resolve = device_resolver(map_location)
    for key, record in sorted(first.items(), key=lambda kv: (kv[0][0], kv[1].storage.offset if kv[1].storage else 0)):
        ref = record.storage
        assert ref is not None
        unit = dtypes.swap_unit(record.dtype)
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
        buf = fresh(torch.empty(ref.nbytes, dtype=torch.uint8, device=device))
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
    return {
        r.name: pieced[r.name] if r.chunks is not None else build_sparse(r, built) if r.sparse else built[r.name]
        for r in records
    }


def _assembled(record: TensorRecord, map_location: Any, check_crc: bool) -> torch.Tensor:
    """A tensor stored in pieces (:attr:`TensorRecord.chunks`) as one new contiguous tensor, on the device its first
    piece's location maps to (read, never mapped)."""
    import torch

    location = next((c.storage.location for _, c in record.chunks or () if c.storage is not None), "cpu")
    device = device_resolver(map_location)(location)
    out = fresh(torch.empty(record.shape, dtype=dtypes.to_torch(record.dtype), device=device))
    result = fill([(record, out)], check_crc=check_crc)
    if result.bad_crc:
        raise crc_error(result.bad_crc, "Nothing was loaded.")
    return out
