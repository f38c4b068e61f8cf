"""``torchweights.storage.contents``: the logical bytes of any view, gathered without torch, in bounded chunks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchweights as tw
from torchweights.records import StorageRef, TensorRecord
from torchweights.storage import contents as _bytes


def _bits(t: torch.Tensor) -> bytes:
    t = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # freshly laid out (contiguous() keeps odd size-1 strides)
    return b"" if t.numel() == 0 else bytes(t.reshape(-1).view(torch.uint8).tolist())


@st.composite
def views(draw: st.DrawFn) -> tuple[tuple[int, ...], list[tuple[int, int, int]], tuple[int, ...], torch.dtype]:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    slices = []
    for n in shape:
        start = draw(st.integers(0, n - 1))
        stop = draw(st.integers(start + 1, n))
        step = draw(st.integers(1, 3))
        slices.append((start, stop, step))
    perm = tuple(draw(st.permutations(range(len(shape)))))
    dtype = draw(
        st.sampled_from([torch.float32, torch.float16, torch.int8, torch.float64, torch.complex128, torch.bool])
    )
    return shape, slices, perm, dtype


@settings(max_examples=40, deadline=None)
@given(views())
def test_any_view_reads_as_its_contiguous_bytes(tmp_path_factory: pytest.TempPathFactory, case: tuple) -> None:
    shape, slices, perm, dtype = case
    base = (torch.arange(1, 1 + int(torch.tensor(shape).prod())) % 7).to(dtype).reshape(shape)
    view = base[tuple(slice(a, b, c) for a, b, c in slices)].permute(perm)
    path = tmp_path_factory.mktemp("v") / "v.pt"
    torch.save({"base": base, "view": view}, path)
    record = tw.open(path).records["view"]
    assert bytes(_bytes.logical_bytes(record)) == _bits(view)


def test_gather_is_torch_free_and_handles_broadcast_dimensions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"e": base[:, 1:2].expand(3, 5), "t": base.t()}, tmp_path / "x.pt")
    records = tw.open(tmp_path / "x.pt").records
    monkeypatch.setitem(sys.modules, "torch", None)  # the pure-Python gather must not need it
    assert bytes(_bytes.logical_bytes(records["e"])) == _bits(base[:, 1:2].expand(3, 5))
    assert bytes(_bytes.logical_bytes(records["t"])) == _bits(base.t())


def test_contiguous_tensors_come_in_bounded_chunks(tmp_path: Path) -> None:
    t = torch.arange(1000, dtype=torch.int32)
    torch.save({"t": t}, tmp_path / "c.pt")
    record = tw.open(tmp_path / "c.pt").records["t"]
    pieces = list(_bytes.logical_chunks(record, chunk_bytes=301))
    assert {len(p) for p in pieces[:-1]} == {300} and b"".join(pieces) == _bits(t)


def test_big_endian_storages_are_swapped(tmp_path: Path) -> None:
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.float32)
    little = _bits(values)
    big = b"".join(little[i : i + 4][::-1] for i in range(0, 12, 4))
    path = tmp_path / "raw.bin"
    path.write_bytes(b"pad" + big)
    ref = StorageRef(key="0", file=str(path), offset=3, nbytes=12, byteorder="big")
    record = TensorRecord("x", ("x",), "float32", (3,), (1,), 0, ref)
    assert bytes(_bytes.logical_bytes(record)) == little
    cplx = TensorRecord("z", ("z",), "complex64", (1,), (1,), 0, StorageRef("0", str(path), 3, 8, "big"))
    assert bytes(_bytes.logical_bytes(cplx)) == little[:8]  # each float of the pair swapped on its own


def test_views_with_very_many_rows_are_gathered_by_torch_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = torch.arange(60, dtype=torch.int16).reshape(6, 10)
    views = {"t": base.t(), "s": base[::2, 1::3], "one": base[2:3, 4:5]}
    torch.save(views, tmp_path / "v.pt")
    records = tw.open(tmp_path / "v.pt").records
    python = {k: bytes(_bytes.logical_bytes(r)) for k, r in records.items()}
    monkeypatch.setattr(_bytes, "_TORCH_GATHER_ABOVE", 0)
    assert {k: bytes(_bytes.logical_bytes(r)) for k, r in records.items()} == python
    assert python == {k: _bits(v) for k, v in views.items()}


def test_compressed_zip_members_are_inflated(tmp_path: Path) -> None:
    import zipfile

    base = torch.arange(40, dtype=torch.float32).reshape(5, 8)
    torch.save({"w": base, "t": base.t()}, tmp_path / "a.pt")
    with (
        zipfile.ZipFile(tmp_path / "a.pt") as zin,
        zipfile.ZipFile(tmp_path / "c.pt", "w", zipfile.ZIP_DEFLATED) as zout,
    ):
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    records = tw.open(tmp_path / "c.pt").records
    assert records["w"].storage is not None and records["w"].storage.compression
    assert bytes(_bytes.logical_bytes(records["t"])) == _bits(base.t())
    assert [bytes(p) for p in _bytes.logical_chunks(records["w"], chunk_bytes=64)] == [
        _bits(base)[i : i + 64] for i in range(0, 160, 64)
    ]
