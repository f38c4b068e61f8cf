"""Plain pickle files (``pickle.dump``): read without executing; tensors need a torch format to have bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotACheckpointError
from ..records import Checkpoint
from ._files import mapped
from ._pickled import assemble, run_pickle

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["read"]


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a plain pickle; raise ``no-tensors`` when it holds no tensor (it is then data, not weights)."""
    with mapped(path) as view:
        result = run_pickle(view, options, f"'{path}'")
    ckpt = assemble(path, "pickle", result, options, where=f"'{path}'", files=(path,), metadata={})
    if not ckpt.records:
        kinds = ", ".join(sorted({type(v).__name__ for v in ckpt.extras.values()})[:5]) or "nothing"
        raise NotACheckpointError(
            f"'{path}' is a plain pickle holding no tensors ({kinds}), so it is not a weights file. If it should "
            "hold weights, it was saved from the wrong object; save the model with torch.save(model.state_dict(), "
            "path).",
            code="no-tensors",
            path=path,
        )
    return ckpt
