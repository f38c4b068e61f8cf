"""Lazy descriptions of what a checkpoint holds: tensor records and the checkpoint itself. No bytes, no torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field
from typing import Any, Generic, TypeVar, overload

from . import dtypes
from .storage.stamps import FileStamp, stamp_for
from .structs import structure

__all__ = ["Checkpoint", "StorageRef", "TensorRecord"]

_T = TypeVar("_T")


class _once(Generic[_T]):
    """A read-only property computed on first access and kept in the instance's ``__dict__`` (records are frozen
    and their derived sizes are read many times per load; ``functools.cached_property`` takes a lock per first
    access on Python 3.11, which costs more than the computation)."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, cls: type) -> _once[_T]: ...
    @overload
    def __get__(self, obj: object, cls: type) -> _T: ...
    def __get__(self, obj: object | None, cls: type) -> _T | _once[_T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@structure(frozen=True)
class StorageRef:
    """Where the bytes of one storage live.

    Attributes:
        key: identifies the storage within its checkpoint; records with the same key share memory.
        file: path of the file that holds the bytes.
        offset: absolute byte offset of the first byte in ``file`` (for a zip member, of its data).
        nbytes: length of the storage in bytes.
        byteorder: ``"little"`` or ``"big"``: byte order of the stored elements.
        member: zip member name, when the bytes are inside a zip archive.
        compression: zip compression method of that member (0 = stored; anything else must be inflated).
        compressed_size: bytes the member occupies in the file when it is compressed.
        crc32: expected CRC-32 of the bytes, when the container records one.
        location: device the storage was saved from (``"cpu"``, ``"cuda:0"``), as the file records it.
        stamp: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of ``file`` when :func:`torchweights.open` read it (set
            for every ref made while a checkpoint is opened; None for refs made by hand). The readers of tensor
            bytes compare it with one ``fstat`` of the file they open: a file changed since is ``file-changed``.
            Not compared by ``==``.
    """

    key: str
    file: str
    offset: int
    nbytes: int
    byteorder: str = "little"
    member: str | None = None
    compression: int = 0
    compressed_size: int = 0
    crc32: int | None = None
    location: str = "cpu"
    stamp: FileStamp | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stamp", stamp_for(self.file))  # frozen: set once, here


@structure(frozen=True)
class TensorRecord:
    """One tensor of a checkpoint, described without reading its bytes.

    Attributes:
        name: dotted name (``state_dict.encoder.weight``; list indices as ``.0``).
        path: the keys leading to the tensor in the checkpoint's container tree (``("state_dict", "encoder.weight")``).
        dtype: torch dtype name without prefix (``"bfloat16"``).
        shape: sizes per dimension.
        stride: strides in elements.
        storage_offset: offset of element 0 into the storage, in elements.
        storage: where the bytes are; None for tensors saved without data (meta device), for sparse tensors
            (:attr:`sparse`) and for tensors stored in pieces (:attr:`chunks`). :attr:`has_data` tells them apart.
        requires_grad: the flag saved with the tensor.
        is_parameter: saved as ``nn.Parameter``.
        quantization: for a quantized tensor (dtype ``qint8``, ``quint8``, ``qint32``...): ``qscheme`` and either
            ``scale`` and ``zero_point`` (per tensor) or ``scales``, ``zero_points`` (a :class:`TensorRecord` each,
            or a tuple of numbers) and ``axis`` (per channel); None for every other tensor.
        conj: saved with the conjugate bit set (``torch.conj(t)``): the storage holds the values before
            conjugation, and the tensor's values are their conjugates (as ``torch.load`` gives them).
        neg: saved with the negative bit set (``torch._neg_view(t)``): the values are the stored ones negated.
        attributes: Python attributes saved with the tensor (``param.my_flag = 1``), set again by ``tw.load``.
        sparse: for a sparse tensor (``layout`` ``sparse_coo``/``sparse_csr``/``sparse_csc``/``sparse_bsr``/
            ``sparse_bsc``): ``layout``, its component records (``indices`` and ``values``, or
            ``compressed_indices``, ``plain_indices`` and ``values``; not listed in the checkpoint) and, for COO,
            ``is_coalesced``. ``shape`` is then the dense size, ``dtype`` the values' dtype, ``storage`` None and
            :attr:`nbytes` the bytes of the components.
        chunks: for a tensor stored in pieces (a torch.distributed.checkpoint saved by several ranks, FSDP/DTensor
            shards): ``((global offsets, record), ...)``, one per piece, whose record describes that piece alone
            (its own ``shape`` is the piece's sizes, its own storage, C-contiguous as DCP writes it). The pieces tile
            the whole shape exactly. The whole record then has ``storage`` None, the global ``dtype`` and
            ``shape`` and C-contiguous strides; :attr:`view_key` and :attr:`byte_range` are None, and
            :func:`torchweights.storage.regions.regions` gives the pieces that hold any box of it. None for every
            other tensor.
    """

    name: str
    path: tuple[str, ...]
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    storage: StorageRef | None
    requires_grad: bool = False
    is_parameter: bool = False
    quantization: dict[str, Any] | None = None
    conj: bool = False
    neg: bool = False
    attributes: dict[str, Any] | None = None
    sparse: dict[str, Any] | None = None
    chunks: tuple[tuple[tuple[int, ...], TensorRecord], ...] | None = None

    @property
    def layout(self) -> str:
        """``"strided"``, or the sparse layout (``"sparse_coo"``, ``"sparse_csr"``...)."""
        return self.sparse["layout"] if self.sparse else "strided"

    @property
    def parts(self) -> tuple[TensorRecord, ...]:
        """The records a sparse tensor is made of (empty for every other tensor)."""
        if not self.sparse:
            return ()
        return tuple(v for v in self.sparse.values() if isinstance(v, TensorRecord))

    @property
    def has_data(self) -> bool:
        """True when the tensor has bytes to read: a storage, sparse components or pieces (:attr:`chunks`); False
        for a tensor saved without data (meta device)."""
        return self.storage is not None or bool(self.sparse) or self.chunks is not None

    @_once
    def numel(self) -> int:
        """Number of elements (of the dense shape, for a sparse tensor)."""
        return math.prod(self.shape)

    @_once
    def itemsize(self) -> int:
        """Bytes per element."""
        return dtypes.itemsize(self.dtype)

    @_once
    def nbytes(self) -> int:
        """Bytes of the tensor's elements (``numel * itemsize``), not of its whole storage; for a sparse tensor, the
        bytes of its components."""
        if self.sparse:
            return sum(p.nbytes for p in self.parts)
        return self.numel * self.itemsize

    @property
    def view_key(self) -> tuple[Any, ...] | None:
        """Equal for records that are the same tensor (tied weights: one storage, the same dtype, shape, strides
        and offset); None for a tensor without a storage of its own (no data, stored in :attr:`chunks`) or without
        elements, which cannot be tied."""
        ref = self.storage
        if ref is None or self.numel == 0:
            return None
        return (ref.file, ref.key, self.dtype, self.shape, self.stride, self.storage_offset)

    @property
    def byte_range(self) -> tuple[int, int] | None:
        """``(start, end)`` absolute file offsets spanned by this tensor's elements, or None without a storage of
        its own (no data, stored in :attr:`chunks`)."""
        if self.storage is None:
            return None
        size = self.itemsize
        if self.numel == 0:
            start = self.storage.offset + self.storage_offset * size
            return (start, start)
        last = self.storage_offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        return (self.storage.offset + self.storage_offset * size, self.storage.offset + (last + 1) * size)

    @_once
    def is_contiguous(self) -> bool:
        """True when the elements are laid out densely in C order (as torch says: empty tensors are)."""
        if self.numel == 0:
            return True
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.stride)):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view for JSON output."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            **({"layout": self.layout} if self.sparse else {}),
            **({"conj": True} if self.conj else {}),
            **({"neg": True} if self.neg else {}),
            **({"chunks": len(self.chunks)} if self.chunks is not None else {}),
        }


@structure
class Checkpoint:
    """Everything known about a checkpoint without reading tensor bytes.

    Attributes:
        path: what the user opened (file, index file or folder).
        format: format id (``torch-zip``, ``torch-legacy``, ``safetensors``, ``sharded-safetensors``, ...).
        files: every file that belongs to the checkpoint.
        records: dotted name -> :class:`TensorRecord`, in file order.
        extras: dotted name -> non-tensor leaf (epoch, hyper-parameters, numpy scalars, inert stubs...).
        globals: every pickle global the file references, as ``module.qualname``, sorted.
        metadata: format records and free-form metadata (zip ``version``/``byteorder``, safetensors
            ``__metadata__``, ...).
        warnings: things worth knowing that did not stop reading (renamed duplicate names, ...).
    """

    path: str
    format: str
    files: tuple[str, ...] = ()
    records: dict[str, TensorRecord] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    globals: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: reads selected tensors (``names -> {name: tensor}``, keyword options as :func:`torchweights.load`); set by
    #: :func:`torchweights.open`, so that this module (records only, no torch) never imports the read engine
    reader: Callable[..., dict[str, Any]] | None = field(default=None, repr=False, compare=False)
    #: the unpickled root of a pickle-based checkpoint (torch zip, legacy, legacy tar, plain pickle) with a record
    #: for every tensor in it (:class:`torchweights.formats.structure.PickleTree`); None for other formats
    structure: Any = field(default=None, repr=False, compare=False)

    @property
    def modules(self) -> dict[str, Any]:
        """The module tree of every pickled ``nn.Module`` the file holds, as data, read from the inert stubs
        (nothing imported): ``{where: ModuleNode}``, ``""`` for a file that is a model (``torch.save(model)``),
        ``"model"`` for ``{"model": model, ...}``. Empty for a state dict and for formats without a pickled
        root. ``str(node)`` prints it as ``print(model)`` does; ``node.to_dict()`` is plain data.
        """
        return self.structure.modules() if self.structure is not None else {}

    def get_tensor(self, name: str, **options: Any) -> Any:
        """One tensor, reading only the bytes of its own storage (like safetensors' ``safe_open().get_tensor``).

        Args:
            name: the dotted name, as in :attr:`records`.
            options: as for :func:`torchweights.load` (``map_location``, ``check_crc``, ``mmap``).

        Raises:
            RuleError: code ``no-such-tensor`` when the checkpoint has no tensor of that name (close names are
                suggested).
        """
        if self.reader is None:
            from .errors import RuleError

            raise RuleError(
                "this Checkpoint was not made by torchweights.open, so it cannot read tensors. "
                "Fix: open it with tw.open(path) and call get_tensor on the result.",
                code="bad-rule",
            )
        return self.reader([name], **options)[name]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.records)

    def __getitem__(self, name: str) -> TensorRecord:
        return self.records[name]

    def __contains__(self, name: object) -> bool:
        return name in self.records

    @property
    def tied(self) -> dict[str, str]:
        """``{name: first name}`` for every tensor that is the same tensor as one listed before it (tied weights,
        :attr:`TensorRecord.view_key`), in record order: ``{"lm_head.weight": "embed.weight"}``."""
        first: dict[tuple[Any, ...], str] = {}
        tied: dict[str, str] = {}
        for name, record in self.records.items():
            key = record.view_key
            if key is None:
                continue
            if key in first:
                tied[name] = first[key]
            else:
                first[key] = name
        return tied

    @property
    def nbytes(self) -> int:
        """Total bytes of all tensors (shared storages counted per tensor)."""
        return sum(r.nbytes for r in self.records.values())

    @property
    def numel(self) -> int:
        """Total number of elements over all tensors."""
        return sum(r.numel for r in self.records.values())

    def __repr__(self) -> str:
        return f"<Checkpoint {self.format} {self.path!r}: {len(self.records)} tensors, {self.nbytes} bytes>"
