"""The only code that reads tensor bytes: turns records into torch tensors, one read per storage.

Records that share a storage key share one torch storage, so views and tied weights come back sharing memory
exactly as they were saved. Big-endian storages are byte-swapped; compressed zip members are inflated.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import dtypes
from .errors import CheckpointReadError, CorruptCheckpointError
from .records import StorageRef, TensorRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["materialize", "read_storage_bytes"]


class _Files:
    """Open file handles, one per path, closed together."""

    def __init__(self) -> None:
        self.handles: dict[str, io.BufferedReader] = {}

    def get(self, path: str) -> io.BufferedReader:
        handle = self.handles.get(path)
        if handle is None:
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise CheckpointReadError(f"cannot read '{path}': {exc.strerror or exc}", path=path) from None
            self.handles[path] = handle
        return handle

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


def read_storage_bytes(ref: StorageRef, files: _Files | None = None) -> bytearray:
    """Read one storage's bytes (inflating a compressed zip member) into a new writable buffer."""
    own = files is None
    files = files or _Files()
    try:
        if ref.compression:
            return _read_member(ref)
        buf = bytearray(ref.nbytes)
        handle = files.get(ref.file)
        handle.seek(ref.offset)
        got = handle.readinto(buf) if ref.nbytes else 0
        if got != ref.nbytes:
            raise CorruptCheckpointError(
                f"'{ref.file}' ended after {got} of the {ref.nbytes} bytes of storage '{ref.key}' (from byte "
                f"{ref.offset}). The file is truncated or changed since it was opened; re-download it.",
                code="truncated",
                path=ref.file,
            )
        return buf
    finally:
        if own:
            files.close()


def _read_member(ref: StorageRef) -> bytearray:
    try:
        with zipfile.ZipFile(ref.file) as zf, zf.open(ref.member or "") as member:
            data = member.read(ref.nbytes)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError) as exc:
        raise CorruptCheckpointError(
            f"'{ref.file}': compressed member '{ref.member}' cannot be read ({exc}). Re-download or re-save the file.",
            code="bad-member",
            path=ref.file,
        ) from None
    if len(data) != ref.nbytes:
        raise CorruptCheckpointError(
            f"'{ref.file}': member '{ref.member}' holds {len(data)} bytes, {ref.nbytes} expected", code="truncated"
        )
    return bytearray(data)


def _target_device(location: str, map_location: Any) -> Any:
    if map_location is None:
        return location
    if isinstance(map_location, Mapping):
        return map_location.get(location, location)
    if callable(map_location):
        return map_location(location)
    return map_location


def _to_storage(buf: bytearray, byteorder: str, unit: int) -> torch.UntypedStorage:
    import torch

    if not buf:
        return torch.UntypedStorage(0)
    raw = torch.frombuffer(buf, dtype=torch.uint8)
    if byteorder == "big" and unit > 1:
        raw = raw.view(-1, unit).flip(1).reshape(-1).clone()
    return raw.untyped_storage()


def _swap_unit(dtype: str) -> int:
    info = dtypes.get(dtype)
    return info.itemsize // 2 if info.kind == "complex" else info.itemsize


def materialize(records: Iterable[TensorRecord], *, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Read the bytes of every record into tensors, one read per storage, keeping shared storages shared.

    Args:
        records: the records to load.
        map_location: target device (``"cpu"``, ``"cuda:0"``, ``torch.device``), a mapping from saved location to
            target, a callable taking the saved location, or None to keep the saved location.

    Returns:
        ``{record.name: tensor}`` in the order of ``records``.
    """
    import torch

    records = list(records)
    storages: dict[tuple[str, str], torch.UntypedStorage] = {}
    files = _Files()
    try:
        order = sorted(
            {(r.storage.file, r.storage.key): r for r in records if r.storage is not None}.values(),
            key=lambda r: (r.storage.file, r.storage.offset) if r.storage else ("", 0),
        )
        for record in order:
            ref = record.storage
            assert ref is not None
            storage = _to_storage(read_storage_bytes(ref, files), ref.byteorder, _swap_unit(record.dtype))
            device = _target_device(ref.location, map_location)
            if str(device) != "cpu":
                storage = torch.empty(0, dtype=torch.uint8).set_(storage).to(device).untyped_storage()
            storages[(ref.file, ref.key)] = storage
    finally:
        files.close()

    out: dict[str, torch.Tensor] = {}
    for record in records:
        dtype = dtypes.to_torch(record.dtype)
        if record.storage is None:
            out[record.name] = torch.empty_strided(record.shape, record.stride, dtype=dtype, device="meta")
            continue
        storage = storages[(record.storage.file, record.storage.key)]
        tensor = torch.empty(0, dtype=dtype, device=storage.device)
        tensor.set_(storage, record.storage_offset, record.shape, record.stride)
        out[record.name] = tensor
    return out
