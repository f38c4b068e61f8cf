"""Sharded models: ``load_into`` on every rank of an FSDP2 (``fully_shard``) or DTensor model.

A sharded parameter is a ``DTensor``: its ``shape`` is the global one, and each rank holds one box of it (FSDP2:
a range of rows, ``torch.chunk``-style, possibly empty; tensor parallel: columns). The plan is made against the
global shapes, exactly as for a plain model, on every rank; then:

1. :func:`agree`: every rank of the default process group tells the others whether it could open and plan (the
   options included), and a digest of its plan and of its files (:func:`plan_digest`: sizes and sampled bytes, not
   paths). If any rank failed, every rank raises the same error (the first failing rank's, with its class and
   code); if the digests differ (another copy of the file on some node), every rank raises ``ranks-disagree``.
   Nothing has been read or written yet, so no rank's parameters changed. :func:`check_sharded` refuses what a
   sharded model cannot take in this step.
2. :func:`local_reads`: each rank reads only the bytes of its own box of each sharded tensor, straight into its
   local shard (:func:`torchweights.storage.regions.regions` turns the box into byte ranges of the file, or of the
   chunks of a DCP folder saved on any number of ranks: resharding is a matter of which bytes are read; a box
   along columns is read row by row or in bands, :func:`read_bands`). Tensors that are not sharded (buffers) are
   read whole, as for a plain model.
3. :func:`agree` again after the reads, carrying each rank's CRC-32 pieces (:func:`crc_pieces`): a rank whose read
   failed (an I/O error, a file changed) makes every rank raise the same error, which says that shards were
   written; :func:`check_pieces` joins the pieces of each zip member and compares them with its recorded CRC-32.

Collectives run only where every rank calls them in the same order (before and after the reads), so a failure
seen by some ranks cannot leave the others waiting in a collective.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .errors import CODES, CorruptCheckpointError, LoadError, RuleError, TorchWeightsError
from .plan.spec import fsdp_module_type, is_dtensor
from .structs import structure
from .text import quote

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .plan.model import Plan
    from .plan.spec import ModelSpec
    from .records import Checkpoint, StorageRef, TensorRecord

__all__ = [
    "Band",
    "Piece",
    "agree",
    "check_pieces",
    "check_sharded",
    "copy_local",
    "crc_pieces",
    "local_box",
    "local_reads",
    "plan_digest",
    "read_bands",
    "unsharded_modules",
]


def local_box(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]]:
    """``(local shard, global offsets, sizes)``: the box of the global tensor this rank holds, and where it lives."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tensor.placements  # type: ignore[attr-defined]
    if any(p.is_partial() for p in placements):
        raise RuleError(
            f"a DTensor with a Partial placement ({placements}) holds partial sums, not a part of the tensor, so a "
            "checkpoint cannot be loaded into it. Fix: load into the model before it is redistributed to Partial.",
            code="bad-model",
        )
    sizes, offsets = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, placements)  # type: ignore[attr-defined]
    local = tensor.to_local()  # type: ignore[attr-defined]
    if tuple(local.shape) != tuple(sizes):
        raise RuleError(
            f"the local shard is {list(local.shape)}, but its placements give this rank {list(sizes)} (padded "
            "shards are not loaded in place). Fix: load into the model as fully_shard() leaves it.",
            code="bad-model",
        )
    return local, tuple(offsets), tuple(sizes)


def _slices(offsets: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, sizes))


#: A box that is not contiguous in the file (a tensor-parallel shard along columns) is read as one byte range per
#: row when each row's part is at least this long...
RUN_BYTES = 256 << 10
#: ... and as bands of whole rows of at most this many bytes otherwise (the rank's columns copied out of each band):
#: bounded memory either way, never a copy of the whole storage.
BAND_BYTES = 16 << 20


@structure(frozen=True)
class Band:
    """Rows of a box read as one byte range (``span``: a flat record of the elements from the first row's first to
    the last row's last), then copied from ``as_strided(shape, stride)`` of it into ``dst``."""

    span: TensorRecord
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dst: Any


def _pieces(part: TensorRecord, dst: torch.Tensor) -> tuple[list[tuple[TensorRecord, torch.Tensor]], list[Band]]:
    """``part`` (a box of a record) as reads: itself when it is contiguous in the file; else one contiguous run per
    leading index when runs are long (:data:`RUN_BYTES`), else bands of rows (:data:`BAND_BYTES`)."""
    if part.is_contiguous or part.storage is None or not part.shape:
        return [(part, dst)], []
    k = next(
        (
            k
            for k in range(1, len(part.shape))
            if replace(part, shape=part.shape[k:], stride=part.stride[k:]).is_contiguous
        ),
        len(part.shape),
    )
    inner = replace(part, shape=part.shape[k:], stride=part.stride[k:])
    if k < len(part.shape) and inner.nbytes >= RUN_BYTES:
        runs = []
        for index in itertools.product(*(range(n) for n in part.shape[:k])):
            moved = part.storage_offset + sum(i * s for i, s in zip(index, part.stride))
            runs.append((replace(inner, storage_offset=moved), dst[index]))
        return runs, []
    # Bands along the dimension that strides furthest through the file (rows, or columns of a transposed tensor),
    # as many of its indices per band as keep the band's span within BAND_BYTES (at least one).
    d = max(range(len(part.shape)), key=lambda k: (part.shape[k] > 1, part.stride[k]))
    count, step = part.shape[d], part.stride[d]
    extent = 1 + sum((n - 1) * s for k, (n, s) in enumerate(zip(part.shape, part.stride)) if k != d)
    per = max(1, (BAND_BYTES // part.itemsize - extent) // max(1, step) + 1)
    bands = []
    for i in range(0, count, per):
        j = min(count, i + per)
        elements = (j - i - 1) * step + extent
        span = replace(part, shape=(elements,), stride=(1,), storage_offset=part.storage_offset + i * step)
        shape = tuple(j - i if k == d else n for k, n in enumerate(part.shape))
        bands.append(Band(span, shape, part.stride, dst.narrow(d, i, j - i)))
    return [], bands


def local_reads(
    record: TensorRecord, tensor: torch.Tensor
) -> tuple[list[tuple[TensorRecord, torch.Tensor]], list[Band]]:
    """The reads that fill this rank's shard of ``tensor`` from ``record`` (the whole tensor in the file), only the
    bytes of this rank's box (and, for a box along columns with short rows, of the rows it spans): ``(part of the
    record, part of the local shard)`` pairs for :func:`~torchweights.storage.read.fill`, and bands for
    :func:`read_bands`."""
    from .storage.regions import regions

    local, offsets, sizes = local_box(tensor)
    direct: list[tuple[TensorRecord, torch.Tensor]] = []
    bands: list[Band] = []
    for part, where in regions(record, offsets, sizes):
        more, banded = _pieces(part, local[where])
        direct += more
        bands += banded
    return direct, bands


def read_bands(bands: Iterable[Band]) -> None:
    """Read each band into a scratch buffer of its own size (at most :data:`BAND_BYTES`) and copy the box's elements
    out of it, one band at a time."""
    import torch

    from . import dtypes
    from .storage.read import fill

    for band in bands:
        scratch = torch.empty(band.span.shape, dtype=dtypes.to_torch(band.span.dtype))
        fill([(band.span, scratch)], check_crc=False)  # (CRC-32: the ranks' pieces, check_pieces)
        with torch.no_grad():
            band.dst.copy_(scratch.as_strided(band.shape, band.stride))


def copy_local(tensor: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's box of ``full`` (the whole tensor, in memory) into ``tensor``'s local shard."""
    import torch

    local, offsets, sizes = local_box(tensor)
    with torch.no_grad():
        local.copy_(full[_slices(offsets, sizes)])


def unsharded_modules(model: torch.nn.Module) -> list[str]:
    """The FSDP2 modules of ``model`` whose parameters are unsharded at the moment (after a forward, before its
    backward): their registered parameters are then temporary full copies, which FSDP2 drops at the next reshard,
    so a load into them would be lost."""
    fsdp = fsdp_module_type()
    found: list[str] = []
    if fsdp is None:
        return found
    for name, module in model.named_modules():
        if not isinstance(module, fsdp):
            continue
        get_state = getattr(module, "_get_fsdp_state", None)
        group = getattr(get_state() if callable(get_state) else None, "_fsdp_param_group", None)
        states = {
            getattr(getattr(p, "sharded_state", None), "name", "SHARDED") for p in getattr(group, "fsdp_params", ())
        }
        if states - {"SHARDED"}:
            found.append(name or "<root>")
    return found


def check_sharded(model: torch.nn.Module, plan: Plan, spec: ModelSpec, *, mmap: bool, check_values: bool) -> None:
    """Refuse, before anything is read, what a sharded model cannot take: FSDP2 modules that are unsharded at the
    moment, a sharded tensor on the meta device, a load that would replace a sharded tensor (another dtype, a
    reshape), one through a module's own loading code, ``mmap=True`` and ``check_values=True``."""
    fix = "Fix: "
    unsharded = unsharded_modules(model)
    if unsharded:
        raise RuleError(
            f"the FSDP2 module{'s' if len(unsharded) > 1 else ''} {', '.join(quote(m) for m in unsharded[:3])} "
            "hold unsharded parameters (after a forward, before its backward, or with reshard_after_forward=False): "
            "those are temporary copies that FSDP2 drops at the next reshard, so a load into them would be lost. "
            f"{fix}load before the forward, or call model.reshard() first.",
            code="bad-model",
        )
    sharded = [e for e in spec.entries.values() if e.sharded]
    if not sharded:
        return
    for tensor in (*model.parameters(), *model.buffers()):
        if is_dtensor(tensor) and not tensor.is_meta:
            local_box(tensor)  # Partial placements and padded shards refused here, before anything is read
    if mmap or check_values:
        option = "mmap=True" if mmap else "check_values=True"
        raise RuleError(
            f"{option} is not supported on a sharded (FSDP2/DTensor) model: each rank holds only a part of each "
            f"tensor. {fix}leave {option.split('=')[0]} off, or load into an unsharded copy.",
            code="bad-rule",
        )
    on_meta = [e.name for e in sharded if e.meta]
    if on_meta:
        raise RuleError(
            f"the sharded model has DTensors on the meta device ({quote(on_meta[0])}...): they have no memory for "
            f"their shards. {fix}call model.to_empty(device=...) after fully_shard(), then load_into.",
            code="bad-model",
        )
    for action in plan.by_kind("load"):
        entry = spec.entries.get(action.target or "")
        if entry is None or not entry.sharded:
            continue
        replaced = (action.dst_dtype or action.src_dtype) != entry.dtype or "reshape" in action.via
        custom = action.fallback and any(m == "" or entry.name.startswith(m + ".") for m in spec.custom_modules)
        if replaced or custom:
            why = (
                "its own loading code (_load_from_state_dict or a load hook) would replace it"
                if custom
                else "the load would replace it (dtype='checkpoint' or a 0-dim/1-element reshape)"
            )
            raise RuleError(
                f"{quote(entry.name)} is sharded (a DTensor), and {why}; a sharded tensor is only filled in place. "
                f"{fix}load with dtype='model', or load into an unsharded copy and shard it afterwards.",
                code="bad-model",
            )


#: Bytes of each file every rank hashes to tell two copies apart (:func:`plan_digest`): this many blocks...
SAMPLE_BLOCKS = 16
#: ... of this size, spread evenly over the file (its first and last bytes included).
SAMPLE_BYTES = 16 << 10


def _fingerprint(path: str, h: Any) -> None:
    """Feed ``h`` the size and :data:`SAMPLE_BLOCKS` evenly spread blocks of the file at ``path``."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        last = max(0, size - SAMPLE_BYTES)
        for i in range(SAMPLE_BLOCKS):
            h.update(os.pread(fh.fileno(), SAMPLE_BYTES, last * i // (SAMPLE_BLOCKS - 1)))


def plan_digest(plan: Plan, checkpoint: object) -> str:
    """A digest of what ``plan`` does and of the files it reads, equal on every rank that planned the same load
    from the same bytes: the actions, and each file's size and a sample of its bytes (:data:`SAMPLE_BLOCKS`
    blocks of :data:`SAMPLE_BYTES`, so another copy with other values is told apart without reading the files;
    not names or paths, which may differ between nodes)."""
    from .records import Checkpoint

    h = hashlib.sha256()
    for a in plan.actions:
        h.update(repr((a.kind, a.source, a.target, a.src_shape, a.dst_shape, a.src_dtype, a.dst_dtype)).encode())
        if a.adapt is not None:
            h.update(repr((a.adapt.adapter, a.adapt.sources)).encode())
    if isinstance(checkpoint, Checkpoint):
        for file in checkpoint.files:
            if os.path.isfile(file):
                _fingerprint(file, h)
    return h.hexdigest()


def _describe(exc: BaseException) -> tuple[str, str | None, str]:
    if isinstance(exc, TorchWeightsError):
        return type(exc).__name__, exc.code, exc.message
    return type(exc).__name__, None, str(exc)


def _context(rank: int, world: int, written: bool) -> str:
    after = (
        "some shards were already written: reload the model"
        if written
        else "nothing was read, no rank's parameters were changed"
    )
    return f"rank {rank} of {world} (every rank raised this error; {after})"


def _rebuilt(described: tuple[str, str | None, str], context: str) -> TorchWeightsError:
    """The error the first failing rank raised, made again on this rank (same class, code and message)."""
    from . import errors

    name, code, message = described
    cls = getattr(errors, name, None)
    if code is None or code not in CODES or not (isinstance(cls, type) and issubclass(cls, TorchWeightsError)):
        return LoadError(f"{context}: {name}: {message}", code="rank-failed")
    try:
        return cls(f"{context}: {message}", code=code)  # type: ignore[no-any-return]
    except TypeError:  # a class with other arguments: the same code on our base class
        return LoadError(f"{context}: {message}", code=code)


def agree(
    failure: BaseException | None, digest: str, *, written: bool, report: Any = None, payload: Any = None
) -> list[Any]:
    """Every rank of the default process group exchanges its outcome; return only when every rank succeeded with
    the same ``digest``, else raise the same error on every rank.

    Args:
        failure: this rank's exception, or None.
        digest: :func:`plan_digest` of this rank's plan ("" after the reads).
        written: whether shards may have been written already (said in the error).
        report: this rank's :class:`~torchweights.report.load.LoadReport`, attached to a ``LoadError``.
        payload: anything picklable to share with the other ranks.

    Returns:
        Every rank's ``payload``, in rank order.
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    mine = None if failure is None else _describe(failure)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (mine, digest, payload))
    for rank, (described, _, _) in enumerate(gathered):
        if described is None:
            continue
        context = _context(rank, world, written)
        if isinstance(failure, TorchWeightsError) and _describe(failure) == tuple(described):
            raise failure.in_context(context) from failure  # this rank's own error: every attribute kept
        error = _rebuilt(tuple(described), context)  # type: ignore[arg-type]
        if isinstance(error, LoadError):
            error.report = getattr(failure, "report", None) or report
        raise error from failure
    if len({d for _, d, _ in gathered}) > 1:
        ranks = [r for r, (_, d, _) in enumerate(gathered) if d != gathered[0][1]]
        raise LoadError(
            f"the ranks planned different loads or read different files (ranks {ranks} differ from rank 0): their "
            "plans, file sizes or sampled file bytes differ (another copy or version of the checkpoint on some "
            "nodes, or options that change what is loaded). Nothing was read and no rank's parameters were "
            "changed. Fix: give every rank the same checkpoint (a copy on each node must be identical) and the "
            "same arguments.",
            code="ranks-disagree",
            report=report,
        )
    return [p for _, _, p in gathered]


#: One piece of a zip member read by one rank: ``(file's place in Checkpoint.files, storage key, start, end,
#: CRC-32 of bytes [start, end))``; the file by its place, not its path, which may differ between nodes.
Piece = tuple[int, str, int, int, int]


def crc_pieces(parts: Iterable[tuple[TensorRecord, torch.Tensor | None]], files: Sequence[str]) -> list[Piece]:
    """The CRC-32 of each byte range this rank read into its shards of a zip member that records one (the shards
    are read without the engine's own check, which would read each whole member on every rank): computed over the
    shard's memory where the bytes landed as they are stored, else read again from the file in bounded chunks (from
    the page cache: the bytes were just read)."""
    import torch

    from .storage.contents import CHUNK_BYTES, span
    from .storage.crc import crc32
    from .storage.raw import read_byte_range
    from .storage.targets import lands_as_is, memory_of

    place = {file: i for i, file in enumerate(files)}
    pieces: list[Piece] = []
    for part, landed in parts:
        ref = part.storage
        if ref is None or ref.crc32 is None or ref.compression or not part.is_contiguous or not part.numel:
            continue
        if ref.file not in place:
            continue
        start, end = span(part)
        plain = ref.byteorder == "little" and not (part.conj or part.neg)
        if landed is not None and plain and lands_as_is(part, ref, landed):
            flat = landed.detach().view(-1).view(torch.uint8)
            value = crc32(memory_of(flat), 0, flat.data_ptr())
        else:
            value = 0
            for at in range(start, end, CHUNK_BYTES):
                value = crc32(memoryview(read_byte_range(ref, at, min(end, at + CHUNK_BYTES))), value)
        pieces.append((place[ref.file], ref.key, start, end, value))
    return pieces


def _covers(found: Iterable[tuple[int, int, int]], nbytes: int) -> bool:
    """Whether the ranges ``(start, end, _)`` together cover ``[0, nbytes)``."""
    at = 0
    for start, end, _ in sorted(found):
        if start > at:
            return False
        at = max(at, end)
    return at >= nbytes


def check_pieces(pieces: Iterable[Piece], checkpoint: Checkpoint, consequence: str) -> None:
    """Join the pieces every rank read of each zip member; where they cover the whole member, compare the joined
    CRC-32 with the recorded one (``bad-crc`` on every rank at once on a mismatch). Where the ranks' pieces cover a
    member but overlap so that they do not join (bands of whole rows read by every rank), the member is checked
    whole, by one rank each (spread over the ranks), and the ranks share the outcome. A member the ranks read only
    part of together is not checked, as a single-process load does not check a storage it reads part of. Called
    by every rank with the same gathered pieces (its collective is symmetric)."""
    import torch.distributed as dist

    from .storage.crc import crc32_combine
    from .storage.raw import storage_crc
    from .storage.results import CrcMismatch, crc_error

    place = {file: i for i, file in enumerate(checkpoint.files)}
    refs: dict[tuple[int, str], StorageRef] = {}
    names: dict[tuple[int, str], list[str]] = {}
    for r in _leaves(checkpoint.records):
        if r.storage is not None and r.storage.file in place:
            member = (place[r.storage.file], r.storage.key)
            refs[member] = r.storage
            names.setdefault(member, []).append(r.name)
    by_member: dict[tuple[int, str], set[tuple[int, int, int]]] = {}
    for file, key, start, end, value in pieces:
        by_member.setdefault((file, key), set()).add((start, end, value))
    bad: list[Any] = []
    whole: list[tuple[int, str]] = []  # covered together, but not joinable: checked whole
    for member, found in sorted(by_member.items()):
        ref = refs.get(member)
        if ref is None or ref.crc32 is None:
            continue
        at, joined = 0, 0
        for start, end, value in sorted(found):
            if start < at:  # the same range read by several ranks (replicas) or overlapping views: skip it
                if end <= at:
                    continue
                break
            if start > at:
                break  # a gap: not read whole by the ranks together
            joined = crc32_combine(joined, value, end - start) if at else value
            at = end
        if at == ref.nbytes:
            if joined != ref.crc32:
                bad.append(CrcMismatch(ref, ref.crc32, joined, tuple(names.get(member, ()))))
        elif _covers(found, ref.nbytes):
            whole.append(member)
    if whole:  # (the same list on every rank: every rank takes part)
        rank, world = dist.get_rank(), dist.get_world_size()
        mine: list[tuple[tuple[int, str], int | None, str]] = []
        for i, member in enumerate(whole):
            if i % world == rank:
                try:
                    mine.append((member, storage_crc(refs[member]), ""))
                except TorchWeightsError as exc:  # shared below: every rank raises, none waits
                    mine.append((member, None, exc.message))
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        for member, value, failed in (item for items in gathered for item in items):
            ref = refs[member]
            if value is None:
                raise CorruptCheckpointError(f"{consequence} {failed}", code="bad-crc", path=ref.file)
            if value != ref.crc32:
                bad.append(CrcMismatch(ref, ref.crc32 or 0, value, tuple(names.get(member, ()))))
    if bad:
        raise crc_error(bad, consequence)


def _leaves(records: Mapping[str, TensorRecord]) -> Iterator[TensorRecord]:
    """Every record with bytes of its own: the records, and the chunks of records stored in pieces."""
    for record in records.values():
        chunks = getattr(record, "chunks", None)
        if chunks:
            yield from (chunk for _, chunk in chunks)
        else:
            yield record
