"""Reader for sharded checkpoints: a ``*.index.json`` whose ``weight_map`` maps tensor names to shard files.

Covers ``model.safetensors.index.json`` and ``pytorch_model.bin.index.json`` sets (and any mix). Each shard is
read by the reader its content calls for, so shards may be safetensors or torch files. The index is treated as
untrusted input: shard names must be plain relative file names that stay inside the index's folder, every indexed
tensor must be in the shard the index names, and no tensor may be in two shards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import CheckpointNotFoundError, ResourceLimitError, ShardIndexError, TorchWeightsError
from ..fold import fold_names
from ..records import Checkpoint, TensorRecord
from ..structs import structure
from ..text import format_bytes, is_are, plural, problem_list, quote, quote_list, shorten_list
from ._files import JsonDecodeProblem, JsonObject, decode_json, file_size, read_prefix

if TYPE_CHECKING:  # pragma: no cover
    from . import Reader, ReadOptions

__all__ = ["read"]

_INDEX_SUFFIX = ".index.json"
_TORCH_FORMATS = frozenset({"torch-zip", "torch-legacy"})
_DRIVE = re.compile(r"^[A-Za-z]:")
_ACTIVE_INDEX: ContextVar[str | None] = ContextVar("torchweights_active_shard_index", default=None)


@structure(frozen=True)
class _Shard:
    """One shard file named by the index."""

    name: str  # as the index spells it
    path: str  # folder joined with name


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a sharded checkpoint: its index and every shard, into one merged :class:`Checkpoint`.

    Args:
        path: the ``*.index.json`` file, or a folder holding exactly one.
        options: reader options; ``options.limits.max_index_bytes`` bounds the index file, and the options are
            passed on to each shard's reader.

    Returns:
        A checkpoint whose ``path`` is the index file, ``files`` the index then the shards, and ``records`` the
        shards' records in shard order with storage keys prefixed by the shard name (``"shard:key"``).
        ``metadata`` holds ``index`` (the index's ``metadata`` object), ``shards`` (tensors per shard),
        ``shard_formats``, ``shard_metadata`` and ``unindexed`` (tensors present in shards but not in the index,
        which are kept and also reported in ``warnings``).

    Raises:
        ShardIndexError: the index is invalid or unsafe, shards are missing, or index and shards disagree.
        ResourceLimitError: the index file exceeds ``options.limits.max_index_bytes``.
        TorchWeightsError: a shard cannot be read (the message names the shard).
    """
    with _reading_index(path):
        index_path = _locate_index(path)
        weight_map, index_meta = _read_index(index_path, options)
        shards = _resolve_shards(index_path, weight_map)
        from . import open_path

        opened = [(shard, _open_shard(index_path, shard, options, open_path)) for shard in shards]
        return _merge(index_path, weight_map, index_meta, opened)


@contextmanager
def _reading_index(path: str) -> Iterator[None]:
    """Refuse an index named as a shard of another index (this also stops index cycles)."""
    outer = _ACTIVE_INDEX.get()
    if outer is not None:
        raise ShardIndexError(
            f"{quote(path)} is itself a sharded index, named as a shard of {quote(outer)}. Nested indexes are not "
            "supported (and an index naming itself would never end); the weight_map must name tensor files.",
            code="shard-nested-index",
            path=path,
        )
    token = _ACTIVE_INDEX.set(path)
    try:
        yield
    finally:
        _ACTIVE_INDEX.reset(token)


def _locate_index(path: str) -> str:
    """``path`` itself, or the single ``*.index.json`` inside the folder ``path``."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise CheckpointNotFoundError(
                f"{quote(path)} does not exist. Pass a sharded checkpoint's *.index.json file or its folder.",
                path=path,
            )
        return path
    try:
        names = sorted(n for n in os.listdir(path) if n.endswith(_INDEX_SUFFIX))
    except OSError as exc:
        raise CheckpointNotFoundError(f"cannot list the folder {quote(path)}: {exc.strerror}.", path=path) from exc
    indexes = [n for n in names if os.path.isfile(os.path.join(path, n))]
    if not indexes:
        raise ShardIndexError(
            f"the folder {quote(path)} holds no *.index.json file, so it is not a sharded checkpoint. Pass the "
            "checkpoint file inside it instead, or download the missing index (model.safetensors.index.json or "
            "pytorch_model.bin.index.json).",
            code="shard-no-index",
            path=path,
        )
    if len(indexes) > 1:
        raise ShardIndexError(
            f"the folder {quote(path)} holds {len(indexes)} index files ({quote_list(indexes)}), so it is "
            f"ambiguous which sharded checkpoint to read. Pass one index file instead, e.g. "
            f"{quote(os.path.join(path, indexes[0]))}.",
            code="shard-many-indexes",
            path=path,
        )
    return os.path.join(path, indexes[0])


def _read_index(index_path: str, options: ReadOptions) -> tuple[dict[str, str], dict[str, Any]]:
    """The validated ``weight_map`` and ``metadata`` of the index file."""
    limit = options.limits.max_index_bytes
    size = file_size(index_path)
    raw = read_prefix(index_path, size + 1) if size <= limit else b""
    if size > limit or len(raw) > limit:
        raise ResourceLimitError(
            f"the index {quote(index_path)} is {format_bytes(max(size, len(raw)))}, more than the "
            f"{format_bytes(limit)} allowed by limits.max_index_bytes; real indexes are far smaller, so this file "
            "is probably not an index. If you trust it, pass a larger Limits(max_index_bytes=...).",
            code="limit-index-size",
            path=index_path,
        )
    try:
        index = decode_json(raw)
    except JsonDecodeProblem as exc:
        _bad_index(index_path, [f"it is not valid UTF-8 JSON ({exc.detail})"])
    if not isinstance(index, JsonObject):
        _bad_index(index_path, ["it is not a JSON object"])
    problems = [f"it names {quote_list(index.duplicates)} more than once"] if index.duplicates else []
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, JsonObject):
        problems.append("it has no 'weight_map' object mapping tensor names to shard files")
        _bad_index(index_path, problems)
    if weight_map.duplicates:
        problems.append(f"its weight_map lists {quote_list(weight_map.duplicates)} more than once")
    not_str = [name for name, shard in weight_map.items() if not isinstance(shard, str)]
    if not_str:
        problems.append(f"its weight_map maps {quote_list(not_str)} to something other than a file name")
    if not weight_map:
        problems.append("its weight_map is empty")
    meta = index.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        problems.append("its 'metadata' is not a JSON object")
    if problems:
        _bad_index(index_path, problems)
    return dict(weight_map), dict(meta or {})


def _bad_index(index_path: str, problems: Sequence[str]) -> NoReturn:
    reasons = "; ".join(problems)
    raise ShardIndexError(
        f"{quote(index_path)} is not a valid sharded-checkpoint index: {reasons}. Without a valid weight_map "
        "the shards cannot be matched to tensor names; re-download the index file or regenerate it with "
        "save_pretrained.",
        code="shard-bad-index",
        path=index_path,
    )


def _resolve_shards(index_path: str, weight_map: Mapping[str, str]) -> list[_Shard]:
    """The shards the index names, in natural name order, after checking they are safe and present."""
    folder = os.path.dirname(index_path) or "."
    roots = _allowed_roots(folder)
    counts: dict[str, int] = {}
    for shard_name in weight_map.values():
        counts[shard_name] = counts.get(shard_name, 0) + 1
    problems: list[tuple[str, str]] = []
    missing: list[str] = []
    shards: list[_Shard] = []
    for name in sorted(counts, key=_natural_key):
        reason = _unsafe_name_reason(name) or _escape_reason(roots, os.path.join(folder, name))
        if reason:
            problems.append(("shard-path-escape", f"shard {quote(name)} ({plural(counts[name], 'tensor')}) {reason}"))
        elif not os.path.isfile(os.path.join(folder, name)):
            missing.append(name)
        else:
            shards.append(_Shard(name, os.path.join(folder, name)))
    if missing:
        described = shorten_list(f"{quote(n)} ({plural(counts[n], 'tensor')})" for n in missing)
        problems.append(
            (
                "shard-missing",
                f"{len(missing)} of {plural(len(counts), 'shard')} named by the index {is_are(len(missing))} not in"
                f" {quote(folder)}: {described}; the download is likely incomplete, so fetch the missing "
                "files into that folder",
            )
        )
    if problems:
        escape = any(code == "shard-path-escape" for code, _ in problems)
        advice = (
            "Shard names must be plain file names inside the index's folder; an index pointing elsewhere could "
            "make a reader open files it was never meant to, so it is refused."
            if escape
            else "The checkpoint cannot be read without every shard."
        )
        raise ShardIndexError(
            f"the sharded checkpoint {quote(index_path)} cannot be read:\n{problem_list(problems)}\n{advice}",
            code=problems[0][0],
            path=index_path,
        )
    return shards


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort key putting ``model-9`` before ``model-10``."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def _unsafe_name_reason(name: str) -> str | None:
    """Why the shard file name ``name`` is unsafe as written, or None."""
    if not name:
        return "has an empty file name"
    if "\x00" in name:
        return "contains a NUL character"
    if "\\" in name:
        return "contains a backslash; shard names must use '/' and stay inside the index's folder"
    if name.startswith("/") or os.path.isabs(name):
        return "is an absolute path"
    if _DRIVE.match(name):
        return "starts with a drive letter"
    if ".." in name.split("/"):
        return "contains a '..' component that leaves the index's folder"
    return None


def _allowed_roots(folder: str) -> tuple[str, ...]:
    """Real folders shard files may resolve into: the index's folder and, in a Hugging Face cache snapshot
    (``models--org--name/snapshots/<revision>/``), that repository's ``blobs`` folder, where the hub's symbolic
    links point."""
    root = os.path.realpath(folder)
    parent = os.path.dirname(root)
    if os.path.basename(parent) == "snapshots":
        blobs = os.path.join(os.path.dirname(parent), "blobs")
        if os.path.isdir(blobs):
            return (root, os.path.realpath(blobs))
    return (root,)


def _escape_reason(roots: Sequence[str], path: str) -> str | None:
    """Why ``path`` resolves (symbolic links followed) outside every real folder of ``roots``, or None."""
    try:
        real = os.path.realpath(path)
    except (ValueError, UnicodeError):
        return "is not a valid file name on this system"
    if any(real != root and os.path.commonpath([root, real]) == root for root in roots):
        return None
    via = " through a symbolic link" if real != os.path.abspath(path) else ""
    return f"resolves{via} to {quote(real)}, outside the index's folder {quote(roots[0])}"


def _open_shard(index_path: str, shard: _Shard, options: ReadOptions, open_path: Reader) -> Checkpoint:
    """Read one shard with the reader its content calls for; errors keep their class and every attribute (code,
    ``names``, ``report``...), plus context, and are chained to the shard's own error."""
    try:
        return open_path(shard.path, options)
    except TorchWeightsError as err:
        raise err.in_context(f"shard {quote(shard.name)} of {quote(index_path)}", path=shard.path) from err


def _merge(
    index_path: str,
    weight_map: Mapping[str, str],
    index_meta: dict[str, Any],
    opened: Sequence[tuple[_Shard, Checkpoint]],
) -> Checkpoint:
    """Check the shards against the index and merge them into one checkpoint."""
    holders: dict[str, list[str]] = {}
    for shard, ckpt in opened:
        for name in ckpt.records:
            holders.setdefault(name, []).append(shard.name)
    _check_agreement(index_path, weight_map, holders)
    # Tied tensors restored from a shard's metadata (save_model / tw.convert aliases) are not indexed, by design.
    aliased = {alias for _, ckpt in opened for alias in ckpt.metadata.get("aliases", ())}
    unindexed = [name for name in holders if name not in weight_map and name not in aliased]
    records: dict[str, TensorRecord] = {}
    extras: dict[str, Any] = {}
    warnings: list[str] = []
    for shard, ckpt in opened:
        for name, record in ckpt.records.items():
            records[name] = _rekey(shard.name, record)
        for name, value in ckpt.extras.items():
            extras.setdefault(name, value)
        warnings.extend(f"shard {quote(shard.name)}: {w}" for w in ckpt.warnings)
    if unindexed:
        patterns = [pattern for pattern, _ in fold_names(unindexed)]
        warnings.append(
            f"{plural(len(unindexed), 'tensor')} in the shards {is_are(len(unindexed))} not listed in the index "
            f"{quote(os.path.basename(index_path))}: {quote_list(patterns)}; kept, but loaders that follow the "
            "index (transformers) would skip them."
        )
    return Checkpoint(
        path=index_path,
        format=_sharded_format({ckpt.format for _, ckpt in opened}),
        files=(index_path, *(shard.path for shard, _ in opened)),
        records=records,
        extras=extras,
        globals=tuple(sorted({g for _, ckpt in opened for g in ckpt.globals})),
        metadata={
            "index": index_meta,
            "shards": {shard.name: len(ckpt.records) for shard, ckpt in opened},
            "shard_formats": {shard.name: ckpt.format for shard, ckpt in opened},
            "shard_metadata": {shard.name: ckpt.metadata for shard, ckpt in opened},
            "unindexed": unindexed,
        },
        warnings=warnings,
    )


def _check_agreement(index_path: str, weight_map: Mapping[str, str], holders: Mapping[str, list[str]]) -> None:
    """Every indexed tensor must be in the shard the index names, and no tensor may be in two shards."""
    problems: list[tuple[str, str]] = []
    absent = [(name, shard) for name, shard in weight_map.items() if shard not in holders.get(name, ())]
    if absent:
        described = shorten_list(
            f"{quote(name)} (indexed in {quote(shard)}, "
            + (f"found in {quote_list(holders[name])})" if name in holders else "in no shard)")
            for name, shard in absent
        )
        problems.append(
            (
                "shard-tensor-missing",
                f"{plural(len(absent), 'tensor')} named by the index {is_are(len(absent))} not in "
                f"the shard the index names: {described}",
            )
        )
    doubled = {name: shards for name, shards in holders.items() if len(shards) > 1}
    if doubled:
        described = shorten_list(f"{quote(name)} (in {quote_list(shards)})" for name, shards in doubled.items())
        problems.append(
            (
                "shard-duplicate-tensor",
                f"{plural(len(doubled), 'tensor')} {is_are(len(doubled))} stored in more than one "
                f"shard: {described}; it is ambiguous which copy holds the weights",
            )
        )
    if problems:
        raise ShardIndexError(
            f"the index {quote(index_path)} and its shards disagree:\n{problem_list(problems)}\n"
            "Loading would silently drop or mix weights, so it is refused. The shards are probably from different "
            "downloads or exports; re-download the whole checkpoint (index and shards together).",
            code=problems[0][0],
            path=index_path,
        )


def _rekey(shard_name: str, record: TensorRecord) -> TensorRecord:
    """``record`` with its storage key made unique across shards (``"shard:key"``)."""
    if record.storage is None:
        return record
    return replace(record, storage=replace(record.storage, key=f"{shard_name}:{record.storage.key}"))


def _sharded_format(formats: set[str]) -> str:
    if formats == {"safetensors"}:
        return "sharded-safetensors"
    if formats and formats <= _TORCH_FORMATS:
        return "sharded-torch"
    return "sharded"
