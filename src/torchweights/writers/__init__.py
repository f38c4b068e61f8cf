"""Writers for ``convert``: each streams tensors from callables that yield their bytes, never holding a checkpoint.

* :mod:`.safetensors`: one ``.safetensors`` file (header JSON with ``__metadata__``, padded to 8 bytes).
* :mod:`.torch_zip`: a plain state-dict ``torch.save`` zip file, readable with ``torch.load(weights_only=True)``.
* :mod:`.atomic`: the transaction every output goes through: temporary files in the destination folder, fsync,
  atomic rename, and removal of everything written when anything fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import WriteError

__all__ = ["write_exactly"]


def write_exactly(write: Callable[[bytes], object], pieces: Iterable[bytes], nbytes: int, what: str) -> None:
    """Write the pieces of one tensor or storage, which must come to exactly ``nbytes`` bytes (``what`` names it).

    Raises:
        WriteError: the source produced more or fewer bytes (it changed while it was read); the caller's
            transaction then removes everything written.
    """
    written = 0
    for piece in pieces:
        written += len(piece)
        if written > nbytes:
            break
        write(piece)
    if written != nbytes:
        raise WriteError(
            f"{what} produced {written:,} bytes where {nbytes:,} were expected; nothing was kept. The source changed "
            "while it was read; run again.",
            code="write-failed",
        )
