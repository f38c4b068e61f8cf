"""What a read reports: per-storage CRC-32 results, and how errors name a storage.

The read engine (:mod:`torchweights.storage.engine`), the mappings (:mod:`torchweights.storage.mapping`), the
torch-free reads (:mod:`torchweights.storage.raw`) and the entry points all report through here; it imports neither
torch nor the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field

from ..errors import CorruptCheckpointError
from ..records import StorageRef
from ..structs import structure
from ..text import plural, quote, shorten_list

__all__ = ["CrcMismatch", "FillResult", "crc_error", "not_whole_elements", "storage_label"]


@structure(frozen=True)
class CrcMismatch:
    """One storage whose bytes do not match the CRC-32 its zip member records."""

    ref: StorageRef
    expected: int
    actual: int
    tensors: tuple[str, ...]

    def describe(self) -> str:
        """``member 'archive/data/3' (tensor 'fc.weight')``."""
        what = f"member {quote(self.ref.member)}" if self.ref.member else f"storage {quote(self.ref.key)}"
        names = shorten_list((quote(n) for n in self.tensors), 4)
        return (
            f"{what} ({plural(len(self.tensors), 'tensor')} {names}): CRC-32 {self.actual:08x}, "
            f"recorded {self.expected:08x}"
        )


@structure
class FillResult:
    """What one :func:`fill` did.

    Attributes:
        bytes_read: bytes read from the checkpoint files (including bytes read only for the CRC check).
        crc_checked: storages whose CRC-32 was checked.
        bad_crc: storages whose CRC-32 did not match (their tensors were written anyway).
    """

    bytes_read: int = 0
    crc_checked: int = 0
    bad_crc: list[CrcMismatch] = field(default_factory=list)


#: How to get the bytes anyway, where the API has ``check_crc``.
SKIP_CRC = "If you trust it as it is and want the bytes anyway: check_crc=False."


def crc_error(bad: Sequence[CrcMismatch], consequence: str, remedy: str = SKIP_CRC) -> CorruptCheckpointError:
    """The ``bad-crc`` error for every mismatching storage at once, ending with what happened to the destination
    (``consequence``) and how to read the bytes anyway (``remedy``)."""
    path = bad[0].ref.file
    lines = "\n".join(f"  {b.describe()}" for b in bad)
    return CorruptCheckpointError(
        f"{quote(path)}: {plural(len(bad), 'storage')} {'does' if len(bad) == 1 else 'do'} not match the CRC-32 "
        f"checksum recorded in the zip archive:\n{lines}\nThe bytes changed after the file was written (bit rot, an "
        f"interrupted download or copy). {consequence} Re-download or re-save the file. {remedy}",
        code="bad-crc",
        path=path,
    )


def storage_label(ref: StorageRef) -> str:
    """How messages name a storage: its key, and its zip member when it has one."""
    return f"storage {quote(ref.key)}" + (f" (member {quote(ref.member)})" if ref.member else "")


def not_whole_elements(ref: StorageRef, unit: int) -> CorruptCheckpointError:
    """The error for a big-endian storage that is not a whole number of ``unit``-byte elements (no swap possible)."""
    return CorruptCheckpointError(
        f"{quote(ref.file)}: big-endian storage {quote(ref.key)} holds {ref.nbytes} bytes, not a whole number of "
        f"{unit}-byte elements, so its byte order cannot be swapped. The file is corrupt; re-save it.",
        code="bad-record",
        path=ref.file,
    )
