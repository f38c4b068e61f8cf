"""Zero-copy tensors over private (copy-on-write) mappings of checkpoint files: ``tw.load(mmap=True)`` and the
mapped path of ``load_into``.

Used by :func:`torchweights.storage.read.materialize` (``mmap=True``) and by ``load_into`` directly. A storage is
mapped when it is stored uncompressed, little-endian (or one byte per element) and aligned; the file's size is
checked first, so a file truncated since it was opened is an error, not a SIGBUS. The CRC-32 of mapped storages is
computed in parallel over the mapping (:meth:`Mapper.check`). torch is imported inside the functions, never at
import time.
"""

from __future__ import annotations

import mmap as _mmap
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .. import dtypes
from ..errors import CheckpointReadError, CorruptCheckpointError
from ..records import StorageRef, TensorRecord
from ..text import quote
from .crc import crc32
from .files import open_fd
from .results import CrcMismatch, crc_error, storage_label
from .settings import current_settings
from .stamps import check_unchanged
from .tensors import build_tensor, check_record_view, needs_flags

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Mapper", "mapped_tensors"]


class Mapper:
    """Private (copy-on-write) mappings of whole files; a storage becomes a zero-copy view when it can."""

    def __init__(self) -> None:
        self.maps: dict[str, _mmap.mmap] = {}
        self.stats: dict[str, os.stat_result] = {}
        self.storages: dict[tuple[str, str], torch.UntypedStorage] = {}

    def mapping(self, ref: StorageRef) -> tuple[_mmap.mmap | None, int]:
        """The mapping of ``ref``'s file (made on first use) and the file's size; refused if the file changed since
        it was opened (the ``fstat`` that sizes the mapping checks it)."""
        path = ref.file
        if path not in self.stats:
            fd = open_fd(path)
            try:
                st = os.fstat(fd)
                check_unchanged(fd, ref, st)
                if st.st_size:
                    try:
                        self.maps[path] = _mmap.mmap(fd, st.st_size, access=_mmap.ACCESS_COPY)
                    except (OSError, ValueError) as exc:
                        raise CheckpointReadError(f"cannot map {quote(path)}: {exc}", path=path) from None
                self.stats[path] = st
            finally:
                os.close(fd)
        st = self.stats[path]
        check_unchanged(-1, ref, st)
        return self.maps.get(path), st.st_size

    def storage(self, ref: StorageRef, itemsize: int, unit: int) -> torch.UntypedStorage | None:
        """The storage as a view of the mapping, or None when it must be read (compressed, big-endian, unaligned)."""
        import torch

        key = (ref.file, ref.key)
        found = self.storages.get(key)
        if found is not None:
            return found
        if ref.compression or (ref.byteorder == "big" and unit > 1) or ref.offset % max(1, min(itemsize, 16)):
            return None
        if ref.nbytes == 0:
            found = torch.UntypedStorage(0)
        else:
            buf, size = self.mapping(ref)
            if buf is None or ref.offset + ref.nbytes > size:
                raise CorruptCheckpointError(
                    f"{quote(ref.file)} has {size} bytes but {storage_label(ref)} ends at byte "
                    f"{ref.offset + ref.nbytes}: "
                    "the file was truncated since it was opened. Mapping it would crash the process (SIGBUS) on "
                    "first access; open it again, or re-download it.",
                    code="truncated",
                    path=ref.file,
                )
            found = torch.frombuffer(buf, dtype=torch.uint8, count=ref.nbytes, offset=ref.offset).untyped_storage()
        self.storages[key] = found
        return found

    def check(self, refs: Iterable[StorageRef], names: Mapping[tuple[str, str], list[str]]) -> list[CrcMismatch]:
        """CRC-32 of mapped storages (this touches every page once), in parallel."""
        todo = [r for r in refs if r.crc32 is not None and (r.file, r.key) in self.storages]
        if not todo:
            return []

        def crc(ref: StorageRef) -> int:
            buf = self.maps.get(ref.file)
            storage = self.storages[(ref.file, ref.key)]
            if buf is None or not ref.nbytes:
                return 0
            view = memoryview(buf)[ref.offset : ref.offset + ref.nbytes]
            try:
                return crc32(view, 0, storage.data_ptr())
            finally:
                view.release()

        workers = current_settings().worker_count()
        if len(todo) > 1 and workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="torchweights-crc") as pool:
                values = list(pool.map(crc, todo))
        else:
            values = [crc(r) for r in todo]
        return [
            CrcMismatch(ref, ref.crc32, value, tuple(names.get((ref.file, ref.key), ())))
            for ref, value in zip(todo, values)
            if ref.crc32 is not None and value != ref.crc32
        ]


def mapped_tensors(records: Iterable[TensorRecord], *, check_crc: bool = True) -> dict[str, torch.Tensor]:
    """Zero-copy CPU tensors over a private mapping of their files, for the records that can be mapped.

    A record can be mapped when its storage is stored uncompressed, little-endian (or one byte per element) and
    aligned to its element size, and its values are the stored ones (no conjugate or negative bit); the others are
    absent from the result (read them with :func:`fill`). Writes to the tensors are private to the process
    (copy-on-write) and never reach the file; the file must not change while they live (its size is checked first,
    so a file truncated since it was opened is an error, not a SIGBUS).

    Raises:
        CorruptCheckpointError: ``bad-crc`` (with ``check_crc``) when a mapped storage does not match its CRC-32;
            ``truncated`` when the file is shorter than its records.
    """
    mapper = Mapper()
    out: dict[str, torch.Tensor] = {}
    refs: dict[tuple[str, str], StorageRef] = {}
    names: dict[tuple[str, str], list[str]] = {}
    for record in records:
        ref = record.storage
        if ref is None or needs_flags(record):
            continue  # flagged tensors are read with fill, which applies their bits to the values
        check_record_view(record)
        storage = mapper.storage(ref, record.itemsize, dtypes.swap_unit(record.dtype))
        if storage is None:
            continue
        out[record.name] = build_tensor(record, storage)
        refs[(ref.file, ref.key)] = ref
        names.setdefault((ref.file, ref.key), []).append(record.name)
    if check_crc:
        bad = mapper.check(refs.values(), names)
        if bad:
            raise crc_error(bad, "Nothing was loaded.")
    return out
