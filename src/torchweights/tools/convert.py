"""``tw.convert``: move the weights of any readable checkpoint into safetensors (or a plain torch file), streaming,
atomically, and verified bit for bit.

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

import argparse
import json
import math
import os
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .. import dtypes
from ..errors import RuleError, WriteError
from ..limits import DEFAULT_LIMITS, Limits
from ..plan.selection import Selection, select_weights
from ..records import Checkpoint, TensorRecord
from ..storage.contents import CHUNK_BYTES, logical_chunks, span
from ..text import format_bytes, plural, quote, quote_list, shorten_list
from ..writers import safetensors as st_writer
from ..writers import torch_zip as torch_writer
from ..writers.atomic import Outputs

__all__ = ["ConvertReport", "convert", "parse_size"]

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


# ----------------------------------------------------------------------------------------------------- report


@dataclass
class ConvertReport:
    """What :func:`convert` wrote and why.

    Attributes:
        source: the source path.
        source_format: its format id.
        source_sha256: sha256 of the source file (for a sharded set, of its index).
        to: ``"safetensors"`` or ``"torch"``.
        files: every output file, final paths, in the order written (shards, index, extras).
        container: the container the weights were taken from (``""`` for the root), and ``container_reason``.
        tensors: tensors written (each once).
        nbytes: bytes of tensor data written.
        aliases: ``{alias: kept}`` for tied tensors written once.
        cast: number of tensors cast to ``dtype``.
        extras_file: the JSON file holding the non-tensor extras, if any were written.
        notes: everything left out, and why (tensors outside the container, extras that are not plain data...).
        verified: whether every output was re-read and compared bit for bit with the source.
        seconds: wall time.
    """

    source: str
    source_format: str
    source_sha256: str
    to: str
    files: list[str] = field(default_factory=list)
    container: str = ""
    container_reason: str = ""
    tensors: int = 0
    nbytes: int = 0
    aliases: dict[str, str] = field(default_factory=dict)
    cast: int = 0
    extras_file: str | None = None
    notes: list[str] = field(default_factory=list)
    verified: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "source": self.source,
            "source_format": self.source_format,
            "source_sha256": self.source_sha256,
            "to": self.to,
            "files": list(self.files),
            "container": self.container,
            "container_reason": self.container_reason,
            "tensors": self.tensors,
            "nbytes": self.nbytes,
            "aliases": dict(self.aliases),
            "cast": self.cast,
            "extras_file": self.extras_file,
            "notes": list(self.notes),
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
        }

    @property
    def summary(self) -> str:
        """One line: ``safetensors: 12 tensors, 4.2 MB, verified bit for bit, 0.31 s``."""
        verified = "verified bit for bit" if self.verified else "not verified"
        return (
            f"{self.to}: {plural(self.tensors, 'tensor')}, {format_bytes(self.nbytes)}, {verified}, "
            f"{self.seconds:.2f} s"
        )

    def __repr__(self) -> str:
        return f"<ConvertReport {quote(self.source)} ({self.source_format}): {self.summary}>"

    def __str__(self) -> str:
        lines = [
            f"{quote(self.source)} ({self.source_format}) -> {self.summary}",
            f"  container: {self.container_reason}",
        ]
        lines.extend(f"  wrote {quote(path)}" for path in self.files)
        if self.aliases:
            shown = shorten_list(f"{quote(a)} = {quote(k)}" for a, k in self.aliases.items())
            how = "aliases in __metadata__" if self.to == "safetensors" else "one storage"
            lines.append(f"  tied, written once ({how}): {shown}")
        if self.cast:
            lines.append(f"  cast {plural(self.cast, 'tensor')}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append(f"  source sha256 {self.source_sha256}")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- plan


@dataclass
class _Item:
    """One tensor to write: its output name, its source record, and its output dtype."""

    name: str
    record: TensorRecord
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.record.numel * dtypes.itemsize(self.dtype)

    @property
    def cast(self) -> bool:
        return self.dtype != self.record.dtype


def _view_key(record: TensorRecord) -> tuple[Any, ...] | None:
    """Records with equal keys are the same tensor (tied weights); None for tensors that cannot be tied."""
    ref = record.storage
    if ref is None or record.numel == 0:
        return None
    return (ref.file, ref.key, record.dtype, record.shape, record.stride, record.storage_offset)


def _target_dtype(dtype: Any) -> str | None:
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


def _plan_items(selection: Selection, target: str | None, notes: list[str]) -> tuple[list[_Item], dict[str, str]]:
    """The tensors to write (each storage view once) and the aliases ``{alias: kept}``."""
    items: list[_Item] = []
    aliases: dict[str, str] = {}
    kept: dict[tuple[Any, ...], str] = {}
    meta: list[str] = []
    for key, record in selection.tensors.items():
        if record.storage is None:
            meta.append(key)
            continue
        view = _view_key(record)
        if view is not None and view in kept and key != "format" and not key.startswith(META_PREFIX):
            aliases[key] = kept[view]
            continue
        if view is not None:
            kept[view] = key
        info = dtypes.get(record.dtype)
        out = target if target is not None and info.kind == "float" else record.dtype
        items.append(_Item(key, record, out))
    if meta:
        notes.append(f"left out {plural(len(meta), 'tensor')} saved without data (meta device): {quote_list(meta)}")
    return items, aliases


def _views_note(items: list[_Item]) -> str | None:
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


def _shards(items: list[_Item], limit: int) -> list[list[_Item]]:
    """Items in order, cut into shards of at most ``limit`` bytes (a bigger tensor gets a shard of its own)."""
    shards: list[list[_Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


# ------------------------------------------------------------------------------------------------ tensor bytes


def _as_bytes(tensor: Any) -> bytearray:
    import torch

    out = bytearray(tensor.numel() * tensor.element_size())
    if out:  # copied straight into our buffer, in C order, whatever the tensor's strides
        torch.frombuffer(out, dtype=torch.uint8).view(tensor.dtype).view(tensor.shape).copy_(tensor)
    return out


def _chunks(item: _Item, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytearray]:
    """The output bytes of ``item``: the source's logical bytes, cast piece by piece when asked."""
    if not item.cast:
        yield from logical_chunks(item.record, chunk_bytes)
        return
    import torch

    source, target = dtypes.to_torch(item.record.dtype), dtypes.to_torch(item.dtype)
    for piece in logical_chunks(item.record, chunk_bytes):
        values = torch.frombuffer(piece, dtype=torch.uint8).view(source)
        yield _as_bytes(values.to(target))


def _same_bytes(a: Iterable[bytes | bytearray | memoryview], b: Iterable[bytes | bytearray | memoryview]) -> bool:
    """Whether two streams of pieces hold the same bytes (pieces may be cut at different places).

    Pieces cut at the same places (the usual case) are compared whole, with one ``memcmp``; misaligned ones by
    their overlapping parts.
    """
    left, right = iter(a), iter(b)
    pa: bytes | bytearray | memoryview = b""
    pb: bytes | bytearray | memoryview = b""
    oa = ob = 0
    while True:
        while oa == len(pa) and (piece := next(left, None)) is not None:
            pa, oa = piece, 0
        while ob == len(pb) and (piece := next(right, None)) is not None:
            pb, ob = piece, 0
        if oa == len(pa) or ob == len(pb):  # one stream is done: so must the other be
            return oa == len(pa) and ob == len(pb)
        n = min(len(pa) - oa, len(pb) - ob)
        if oa == ob == 0 and n == len(pa) == len(pb):
            same = pa == pb
        else:
            same = memoryview(pa)[oa : oa + n].tobytes() == memoryview(pb)[ob : ob + n].tobytes()
        if not same:
            return False
        oa += n
        ob += n


# ------------------------------------------------------------------------------------------------ destinations


@dataclass
class _Destination:
    folder: str
    stem: str
    single: str  # the one-file output
    to: str = "safetensors"

    def shard(self, i: int, n: int, suffix: str = ".safetensors") -> str:
        return os.path.join(self.folder, f"{self.stem}-{i:05d}-of-{n:05d}{suffix}")

    @property
    def index(self) -> str:
        return os.path.join(self.folder, f"{self.stem}.safetensors.index.json")

    @property
    def extras(self) -> str:
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


def _destination(dst: str, to: str) -> _Destination:
    is_dir = os.path.isdir(dst) or dst.endswith(("/", os.sep))
    if to == "safetensors":
        if not is_dir and dst.endswith(".safetensors"):
            base = os.path.basename(dst)
            return _Destination(os.path.dirname(dst) or ".", base[: -len(".safetensors")], dst)
        folder = dst.rstrip("/" + os.sep) or dst
        return _Destination(folder, "model", os.path.join(folder, "model.safetensors"))
    if not is_dir and (dst.endswith(_TORCH_SUFFIXES) or os.path.isfile(dst)):
        stem, _ = os.path.splitext(os.path.basename(dst))
        return _Destination(os.path.dirname(dst) or ".", stem, dst, to)
    folder = dst.rstrip("/" + os.sep) or dst
    return _Destination(folder, "pytorch_model", os.path.join(folder, "pytorch_model.bin"), to)


# ----------------------------------------------------------------------------------------------------- extras


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


def _extras(ckpt: Checkpoint, notes: list[str]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------------- convert


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
) -> ConvertReport:
    """Write the weights of ``src`` to ``dst`` as safetensors (or a plain torch file), streaming and verified.

    Args:
        src: any checkpoint :func:`torchweights.open` reads, or an opened :class:`Checkpoint`.
        dst: for safetensors, a ``.safetensors`` file, or a folder (``model.safetensors``, or
            ``model-00001-of-0000N.safetensors`` shards and ``model.safetensors.index.json``); for torch, a
            ``.pt``/``.pth``/``.bin`` file, or a folder (``pytorch_model.bin``).
        to: ``"safetensors"`` or ``"torch"`` (a plain state dict that ``torch.load(weights_only=True)`` reads;
            storages and views are kept as they are, shared storages stay shared).
        max_shard_size: most tensor bytes per safetensors shard (``"5GB"``, ``"500MiB"``, bytes); a bigger tensor
            gets a shard of its own. Torch output is always one file.
        dtype: cast floating-point tensors to this dtype (``"bfloat16"``, ``torch.float16``); others keep theirs.
            Needs torch; None (default) keeps every dtype and needs no torch.
        select: glob patterns (``"encoder.*"``) of the keys to write; None writes all.
        container: ``"auto"`` finds the weights (``state_dict``, ``model``...); a dotted path forces one; ``""``
            takes the whole file.
        force: replace existing outputs (and remove earlier shards of the same name that would be left over).
        verify: re-read every output and compare each tensor bit for bit with the source (default).
        extras: save non-tensor data that is plain (epoch, hyper-parameters) as ``<stem>.extras.json``.
        allow_globals: pickle globals you trust (see :func:`torchweights.open`).
        limits: resource bounds for hostile files.

    Returns:
        A :class:`ConvertReport`.

    Raises:
        RuleError: an option cannot be followed (unknown ``to``, bad size or dtype, dtypes safetensors cannot
            hold: complex128, complex32, fp8 ``fnuz`` variants, quantized).
        WriteError: an output exists (without ``force``), cannot be written, or differs from the source when
            re-read; nothing was kept.
        TorchWeightsError: the source cannot be read.
    """
    from ..api import open as open_checkpoint
    from .verify import sha256_file

    started = time.perf_counter()
    if to not in ("safetensors", "torch"):
        raise RuleError(f"to={to!r} is not 'safetensors' or 'torch'.", code="bad-format")
    limit = parse_size(max_shard_size)
    target = _target_dtype(dtype)
    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src, allow_globals=allow_globals, limits=limits)
    selection = select_weights(ckpt, container, select)
    notes = list(selection.notes)
    items, aliases = _plan_items(selection, target, notes)
    if not items:
        raise RuleError(
            f"nothing to write: no tensor of {quote(ckpt.path)} is left after choosing the weights "
            f"({selection.reason}){'; ' + '; '.join(notes) if notes else ''}. Pass another container= or select=.",
            code="nothing-selected",
        )
    _refuse_unwritable(items, ckpt.path, to)
    if any(item.cast for item in items):
        _need_torch()
    dest = _destination(os.fspath(dst), to)
    sources = [os.path.abspath(f) for f in (ckpt.files or (ckpt.path,))]
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
    plain_extras = _extras(ckpt, notes) if extras else {}
    with Outputs(force=force) as outputs:
        if to == "safetensors":
            note = _views_note(items)
            if note:
                notes.append(note)
            written = _write_safetensors(outputs, dest, items, aliases, meta, limit, verify, sources, plain_extras)
        else:
            written = _write_torch(outputs, dest, items, aliases, verify, sources, plain_extras, meta)
        outputs.commit()
        if verify and dest.index in written:
            from ..formats import ReadOptions, open_path

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


def _refuse_unwritable(items: list[_Item], path: str, to: str) -> None:
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
    where = "safetensors" if to == "safetensors" else "a plain state-dict torch file"
    raise RuleError(
        f"{plural(len(bad), 'tensor')} of {quote(path)} {'has' if len(bad) == 1 else 'have'} a dtype {where} "
        f"cannot store ({', '.join(kinds)}): {quote_list(item.name for item in bad)}. Nothing was written. {fix}.",
        code="unsupported-output-dtype",
    )


def _check_free(outputs: Outputs, finals: list[str], dest: _Destination, sources: list[str]) -> None:
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


def _write_extras(outputs: Outputs, dest: _Destination, plain: dict[str, Any], meta: Mapping[str, str]) -> str:
    document = {"source": meta[f"{META_PREFIX}source"], "source_sha256": meta[f"{META_PREFIX}source_sha256"]}
    document["extras"] = plain  # type: ignore[assignment]
    with outputs.write(dest.extras) as fh:
        fh.write((json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))
    return dest.extras


def _write_safetensors(
    outputs: Outputs,
    dest: _Destination,
    items: list[_Item],
    aliases: dict[str, str],
    meta: dict[str, str],
    limit: int,
    verify: bool,
    sources: list[str],
    plain_extras: dict[str, Any],
) -> list[str]:
    shards = _shards(items, limit)
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
        entries = [st_writer.Entry(item.name, item.dtype, item.record.shape, _chunk_source(item)) for item in shard]
        with outputs.write(final) as fh:
            st_writer.write_file(fh, entries, shard_meta)
        if verify:
            _verify_safetensors(outputs.temp_path(final), final, shard, here)
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


def _chunk_source(item: _Item) -> Callable[[], Iterator[bytearray]]:
    return lambda: _chunks(item)


def _verify_safetensors(temp: str, final: str, shard: list[_Item], aliases: dict[str, str]) -> None:
    """Re-read one written file with the strict reader; compare every tensor with a fresh read of the source."""
    from ..formats import ReadOptions
    from ..formats import safetensors as st_reader

    _compare(st_reader.read(temp, ReadOptions()), final, shard, aliases)


def _compare(ckpt: Checkpoint, final: str, items: list[_Item], aliases: dict[str, str]) -> None:
    """Every written tensor (names, dtypes, shapes, bytes) against a fresh read of its source; aliases share."""
    problems: list[str] = []
    expected = {item.name for item in items} | set(aliases)
    if set(ckpt.records) != expected:
        missing, extra = sorted(expected - set(ckpt.records)), sorted(set(ckpt.records) - expected)
        problems.append(f"names differ (missing {quote_list(missing)}; unexpected {quote_list(extra)})")
    for item in items:
        record = ckpt.records.get(item.name)
        if record is None:
            continue
        if record.dtype != item.dtype or record.shape != item.record.shape:
            problems.append(
                f"{quote(item.name)} is {record.dtype} {record.shape}, not {item.dtype} {item.record.shape}"
            )
        elif not _same_bytes(logical_chunks(record), _chunks(item)):
            problems.append(f"{quote(item.name)} differs from the source")
    for alias, kept in aliases.items():
        a, k = ckpt.records.get(alias), ckpt.records.get(kept)
        if a is None or k is None or (a.storage, a.storage_offset, a.stride) != (k.storage, k.storage_offset, k.stride):
            problems.append(f"alias {quote(alias)} does not share {quote(kept)}'s bytes")
    _raise_verify(final, problems)


def _raise_verify(final: str, problems: list[str]) -> None:
    if problems:
        raise WriteError(
            f"{quote(final)} was written but does not read back as the source: {shorten_list(problems, 5)}. Nothing "
            "was kept. The source or the disk changed during the conversion; run again.",
            code="verify-failed",
            path=final,
        )


# ------------------------------------------------------------------------------------------------------ torch


def _write_torch(
    outputs: Outputs,
    dest: _Destination,
    items: list[_Item],
    aliases: dict[str, str],
    verify: bool,
    sources: list[str],
    plain_extras: dict[str, Any],
    meta: dict[str, str],
) -> list[str]:
    finals = [dest.single, *([dest.extras] if plain_extras else [])]
    _check_free(outputs, finals, dest, sources)
    storages: list[torch_writer.Storage] = []
    tensors: dict[str, torch_writer.Tensor] = {}
    groups: dict[tuple[Any, ...], list[_Item]] = {}
    for item in items:
        ref = item.record.storage
        assert ref is not None
        if item.cast or item.record.numel == 0:
            groups[("own", item.name)] = [item]
        else:
            groups.setdefault((ref.file, ref.key, item.record.dtype), []).append(item)
    for n, members in enumerate(groups.values()):
        key = str(n)
        first = members[0]
        if first.cast or first.record.numel == 0:
            storages.append(torch_writer.Storage(key, first.dtype, first.nbytes, _chunk_source(first)))
            tensors[first.name] = torch_writer.Tensor(
                first.name, key, first.dtype, first.record.shape, _contiguous(first.record.shape), 0
            )
            continue
        lo = min(span(m.record)[0] for m in members)
        hi = max(span(m.record)[1] for m in members)
        size = first.record.itemsize
        storages.append(torch_writer.Storage(key, first.dtype, hi - lo, _span_source(first.record, lo, hi)))
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
        _verify_torch(outputs.temp_path(dest.single), dest.single, items, aliases)
    written = [dest.single]
    if plain_extras:
        written.append(_write_extras(outputs, dest, plain_extras, meta))
    return written


def _torch_order(items: list[_Item], aliases: dict[str, str]) -> list[str]:
    """Output names in source order, each alias right after the tensor it shares."""
    after: dict[str, list[str]] = {}
    for alias, kept in aliases.items():
        after.setdefault(kept, []).append(alias)
    out: list[str] = []
    for item in items:
        out.append(item.name)
        out.extend(after.get(item.name, ()))
    return out


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * max(shape[i + 1], 1)
    return tuple(strides)


def _span_source(record: TensorRecord, lo: int, hi: int) -> Callable[[], Iterator[bytearray]]:
    """Bytes ``[lo, hi)`` of ``record``'s storage, little-endian, in chunks."""
    size = record.itemsize
    whole = replace(record, shape=((hi - lo) // size,), stride=(1,), storage_offset=lo // size)
    return lambda: logical_chunks(whole)


def _verify_torch(temp: str, final: str, items: list[_Item], aliases: dict[str, str]) -> None:
    """Re-read the written torch file with our zip reader; compare every tensor with a fresh read of the source."""
    from ..formats import ReadOptions
    from ..formats import torch_zip as zip_reader

    _compare(zip_reader.read(temp, ReadOptions()), final, items, aliases)
