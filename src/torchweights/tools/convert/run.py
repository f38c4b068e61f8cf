"""``tw.convert`` (:func:`convert`): move the weights of any readable checkpoint into safetensors (or a plain torch
file, or a torch.distributed.checkpoint folder), streaming, atomically, and verified bit for bit.

The algorithm, in the order it runs:

1. **open** the source (any format :func:`torchweights.open` reads; nothing from it is executed) and hash its
   files (sha256, recorded in the output's metadata);
2. **choose** the weights: the container (``state_dict``, ``model``...; see :mod:`torchweights.plan.selection`) and
   the keys matching ``select``; everything left out is listed in :attr:`ConvertReport.notes`;
3. **plan** the outputs from names, dtypes and shapes alone: tensors that are the same view of the same storage
   (tied weights) are written once and recorded as aliases, the way ``safetensors.torch.save_model`` does
   (``__metadata__[alias] = kept``); other views are written as their logical contents; shards are filled in
   order up to ``max_shard_size``; every output name is known, and checked to be free, before a byte is written;
4. **write** each output to a temporary file in the destination folder, tensor by tensor, from bounded reads of
   the source (:mod:`torchweights.storage.contents`): peak memory is one chunk for contiguous tensors, one view span for
   strided views, one tensor for casts; no torch unless ``dtype`` asks for a cast; the CRC-32 of every source zip
   member is checked as ``tw.load`` checks it (``bad-crc``: nothing is kept), so damage is never laundered;
5. **verify** each output (unless ``verify=False``): re-read it with the strict readers and compare every tensor,
   byte for byte, with a fresh read of the source;
6. **commit**: fsync and rename every output into place; on any error before or during this step (including
   ``KeyboardInterrupt``) every temporary file and every output already renamed is removed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any

from ...errors import RuleError
from ...limits import DEFAULT_LIMITS, Limits
from ...plan.selection import Selection, select_weights
from ...progress import ProgressCallback, metered
from ...records import Checkpoint
from ...text import quote
from ...writers.atomic import Outputs
from .plan import (
    META_PREFIX,
    Destination,
    Item,
    dcp_extras,
    dcp_paths,
    destination,
    json_extras,
    parse_size,
    plan_items,
    refuse_unwritable,
    target_dtype,
    views_note,
)
from .report import ConvertReport
from .write import write_dcp, write_safetensors, write_torch

__all__ = ["convert"]


def convert(
    src: str | os.PathLike[str] | Checkpoint,
    dst: str | os.PathLike[str],
    *,
    to: str = "safetensors",
    max_shard_size: int | str = "5GB",
    dtype: Any = None,
    select: Iterable[str] | str | None = None,
    container: str = "auto",
    force: bool = False,
    verify: bool = True,
    extras: bool = True,
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> ConvertReport:
    """Write the weights of ``src`` to ``dst`` as safetensors (or a plain torch file, or a DCP folder), streaming
    and verified.

    Args:
        src: any checkpoint :func:`torchweights.open` reads, or an opened :class:`Checkpoint`.
        dst: for safetensors, a ``.safetensors`` file, or a folder (``model.safetensors``, or
            ``model-00001-of-0000N.safetensors`` shards and ``model.safetensors.index.json``); for torch, a
            ``.pt``/``.pth``/``.bin`` file, or a folder (``pytorch_model.bin``); for dcp, the checkpoint folder
            (it must not exist, unless ``force``).
        to: ``"safetensors"``, ``"torch"`` (a plain state dict that ``torch.load(weights_only=True)`` reads;
            storages and views are kept as they are, shared storages stay shared) or ``"dcp"`` (a
            torch.distributed.checkpoint folder that ``torch.distributed.checkpoint.load`` reads on any number of
            ranks, and ``dcp_to_torch_save`` too: ``.metadata`` and ``__0_N.distcp`` files, each tensor one chunk;
            names are the dotted keys ``tw.load`` gives; tied tensors point at one stored copy; the folder is
            built beside its name and renamed into place once verified, replacing an existing one with ``force``).
        max_shard_size: most tensor bytes per safetensors shard or ``.distcp`` file (``"5GB"``, ``"500MiB"``,
            bytes); a bigger tensor gets a shard of its own. Torch output is always one file.
        dtype: cast floating-point tensors to this dtype (``"bfloat16"``, ``torch.float16``); others keep theirs.
            Needs torch; None (default) keeps every dtype and needs no torch.
        select: glob patterns (``"encoder.*"``) of the keys to write; None writes all.
        container: ``"auto"`` finds the weights (``state_dict``, ``model``...); a dotted path forces one; ``""``
            takes the whole file.
        force: replace existing outputs (and remove earlier shards of the same name that would be left over).
        verify: re-read every output and compare each tensor bit for bit with the source (default).
        extras: save non-tensor data that is plain (epoch, hyper-parameters) as ``<stem>.extras.json``; in a
            DCP folder as non-tensor items instead (dicts flattened into dotted names, as ``dcp.save`` does).
        allow_globals: pickle globals you trust (see :func:`torchweights.open`).
        limits: resource bounds for hostile files.
        progress: ``progress(done_bytes, total_bytes)``: the sources hashed (sha256, recorded in the output), the
            tensor bytes written, and with ``verify`` read again; see :mod:`torchweights.progress`.

    Returns:
        A :class:`ConvertReport`.

    Raises:
        RuleError: an option cannot be followed (unknown ``to``, bad size or dtype, dtypes safetensors cannot
            hold: complex128, complex32, fp8 ``fnuz`` variants, quantized).
        WriteError: an output exists (without ``force``), cannot be written, or differs from the source when
            re-read; nothing was kept.
        TorchWeightsError: the source cannot be read.
    """
    from ...api import open as open_checkpoint

    started = time.perf_counter()
    if to not in ("safetensors", "torch", "dcp"):
        raise RuleError(f"to={to!r} is not 'safetensors', 'torch' or 'dcp'.", code="bad-format")
    limit = parse_size(max_shard_size)
    target = target_dtype(dtype)
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src, allow_globals=allow_globals, limits=limits)
    selection = select_weights(ckpt, container, select)
    notes = list(selection.notes)
    items, aliases = plan_items(selection, target, notes)
    if not items:
        raise RuleError(
            f"nothing to write: no tensor of {quote(ckpt.path)} is left after choosing the weights "
            f"({selection.reason}){'; ' + '; '.join(notes) if notes else ''}. Pass another container= or select=.",
            code="nothing-selected",
        )
    refuse_unwritable(items, ckpt.path, to)
    if any(item.cast for item in items):
        _need_torch()
    dest = destination(os.fspath(dst), to)
    sources = [os.path.abspath(f) for f in (ckpt.files or (ckpt.path,))]
    nbytes = sum(item.nbytes for item in items)
    hashed = sum(os.path.getsize(f) for f in sources if os.path.isfile(f))
    with metered(progress, hashed + nbytes * (2 if verify else 1)):
        return _convert(
            ckpt, selection, notes, items, aliases, dest, sources, to, limit, verify, force, extras, started
        )


def _convert(
    ckpt: Checkpoint,
    selection: Selection,
    notes: list[str],
    items: list[Item],
    aliases: dict[str, str],
    dest: Destination,
    sources: list[str],
    to: str,
    limit: int,
    verify: bool,
    force: bool,
    extras: bool,
    started: float,
) -> ConvertReport:
    """The conversion itself, once checked and planned (see :func:`convert`), under the progress meter."""
    from ..verify import sha256_file

    digests = {os.path.basename(f): sha256_file(f) for f in sources if os.path.isfile(f)}
    source_sha = next(iter(digests.values()), "")
    report = ConvertReport(
        source=ckpt.path,
        source_format=ckpt.format,
        source_sha256=source_sha,
        to=to,
        container=selection.name,
        container_reason=selection.reason,
        tensors=len(items),
        nbytes=sum(item.nbytes for item in items),
        aliases=dict(aliases),
        cast=sum(1 for item in items if item.cast),
        notes=notes,
    )
    meta = {
        "format": "pt",
        f"{META_PREFIX}source": os.path.basename(ckpt.path.rstrip("/" + os.sep)),
        f"{META_PREFIX}source_format": ckpt.format,
        f"{META_PREFIX}source_sha256": source_sha,
    }
    if len(digests) > 1:
        meta[f"{META_PREFIX}source_files_sha256"] = json.dumps(digests, sort_keys=True)
    plain_extras = json_extras(ckpt, notes) if extras else {}
    with Outputs(force=force) as outputs:
        if to == "dcp":
            paths = dcp_paths(selection, items, aliases)
            items_extras = dcp_extras(plain_extras, paths, notes)
            written = write_dcp(dest, items, aliases, paths, items_extras, limit, verify, force, sources)
            plain_extras = {}
        elif to == "safetensors":
            note = views_note(items)
            if note:
                notes.append(note)
            written = write_safetensors(outputs, dest, items, aliases, meta, limit, verify, sources, plain_extras)
        else:
            written = write_torch(outputs, dest, items, aliases, verify, sources, plain_extras, meta)
        outputs.commit()
        if verify and dest.index in written:
            from ...formats import ReadOptions, open_path

            open_path(dest.index, ReadOptions())  # the set as a loader sees it: index and shards agree
    for stale in dest.stale(set(written)) if force else ():
        try:
            os.unlink(stale)
            notes.append(f"removed {quote(stale)}, left over from an earlier conversion")
        except OSError:
            notes.append(f"could not remove {quote(stale)}, left over from an earlier conversion; delete it")
    report.files = written
    report.extras_file = dest.extras if plain_extras else None
    report.verified = verify
    report.seconds = time.perf_counter() - started
    return report


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - exercised only without torch
        raise RuleError(
            "dtype=... casts tensors, which needs torch, and torch is not installed. Install torch, or convert "
            "without dtype (no torch needed) and cast later.",
            code="needs-torch",
        ) from None
