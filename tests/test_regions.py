"""storage.regions: the pieces that hold a box of a tensor (plain, strided, stored in chunks), checked against torch
slicing, and fill reading only the bytes of each box, into slices that are not contiguous as well."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchweights as tw
from torchweights.records import TensorRecord
from torchweights.storage.contents import logical_bytes, logical_chunks
from torchweights.storage.read import fill, materialize
from torchweights.storage.regions import regions


def _box(record: TensorRecord, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
    """The box read through regions() and fill, into a destination of the box's shape."""
    dtype = getattr(torch, record.dtype)
    dst = torch.full(sizes, -1, dtype=dtype) if dtype.is_floating_point else torch.zeros(sizes, dtype=dtype)
    fill([(part, dst[slices]) for part, slices in regions(record, offsets, sizes)])
    return dst


def _cut(offsets: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, sizes))


BOXES = [((0, 0), (6, 8)), ((1, 0), (3, 8)), ((2, 3), (3, 4)), ((5, 7), (1, 1)), ((0, 5), (6, 3))]


@pytest.fixture(scope="module")
def full() -> torch.Tensor:
    return torch.arange(48, dtype=torch.float32).reshape(6, 8) * 1.5


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, full: torch.Tensor) -> tw.Checkpoint:
    path = tmp_path_factory.mktemp("regions") / "plain.pt"
    torch.save({"w": full, "t": full.t(), "s": torch.tensor(3.5), "i": torch.arange(10, dtype=torch.int16)}, path)
    return tw.open(path)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory, full: torch.Tensor) -> dict[str, TensorRecord]:
    """``full`` stored in pieces as several ranks save it: split along dim 0 (uneven, one empty piece), along dim
    1, and on a 2-D grid."""
    layouts = {
        "rows": [((0, 0), (2, 8)), ((2, 0), (3, 8)), ((5, 0), (1, 8)), ((6, 0), (0, 8))],
        "cols": [((0, 0), (6, 3)), ((0, 3), (6, 5))],
        "grid": [((0, 0), (4, 3)), ((0, 3), (4, 5)), ((4, 0), (2, 3)), ((4, 3), (2, 5))],
    }
    path = tmp_path_factory.mktemp("regions") / "pieces.safetensors"
    tensors = {f"{k}.{n}": full[_cut(o, s)].contiguous() for k, v in layouts.items() for n, (o, s) in enumerate(v)}
    save_file(tensors, path)
    ckpt = tw.open(path)
    out = {}
    for key, pieces in layouts.items():
        chunks = tuple((o, ckpt.records[f"{key}.{n}"]) for n, (o, _) in enumerate(pieces))
        out[key] = TensorRecord(key, (key,), "float32", (6, 8), (8, 1), 0, None, chunks=chunks)
    return out


@pytest.mark.parametrize(("offsets", "sizes"), BOXES)
def test_boxes_of_a_plain_and_a_transposed_record(
    plain: tw.Checkpoint, full: torch.Tensor, offsets: tuple[int, int], sizes: tuple[int, int]
) -> None:
    assert torch.equal(_box(plain.records["w"], offsets, sizes), full[_cut(offsets, sizes)])
    transposed = plain.records["t"]
    assert not transposed.is_contiguous
    box_t = (offsets[1], offsets[0]), (sizes[1], sizes[0])
    assert torch.equal(_box(transposed, *box_t), full.t()[_cut(*box_t)])
    ((part, slices),) = regions(transposed, *box_t)
    assert part.stride == transposed.stride and part.storage == transposed.storage and part.shape == box_t[1]
    assert slices == tuple(slice(0, n) for n in box_t[1])


@pytest.mark.parametrize("layout", ["rows", "cols", "grid"])
@pytest.mark.parametrize(("offsets", "sizes"), BOXES)
def test_boxes_of_a_chunked_record(
    chunked: dict[str, TensorRecord], full: torch.Tensor, layout: str, offsets: tuple[int, int], sizes: tuple[int, int]
) -> None:
    record = chunked[layout]
    parts = regions(record, offsets, sizes)
    assert sum(p.numel for p, _ in parts) == math.prod(sizes)  # the parts tile the box, no piece twice
    assert all(p.numel for p, _ in parts) and all(p.storage is not None for p, _ in parts)
    assert torch.equal(_box(record, offsets, sizes), full[_cut(offsets, sizes)])


def test_whole_row_boxes_of_a_chunk_are_contiguous(chunked: dict[str, TensorRecord]) -> None:
    ((part, slices),) = regions(chunked["rows"], (3, 0), (2, 8))
    assert part.is_contiguous and part.shape == (2, 8) and part.storage_offset == 8
    assert slices == (slice(0, 2), slice(0, 8))
    cols = regions(chunked["cols"], (1, 0), (2, 8))
    assert [s for _, s in cols] == [(slice(0, 2), slice(0, 3)), (slice(0, 2), slice(3, 8))]
    assert [p.stride for p, _ in cols] == [(3, 1), (5, 1)]


def test_fill_and_materialize_a_chunked_record(chunked: dict[str, TensorRecord], full: torch.Tensor) -> None:
    for record in chunked.values():
        into = torch.zeros(6, 8)
        fill([(record, into)])
        assert torch.equal(into, full)
        flat = torch.zeros(48)  # another shape of the same number of elements, as fill allows
        fill([(record, flat)])
        assert torch.equal(flat, full.reshape(-1))
        built = materialize([record, chunked["rows"]])
        assert torch.equal(built[record.name], full) and built[record.name].is_contiguous()


def test_a_non_contiguous_destination_is_filled_exactly(chunked: dict[str, TensorRecord], full: torch.Tensor) -> None:
    """Chunks split along dim 1 landing in column slices of a bigger tensor: nothing outside them is written."""
    big = torch.full((8, 12), -7.0)
    inner = big[1:7, 2:10]
    assert not inner.is_contiguous()
    fill([(part, inner[slices]) for part, slices in regions(chunked["cols"], (0, 0), (6, 8))])
    assert torch.equal(inner, full)
    outside = big.clone()
    outside[1:7, 2:10] = -7.0
    assert torch.equal(outside, torch.full((8, 12), -7.0))


def test_0_dim_and_empty_boxes(plain: tw.Checkpoint, chunked: dict[str, TensorRecord]) -> None:
    scalar = plain.records["s"]
    ((part, slices),) = regions(scalar, (), ())
    assert part == scalar and slices == ()
    out = torch.zeros(())
    fill([(part, out[slices])])
    assert out.item() == 3.5
    assert regions(plain.records["i"], (4,), (0,)) == []
    assert regions(chunked["grid"], (6, 0), (0, 8)) == []
    assert regions(chunked["rows"], (2, 2), (3, 0)) == []


@pytest.mark.parametrize(
    ("offsets", "sizes"),
    [((0, 0), (7, 8)), ((5, 0), (2, 1)), ((0, 9), (1, 0)), ((-1, 0), (1, 1)), ((0,), (1,)), ((0, 0), (1, 1, 1))],
    ids=["too-many-rows", "past-the-end", "offset-past", "negative", "too-few-dims", "sizes-too-long"],
)
def test_a_box_out_of_bounds_is_refused(
    chunked: dict[str, TensorRecord], plain: tw.Checkpoint, offsets: tuple[int, ...], sizes: tuple[int, ...]
) -> None:
    for record in (chunked["grid"], plain.records["w"]):
        with pytest.raises(ValueError, match="box|dimensions"):
            regions(record, offsets, sizes)


def test_row_ranges_read_only_their_bytes(tmp_path: Path) -> None:
    """A ~100 MB tensor read as 4 row ranges (4 ranks' shards) reads its bytes once in all, not 4 times."""
    rows, cols = 6144, 4096
    weight = torch.arange(rows, dtype=torch.float32)[:, None] + torch.arange(cols, dtype=torch.float32)[None, :] / 8
    path = tmp_path / "big.safetensors"
    save_file({"w": weight}, path)
    record = tw.open(path).records["w"]
    total = 0
    cuts = [0, 1000, 3000, 3001, rows]
    for lo, hi in pairwise(cuts):
        local = torch.empty(hi - lo, cols)
        parts = regions(record, (lo, 0), (hi - lo, cols))
        assert len(parts) == 1 and parts[0][0].is_contiguous
        total += fill([(part, local[slices]) for part, slices in parts]).bytes_read
        assert torch.equal(local, weight[lo:hi])
    assert total == weight.numel() * 4


@pytest.mark.parametrize("layout", ["rows", "cols", "grid"])
def test_logical_chunks_of_a_chunked_record_are_bounded(
    chunked: dict[str, TensorRecord], full: torch.Tensor, layout: str
) -> None:
    """convert/diff/verify's view: the logical bytes in C order, at most ``chunk_bytes`` at a time (a band of two
    32-byte rows here) when pieces split the columns, piece by piece when they split only the rows."""
    pieces = list(logical_chunks(chunked[layout], chunk_bytes=64))
    assert b"".join(pieces) == full.numpy().tobytes()
    sizes = [len(p) for p in pieces]
    assert sizes == ([64, 64, 32, 32] if layout == "rows" else [64, 64, 64])  # rows: pieces of 2, 3 and 1 rows
    assert logical_bytes(chunked[layout]) == full.numpy().tobytes()
