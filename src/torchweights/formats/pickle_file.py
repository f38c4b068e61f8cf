"""Plain pickle files (``pickle.dump``): read without executing.

Tensors pickled with plain ``pickle`` (``pickle.dumps(tensor)`` saves each storage as
``torch.storage._load_from_bytes(<legacy torch.save stream>)``) are read in place from those streams. A pickle that
holds no tensor is data: no records, everything in ``extras``. Bytes after the pickle's ``STOP`` are refused
(``pickle-trailing-data``): ``pickle.dump`` writes none, and a zip glued there is a polyglot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CorruptCheckpointError
from ..records import Checkpoint
from ._files import mapped
from ._pickled import assemble, run_pickle

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["read"]


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a plain pickle: its tensors as records (none for a pickle of plain data), the rest as extras."""
    with mapped(path) as view:
        result = run_pickle(view, options, f"'{path}'")
        size = len(view)
    if result.end != size:
        # pickle.dump writes nothing after STOP; bytes there are another file glued on (a zip: a polyglot)
        raise CorruptCheckpointError(
            f"'{path}' is a pickle of {result.end} bytes followed by {size - result.end} more bytes that are not part "
            "of it (another file appended, such as a zip archive that other readers would see instead). It is "
            "refused; re-download the file, or cut it to its first "
            f"{result.end} bytes if you know the rest does not belong there.",
            code="pickle-trailing-data",
            path=path,
        )
    return assemble(path, "pickle", result, options, where=f"'{path}'", files=(path,), metadata={})
