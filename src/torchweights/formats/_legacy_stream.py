"""The legacy ``torch.save`` stream: the format of legacy torch files, and of every storage pickled on its own.

The stream is a sequence of pickles: the magic number, the protocol version (1001), a ``sys_info`` dict, the main
object (storages as persistent ids ``('storage', type, root_key, location, numel, view)``), the sorted list of
storage keys, and then, per key in that order, an 8-byte little-endian element count followed by the raw
little-endian elements. Storage offsets are found by walking those headers, never by reading the data.

:func:`read_stream` reads one for the legacy reader (:mod:`~torchweights.formats.legacy`); :func:`read_embedded`
reads the one ``torch.storage._load_from_bytes`` holds (how ``pickle.dumps(tensor)`` saves a storage), for the
unpickler, which is handed it as a hook (it sits below the readers). Both run each pickle through the caller's
``run``, so that this module needs no reader above it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .. import dtypes
from ..errors import CorruptCheckpointError, UnsafeCheckpointError
from ..records import StorageRef
from ..structs import structure
from ..unpickle.values import EmbeddedStorage, Global, PickledStorage, StorageType, Stub, UnpickleResult
from .tree import short_repr

__all__ = ["MAGIC_NUMBER", "PickleRunner", "Stream", "read_embedded", "read_stream"]

#: Runs one pickle of a stream: ``run(view, where, start=..., persistent_load=...)``.
PickleRunner = Callable[..., UnpickleResult]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_I64 = struct.Struct("<q")
#: How torch's legacy stream starts: protocol 2, then the magic number as LONG1 (what ``_load_from_bytes`` receives).
_EMBEDDED_HEAD = b"\x80\x02\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little")


@structure
class _Declared:
    dtype: str
    numel: int
    location: str


class _Storages:
    """persistent_load for legacy streams; byte positions are resolved once the key list has been read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.declared: dict[str, _Declared] = {}

    def __call__(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "module" and len(pid) >= 2:
            cls = pid[1]
            return cls if isinstance(cls, (Global, Stub)) else Stub(repr(cls))
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CorruptCheckpointError(
                f"'{self.path}': unexpected persistent id {short_repr(pid, 80)}", code="bad-record"
            )
        _, storage_type, key, location, numel, view = pid
        if not isinstance(storage_type, StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise CorruptCheckpointError(
                f"'{self.path}': malformed storage record {short_repr(pid, 80)}", code="bad-record"
            )
        dtype = storage_type.dtype or "uint8"
        declared = self.declared.setdefault(
            key, _Declared(dtype, numel, location if isinstance(location, str) else "cpu")
        )
        if declared.dtype != dtype and not (declared.numel == numel == 0):  # torch allows an empty one
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' is used as both {declared.dtype} and {dtype}", code="bad-record"
            )
        offset = 0
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and type(view[1]) is int and view[1] >= 0):
                raise CorruptCheckpointError(
                    f"'{self.path}': malformed storage view {short_repr(view, 80)}", code="bad-record"
                )
            offset = view[1]
        placeholder = StorageRef(key=key, file=self.path, offset=-1, nbytes=0, location=declared.location)
        return PickledStorage(placeholder, dtype, offset)


def _expect(value: Any, expected: int, path: str, what: str) -> None:
    # Compare as exact ints: a crafted header may hold any unpickled value (a numpy array's ``!=`` is not a bool).
    if type(value) is not int or value != expected:
        raise CorruptCheckpointError(
            f"'{path}' starts like a legacy torch file but its {what} is "
            f"{short_repr(value, 80)} (expected {expected!r}). The "
            "file is corrupt or not a torch checkpoint.",
            code="bad-header",
        )


def _locate(
    buf: bytes | memoryview, pos: int, keys: list[Any], storages: _Storages, path: str
) -> tuple[dict[str, StorageRef], int]:
    """Walk the storage section: per key an int64 element count, then the elements."""
    size = len(buf)
    refs: dict[str, StorageRef] = {}
    for key in keys:
        declared = storages.declared.get(key) if isinstance(key, str) else None
        if declared is None:
            raise CorruptCheckpointError(
                f"'{path}': the storage list names {short_repr(key, 80)}, which no tensor uses, so its size is unknown",
                code="bad-record",
            )
        if pos + 8 > size:
            raise CorruptCheckpointError(
                f"'{path}' is truncated: storage '{key}' should start at byte {pos} but the file has {size} bytes. "
                "Re-download or re-save it.",
                code="truncated",
            )
        numel = _I64.unpack_from(buf, pos)[0]
        nbytes = numel * dtypes.itemsize(declared.dtype)
        if numel < 0 or pos + 8 + nbytes > size:
            raise CorruptCheckpointError(
                f"'{path}' is truncated: storage '{key}' needs {nbytes} bytes from byte {pos + 8} but the file "
                f"has {size}. Re-download or re-save it.",
                code="truncated",
            )
        refs[key] = StorageRef(key=key, file=path, offset=pos + 8, nbytes=nbytes, location=declared.location)
        pos += 8 + nbytes
    return refs, pos


@structure
class Stream:
    """The pickles of one legacy stream and where its storages are (offsets relative to the buffer it was read from).

    Attributes:
        magic, proto, info, main, keys: the five pickles.
        refs: storage key -> where its elements are.
        end: offset just past the last storage.
    """

    magic: UnpickleResult
    proto: UnpickleResult
    info: UnpickleResult
    main: UnpickleResult
    keys: UnpickleResult
    refs: dict[str, StorageRef]
    end: int


def read_stream(view: bytes | memoryview, path: str, where: str, run: PickleRunner) -> Stream:
    """Read a legacy stream's five pickles from ``view``, each with ``run``, and locate every storage after them."""
    magic = run(view, f"{where} (magic number)")
    _expect(magic.value, MAGIC_NUMBER, path, "magic number")
    proto = run(view, f"{where} (protocol)", start=magic.end)
    _expect(proto.value, PROTOCOL_VERSION, path, "protocol version")
    info = run(view, f"{where} (sys_info)", start=proto.end)
    storages = _Storages(path)
    main = run(view, where, start=info.end, persistent_load=storages)
    keys = run(view, f"{where} (storage keys)", start=main.end)
    if not isinstance(keys.value, list):
        raise CorruptCheckpointError(f"'{path}': the storage key list is missing", code="bad-header")
    refs, end = _locate(view, keys.end, keys.value, storages, path)
    missing = set(storages.declared) - set(refs)
    if missing:
        raise CorruptCheckpointError(
            f"'{path}': storages {sorted(missing)[:5]} are used by tensors but have no data in the file",
            code="missing-storage",
        )
    return Stream(magic, proto, info, main, keys, refs, end)


def read_embedded(blob: Any, run: PickleRunner) -> EmbeddedStorage:
    """``torch.storage._load_from_bytes(blob)``: the storage that ``pickle.dumps(tensor)`` saved as a legacy
    ``torch.save`` stream, its pickles read with ``run`` (the same restricted unpickler); nothing is loaded or
    called."""
    what = "a storage pickled with pickle.dumps (torch.storage._load_from_bytes)"
    if not isinstance(blob, (bytes, bytearray)):
        raise CorruptCheckpointError(f"{what} holds {short_repr(blob, 60)}, not bytes", code="bad-pickle")
    blob = bytes(blob)
    if not blob.startswith(_EMBEDDED_HEAD):
        # torch.storage._load_from_bytes calls torch.load(weights_only=False) on whatever it is given; torch itself
        # only ever gives it a legacy stream of one storage. Anything else is a way to run torch.load on a payload.
        raise UnsafeCheckpointError(
            f"the pickle calls 'torch.storage._load_from_bytes' on {short_repr(blob[:16], 40)}..., which is not the "
            "legacy torch.save stream of one storage that torch writes there; torch would run "
            "torch.load(weights_only=False) on it, which runs any code inside. Nothing was executed. Do not load "
            "this file with torch.load or pickle either.",
            code="unsafe-global",
        )
    stream = read_stream(blob, "<pickled storage>", what, run)
    storage = stream.main.value
    if not isinstance(storage, PickledStorage) or len(stream.refs) != 1:
        raise CorruptCheckpointError(
            f"{what} holds {short_repr(storage, 60)}, not exactly one storage", code="bad-record"
        )
    ref = stream.refs[storage.ref.key]
    return EmbeddedStorage(ref, storage.dtype, storage.offset, blob=blob)
