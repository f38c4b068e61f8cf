"""The only code that reads tensor bytes: turns records into torch tensors, one read per storage.

Records that share a storage key share one torch storage, so views and tied weights come back sharing memory
exactly as they were saved. Big-endian storages are byte-swapped; compressed zip members are inflated.
"""

from __future__ import annotations

import io
import os
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
    """Inflate the first ``ref.nbytes`` bytes of a compressed zip member (bounded by the member's own sizes)."""
    from .formats.torch_zip import ZIP_ERRORS, read_member

    try:
        handle = open(ref.file, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise CheckpointReadError(f"cannot read '{ref.file}': {exc.strerror or exc}", path=ref.file) from None
    with handle:
        try:
            with zipfile.ZipFile(handle) as zf:
                info = zf.getinfo(ref.member or "")
                data = read_member(zf, handle, info, os.fstat(handle.fileno()).st_size, ref.file, ref.nbytes)
        except KeyError:
            raise CorruptCheckpointError(
                f"'{ref.file}': member '{ref.member}' is no longer in the archive. The file changed since it was "
                "opened; open it again.",
                code="missing-storage",
                path=ref.file,
            ) from None
        except ZIP_ERRORS as exc:
            raise CorruptCheckpointError(
                f"'{ref.file}': compressed member '{ref.member}' cannot be read ({type(exc).__name__}: {exc}). The "
                "file changed since it was opened or is damaged; re-download or re-save it.",
                code="bad-member",
                path=ref.file,
            ) from None
    if len(data) != ref.nbytes:
        raise CorruptCheckpointError(
            f"'{ref.file}': member '{ref.member}' holds {len(data)} bytes, {ref.nbytes} expected. The file changed "
            "since it was opened or is damaged; re-download or re-save it.",
            code="truncated",
            path=ref.file,
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


def _to_storage(buf: bytearray, ref: StorageRef, unit: int) -> torch.UntypedStorage:
    import torch

    if not buf:
        return torch.UntypedStorage(0)
    raw = torch.frombuffer(buf, dtype=torch.uint8)
    if ref.byteorder == "big" and unit > 1:
        if len(buf) % unit:
            raise CorruptCheckpointError(
                f"'{ref.file}': big-endian storage '{ref.key}' holds {len(buf)} bytes, not a whole number of "
                f"{unit}-byte elements, so its byte order cannot be swapped. The file is corrupt; re-save it.",
                code="bad-record",
                path=ref.file,
            )
        raw = raw.view(-1, unit).flip(1).reshape(-1).clone()
    return raw.untyped_storage()


def _swap_unit(dtype: str) -> int:
    info = dtypes.get(dtype)
    return info.itemsize // 2 if info.kind == "complex" else info.itemsize


_INT64_MAX = (1 << 63) - 1


def _check_view(record: TensorRecord) -> None:
    """Refuse views torch cannot represent (negative or 64-bit-overflowing sizes, strides, offset or numel).

    Readers already check that views fit their storage; this guards the torch calls below so a record that slipped
    through (a meta tensor, a zero stride over a huge size) fails as a corrupt file, not as a torch exception.
    """
    shape, stride, offset = record.shape, record.stride, record.storage_offset
    problem = None
    if len(shape) != len(stride):
        problem = f"has {len(shape)} sizes but {len(stride)} strides"
    elif any(type(v) is not int or not 0 <= v <= _INT64_MAX for v in (*shape, *stride, offset)):
        problem = "has a size, stride or offset that is negative or does not fit in 64 bits"
    else:
        numel = 1
        for n in shape:
            numel *= n
        extent = offset + sum((n - 1) * s for n, s in zip(shape, stride) if n)
        if numel * record.itemsize > _INT64_MAX or (extent + 1) * record.itemsize > _INT64_MAX:
            problem = "spans more elements than a 64-bit size can count"
    if problem:
        raise CorruptCheckpointError(
            f"tensor '{record.name}' {problem} (size {shape}, stride {stride}, offset {offset}), so torch cannot "
            "build it. The file is corrupt or was crafted; re-download or re-save it.",
            code="bad-record",
            path=record.storage.file if record.storage else None,
        )


def _build(record: TensorRecord, storage: torch.UntypedStorage | None) -> torch.Tensor:
    """One tensor over its loaded storage (or on the meta device), with torch's refusals as corrupt-file errors."""
    import torch

    dtype = dtypes.to_torch(record.dtype)
    _check_view(record)
    try:
        if storage is None:
            return torch.empty_strided(record.shape, record.stride, dtype=dtype, device="meta")
        tensor = torch.empty(0, dtype=dtype, device=storage.device)
        tensor.set_(storage, record.storage_offset, record.shape, record.stride)
        return tensor
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise CorruptCheckpointError(
            f"torch refused to build tensor '{record.name}' ({record.dtype}, size {record.shape}, stride "
            f"{record.stride}, offset {record.storage_offset}): {exc}. The file is corrupt or was crafted; "
            "re-download or re-save it.",
            code="bad-record",
            path=record.storage.file if record.storage else None,
        ) from None


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
            storage = _to_storage(read_storage_bytes(ref, files), ref, _swap_unit(record.dtype))
            device = _target_device(ref.location, map_location)
            if str(device) != "cpu":
                storage = torch.empty(0, dtype=torch.uint8).set_(storage).to(device).untyped_storage()
            storages[(ref.file, ref.key)] = storage
    finally:
        files.close()

    out: dict[str, torch.Tensor] = {}
    for record in records:
        ref = record.storage
        out[record.name] = _build(record, None if ref is None else storages[(ref.file, ref.key)])
    return out
