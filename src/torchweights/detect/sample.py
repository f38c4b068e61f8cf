"""What every sniffer sees (:class:`Sample`) and the file access detection shares: positioned reads that turn
operating-system errors into :class:`~torchweights.errors.CheckpointReadError`."""

from __future__ import annotations

from ..errors import CheckpointReadError
from ..structs import structure
from ..text import quote

__all__ = ["Sample", "read_at", "read_failed"]


@structure(frozen=True)
class Sample:
    """What every sniffer sees: the path, its size and its first 4 KiB."""

    path: str
    size: int
    head: bytes


def read_at(path: str, offset: int, size: int) -> bytes:
    """Read at most ``size`` bytes of ``path`` starting at ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except OSError as exc:
        raise read_failed(path, exc) from exc


def read_failed(path: str, exc: OSError) -> CheckpointReadError:
    """The error for a file the operating system will not let us read."""
    if isinstance(exc, PermissionError):
        why = "permission denied"
        fix = "make it readable (e.g. `chmod u+r`), or run as a user that can read it"
    else:
        why = exc.strerror or str(exc)
        fix = "check the disk or network mount and retry, or copy the file to a local disk first"
    return CheckpointReadError(f"Cannot read {quote(path)}: {why}. Fix: {fix}.", code="read-failed", path=path)
