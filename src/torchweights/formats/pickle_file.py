"""Plain pickle files (``pickle.dump``): read without executing.

Tensors pickled with plain ``pickle`` (``pickle.dumps(tensor)`` saves each storage as
``torch.storage._load_from_bytes(<legacy torch.save stream>)``) are read in place from those streams. A pickle that
holds no tensor is data: no records, everything in ``extras``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    return assemble(path, "pickle", result, options, where=f"'{path}'", files=(path,), metadata={})
