"""TorchScript archives of torch 1.0 to 1.2 (``model.json``, ``tensors/``, ``attributes.pkl``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnsupportedCheckpointError
from ..records import Checkpoint
from ..text import quote
from .torch_zip import Archive

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["read_model_json"]


def read_model_json(archive: Archive, root: str, records: dict[str, str], options: ReadOptions) -> Checkpoint:
    """Not read yet: says so."""
    raise UnsupportedCheckpointError(
        f"{quote(archive.path)} is a TorchScript archive of torch 1.0-1.2 (model.json), which torchweights does not "
        "read yet. Load it with torch.jit.load and re-save it with a current torch.",
        code="unsupported-torchscript-model-json",
        path=archive.path,
    )
