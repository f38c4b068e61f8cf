"""Legacy torch files (``torch.save(..., _use_new_zipfile_serialization=False)``, and everything before 1.6).

The file is a sequence of pickles: the magic number, the protocol version (1001), a ``sys_info`` dict, the main
object (storages as persistent ids ``('storage', type, root_key, location, numel, view)``), the sorted list of
storage keys, and then, per key in that order, an 8-byte little-endian element count followed by the raw
little-endian elements. Storage offsets are found by walking those headers, never by reading the data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..containers import short_repr
from ..errors import CorruptCheckpointError
from ..records import Checkpoint, StorageRef
from ..unpickle import Global, PickledStorage, PickledTensor, StorageType, Stub
from ._files import mapped
from ._pickled import assemble, run_pickle

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["MAGIC_NUMBER", "read"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
_I64 = struct.Struct("<q")


@dataclass
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
        if declared.dtype != dtype:
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
    buf: memoryview, pos: int, keys: list[Any], storages: _Storages, path: str
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


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a legacy torch stream's pickles and locate every storage; no tensor bytes are read."""
    with mapped(path) as view:
        where = f"'{path}'"
        magic = run_pickle(view, options, f"{where} (magic number)")
        _expect(magic.value, MAGIC_NUMBER, path, "magic number")
        proto = run_pickle(view, options, f"{where} (protocol)", start=magic.end)
        _expect(proto.value, PROTOCOL_VERSION, path, "protocol version")
        info = run_pickle(view, options, f"{where} (sys_info)", start=proto.end)
        storages = _Storages(path)
        main = run_pickle(view, options, where, start=info.end, persistent_load=storages)
        keys = run_pickle(view, options, f"{where} (storage keys)", start=main.end)
        if not isinstance(keys.value, list):
            raise CorruptCheckpointError(f"'{path}': the storage key list is missing", code="bad-header")
        refs, end = _locate(view, keys.end, keys.value, storages, path)
    missing = set(storages.declared) - set(refs)
    if missing:
        raise CorruptCheckpointError(
            f"'{path}': storages {sorted(missing)[:5]} are used by tensors but have no data in the file",
            code="missing-storage",
        )

    def resolve(tensor: PickledTensor) -> tuple[StorageRef, int]:
        assert tensor.storage is not None
        return refs[tensor.storage.ref.key], 0

    metadata: dict[str, Any] = {"protocol_version": proto.value}
    if isinstance(info.value, dict):
        metadata["sys_info"] = info.value
    if end != os.path.getsize(path):
        metadata["trailing_bytes"] = os.path.getsize(path) - end
    return assemble(
        path,
        "torch-legacy",
        main,
        options,
        where=where,
        files=(path,),
        metadata=metadata,
        globals_seen=magic.globals | info.globals | keys.globals,
        resolve=resolve,
    )
