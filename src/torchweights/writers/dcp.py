"""A streaming writer of torch.distributed.checkpoint folders, without torch: ``__0_0.distcp`` data files and the
``.metadata`` pickle that ``torch.distributed.checkpoint.load`` and ``format_utils.dcp_to_torch_save`` read.

As ``FileSystemWriter`` lays them out: each tensor is one chunk covering its whole shape, stored as a whole
``torch.save`` archive of that tensor (contiguous, its data aligned to 64 bytes from the archive's start) at an
offset of a ``.distcp`` file; each non-tensor item is a ``torch.save`` archive of its plain value
(``BytesStorageMetadata``). ``.metadata`` is the pickle of DCP's ``Metadata`` dataclass that ``pickle.dumps`` gives
(``NEWOBJ`` then ``BUILD`` with the instance's fields; ``TensorProperties`` by its ``__getstate__`` tuple;
``torch.Size`` and dtypes as torch pickles them), emitted here at protocol 2 with ``GLOBAL`` opcodes.
``storage_meta`` records no ``checkpoint_id`` (the folder may be moved).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from .. import dtypes
from ..formats.safetensors import contiguous_strides
from ..structs import structure
from .pickle_ops import Pickler
from .torch_zip import Storage, Tensor, pickle_tensor, write_archive

__all__ = ["METADATA", "Bytes", "Chunk", "Placed", "metadata_pickle", "write_data_file"]

#: The metadata file's name.
METADATA = ".metadata"
_META = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"
#: The version ``FileSystemWriter.finish`` records (torch 2.4 to 2.13).
DCP_VERSION = "1.0.0"


@structure(frozen=True)
class Chunk:
    """One tensor, written whole as one chunk: its flat name, key path, dtype, shape and a callable yielding its
    logical bytes (C order, little-endian)."""

    fqn: str
    path: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[bytes | bytearray | memoryview]]

    @property
    def nbytes(self) -> int:
        """Bytes of its data."""
        return math.prod(self.shape) * dtypes.itemsize(self.dtype)


@structure(frozen=True)
class Bytes:
    """One non-tensor item: its flat name, key path and plain value (what :meth:`Pickler.value` pickles)."""

    fqn: str
    path: tuple[str, ...]
    value: Any


@structure(frozen=True)
class Placed:
    """Where an item's archive was written: ``relative_path``, ``offset`` and ``length`` in that file."""

    fqn: str
    relative_path: str
    offset: int
    length: int


def write_data_file(fh: IO[bytes], relative: str, items: Sequence[Chunk | Bytes]) -> list[Placed]:
    """Write each item's ``torch.save`` archive back to back into ``fh`` (a new ``.distcp`` file named
    ``relative``), non-tensor items first as torch does; returns where each went.

    Raises:
        WriteError: a tensor's source yields more or fewer bytes than declared.
    """
    placed: list[Placed] = []
    ordered = [i for i in items if isinstance(i, Bytes)] + [i for i in items if isinstance(i, Chunk)]
    for item in ordered:
        start = fh.tell()
        if isinstance(item, Bytes):
            p = Pickler()
            p.value(item.value)
            write_archive(fh, p.finish(), ())
        else:
            storage = Storage("0", item.dtype, item.nbytes, item.chunks)
            tensor = Tensor(item.fqn, "0", item.dtype, item.shape, contiguous_strides(item.shape), 0)
            write_archive(fh, pickle_tensor(tensor, storage), (storage,))
        placed.append(Placed(item.fqn, relative, start, fh.tell() - start))
    return placed


def _size(values: Sequence[int]) -> Callable[[Pickler], None]:
    """``torch.Size(values)`` as torch pickles it."""

    def emit(p: Pickler) -> None:
        p.global_("torch", "Size")
        p.out += b"("
        p.ints(values)
        p.out += b"tR"

    return emit


def _properties(dtype: str) -> Callable[[Pickler], None]:
    """``TensorProperties(dtype)`` (strided, no grad, contiguous format, not pinned), by its ``__getstate__``."""

    def emit(p: Pickler) -> None:
        p.global_(_META, "TensorProperties")
        p.out += b")\x81("  # EMPTY_TUPLE, NEWOBJ, MARK
        p.global_("torch", dtypes.get(dtype).name)
        p.call("torch.serialization", "_get_layout", "torch.strided")
        p.value(False)  # requires_grad
        p.call(_META, "_MEM_FORMAT_ENCODING", 0)  # torch.contiguous_format
        p.value(False)  # pin_memory
        p.out += b"tb"  # TUPLE, BUILD

    return emit


def _new(cls: str, state: dict[str, Any], module: str = _META) -> Callable[[Pickler], None]:
    return lambda p: p.new_object(module, cls, state)


def metadata_pickle(items: Sequence[Chunk | Bytes], placed: Sequence[Placed]) -> bytes:
    """The ``.metadata`` pickle for ``items`` written at ``placed`` (one placement per item, by fqn)."""
    entries: dict[str, Any] = {}
    for item in items:
        if isinstance(item, Bytes):
            entries[item.fqn] = _new("BytesStorageMetadata", {})
            continue
        zeros = (0,) * len(item.shape)
        chunk = _new("ChunkStorageMetadata", {"offsets": _size(zeros), "sizes": _size(item.shape)})
        entries[item.fqn] = _new(
            "TensorStorageMetadata",
            {"properties": _properties(item.dtype), "size": _size(item.shape), "chunks": [chunk]},
        )
    kinds = {item.fqn: isinstance(item, Chunk) for item in items}
    shapes = {item.fqn: len(item.shape) for item in items if isinstance(item, Chunk)}
    storage: dict[Any, Any] = {}
    for n, where in enumerate(placed):
        tensor = kinds[where.fqn]
        index = _new(
            "MetadataIndex",
            {
                "fqn": where.fqn,
                "offset": _size((0,) * shapes[where.fqn]) if tensor else None,
                "index": 0 if tensor else None,
            },
        )
        # a unique key per entry: the emitter is called once, so equal indexes stay distinct objects
        storage[(n, index)] = _new(
            "_StorageInfo",
            {"relative_path": where.relative_path, "offset": where.offset, "length": where.length},
            _FS,
        )
    p = Pickler()
    p.new_object(
        _META,
        "Metadata",
        {
            "state_dict_metadata": entries,
            "planner_data": {item.fqn: tuple(item.path) for item in items},
            "storage_data": _Pairs(storage),
            "storage_meta": _new(
                "StorageMeta", {"checkpoint_id": None, "save_id": str(uuid.uuid4()), "load_id": None, "modules": []}
            ),
            "version": DCP_VERSION,
        },
    )
    return p.finish()


class _Pairs:
    """A dict of emitters keyed by ``(n, emitter)``: emitted as a dict whose keys are the emitters' objects."""

    def __init__(self, pairs: dict[Any, Any]) -> None:
        self.pairs = pairs

    def __call__(self, p: Pickler) -> None:
        p.out += b"}("
        for (_, key), value in self.pairs.items():
            key(p)
            value(p)
        p.out += b"u"
