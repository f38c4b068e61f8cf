"""Legacy torch files (``torch.save(..., _use_new_zipfile_serialization=False)``, and everything before 1.6).

The file is one legacy ``torch.save`` stream (:mod:`~torchweights.formats._legacy_stream`): five pickles, then the
storages. Storage offsets are found by walking their headers, never by reading the data.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..records import Checkpoint, StorageRef
from ..unpickle.values import PickledTensor
from ._files import mapped
from ._legacy_stream import read_stream
from ._pickled import assemble, run_pickle

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["read", "storage_refs"]


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a legacy torch stream's pickles and locate every storage; no tensor bytes are read."""
    with mapped(path) as view:
        stream = read_stream(view, path, f"'{path}'", lambda data, where, **at: run_pickle(data, options, where, **at))
    refs = stream.refs

    def resolve(tensor: PickledTensor) -> tuple[StorageRef, int]:
        assert tensor.storage is not None
        return refs[tensor.storage.ref.key], 0

    metadata: dict[str, Any] = {"protocol_version": stream.proto.value}
    if isinstance(stream.info.value, dict):
        metadata["sys_info"] = stream.info.value
    if stream.end != os.path.getsize(path):
        metadata["trailing_bytes"] = os.path.getsize(path) - stream.end
    return assemble(
        path,
        "torch-legacy",
        stream.main,
        options,
        where=f"'{path}'",
        files=(path,),
        metadata=metadata,
        globals_seen=stream.magic.globals | stream.info.globals | stream.keys.globals,
        resolve=resolve,
    )


def storage_refs(path: str, options: ReadOptions) -> tuple[int, dict[str, StorageRef]]:
    """Where the main pickle of a legacy stream starts, and every storage of the stream by key (for a loader that
    runs that pickle itself: :func:`torchweights.load_model`, after :func:`read` accepted the file)."""
    with mapped(path) as view:
        stream = read_stream(view, path, f"'{path}'", lambda data, where, **at: run_pickle(data, options, where, **at))
    return stream.info.end, dict(stream.refs)
