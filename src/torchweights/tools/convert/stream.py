"""The bytes a conversion writes, streamed from the source in bounded chunks, and the bit-for-bit check of what
was written against a fresh read of the source."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from ... import dtypes, progress
from ...errors import WriteError
from ...records import Checkpoint, TensorRecord
from ...storage.contents import CHUNK_BYTES, logical_chunks
from ...text import quote, quote_list, shorten_list
from .plan import Item

__all__ = ["chunk_source", "chunks", "span_source", "verify_dcp", "verify_safetensors", "verify_torch"]


def _as_bytes(tensor: Any) -> bytearray:
    import torch

    out = bytearray(tensor.numel() * tensor.element_size())
    if out:  # copied straight into our buffer, in C order, whatever the tensor's strides
        torch.frombuffer(out, dtype=torch.uint8).view(tensor.dtype).view(tensor.shape).copy_(tensor)
    return out


def chunks(item: Item, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytearray]:
    """The output bytes of ``item``: the source's logical bytes, cast piece by piece when asked (each piece told
    to the current progress meter)."""
    if not item.cast:
        yield from _told(logical_chunks(item.record, chunk_bytes))
        return
    yield from _told(_cast(item, chunk_bytes))


def _cast(item: Item, chunk_bytes: int) -> Iterator[bytearray]:
    import torch

    source, target = dtypes.to_torch(item.record.dtype), dtypes.to_torch(item.dtype)
    for piece in logical_chunks(item.record, chunk_bytes):
        values = torch.frombuffer(piece, dtype=torch.uint8).view(source)
        yield _as_bytes(values.to(target))


def chunk_source(item: Item) -> Callable[[], Iterator[bytearray]]:
    """A callable that streams the output bytes of ``item`` (:func:`chunks`) afresh each time it is called."""
    return lambda: chunks(item)


def span_source(record: TensorRecord, lo: int, hi: int) -> Callable[[], Iterator[bytearray]]:
    """Bytes ``[lo, hi)`` of ``record``'s storage, little-endian, in chunks."""
    size = record.itemsize
    whole = replace(record, shape=((hi - lo) // size,), stride=(1,), storage_offset=lo // size)
    return lambda: _told(logical_chunks(whole))


def _told(pieces: Iterator[bytearray]) -> Iterator[bytearray]:
    """``pieces``, each told to the current progress meter once it was used."""
    meter = progress.current()
    for piece in pieces:
        yield piece
        if meter is not None:
            meter.advance(len(piece))


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


def _compare(ckpt: Checkpoint, final: str, items: list[Item], aliases: dict[str, str]) -> None:
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
        elif not _same_bytes(logical_chunks(record), chunks(item)):
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


def verify_safetensors(temp: str, final: str, shard: list[Item], aliases: dict[str, str]) -> None:
    """Re-read one written file with the strict reader; compare every tensor with a fresh read of the source."""
    from ...formats import ReadOptions
    from ...formats import safetensors as st_reader

    _compare(st_reader.read(temp, ReadOptions()), final, shard, aliases)


def verify_torch(temp: str, final: str, items: list[Item], aliases: dict[str, str]) -> None:
    """Re-read the written torch file with our zip reader; compare every tensor with a fresh read of the source."""
    from ...formats import ReadOptions
    from ...formats import torch_zip as zip_reader

    _compare(zip_reader.read(temp, ReadOptions()), final, items, aliases)


def verify_dcp(temp: str, final: str, items: list[Item], aliases: dict[str, str]) -> None:
    """Re-read the written DCP folder with our reader; compare every tensor with a fresh read of the source."""
    from ...formats import ReadOptions
    from ...formats import dcp as dcp_reader

    _compare(dcp_reader.read(temp, ReadOptions()), final, items, aliases)
