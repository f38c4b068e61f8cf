"""NumPy ``.npy`` / ``.npz`` files read as records: every result compared bit for bit with
``torch.from_numpy(numpy.load(path))`` (big-endian arrays: after numpy's own byte swap, since torch refuses them)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchweights as tw
from torchweights.errors import CorruptCheckpointError, UnsupportedCheckpointError

_DTYPES = ["?", "i1", "u1", "<i2", ">i2", "<u2", "<i4", ">i4", "<u4", "<i8", ">u8", "<f2", ">f2", "<f4", ">f4"]
_DTYPES += ["<f8", ">f8", "<c8", ">c8", "<c16", ">c16"]


def _expected(array: np.ndarray) -> torch.Tensor:
    """What torch.from_numpy gives for ``array`` (byte-swapped to native first when it is not native)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="), order="K")
    return torch.from_numpy(array)


def _same(got: torch.Tensor, array: np.ndarray) -> None:
    want = _expected(array)
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.numel():  # (numpy gives empty arrays read from a zip odd strides; they address nothing)
        assert got.stride() == want.stride()
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8))


def _weights(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "?":
        return rng.random(shape) > 0.5
    kind = np.dtype(dtype).kind
    if kind in "iu":
        info = np.iinfo(np.dtype(dtype))
        return rng.integers(
            info.min, info.max, size=shape, dtype=np.dtype(dtype).newbyteorder("="), endpoint=True
        ).astype(dtype)
    values = rng.standard_normal(shape) * 3
    if kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize("fortran", [False, True])
def test_npy_every_dtype_and_order(tmp_path: Path, dtype: str, fortran: bool) -> None:
    rng = np.random.default_rng(abs(hash((dtype, fortran))) % 2**32)
    array = _weights(rng, dtype, (5, 3, 4))
    if fortran:
        array = np.asfortranarray(array)
    path = tmp_path / "w.bin"
    with path.open("wb") as f:
        np.save(f, array)
    ckpt = tw.open(path)
    assert ckpt.format == "npy" and list(ckpt.records) == ["array"]
    record = ckpt.records["array"]
    assert record.shape == array.shape and record.nbytes == array.nbytes
    start, end = record.byte_range or (0, 0)
    assert end - start == array.nbytes and end == path.stat().st_size
    _same(tw.load(path)["array"], np.load(path))
    _same(tw.load(path, mmap=True)["array"], np.load(path))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_header_versions(tmp_path: Path, version: tuple[int, int]) -> None:
    array = np.arange(24, dtype="<f4").reshape(2, 3, 4)
    path = tmp_path / "a.npy"
    with path.open("wb") as f:
        np.lib.format.write_array(f, array, version=version)
    _same(tw.load(path)["array"], np.load(path))


@pytest.mark.parametrize("array", [np.array(2.5), np.zeros((0, 3), "<f4"), np.ones((1,), "<i8"), np.zeros((4, 0, 2))])
def test_npy_scalars_and_empty(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "a.npy"
    np.save(path, array)
    _same(tw.load(path)["array"], np.load(path))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_named_by_key(tmp_path: Path, compressed: bool) -> None:
    rng = np.random.default_rng(7)
    arrays: dict[str, Any] = {f"layer{i}.{d}": _weights(rng, d, (3, 7)) for i, d in enumerate(_DTYPES)}
    arrays["fortran"] = np.asfortranarray(rng.standard_normal((6, 5)).astype(">f8"))
    arrays["scalar"] = np.array(3, dtype="<i2")
    arrays["empty"] = np.zeros((0,), "<f4")
    path = tmp_path / "arrays.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    ckpt = tw.open(path)
    assert ckpt.format == "npz" and list(ckpt.records) == list(arrays)
    loaded = tw.load(path)
    with np.load(path) as ref:
        assert list(loaded) == ref.files
        for key in ref.files:
            _same(loaded[key], ref[key])
    if compressed:  # the member's CRC-32 covers the whole inflated member: a flipped byte is caught
        member = ckpt.records["layer0.?"].storage
        assert member is not None and member.compression and member.crc32 is not None


def test_npz_damaged_members_are_caught_by_their_crc(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, w=np.arange(1000, dtype="<f4"))  # small: read whole (and CRC-checked) for its header
    ref = tw.open(path).records["w"].storage
    assert ref is not None and ref.member == "w.npy"
    data = bytearray(path.read_bytes())
    data[ref.offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "bad-crc"
    comp = tmp_path / "c.npz"
    np.savez_compressed(comp, w=np.random.default_rng(0).standard_normal(100_000).astype("<f4"))
    with zipfile.ZipFile(comp) as z:
        info_ = z.getinfo("w.npy")
    raw = bytearray(comp.read_bytes())
    raw[info_.header_offset + 30 + len(info_.filename) + len(info_.extra) + info_.compress_size // 2] ^= 0x01
    comp.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpointError):
        tw.load(comp)


def test_npz_unsupported_member_kinds(tmp_path: Path) -> None:
    path = tmp_path / "mixed.npz"
    np.savez(path, w=np.ones(3, "<f4"), text=np.array(["a", "bc"]), big=np.zeros(2, np.longdouble))
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["w"] and set(ckpt.extras) == {"text", "big"} and len(ckpt.warnings) == 2
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "unsupported-tensor" and "'text'" in str(info.value) and "'big'" in str(info.value)
    assert "Unicode strings" in str(info.value) and "float128" in str(info.value)
    loaded = tw.load(path, unsupported="skip")
    assert list(loaded) == ["w"] and torch.equal(loaded["w"], torch.ones(3))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]),
        np.array(["2020-01-01"], dtype="M8[D]"),
        np.array([b"ab"]),
        np.zeros(3, dtype=np.longdouble),
    ],
    ids=["structured", "datetime", "bytes", "float128"],
)
def test_npy_dtypes_torch_lacks_are_refused(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "a.npy"
    np.save(path, array)
    assert not tw.open(path).records
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "unsupported-tensor" and "no torch dtype can hold" in str(info.value)


def _npy_bytes(header: str, body: bytes = b"", version: int = 1) -> bytes:
    text = header.encode("latin-1")
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + body


@pytest.mark.parametrize(
    ("header", "body", "code"),
    [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", b"\0" * 15, "truncated"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", b"", "bad-header"),
        ("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", b"\0" * 4, "bad-header"),
        ("{'descr': '<f4', 'shape': (1,), }", b"\0" * 4, "bad-header"),
        ("__import__('os').system('true')", b"", "bad-header"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", b"\0" * 4, "bad-header"),
    ],
    ids=["truncated", "negative-shape", "fortran-not-bool", "missing-key", "code", "extra-key"],
)
def test_npy_hostile_headers(tmp_path: Path, header: str, body: bytes, code: str) -> None:
    path = tmp_path / "a.npy"
    path.write_bytes(_npy_bytes(header, body))
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(path)
    assert info.value.code == code


def test_npy_huge_header_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 30) + b"{")
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "bad-header" and "10000" in str(info.value)


def test_npz_with_a_foreign_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, w=np.ones(2))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", b"hello")
    with pytest.raises(tw.NotACheckpointError):  # not every member is an array: not an .npz for detect
        tw.open(path)
