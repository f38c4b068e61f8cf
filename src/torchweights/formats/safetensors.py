"""Reader for ``.safetensors`` files, parsed by hand: header only, no tensor bytes, no torch, no safetensors package.

Layout of a safetensors file::

    8 bytes   N, the header length, little-endian unsigned 64-bit
    N bytes   UTF-8 JSON object: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}, ...}
    rest      the data buffer; ``data_offsets`` ``[begin, end)`` are relative to its first byte (file offset 8 + N)

The reader is strict: it rejects everything the format forbids (duplicate keys, overlapping, gapped or trailing
ranges, sizes that disagree with dtype and shape) and collects every problem of a header into one error.

"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .. import dtypes
from ..errors import (
    CorruptCheckpointError,
    ResourceLimitError,
)
from ..records import Checkpoint, StorageRef, TensorRecord
from ..structs import structure
from ..text import format_bytes, format_shape, is_are, plural, problem_list, quote, quote_list
from ._files import JsonDecodeProblem, JsonObject, decode_json, file_size, read_prefix

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["ALIASES_KEY", "read", "with_aliases"]

_LENGTH_BYTES = 8
_ENTRY_KEYS = ("dtype", "shape", "data_offsets")
_METADATA_KEY = "__metadata__"
_REEXPORT = "re-download the file, or re-export it with safetensors.torch.save_file"
_REEXPORT_SENTENCE = "Re-download the file, or re-export it with safetensors.torch.save_file."


def is_int(value: object) -> bool:
    """True for a JSON integer (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """C-contiguous strides in elements, as torch computes them (a zero-size dimension counts as one)."""
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return tuple(strides)


# --------------------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------------------


@structure(frozen=True)
class _Entry:
    """One header entry with valid data offsets; ``dtype``/``shape`` are None when invalid (already reported)."""

    name: str
    begin: int
    end: int
    dtype: dtypes.DType | None
    shape: tuple[int, ...] | None


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read the header of the safetensors file ``path`` into a :class:`Checkpoint`, reading no tensor bytes.

    Args:
        path: the ``.safetensors`` file.
        options: reader options; ``options.limits.max_header_bytes`` bounds the JSON header.

    Returns:
        A checkpoint with one :class:`TensorRecord` per tensor, in the order of their bytes in the file, and
        ``metadata = {"safetensors": <__metadata__ or {}>, "header_bytes": N}``.

    Raises:
        CorruptCheckpointError: the file is truncated or its header is invalid (every problem is listed).
        ResourceLimitError: the header or a tensor's rank exceeds ``options.limits``.
        CheckpointNotFoundError, CheckpointReadError: the file cannot be read.
    """
    size = file_size(path)
    header_len, raw = _read_header_bytes(path, size, options)
    header = _decode_header(path, raw)
    problems: list[tuple[str, str]] = []
    metadata = _check_metadata(header, problems)
    if header.duplicates:
        problems.append(
            (
                "safetensors-duplicate-key",
                f"the header names {quote_list(header.duplicates)} more than once; readers disagree on which entry "
                "wins (the safetensors library silently keeps the last one)",
            )
        )
    checked = [
        _check_entry(name, value, options.limits.max_tensor_dims, problems)
        for name, value in header.items()
        if name != _METADATA_KEY
    ]
    entries = sorted((e for e in checked if e is not None), key=lambda e: (e.begin, e.end))  # stable sort
    _check_layout(entries, size - _LENGTH_BYTES - header_len, problems, complete=len(entries) == len(checked))
    if problems:
        _raise(path, problems)
    data_start = _LENGTH_BYTES + header_len
    records = {e.name: _record(path, data_start, e) for e in entries}
    records, aliases = with_aliases(records, metadata)
    return Checkpoint(
        path=path,
        format="safetensors",
        files=(path,),
        records=records,
        metadata={"safetensors": metadata, "header_bytes": header_len, **({"aliases": aliases} if aliases else {})},
    )


def _read_header_bytes(path: str, size: int, options: ReadOptions) -> tuple[int, bytes]:
    """Read and bound-check the length prefix, then read exactly the header bytes."""
    if size < _LENGTH_BYTES:
        raise CorruptCheckpointError(
            f"{quote(path)} is truncated: a safetensors file starts with an 8-byte header length, but the file "
            f"is only {format_bytes(size)} long. Without a header nothing in it can be located; {_REEXPORT}.",
            code="truncated",
            path=path,
        )
    (header_len,) = struct.unpack("<Q", read_prefix(path, _LENGTH_BYTES))
    if _LENGTH_BYTES + header_len > size:
        raise CorruptCheckpointError(
            f"{quote(path)} is truncated: its header declares {format_bytes(header_len)} of JSON header, but "
            f"the file size is {format_bytes(size)}, so the header itself is cut off (or the length field is "
            f"damaged). No tensor can be located without the whole header; {_REEXPORT}.",
            code="truncated",
            path=path,
        )
    limit = options.limits.max_header_bytes
    if header_len > limit:
        raise ResourceLimitError(
            f"{quote(path)} declares a {format_bytes(header_len)} safetensors header, more than the "
            f"{format_bytes(limit)} allowed by limits.max_header_bytes. Such a header would be read into memory "
            "whole; if you trust this file, pass a larger Limits(max_header_bytes=...).",
            code="limit-header-size",
            path=path,
        )
    raw = read_prefix(path, _LENGTH_BYTES + header_len)[_LENGTH_BYTES:]
    if len(raw) != header_len:  # the file shrank between stat and read
        raise CorruptCheckpointError(
            f"{quote(path)} is truncated: its header declares {format_bytes(header_len)}, but only "
            f"{format_bytes(len(raw))} could be read. The file changed while it was read; {_REEXPORT}.",
            code="truncated",
            path=path,
        )
    return header_len, raw


def _decode_header(path: str, raw: bytes) -> JsonObject:
    """The header as a JSON object, or a CorruptCheckpointError saying why it is not one."""
    try:
        header = decode_json(raw)
    except JsonDecodeProblem as exc:
        if exc.kind == "utf8":
            raise CorruptCheckpointError(
                f"{quote(path)} has a safetensors header that is not UTF-8 text ({exc.detail}). The header must "
                f"be UTF-8 JSON; the file is damaged or is not a safetensors file. {_REEXPORT_SENTENCE}",
                code="safetensors-not-utf8",
                path=path,
            ) from None
        raise CorruptCheckpointError(
            f"{quote(path)} has a safetensors header that is not valid JSON ({exc.detail}), so its tensors cannot "
            f"be located. The file is damaged or is not a safetensors file; {_REEXPORT}.",
            code="safetensors-bad-header",
            path=path,
        ) from None
    if not isinstance(header, JsonObject):
        raise CorruptCheckpointError(
            f"{quote(path)} has a safetensors header that is a JSON {_json_type(header)}, not an object of tensor "
            f"entries, so its tensors cannot be located; {_REEXPORT}.",
            code="safetensors-bad-header",
            path=path,
        )
    return header


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_metadata(header: JsonObject, problems: list[tuple[str, str]]) -> dict[str, str]:
    """The ``__metadata__`` object (``{}`` when absent or null); non-string entries become problems."""
    meta = header.get(_METADATA_KEY)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        problems.append(
            ("safetensors-bad-metadata", f"{quote(_METADATA_KEY)} is a JSON {_json_type(meta)}, not an object")
        )
        return {}
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        problems.append(
            (
                "safetensors-bad-metadata",
                f"{quote(_METADATA_KEY)} must map strings to strings, but {quote_list(bad)} "
                f"{'has a' if len(bad) == 1 else 'have'} non-string value{'' if len(bad) == 1 else 's'}",
            )
        )
    if isinstance(meta, JsonObject) and meta.duplicates:
        problems.append(
            (
                "safetensors-bad-metadata",
                f"{quote(_METADATA_KEY)} names {quote_list(meta.duplicates)} more than once",
            )
        )
    return {k: v for k, v in meta.items() if isinstance(v, str)}


def _check_entry(name: str, value: object, max_dims: int, problems: list[tuple[str, str]]) -> _Entry | None:
    """Validate one tensor entry, appending its problems.

    Returns the entry whenever its data offsets are valid, so that the layout check sees every range the header
    claims, even for entries with other problems (those come back with ``dtype``/``shape`` None or mismatched).
    """
    entry = _valid_entry(name, value, max_dims)
    if entry is not None:
        return entry
    where = f"tensor {quote(name)}"
    if not isinstance(value, dict):
        problems.append(("safetensors-bad-entry", f"{where} is a JSON {_json_type(value)}, not an object"))
        return None
    keys = set(value)
    if keys != set(_ENTRY_KEYS):
        missing = [k for k in _ENTRY_KEYS if k not in keys]
        extra = sorted(keys - set(_ENTRY_KEYS))
        parts = ([f"lacks {quote_list(missing)}"] if missing else []) + (
            [f"has unexpected {quote_list(extra)}"] if extra else []
        )
        problems.append(
            (
                "safetensors-bad-entry",
                f"{where} {' and '.join(parts)}; an entry must hold exactly 'dtype', 'shape' and 'data_offsets'",
            )
        )
    if isinstance(value, JsonObject) and value.duplicates:
        problems.append(("safetensors-duplicate-key", f"{where} names {quote_list(value.duplicates)} more than once"))
    dtype = _check_dtype(where, value["dtype"], problems) if "dtype" in value else None
    shape = _check_shape(where, value["shape"], max_dims, problems) if "shape" in value else None
    offsets = _check_offsets(where, value["data_offsets"], problems) if "data_offsets" in value else None
    if offsets is None:
        return None
    begin, end = offsets
    if dtype is not None and shape is not None:
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            problems.append(
                (
                    "safetensors-size-mismatch",
                    f"{where} spans {format_bytes(end - begin)} (data_offsets [{begin}, {end}]), but dtype "
                    f"{dtype.safetensors} with shape {format_shape(shape)} needs {format_bytes(expected)}",
                )
            )
    return _Entry(name, begin, end, dtype, shape)


def _valid_entry(name: str, value: object, max_dims: int) -> _Entry | None:
    """The entry when it is valid in every respect :func:`_check_entry` checks (the common case, checked in one go
    with no message built); None sends it through :func:`_check_entry`'s checks, which find and word the problem."""
    if type(value) is not JsonObject or value.duplicates or len(value) != 3:
        return None
    code, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    dtype = dtypes.dtype_from_safetensors(code) if type(code) is str else None
    if dtype is None or type(shape) is not list or len(shape) > max_dims or type(offsets) is not list:
        return None
    if len(offsets) != 2 or not all(type(n) is int and n >= 0 for n in shape):
        return None
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        return None
    if end - begin != math.prod(shape) * dtype.itemsize:
        return None
    return _Entry(name, begin, end, dtype, tuple(shape))


def _check_dtype(where: str, code: object, problems: list[tuple[str, str]]) -> dtypes.DType | None:
    dtype = dtypes.dtype_from_safetensors(code) if isinstance(code, str) else None
    if dtype is None:
        known = ", ".join(d.safetensors for d in dtypes.DTYPES.values() if d.safetensors)
        shown = repr(code) if isinstance(code, str) else f"a JSON {_json_type(code)}"
        problems.append(("safetensors-bad-dtype", f"{where} has unknown dtype {shown}; known dtypes are {known}"))
    return dtype


def _check_shape(where: str, shape: object, max_dims: int, problems: list[tuple[str, str]]) -> tuple[int, ...] | None:
    if not isinstance(shape, list) or not all(is_int(n) and n >= 0 for n in shape):
        shown = json.dumps(shape) if isinstance(shape, list) else f"a JSON {_json_type(shape)}"
        problems.append(
            ("safetensors-bad-shape", f"{where} has shape {shown}; a shape must be a list of non-negative integers")
        )
        return None
    if len(shape) > max_dims:
        problems.append(
            (
                "limit-tensor-dims",
                f"{where} has {len(shape)} dimensions, more than the {max_dims} allowed by limits.max_tensor_dims",
            )
        )
        return None
    return tuple(shape)


def _check_offsets(where: str, offsets: object, problems: list[tuple[str, str]]) -> tuple[int, int] | None:
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(is_int(n) for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        shown = json.dumps(offsets) if isinstance(offsets, list) else f"a JSON {_json_type(offsets)}"
        problems.append(
            (
                "safetensors-bad-offsets",
                f"{where} has data_offsets {shown}; they must be two integers [begin, end] with 0 <= begin <= end",
            )
        )
        return None
    return offsets[0], offsets[1]


def _check_layout(
    entries: Sequence[_Entry], buffer_size: int, problems: list[tuple[str, str]], *, complete: bool
) -> None:
    """Ranges (sorted by begin) must tile the data buffer exactly: no overlap, no gap, nothing after, nothing short.

    Zero-size tensors occupy no bytes: they never overlap and never close a gap. When some entry's range is
    unknown (``complete`` False, already reported), uncovered bytes may be that entry's, so gaps and trailing
    bytes are not reported.
    """
    covered = 0  # bytes [0, covered) are accounted for
    last: _Entry | None = None  # the tensor that ends at ``covered``
    for entry in entries:
        if entry.begin == entry.end:
            continue
        if entry.begin < covered and last is not None:
            problems.append(
                (
                    "safetensors-overlap",
                    f"tensors {quote(last.name)} [{last.begin}, {last.end}) and {quote(entry.name)} "
                    f"[{entry.begin}, {entry.end}) overlap by {format_bytes(min(covered, entry.end) - entry.begin)}",
                )
            )
        elif entry.begin > covered and complete:
            where = f"between {quote(last.name)} and {quote(entry.name)}" if last else f"before {quote(entry.name)}"
            problems.append(
                (
                    "safetensors-gap",
                    f"{format_bytes(entry.begin - covered)} {where} belong to no tensor "
                    f"(bytes [{covered}, {entry.begin}) of the data buffer)",
                )
            )
        if entry.end > covered:
            covered, last = entry.end, entry
    end = max((e.end for e in entries), default=0)
    if end > buffer_size:
        short = [e.name for e in entries if e.end > buffer_size]
        problems.append(
            (
                "truncated",
                f"the file ends {format_bytes(end - buffer_size)} too early: the data buffer holds "
                f"{format_bytes(buffer_size)} but tensors reach byte {end:,} of it, so {quote_list(short)} "
                f"{is_are(len(short))} cut off",
            )
        )
    elif buffer_size > end and complete:
        after = f" after {quote(last.name)}" if last else ""
        problems.append(
            (
                "safetensors-trailing-bytes",
                f"{format_bytes(buffer_size - end)}{after} at the end of the file belong to no tensor",
            )
        )


def _raise(path: str, problems: Sequence[tuple[str, str]]) -> None:
    """Raise one error for all ``problems``; its code is the first problem's."""
    code = problems[0][0]
    codes = {c for c, _ in problems}
    truncated_only = codes == {"truncated"}
    summary = (
        "is truncated"
        if truncated_only
        else f"is not a valid safetensors file ({plural(len(problems), 'problem')} in its header)"
    )
    advice = (
        "An incomplete download or copy is the usual cause; re-download the file."
        if truncated_only
        else f"Loading it could silently produce wrong weights, so it is refused. {_REEXPORT_SENTENCE}"
    )
    cls = ResourceLimitError if all(c.startswith("limit-") for c in codes) else CorruptCheckpointError
    if cls is ResourceLimitError:
        advice = "If you trust this file, pass larger Limits(...)."
    raise cls(f"{quote(path)} {summary}:\n{problem_list(problems)}\n{advice}", code=code, path=path)


def _record(path: str, data_start: int, entry: _Entry) -> TensorRecord:
    assert entry.dtype is not None and entry.shape is not None  # guaranteed when no problem was found
    return TensorRecord(
        name=entry.name,
        path=(entry.name,),
        dtype=entry.dtype.name,
        shape=entry.shape,
        stride=contiguous_strides(entry.shape),
        storage_offset=0,
        storage=StorageRef(
            key=entry.name,
            file=path,
            offset=data_start + entry.begin,
            nbytes=entry.end - entry.begin,
        ),
    )


# --------------------------------------------------------------------------------------------------------------
# Tied tensors written once (tw.convert)
# --------------------------------------------------------------------------------------------------------------

#: ``__metadata__`` key under which ``tw.convert`` lists the tensors it wrote once: ``{"alias": "kept"}`` as JSON.
ALIASES_KEY = "torchweights.aliases"


def with_aliases(
    records: dict[str, TensorRecord], metadata: dict[str, str]
) -> tuple[dict[str, TensorRecord], dict[str, str]]:
    """Restore tied tensors that ``tw.convert`` wrote once.

    Like ``safetensors.torch.save_model``, ``tw.convert`` keeps one name of a shared tensor and records
    ``__metadata__[dropped] = kept``; it also lists those pairs under :data:`ALIASES_KEY`, and only there are they
    trusted: ``convert`` drops only names that are exactly the same view, whereas ``save_model`` also drops views
    that differ from the kept one (a transposed or partial view), which cannot be rebuilt from a name. Each listed
    alias (not itself a tensor of the file, naming one that is) becomes a record sharing the kept tensor's bytes,
    right after it. Files without the list (``save_model``'s) keep their tensors as written; ``load_into`` still
    ties a model's shared parameters from the one name present.

    Returns:
        The records with aliases inserted, and ``{alias: kept}``.
    """
    raw = metadata.get(ALIASES_KEY)
    try:
        declared = json.loads(raw) if raw else {}
    except ValueError:
        declared = {}
    if not isinstance(declared, dict):
        declared = {}
    aliases = {
        k: v
        for k, v in declared.items()
        if isinstance(k, str) and isinstance(v, str) and k not in records and v in records
    }
    if not aliases:
        return records, {}
    after: dict[str, list[str]] = {}
    for alias, kept in aliases.items():
        after.setdefault(kept, []).append(alias)
    out: dict[str, TensorRecord] = {}
    for name, record in records.items():
        out[name] = record
        for alias in after.get(name, ()):
            out[alias] = replace(record, name=alias, path=(alias,))
    return out, aliases
