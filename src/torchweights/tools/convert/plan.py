"""What a conversion writes and where, decided from names, dtypes and shapes before a byte is written.

The tensors to write (:class:`Item`, tied views written once and recorded as aliases: :func:`plan_items`), the
output dtype (:func:`target_dtype`) and what the output format cannot hold (:func:`refuse_unwritable`), shards
(:func:`cut_shards`, :func:`parse_size`), the output names (:class:`Destination`) and the non-tensor extras kept as
JSON (:func:`json_extras`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import types
from collections.abc import Mapping
from typing import Any

from ... import dtypes
from ...errors import RuleError
from ...plan.selection import Selection
from ...records import Checkpoint, TensorRecord
from ...structs import structure
from ...text import plural, quote, quote_list, shorten_list

__all__ = [
    "META_PREFIX",
    "Destination",
    "Item",
    "destination",
    "json_extras",
    "parse_size",
    "plan_items",
    "refuse_unwritable",
    "cut_shards",
    "dcp_extras",
    "dcp_paths",
    "target_dtype",
    "views_note",
]


#: Metadata key prefix for what torchweights records in the files it writes.
META_PREFIX = "torchweights."


_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: int | str) -> int:
    """Bytes from ``5000000``, ``"5GB"`` (10**9), ``"500MiB"`` (2**20), ``"1.5 GB"``.

    Raises:
        RuleError: not a positive size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).upper() if m else ""
        if m is None or unit not in _UNITS:
            raise RuleError(
                f"max_shard_size={value!r} is not a size; pass bytes (5000000000) or a number with a unit: "
                "'5GB', '500MB', '10GiB'.",
                code="bad-size",
            )
        size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise RuleError(f"max_shard_size={value!r} must be more than 0 bytes.", code="bad-size")
    return size


@structure
class Item:
    """One tensor to write: its output name, its source record, and its output dtype."""

    name: str
    record: TensorRecord
    dtype: str

    @property
    def nbytes(self) -> int:
        """Bytes it takes in the output."""
        return self.record.numel * dtypes.itemsize(self.dtype)

    @property
    def cast(self) -> bool:
        """Whether it is written in another dtype than the source's."""
        return self.dtype != self.record.dtype


def target_dtype(dtype: Any) -> str | None:
    """The dtype name of ``dtype=`` (a string or a torch dtype), None to keep every dtype.

    Raises:
        RuleError: not a floating-point dtype (``bad-dtype``).
    """
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    try:
        info = dtypes.get(name)
    except KeyError:
        info = None
    if info is None or info.kind != "float":
        floats = ", ".join(d.name for d in dtypes.DTYPES.values() if d.kind == "float")
        raise RuleError(
            f"dtype={dtype!r} is not a floating-point dtype; pass one of {floats}, or None to keep every dtype.",
            code="bad-dtype",
        )
    return info.name


def plan_items(selection: Selection, target: str | None, notes: list[str]) -> tuple[list[Item], dict[str, str]]:
    """The tensors to write (each storage view once) and the aliases ``{alias: kept}``."""
    items: list[Item] = []
    aliases: dict[str, str] = {}
    kept: dict[tuple[Any, ...], str] = {}
    meta: list[str] = []
    for key, record in selection.tensors.items():
        if not record.has_data or record.sparse:  # sparse: as before, not written (no logical bytes)
            meta.append(key)
            continue
        view = record.view_key
        if view is not None and view in kept and key != "format" and not key.startswith(META_PREFIX):
            aliases[key] = kept[view]
            continue
        if view is not None:
            kept[view] = key
        info = dtypes.get(record.dtype)
        out = target if target is not None and info.kind == "float" else record.dtype
        items.append(Item(key, record, out))
    if meta:
        notes.append(f"left out {plural(len(meta), 'tensor')} saved without data (meta device): {quote_list(meta)}")
    return items, aliases


def views_note(items: list[Item]) -> str | None:
    """A note for tensors that share a storage with others without being the same view: written as copies."""
    by_storage: dict[tuple[str, str], list[str]] = {}
    for item in items:
        ref = item.record.storage
        if ref is not None and item.record.numel:
            by_storage.setdefault((ref.file, ref.key), []).append(item.name)
    shared = [names for names in by_storage.values() if len(names) > 1]
    if not shared:
        return None
    count = sum(len(names) for names in shared)
    groups = shorten_list("(" + ", ".join(quote(n) for n in names[:4]) + ")" for names in shared)
    return (
        f"{plural(count, 'tensor')} share {plural(len(shared), 'storage')} as different views; safetensors cannot "
        f"store views, so each is written as a copy of its contents: {groups}"
    )


def cut_shards(items: list[Item], limit: int) -> list[list[Item]]:
    """Items in order, cut into shards of at most ``limit`` bytes (a bigger tensor gets a shard of its own)."""
    shards: list[list[Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def refuse_unwritable(items: list[Item], path: str, to: str) -> None:
    """Refuse, all at once, tensors the output format cannot hold exactly."""
    quantized = [i for i in items if dtypes.get(i.dtype).kind == "quantized" or getattr(i.record, "quantization", None)]
    if to == "safetensors":
        names = {i.name for i in quantized}
        bad = [i for i in items if dtypes.get(i.dtype).safetensors is None or i.name in names]
    else:
        bad = quantized
    if not bad:
        return
    kinds = sorted({item.dtype for item in bad})
    fix = (
        "Leave them out with select=[...] (CLI: --select)"
        if len(quantized) == len(bad)
        else "Convert to='torch' to keep them exactly, or leave them out with select=[...] (CLI: --select)"
    )
    where = {"safetensors": "safetensors", "dcp": "a torch.distributed.checkpoint folder"}.get(
        to, "a plain state-dict torch file"
    )
    raise RuleError(
        f"{plural(len(bad), 'tensor')} of {quote(path)} {'has' if len(bad) == 1 else 'have'} a dtype {where} "
        f"cannot store ({', '.join(kinds)}): {quote_list(item.name for item in bad)}. Nothing was written. {fix}.",
        code="unsupported-output-dtype",
    )


@structure
class Destination:
    """Where the outputs go: the folder, the file stem, the single-file name, and the shard, index and extras
    names derived from them."""

    folder: str
    stem: str
    single: str  # the one-file output
    to: str = "safetensors"

    def shard(self, i: int, n: int, suffix: str = ".safetensors") -> str:
        """The name of shard ``i`` of ``n``."""
        return os.path.join(self.folder, f"{self.stem}-{i:05d}-of-{n:05d}{suffix}")

    @property
    def index(self) -> str:
        """The sharded set's index."""
        return os.path.join(self.folder, f"{self.stem}.safetensors.index.json")

    @property
    def extras(self) -> str:
        """The JSON file of the plain extras."""
        return os.path.join(self.folder, f"{self.stem}.extras.json")

    def stale(self, keep: set[str]) -> list[str]:
        """Earlier safetensors outputs of this stem that a new conversion would leave inconsistent (other shard
        counts, an index beside a single file...)."""
        if self.to != "safetensors":
            return []
        pattern = re.compile(rf"{re.escape(self.stem)}(-\d{{5}}-of-\d{{5}})?\.safetensors(\.index\.json)?$")
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        kept = {os.path.abspath(p) for p in keep}
        found = [os.path.join(self.folder, n) for n in sorted(names) if pattern.fullmatch(n)]
        return [p for p in found if os.path.abspath(p) not in kept]


def destination(dst: str, to: str) -> Destination:
    """The output names for ``dst`` (a file or a folder; for ``"dcp"`` the folder itself) and the output format
    ``to``."""
    is_dir = os.path.isdir(dst) or dst.endswith(("/", os.sep))
    if to == "dcp":
        folder = dst.rstrip("/" + os.sep) or dst
        return Destination(os.path.dirname(folder) or ".", os.path.basename(folder), folder, to)
    if to == "safetensors":
        if not is_dir and dst.endswith(".safetensors"):
            base = os.path.basename(dst)
            return Destination(os.path.dirname(dst) or ".", base[: -len(".safetensors")], dst)
        folder = dst.rstrip("/" + os.sep) or dst
        return Destination(folder, "model", os.path.join(folder, "model.safetensors"))
    if not is_dir and (dst.endswith(_TORCH_SUFFIXES) or os.path.isfile(dst)):
        stem, _ = os.path.splitext(os.path.basename(dst))
        return Destination(os.path.dirname(dst) or ".", stem, dst, to)
    folder = dst.rstrip("/" + os.sep) or dst
    return Destination(folder, "pytorch_model", os.path.join(folder, "pytorch_model.bin"), to)


_MAX_EXTRAS_DEPTH = 64


def _plain(value: Any, depth: int = 0) -> tuple[bool, Any]:
    """``(True, json_value)`` when ``value`` is plain data JSON can hold exactly; ``(False, None)`` otherwise."""
    if depth > _MAX_EXTRAS_DEPTH:
        return False, None
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            ok, plain = _plain(v, depth + 1)
            if not ok:
                return False, None
            out.append(plain)
        return True, out
    if isinstance(value, (argparse.Namespace, types.SimpleNamespace)):
        value = vars(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for k, v in value.items():
            ok, plain = _plain(v, depth + 1)
            if not isinstance(k, str) or not ok:
                return False, None
            result[k] = plain
        return True, result
    return False, None


def json_extras(ckpt: Checkpoint, notes: list[str]) -> dict[str, Any]:
    """The checkpoint's extras that are plain data; the rest are named in ``notes``."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in ckpt.extras.items():
        ok, plain = _plain(value)
        if ok:
            kept[name] = plain
        else:
            dropped.append(f"{name} ({type(value).__name__})")
    if dropped:
        notes.append(
            f"left out {plural(len(dropped), 'extra')} that {'is' if len(dropped) == 1 else 'are'} not plain "
            f"JSON data: {shorten_list(quote(d) for d in dropped)}"
        )
    return kept


def dcp_paths(selection: Selection, items: list[Item], aliases: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """The key path (DCP's ``planner_data``) of every name written: its keys inside the container when they join
    to the name (nested dicts stay nested for ``dcp_to_torch_save``), else the name as one key."""
    depth = len(selection.container)
    out: dict[str, tuple[str, ...]] = {}
    for name in [item.name for item in items] + list(aliases):
        path = selection.tensors[name].path[depth:]
        out[name] = path if path and ".".join(path) == name else (name,)
    return out


def dcp_extras(
    plain: dict[str, Any], paths: dict[str, tuple[str, ...]], notes: list[str]
) -> dict[str, tuple[tuple[str, ...], Any]]:
    """Plain extras as DCP items ``{fqn: (key path, value)}``: dicts flattened into dotted names as ``dcp.save``
    flattens a state dict (lists and scalars are items of their own); names a tensor already has are left out."""
    out: dict[str, tuple[tuple[str, ...], Any]] = {}

    def walk(path: tuple[str, ...], value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk((*path, key), inner)
            return
        out[".".join(path)] = (path, value)

    for name, value in plain.items():
        walk((name,), value)
    clash = [fqn for fqn in out if fqn in paths]
    for fqn in clash:
        del out[fqn]
    if clash:
        notes.append(f"left out {plural(len(clash), 'extra')} named like a tensor: {quote_list(clash)}")
    if out:
        notes.append(
            f"kept {plural(len(out), 'plain extra')} as non-tensor items: {shorten_list(quote(n) for n in out)}"
        )
    return out
