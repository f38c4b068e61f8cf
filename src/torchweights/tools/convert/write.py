"""Writing a conversion's outputs: safetensors files (sharded, with their index) or one plain torch file, and the
extras JSON, each to a temporary file of :class:`~torchweights.writers.atomic.Outputs`, or a
torch.distributed.checkpoint folder built beside its final name (:class:`~torchweights.writers.atomic.OutputFolder`);
each verified before commit."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ...errors import WriteError
from ...formats.safetensors import contiguous_strides
from ...storage.contents import span
from ...text import quote_list
from ...writers import dcp as dcp_writer
from ...writers import safetensors as st_writer
from ...writers import torch_zip as torch_writer
from ...writers.atomic import OutputFolder, Outputs
from .plan import META_PREFIX, Destination, Item, cut_shards
from .stream import chunk_source, span_source, verify_dcp, verify_safetensors, verify_torch

__all__ = ["write_dcp", "write_safetensors", "write_torch"]


def _check_free(outputs: Outputs, finals: list[str], dest: Destination, sources: list[str]) -> None:
    """Refuse outputs that would replace the source, then reserve the final names (stale shards included)."""
    clash = [f for f in finals if os.path.abspath(f) in sources]
    stale = dest.stale(set(finals))
    clash += [f for f in stale if os.path.abspath(f) in sources]
    if clash:
        raise WriteError(
            f"{quote_list(clash)} {'is' if len(clash) == 1 else 'are'} part of the source; converting in place "
            "would destroy it. Choose another destination.",
            code="output-exists",
            path=clash[0],
        )
    if stale and not outputs.force:
        raise WriteError(
            f"the destination already holds {quote_list(stale)} from an earlier conversion; they would be left "
            "inconsistent with the new files, so nothing was written. Pass force=True (CLI: --force) to replace "
            "them, or choose another destination.",
            code="output-exists",
            path=stale[0],
        )
    outputs.reserve(finals)


def _write_extras(outputs: Outputs, dest: Destination, plain: dict[str, Any], meta: Mapping[str, str]) -> str:
    document = {"source": meta[f"{META_PREFIX}source"], "source_sha256": meta[f"{META_PREFIX}source_sha256"]}
    document["extras"] = plain  # type: ignore[assignment]
    with outputs.write(dest.extras) as fh:
        fh.write((json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
    return dest.extras


def write_safetensors(
    outputs: Outputs,
    dest: Destination,
    items: list[Item],
    aliases: dict[str, str],
    meta: dict[str, str],
    limit: int,
    verify: bool,
    sources: list[str],
    plain_extras: dict[str, Any],
) -> list[str]:
    """Write ``items`` as one safetensors file or as shards with their index (and the extras), each verified
    when asked; returns the final paths written, in order."""
    shards = cut_shards(items, limit)
    n = len(shards)
    names = [dest.single] if n == 1 else [dest.shard(i + 1, n) for i in range(n)]
    finals = [*names, *([dest.index] if n > 1 else []), *([dest.extras] if plain_extras else [])]
    _check_free(outputs, finals, dest, sources)
    written: list[str] = []
    weight_map: dict[str, str] = {}
    for shard, final in zip(shards, names):
        held = {item.name for item in shard}
        shard_meta = dict(meta)
        # save_model's convention: the dropped name maps to the kept one (names that are metadata keys of their
        # own, 'format' and 'torchweights.*', were planned as copies instead).
        here = {alias: kept for alias, kept in aliases.items() if kept in held}
        shard_meta.update(here)
        if here:
            shard_meta[f"{META_PREFIX}aliases"] = json.dumps(here, sort_keys=True)  # what tw.load re-ties
        entries = [st_writer.Entry(item.name, item.dtype, item.record.shape, chunk_source(item)) for item in shard]
        with outputs.write(final) as fh:
            st_writer.write_file(fh, entries, shard_meta)
        if verify:
            verify_safetensors(outputs.temp_path(final), final, shard, here)
        written.append(final)
        weight_map.update({item.name: os.path.basename(final) for item in shard})
    if n > 1:
        index = {
            "metadata": {
                "total_size": sum(item.nbytes for item in items),
                **{k: v for k, v in meta.items() if k.startswith(META_PREFIX)},
            },
            "weight_map": dict(sorted(weight_map.items())),
        }
        with outputs.write(dest.index) as fh:
            fh.write((json.dumps(index, indent=2) + "\n").encode("utf-8"))
        written.append(dest.index)
    if plain_extras:
        written.append(_write_extras(outputs, dest, plain_extras, meta))
    return written


def write_torch(
    outputs: Outputs,
    dest: Destination,
    items: list[Item],
    aliases: dict[str, str],
    verify: bool,
    sources: list[str],
    plain_extras: dict[str, Any],
    meta: dict[str, str],
) -> list[str]:
    """Write ``items`` as one plain torch file (tensors sharing a source storage share one storage again) and the
    extras, verified when asked; returns the final paths written."""
    finals = [dest.single, *([dest.extras] if plain_extras else [])]
    _check_free(outputs, finals, dest, sources)
    storages: list[torch_writer.Storage] = []
    tensors: dict[str, torch_writer.Tensor] = {}
    groups: dict[tuple[Any, ...], list[Item]] = {}
    for item in items:
        ref = item.record.storage
        if ref is None or item.cast or item.record.numel == 0:  # cast, empty or stored in pieces: a copy
            groups[("own", item.name)] = [item]
        else:
            groups.setdefault((ref.file, ref.key, item.record.dtype), []).append(item)
    for n, members in enumerate(groups.values()):
        key = str(n)
        first = members[0]
        if first.cast or first.record.numel == 0 or first.record.storage is None:
            storages.append(torch_writer.Storage(key, first.dtype, first.nbytes, chunk_source(first)))
            tensors[first.name] = torch_writer.Tensor(
                first.name, key, first.dtype, first.record.shape, contiguous_strides(first.record.shape), 0
            )
            continue
        lo = min(span(m.record)[0] for m in members)
        hi = max(span(m.record)[1] for m in members)
        size = first.record.itemsize
        storages.append(torch_writer.Storage(key, first.dtype, hi - lo, span_source(first.record, lo, hi)))
        for m in members:
            r = m.record
            tensors[m.name] = torch_writer.Tensor(
                m.name, key, m.dtype, r.shape, r.stride, r.storage_offset - lo // size
            )
    for alias, kept in aliases.items():
        t = tensors[kept]
        tensors[alias] = torch_writer.Tensor(alias, t.storage, t.dtype, t.shape, t.stride, t.offset)
    ordered = [tensors[name] for name in _torch_order(items, aliases)]
    with outputs.write(dest.single) as fh:
        torch_writer.write_file(fh, ordered, storages)
    if verify:
        verify_torch(outputs.temp_path(dest.single), dest.single, items, aliases)
    written = [dest.single]
    if plain_extras:
        written.append(_write_extras(outputs, dest, plain_extras, meta))
    return written


def _torch_order(items: list[Item], aliases: dict[str, str]) -> list[str]:
    """Output names in source order, each alias right after the tensor it shares."""
    after: dict[str, list[str]] = {}
    for alias, kept in aliases.items():
        after.setdefault(kept, []).append(alias)
    out: list[str] = []
    for item in items:
        out.append(item.name)
        out.extend(after.get(item.name, ()))
    return out


def write_dcp(
    dest: Destination,
    items: list[Item],
    aliases: dict[str, str],
    paths: dict[str, tuple[str, ...]],
    extras: dict[str, tuple[tuple[str, ...], Any]],
    limit: int,
    verify: bool,
    force: bool,
    sources: list[str],
) -> list[str]:
    """Write ``items`` as a torch.distributed.checkpoint folder (``.distcp`` files of at most ``limit`` tensor
    bytes, then ``.metadata``), built beside ``dest.single`` and renamed into place once verified; returns the
    final paths of its files.

    ``paths`` gives each name's key path (``planner_data``); an alias is recorded with the kept tensor's bytes
    (both names point at one archive, which ``tw.load`` ties again); ``extras`` are ``{fqn: (path, value)}``
    items of plain data.
    """
    final = os.path.abspath(dest.single)
    inside = [s for s in sources if s == final or s.startswith(final + os.sep)]
    if inside:
        raise WriteError(
            f"{quote_list(inside)} {'is' if len(inside) == 1 else 'are'} part of the source; converting in place "
            "would destroy it. Choose another destination.",
            code="output-exists",
            path=inside[0],
        )
    chunks = {
        item.name: dcp_writer.Chunk(item.name, paths[item.name], item.dtype, item.record.shape, chunk_source(item))
        for item in items
    }
    byte_items = [dcp_writer.Bytes(fqn, path, value) for fqn, (path, value) in extras.items()]
    shards = cut_shards(items, limit)
    names = [f"__0_{i}.distcp" for i in range(len(shards))]
    placed: list[dcp_writer.Placed] = []
    with OutputFolder(final, force=force) as folder:
        for i, (shard, name) in enumerate(zip(shards, names)):
            written: list[dcp_writer.Chunk | dcp_writer.Bytes] = [chunks[item.name] for item in shard]
            with folder.write(name) as fh:
                placed += dcp_writer.write_data_file(fh, name, (byte_items if i == 0 else []) + written)
        where = {p.fqn: p for p in placed}
        for alias, kept in aliases.items():
            placed.append(dcp_writer.Placed(alias, where[kept].relative_path, where[kept].offset, where[kept].length))
        recorded: list[dcp_writer.Chunk | dcp_writer.Bytes] = [*byte_items]
        for name in _torch_order(items, aliases):
            source = chunks[aliases.get(name, name)]
            recorded.append(dcp_writer.Chunk(name, paths[name], source.dtype, source.shape, source.chunks))
        with folder.write(dcp_writer.METADATA) as fh:
            fh.write(dcp_writer.metadata_pickle(recorded, placed))
        if verify:
            verify_dcp(folder.temp, final, items, aliases)
        folder.commit()
    return [os.path.join(final, dcp_writer.METADATA), *(os.path.join(final, n) for n in names)]
