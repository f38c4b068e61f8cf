"""Torch tar checkpoints: what ``torch.save`` wrote in its first releases, which ``torch.load`` still reads.

The file is an uncompressed tar archive (PAX format) of four members, written in this order:

* ``sys_info``: a pickle ``{'protocol_version': 1000, 'little_endian': True, 'type_sizes': {...}}``;
* ``pickle``: the saved object; every tensor and storage in it is a persistent id, the decimal text of its key,
  and (later releases) every ``nn.Module`` class is the persistent id ``(class, source_file, source)``;
* ``tensors``: a pickle of the tensor count, then per tensor a pickle ``(key, storage_key, tensor_class)``
  (the first releases: ``(key, tensor_class, storage_key)``) followed by the tensor's metadata as the C ``long``
  fields of the writer: ``nDimension`` (an ``int`` written as 8 bytes: 4 meaningful, 4 of padding), the sizes,
  the strides and the storage offset;
* ``storages``: a pickle of the storage count, then per storage a pickle ``(key, location, storage_class)``
  (the first releases: ``(key, storage_class)``) followed by an int64 element count and the elements,
  little-endian; later releases end the member with a pickle of the storage views
  ``[(view_key, root_key, element_offset, numel), ...]``.

The archive is parsed from its raw 512-byte headers by :func:`._tar.walk` (the walk detection uses too); nothing
is extracted and member names are never used as paths. Every pickle runs in the safe machine, every count, size
and offset is checked against the member and the file, and the storages' byte positions are absolute offsets into
the file, so tensor bytes are read in place.

Pre-0.4 torch had no 0-dimensional tensors: ``nDimension == 0`` meant an empty tensor, so such a tensor is read as
shape ``(0,)``.
"""

from __future__ import annotations

import struct
from dataclasses import field
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CorruptCheckpointError, ResourceLimitError, UnsafeCheckpointError, UnsupportedCheckpointError
from ..records import Checkpoint, StorageRef
from ..structs import structure
from ..text import plural, problem_list, quote, quote_list
from ..unpickle.values import Global, PickledStorage, PickledTensor, StorageType, Stub
from ._files import mapped
from ._pickled import assemble, run_pickle
from ._tar import FIX, MEMBERS, REGULAR_KINDS, TarEntry, fail, walk
from .tree import check_view, short_repr

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["read"]

_REQUIRED = ("storages", "tensors", "pickle")
_MIN_STORAGE_ENTRY = 2 + 8  # smallest pickle, then the int64 element count
_MIN_TENSOR_ENTRY = 2 + 8 + 8  # smallest pickle, then nDimension and the storage offset
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")


def _members(entries: list[TarEntry], path: str) -> dict[str, TarEntry]:
    """The torch members by name, refusing duplicates, missing members and members that are not plain files."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for entry in entries:
        seen[entry.name] = seen.get(entry.name, 0) + 1
    duplicated = [name for name, n in seen.items() if n > 1]
    if duplicated:
        problems.append(
            (
                "tar-duplicate-member",
                f"the archive holds {quote_list(duplicated)} more than once; tar readers disagree on which copy "
                "counts (torch takes the last), so the file is ambiguous",
            )
        )
    by_name = {entry.name: entry for entry in entries}
    missing = [name for name in _REQUIRED if name not in by_name]
    if missing:
        found = quote_list(e.name for e in entries) if entries else "no members"
        problems.append(("tar-missing-member", f"member {quote_list(missing)} is missing (the archive holds {found})"))
    for name in MEMBERS:
        member = by_name.get(name)
        if member is not None and member.kind not in REGULAR_KINDS:
            problems.append(
                (
                    "tar-bad-member",
                    f"member {quote(name)} is a tar entry of type {member.kind!r}, not a regular file (a link or "
                    "folder in its place is a known trick to make extraction write elsewhere)",
                )
            )
    if problems:
        raise CorruptCheckpointError(
            f"{quote(path)} is not a valid torch tar checkpoint ({plural(len(problems), 'problem')}):\n"
            f"{problem_list(problems)}\n{FIX}",
            code=problems[0][0],
            path=path,
        )
    return by_name


# ------------------------------------------------------------------------------------------- member contents


@structure
class _Cursor:
    """Reads one member front to back; every read is bounded by the member's end."""

    buf: memoryview
    member: TarEntry
    path: str
    options: ReadOptions
    globals: set[str]
    pos: int = 0

    def __post_init__(self) -> None:
        self.pos = self.member.start

    @property
    def where(self) -> str:
        return f"{quote(self.path)} member {quote(self.member.name)}"

    @property
    def left(self) -> int:
        return self.member.end - self.pos

    def fail(self, message: str, code: str = "bad-record") -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.where} {message}. {FIX}", code=code, path=self.path)

    def pickle(self, what: str) -> Any:
        if self.left <= 0:
            raise self.fail(f"ends where {what} should start", "truncated")
        result = run_pickle(self.buf, self.options, f"{self.where} ({what})", start=self.pos, end=self.member.end)
        self.globals |= result.globals
        self.pos = result.end
        return result.value

    def ints(self, fmt: struct.Struct, count: int, what: str) -> tuple[int, ...]:
        need = fmt.size * count
        if need > self.left:
            raise self.fail(
                f"ends inside {what} ({need} bytes needed at byte {self.pos}, {self.left} left)", "truncated"
            )
        values = tuple(v[0] for v in fmt.iter_unpack(self.buf[self.pos : self.pos + need]))
        self.pos += need
        return values

    def count(self, what: str, smallest_entry: int) -> int:
        value = self.pickle(f"{what} count")
        if type(value) is not int or value < 0:
            raise self.fail(f"should start with the number of {what}s but starts with {short_repr(value, 60)}")
        if value * smallest_entry > self.left:
            raise self.fail(
                f"declares {plural(value, what)} but holds only {self.left} more bytes, room for at most "
                f"{self.left // smallest_entry}"
            )
        return value


def _key(value: Any) -> int | None:
    """A storage or tensor key: the ``_cdata`` address, an int (None if it is not one)."""
    return value if type(value) is int else None


@structure(frozen=True)
class _Storage:
    ref: StorageRef
    dtype: str
    offset: int = 0  # element offset into ``ref`` (storage views)
    numel: int = 0


@structure
class _Contents:
    storages: dict[int, _Storage] = field(default_factory=dict)
    tensors: dict[int, PickledTensor] = field(default_factory=dict)
    layout: str = "unknown"  # "late": (key, location, type) records and a views list; "early": (key, type)
    roots: int = 0
    views: int = 0


def _storage_dtype(cur: _Cursor, key: int, storage_type: Any) -> str:
    if isinstance(storage_type, StorageType) and storage_type.dtype is not None:
        return storage_type.dtype
    name = storage_type.qualname if isinstance(storage_type, Global) else short_repr(storage_type, 60)
    raise cur.fail(
        f"gives storage {key} the class {quote(name)}, which is not a typed torch storage class "
        "(torch.FloatStorage, torch.cuda.LongStorage, ...)"
    )


def _read_storages(cur: _Cursor, contents: _Contents) -> None:
    count = cur.count("storage", _MIN_STORAGE_ENTRY)
    layouts: set[str] = set()
    for index in range(count):
        entry = cur.pickle(f"storage record {index}")
        if isinstance(entry, tuple) and len(entry) == 3:
            key, location, storage_type = entry
            layouts.add("late")
        elif isinstance(entry, tuple) and len(entry) == 2:
            (key, storage_type), location = entry, "cpu"
            layouts.add("early")
        else:
            raise cur.fail(
                f"has storage record {index} {short_repr(entry, 80)}; expected (key, location, storage class)"
            )
        k = _key(key)
        if k is None or not isinstance(location, str):
            raise cur.fail(f"has malformed storage record {index} {short_repr(entry, 80)}")
        if k in contents.storages:
            raise cur.fail(f"defines storage {k} twice")
        dtype = _storage_dtype(cur, k, storage_type)
        (numel,) = cur.ints(_I64, 1, f"the element count of storage {k}")
        nbytes = numel * dtypes.itemsize(dtype)
        if numel < 0 or nbytes > cur.left:
            raise cur.fail(
                f"declares {numel} {dtype} elements for storage {k} ({nbytes} bytes) but holds only {cur.left} more "
                "bytes",
                "truncated" if numel >= 0 else "bad-record",
            )
        ref = StorageRef(key=str(k), file=cur.path, offset=cur.pos, nbytes=nbytes, location=location)
        contents.storages[k] = _Storage(ref, dtype, 0, numel)
        cur.pos += nbytes
    contents.roots = count
    if len(layouts) > 1:
        raise cur.fail("mixes storage records of two torch releases ((key, type) and (key, location, type))")
    contents.layout = layouts.pop() if layouts else "unknown"
    if cur.left > 0:
        _read_views(cur, contents, cur.pickle("storage views"))
    elif contents.layout == "late":
        raise cur.fail("ends before its list of storage views", "truncated")


def _read_views(cur: _Cursor, contents: _Contents, views: Any) -> None:
    if not isinstance(views, list):
        raise cur.fail(f"ends with {short_repr(views, 80)} where the list of storage views should be")
    roots = dict(contents.storages)
    for view in views:
        if not (isinstance(view, tuple) and len(view) == 4 and all(type(v) is int for v in view)):
            raise cur.fail(f"has storage view {short_repr(view, 80)}; expected (view key, root key, offset, numel)")
        target, root_key, offset, numel = view
        root = roots.get(root_key)
        if root is None:
            raise cur.fail(f"has storage view {short_repr(view, 80)} of storage {root_key}, which it does not define")
        if offset < 0 or numel < 0 or offset + numel > root.numel:
            raise cur.fail(f"has storage view {short_repr(view, 80)} outside its {root.numel}-element root storage")
        if target in contents.storages:
            raise cur.fail(f"defines storage {target} twice (as a storage and as a view)")
        contents.storages[target] = _Storage(root.ref, root.dtype, offset, numel)
    contents.views = len(views)


def _read_tensors(cur: _Cursor, contents: _Contents, problems: list[tuple[str, str]]) -> None:
    count = cur.count("tensor", _MIN_TENSOR_ENTRY)
    max_dims = cur.options.limits.max_tensor_dims
    for index in range(count):
        entry = cur.pickle(f"tensor record {index}")
        if not (isinstance(entry, tuple) and len(entry) == 3):
            raise cur.fail(f"has tensor record {index} {short_repr(entry, 80)}; expected (key, storage key, class)")
        early = contents.layout == "early" or (
            contents.layout == "unknown" and _key(entry[1]) is None and _key(entry[2]) is not None
        )
        key, storage_key, tensor_class = (entry[0], entry[2], entry[1]) if early else entry
        k = _key(key)
        if k is None or not (storage_key is None or _key(storage_key) is not None):
            raise cur.fail(f"has malformed tensor record {index} {short_repr(entry, 80)}")
        if k in contents.tensors:
            raise cur.fail(f"defines tensor {k} twice")
        (ndim,) = cur.ints(_I32, 1, f"the dimension count of tensor {k}")
        cur.ints(_I32, 1, f"the dimension count of tensor {k}")  # the high half of the C long: padding
        if ndim < 0:
            raise cur.fail(f"gives tensor {k} {ndim} dimensions")
        if ndim > max_dims:
            raise ResourceLimitError(
                f"{cur.where} gives tensor {k} {ndim} dimensions, more than the {max_dims} allowed by "
                "limits.max_tensor_dims. If you trust the file, pass "
                "tw.open(path, limits=Limits(max_tensor_dims=...)).",
                code="limit-tensor-dims",
                path=cur.path,
            )
        shape = cur.ints(_I64, ndim, f"the sizes of tensor {k}")
        stride = cur.ints(_I64, ndim, f"the strides of tensor {k}")
        (offset,) = cur.ints(_I64, 1, f"the storage offset of tensor {k}")
        if ndim == 0:
            shape, stride = (0,), (1,)  # before torch 0.4, a tensor without dimensions was an empty tensor
        tensor = _tensor(cur, contents, k, storage_key, tensor_class, (shape, stride, offset), problems)
        if tensor is not None:
            contents.tensors[k] = tensor


def _tensor_class_dtype(tensor_class: Any) -> str | None:
    """The dtype a tensor class names (``torch.FloatTensor``, ``torch.cuda.LongTensor``), or None."""
    name = tensor_class.name if isinstance(tensor_class, Global) else ""
    info = dtypes.dtype_from_storage_class(name.replace("Tensor", "Storage")) if name.endswith("Tensor") else None
    return info.name if info is not None else None


def _tensor(
    cur: _Cursor,
    contents: _Contents,
    key: int,
    storage_key: int | None,
    tensor_class: Any,
    view: tuple[tuple[int, ...], tuple[int, ...], int],
    problems: list[tuple[str, str]],
) -> PickledTensor | None:
    """The tensor over its storage (views resolved to their root), checked to fit the storage it names."""
    name = str(key)
    shape, stride, offset = view
    if storage_key is None:
        # An empty tensor had no storage at all; it keeps its class's dtype over a storage of no bytes.
        dtype = _tensor_class_dtype(tensor_class) or "float32"
        ref = StorageRef(key=f"empty-{key}", file=cur.path, offset=cur.member.start, nbytes=0)
        storage = _Storage(ref, dtype)
    else:
        found = contents.storages.get(storage_key)
        if found is None:
            problems.append(
                ("missing-storage", f"tensor {name} uses storage {storage_key}, which the storages member lacks")
            )
            return None
        storage = found
    local = PickledTensor(PickledStorage(storage.ref, storage.dtype), storage.dtype, offset, shape, stride)
    try:
        check_view(name, local, storage.numel * dtypes.itemsize(storage.dtype), cur.where)
    except CorruptCheckpointError as exc:
        problems.append((exc.code, exc.message))
        return None
    return PickledTensor(
        PickledStorage(storage.ref, storage.dtype, storage.offset),
        storage.dtype,
        storage.offset + offset,
        shape,
        stride,
    )


# ------------------------------------------------------------------------------------------------- the pickle


class _Objects:
    """persistent_load for the ``pickle`` member: a key's decimal text -> its tensor (or storage)."""

    def __init__(self, contents: _Contents, path: str) -> None:
        self.contents = contents
        self.path = path
        self.unknown: list[str] = []

    def __call__(self, pid: Any) -> Any:
        if isinstance(pid, tuple):  # (nn.Module class, source file, source): the class itself
            if pid and isinstance(pid[0], (Global, Stub)):
                return pid[0]
            raise fail(self.path, f"member 'pickle' has the persistent id {short_repr(pid, 80)}. {FIX}", "bad-record")
        key = _parse_key(pid)
        if key is None:
            raise fail(self.path, f"member 'pickle' has the persistent id {short_repr(pid, 80)}. {FIX}", "bad-record")
        tensor = self.contents.tensors.get(key)
        if tensor is not None:
            return tensor
        storage = self.contents.storages.get(key)
        if storage is not None:
            return PickledStorage(storage.ref, storage.dtype, storage.offset)
        self.unknown.append(str(key))
        return None


def _parse_key(pid: Any) -> int | None:
    if type(pid) is int:
        return pid
    if isinstance(pid, bytes):
        pid = pid.decode("ascii", "replace")
    if isinstance(pid, str) and len(pid) <= 40:
        text = pid.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isdigit() and digits.isascii():
            return int(text)
    return None


def _null_objects(pid: Any) -> Any:
    return None


def _check_platform(info: Any, path: str) -> None:
    """The writer's byte order and C long size, which the tensor metadata depends on."""
    if not isinstance(info, dict):
        return
    sizes = info.get("type_sizes")
    long_size = sizes.get("long", 8) if isinstance(sizes, dict) else 8
    little = info.get("little_endian", True)
    if little is not True or long_size != 8:
        raise UnsupportedCheckpointError(
            f"{quote(path)} was saved on a machine with {'big' if little is not True else 'little'}-endian "
            f"{long_size if type(long_size) is int else '?'}-byte C longs; torchweights reads torch tar files from "
            "little-endian machines with 8-byte longs (as torch.load does). If you trust it, load it with an old "
            "torch on such a machine and re-save it with torch.save.",
            code="unsupported-legacy-tar-platform",
            path=path,
        )


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a torch tar checkpoint: locate every storage and tensor and unpickle the object; no tensor bytes are
    read and no code from the file runs."""
    with mapped(path) as buf:
        entries = list(walk(lambda at, n: bytes(buf[at : at + n]), len(buf), path))
        members = _members(entries, path)
        seen: set[str] = set()
        info: Any = None
        if "sys_info" in members:
            info = _Cursor(buf, members["sys_info"], path, options, seen).pickle("sys_info")
            _check_platform(info, path)
        contents = _Contents()
        problems: list[tuple[str, str]] = []
        main_where = f"{quote(path)} member 'pickle'"
        pickle_member = members["pickle"]
        try:
            _read_storages(_Cursor(buf, members["storages"], path, options, seen), contents)
            _read_tensors(_Cursor(buf, members["tensors"], path, options, seen), contents, problems)
        except CorruptCheckpointError:
            # A file that is both broken and dangerous is reported as dangerous: that is what the user must know.
            _safety_check(buf, pickle_member, options, main_where)
            raise
        if problems:
            _safety_check(buf, pickle_member, options, main_where)
            raise CorruptCheckpointError(
                f"{quote(path)} has {plural(len(problems), 'tensor')} that do not fit their storages:\n"
                f"{problem_list(problems)}\n{FIX}",
                code=problems[0][0],
                path=path,
            )
        objects = _Objects(contents, path)
        main = run_pickle(
            buf, options, main_where, start=pickle_member.start, end=pickle_member.end, persistent_load=objects
        )
    if objects.unknown:
        raise CorruptCheckpointError(
            f"{main_where} refers to {plural(len(set(objects.unknown)), 'tensor or storage')} "
            f"({quote_list(sorted(set(objects.unknown)))}) that neither the 'tensors' nor the 'storages' member "
            f"defines. {FIX}",
            code="missing-storage",
            path=path,
        )
    metadata: dict[str, Any] = {
        "members": [e.name for e in entries],
        "layout": contents.layout,
        "storages": contents.roots,
        "storage_views": contents.views,
    }
    if isinstance(info, dict):
        metadata["sys_info"] = info
    return assemble(
        path,
        "legacy-tar",
        main,
        options,
        where=main_where,
        files=(path,),
        metadata=metadata,
        globals_seen=seen,
    )


def _safety_check(buf: memoryview, member: TarEntry, options: ReadOptions, where: str) -> None:
    """Run the main pickle only to find dangerous globals (raises UnsafeCheckpointError); other errors are moot."""
    try:
        run_pickle(buf, options, where, start=member.start, end=member.end, persistent_load=_null_objects)
    except UnsafeCheckpointError:
        raise
    except CorruptCheckpointError:
        pass
