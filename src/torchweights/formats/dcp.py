"""torch.distributed.checkpoint folders (``dcp.save``): ``.metadata`` plus ``__<rank>_<n>.distcp`` data files.

``.metadata`` is a pickle of DCP's ``Metadata`` dataclass: for every flattened name (``fqn``) either a tensor's
global dtype, shape and chunks (``TensorStorageMetadata``) or a non-tensor item (``BytesStorageMetadata``), and for
every chunk or item the file, offset and length of its bytes (``storage_data``: ``MetadataIndex`` ->
``_StorageInfo``). It is read with the restricted unpickler like every pickle: DCP's dataclasses are inert
references (:mod:`torchweights.unpickle.table_torch`), anything that would run code is refused, torch is not
imported.

Each tensor chunk is a whole ``torch.save`` zip archive embedded in a ``.distcp`` file; it is read by the torch zip
reader through a window onto those bytes, so its storage is located in the ``.distcp`` file itself and read in
place later, like any other record. Each non-tensor item is a ``torch.save`` archive of any object, which
``dcp.load`` unpickles with ``weights_only=False``; here it is read with the same restricted unpickler (unknown
classes become inert stubs, anything dangerous is refused) into :attr:`Checkpoint.extras`.

Names and nesting follow ``planner_data`` as ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does, so
``tw.load(folder)`` gives the tensors of that file. A tensor saved in one chunk covering its whole shape (every
single-process save) is a plain record of that chunk. One saved in several chunks (several ranks, FSDP2/DTensor
shards) is a record with :attr:`~torchweights.records.TensorRecord.chunks`: each chunk's global offsets and its own
record, read from its own archive; the chunks must tile the global shape exactly (each inside it, none overlapping,
nothing missing) and each must be the dtype and sizes ``.metadata`` gives it, else the folder is refused
(``bad-dcp-metadata``) before any tensor byte is read. :func:`torchweights.storage.regions.regions` gives the chunk
pieces of any box of such a tensor (a shard of another sharding: DCP saved on 2 ranks, loaded on 4).
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import IO, TYPE_CHECKING, Any

from ..errors import CheckpointReadError, CorruptCheckpointError, ResourceLimitError, UnsupportedCheckpointError
from ..records import Checkpoint, StorageRef, TensorRecord
from ..text import quote, shorten_list
from ..unpickle.values import PickledTensor, Stub, TorchValue
from ._pickled import run_pickle
from ._zip import check, read_directory
from .safetensors import contiguous_strides
from .torch_zip import Archive, read_archive

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["METADATA", "read"]

#: The file that makes a folder a torch.distributed.checkpoint.
METADATA = ".metadata"
_DCP = "torch.distributed.checkpoint.metadata."
_ZIP_MAGIC = b"PK\x03\x04"


class _Window:
    """A read-only file object over bytes ``[start, start + length)`` of an open file: what an archive embedded in
    a larger file looks like to the zip reader (offsets count from the window's start)."""

    def __init__(self, fh: IO[bytes], start: int, length: int) -> None:
        self.fh = fh
        self.start = start
        self.length = length
        self.pos = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = self.length if size is None or size < 0 else min(self.length, self.pos + size)
        if end <= self.pos:
            return b""
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(end - self.pos)
        self.pos += len(data)
        return data


def _bad(path: str, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{quote(path)}: {why}. The torch.distributed.checkpoint folder is corrupt, incomplete or was modified. "
        "Fix: copy the whole folder again from where it was saved, or save it again.",
        code="bad-dcp-metadata",
        path=path,
    )


def _stub(value: Any, cls: str, path: str, what: str) -> dict[str, Any]:
    """The attributes of an inert ``cls`` instance, refused when ``value`` is anything else."""
    if not (isinstance(value, Stub) and value.cls == cls):
        raise _bad(path, f"{what} is {type(value).__name__ if not isinstance(value, Stub) else value.cls}, not {cls}")
    return value.attributes


def _ints(value: Any, path: str, what: str) -> tuple[int, ...]:
    if not (isinstance(value, (tuple, list)) and all(type(n) is int and n >= 0 for n in value)):
        raise _bad(path, f"{what} is not a list of sizes")
    return tuple(value)


def _read_metadata(folder: str, options: ReadOptions) -> tuple[str, dict[str, Any]]:
    """``.metadata`` unpickled with the restricted unpickler: its path and the ``Metadata`` instance's fields."""
    path = os.path.join(folder, METADATA)
    try:
        size = os.path.getsize(path)
        if size > options.limits.max_pickle_bytes:
            raise ResourceLimitError(
                f"{quote(path)} is {size} bytes, over the {options.limits.max_pickle_bytes}-byte limit for a pickle. "
                "If you trust the folder: tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                code="limit-pickle-size",
                path=path,
            )
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointReadError(f"cannot read {quote(path)}: {exc.strerror or exc}", path=path) from None
    result = run_pickle(data, options, quote(path))
    return path, _stub(result.value, _DCP + "Metadata", path, "its pickle")


def _locations(meta: dict[str, Any], path: str) -> dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]]:
    """``{(fqn, chunk offsets or None): (file, offset, length)}`` from ``storage_data``; items with transforms
    (compression, encryption extensions) are refused."""
    storage = meta.get("storage_data")
    if not isinstance(storage, dict):
        raise _bad(path, "its storage_data is missing")
    out: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]] = {}
    for index, info in storage.items():
        at = _stub(index, _DCP + "MetadataIndex", path, "a storage_data key")
        where = _stub(info, "torch.distributed.checkpoint.filesystem._StorageInfo", path, "a storage_data value")
        fqn, offsets = at.get("fqn"), at.get("offset")
        relative, start, length = where.get("relative_path"), where.get("offset"), where.get("length")
        if (
            not isinstance(fqn, str)
            or not isinstance(relative, str)
            or type(start) is not int
            or type(length) is not int
        ):
            raise _bad(path, f"storage_data entry {quote(str(fqn))} is malformed")
        if where.get("transform_descriptors"):
            raise UnsupportedCheckpointError(
                f"{quote(path)}: item {quote(fqn)} is stored through the transforms "
                f"{shorten_list([str(t) for t in where['transform_descriptors']])} (a storage extension such as "
                "compression), which torchweights does not read. Fix: save the checkpoint without storage "
                "extensions, or convert it with dcp_to_torch_save (trusted folders only).",
                code="unsupported-dcp-item",
                path=path,
            )
        key = None if offsets is None else _ints(offsets, path, f"the chunk offsets of {quote(fqn)}")
        out[(fqn, key)] = (relative, start, length)
    return out


class _Items:
    """Reads the items of one folder: each one a ``torch.save`` archive at a place in a ``.distcp`` file."""

    def __init__(self, folder: str, metadata: str, options: ReadOptions) -> None:
        self.folder = folder
        self.metadata = metadata
        self.options = options
        self.files: dict[str, str] = {}

    def read(self, fqn: str, place: tuple[str, int, int]) -> Checkpoint:
        relative, start, length = place
        file = os.path.join(self.folder, relative)
        what = f"item {quote(fqn)} (bytes {start} to {start + length} of {quote(relative)})"
        if "/" in relative or "\\" in relative or relative in ("", ".", "..") or not os.path.isfile(file):
            raise _bad(self.metadata, f"{what} is placed in a file that is not in the folder")
        if start < 0 or length < 0 or start + length > os.path.getsize(file):
            raise _bad(self.metadata, f"{what} lies outside its file")
        self.files[relative] = file
        with open(file, "rb") as fh:
            window = _Window(fh, start, length)
            if window.read(4) != _ZIP_MAGIC:
                raise UnsupportedCheckpointError(
                    f"{quote(self.metadata)}: {what} is not a torch.save archive (a checkpoint saved with "
                    "serialization_format=SAFETENSORS or by an older torch), which torchweights does not read yet. "
                    "Fix: save it with the default serialization format, or convert it with dcp_to_torch_save "
                    "(trusted folders only).",
                    code="unsupported-dcp-item",
                    path=file,
                )
            limit = self.options.limits.max_inflated_bytes
            directory = read_directory(window, file, length, max_inflated=limit)  # type: ignore[arg-type]
            check(directory)
            archive = Archive(file, window, directory, self.options.limits)  # type: ignore[arg-type]

            def resolve(tensor: PickledTensor) -> tuple[StorageRef, int]:
                assert tensor.storage is not None
                ref = tensor.storage.ref
                return replace(ref, key=f"{relative}@{start}/{ref.key}", offset=start + ref.offset), 0

            where = f"{quote(file)}: item {quote(fqn)} (bytes {start} to {start + length}, listed in .metadata)"
            return read_archive(archive, self.options, where=where, resolve=resolve)


def _joined(prefix: str, inner: str) -> str:
    return f"{prefix}.{inner}" if inner else prefix


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a torch.distributed.checkpoint folder: ``.metadata`` and the archive of every item (their pickles and
    storage locations; no tensor bytes)."""
    folder = path
    metadata, meta = _read_metadata(folder, options)
    entries = meta.get("state_dict_metadata")
    if not isinstance(entries, dict):
        raise _bad(metadata, "its state_dict_metadata is missing")
    planner = meta.get("planner_data")
    places = _locations(meta, metadata)
    items = _Items(folder, metadata, options)
    ckpt = Checkpoint(path=path, format="dcp", metadata={"dcp_version": meta.get("version")})
    globals_seen: set[str] = set()
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            raise _bad(metadata, "a state_dict_metadata key is not a name")
        keys = planner.get(fqn) if isinstance(planner, dict) else None
        keys = tuple(str(k) for k in keys) if isinstance(keys, (tuple, list)) and keys else (fqn,)
        name = ".".join(keys)
        if isinstance(entry, Stub) and entry.cls == _DCP + "BytesStorageMetadata":
            place = places.get((fqn, None))
            if place is None:
                raise _bad(metadata, f"item {quote(fqn)} has no place in storage_data")
            inner = items.read(fqn, place)
            globals_seen.update(inner.globals)
            for sub, record in inner.records.items():
                full = _joined(name, sub)
                ckpt.records[full] = replace(record, name=full, path=keys + record.path)
            for sub, value in inner.extras.items():
                ckpt.extras[_joined(name, sub)] = value
            ckpt.warnings.extend(inner.warnings)
            continue
        record = _tensor(fqn, name, keys, entry, places, items, metadata)
        ckpt.records[name] = record
    ckpt.files = (metadata, *sorted(items.files.values()))
    ckpt.globals = tuple(sorted(globals_seen))
    return ckpt


def _tensor(
    fqn: str,
    name: str,
    keys: tuple[str, ...],
    entry: Any,
    places: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]],
    items: _Items,
    metadata: str,
) -> TensorRecord:
    """The record of one tensor entry: its chunk's record when one chunk holds it all, else a record with
    :attr:`~torchweights.records.TensorRecord.chunks`; every chunk's archive is read and checked against
    ``.metadata``, and the chunks must tile the shape exactly."""
    fields = _stub(entry, _DCP + "TensorStorageMetadata", metadata, f"the entry of {quote(fqn)}")
    shape = _ints(fields.get("size"), metadata, f"the size of {quote(fqn)}")
    props = fields.get("properties")
    state = props.state if isinstance(props, Stub) else None
    dtype = state[0] if isinstance(state, tuple) and state else None
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise _bad(metadata, f"the dtype of {quote(fqn)} is missing")
    listed = fields.get("chunks")
    if not isinstance(listed, list):
        raise _bad(metadata, f"the chunks of {quote(fqn)} are missing")
    spans = []
    for chunk in listed:
        at = _stub(chunk, _DCP + "ChunkStorageMetadata", metadata, f"a chunk of {quote(fqn)}")
        offsets = _ints(at.get("offsets"), metadata, f"a chunk offset of {quote(fqn)}")
        sizes = _ints(at.get("sizes"), metadata, f"a chunk size of {quote(fqn)}")
        place = places.get((fqn, offsets))
        if place is None:
            raise _bad(metadata, f"chunk {list(offsets)} of {quote(fqn)} has no place in storage_data")
        spans.append((offsets, sizes, place))
    fault = _tiling_fault(shape, [(o, s) for o, s, _ in spans])
    if fault:
        raise _bad(metadata, f"the chunks of tensor {quote(fqn)} of shape {list(shape)} do not tile it: {fault}")
    pieces = []
    for offsets, sizes, place in spans:
        inner = items.read(fqn, place)
        record = inner.records.get("")
        if record is None or len(inner.records) != 1 or inner.extras:
            raise _bad(metadata, f"chunk {list(offsets)} of tensor {quote(fqn)} does not hold one tensor")
        if record.dtype != dtype.value or record.shape != sizes:
            raise _bad(
                metadata,
                f"chunk {list(offsets)} of tensor {quote(fqn)} is {record.dtype} {list(record.shape)}, but .metadata "
                f"says {dtype.value} {list(sizes)}",
            )
        pieces.append((offsets, replace(record, name=name, path=keys)))
    if len(pieces) == 1 and pieces[0][1].shape == shape:
        return pieces[0][1]  # one chunk holds it all (every single-process save): a plain record
    pieces.sort(key=lambda p: p[0])
    return TensorRecord(name, keys, dtype.value, shape, contiguous_strides(shape), 0, None, chunks=tuple(pieces))


def _tiling_fault(shape: tuple[int, ...], boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> str | None:
    """Why the chunk boxes ``(offsets, sizes)`` do not tile ``shape`` exactly (each inside it, no two overlapping,
    their volumes adding up to its number of elements), or None when they do."""
    for offsets, sizes in boxes:
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            return f"chunk {list(offsets)} has {len(offsets)} offsets and {len(sizes)} sizes for {len(shape)} dims"
        if any(o + n > size for o, n, size in zip(offsets, sizes, shape)):
            return f"chunk {list(offsets)} of sizes {list(sizes)} reaches past the shape"
    live = sorted((b for b in boxes if math.prod(b[1])), key=lambda b: b[0])  # empty chunks cover nothing
    active: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for offsets, sizes in live:
        if shape:  # sorted by the first offset: boxes that end before this one starts cannot meet it or later ones
            active = [b for b in active if b[0][0] + b[1][0] > offsets[0]]
        for other, other_sizes in active:
            if all(max(a, b) < min(a + n, b + m) for a, n, b, m in zip(offsets, sizes, other, other_sizes)):
                return f"chunks {list(other)} and {list(offsets)} overlap"
        active.append((offsets, sizes))
    covered = sum(math.prod(s) for _, s in boxes)
    if covered != math.prod(shape):
        return f"they hold {covered} elements, the tensor {math.prod(shape)} (a gap)"
    return None
