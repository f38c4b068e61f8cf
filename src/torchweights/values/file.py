"""``tw.stats(path)``: the statistics of every tensor of a checkpoint, streamed one tensor at a time.

Each tensor is read by the read engine (:func:`torchweights.storage.read.materialize`, exactly as ``tw.load``
reads it), reduced in bounded chunks (:func:`~torchweights.values.stats.tensor_stats`) and dropped before the next
is read: memory stays at one tensor plus a chunk of scratch, whatever the size of the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..limits import DEFAULT_LIMITS, Limits
from .stats import CHUNK_BYTES, StatsReport, TensorStats

__all__ = ["stats"]


def stats(
    path: str | os.PathLike[str],
    *,
    select: Iterable[str] | str | None = None,
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    check_crc: bool = True,
    chunk_bytes: int = CHUNK_BYTES,
) -> StatsReport:
    """Statistics per tensor of a checkpoint: min, max, mean, std, abs-max, zero fraction, NaN and Inf counts.

    Statistics are over the finite values (NaN and Inf are counted, not averaged); ``std`` is the sample standard
    deviation (``torch.std``'s default, ``correction=1``). See :mod:`torchweights.values.stats` for every rule.

    Args:
        path: a checkpoint (any format :func:`torchweights.open` reads).
        select: glob patterns of the tensors to describe (as :func:`torchweights.load` takes them); None: all.
        allow_globals: pickle globals you trust (see :func:`torchweights.open`).
        limits: resource bounds for hostile files.
        check_crc: compare each zip member's bytes with its recorded CRC-32 as they are read.
        chunk_bytes: most scratch memory a reduction uses at once (the tensor being described comes on top).

    Returns:
        A :class:`~torchweights.values.stats.StatsReport`, tensors in file order.

    Raises:
        TorchWeightsError: the file cannot be read safely (see :func:`torchweights.open`); ``RuleError`` when a
            ``select`` pattern matches nothing.
    """
    import time

    from ..api import open as open_checkpoint
    from ..api import refuse_allowed_modules, selected
    from ..storage.read import materialize
    from .stats import tensor_stats

    started = time.perf_counter()
    ckpt = open_checkpoint(path, allow_globals=allow_globals, limits=limits)
    refuse_allowed_modules(ckpt)
    records = ckpt.records if select is None else selected(ckpt, select)[0]
    found: list[TensorStats] = []
    for name, record in records.items():
        if not record.has_data:  # saved without data (meta): nothing to read
            found.append(TensorStats(name, record.dtype, tuple(record.shape), record.numel))
            continue
        tensor = materialize([record], check_crc=check_crc)[name]
        found.append(tensor_stats(name, tensor, chunk_bytes=chunk_bytes))
        del tensor
    return StatsReport(
        path=os.fspath(path), format=ckpt.format, tensors=tuple(found), seconds=time.perf_counter() - started
    )
