"""The hand-written safetensors reader: records against what safetensors wrote, and every validation rule."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from torchweights import dtypes
from torchweights.errors import (
    CheckpointNotFoundError,
    CheckpointReadError,
    CorruptCheckpointError,
    ResourceLimitError,
    TorchWeightsError,
)
from torchweights.formats import ReadOptions
from torchweights.formats.safetensors import contiguous_strides, read
from torchweights.limits import Limits
from torchweights.records import Checkpoint

OPTIONS = ReadOptions()


# ----------------------------------------------------------------------------------------------------- helpers


def write_raw(path: Path, header: Any, data: bytes = b"", *, declared: int | None = None) -> str:
    """Write a safetensors-shaped file: length prefix, header (dict -> JSON, str/bytes as is), data."""
    if isinstance(header, bytes):
        raw = header
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = json.dumps(header).encode()
    length = len(raw) if declared is None else declared
    path.write_bytes(struct.pack("<Q", length) + raw + data)
    return str(path)


def entry(dtype: str, shape: list[Any], begin: Any, end: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def file_bytes(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def as_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def read_error(path: str, options: ReadOptions = OPTIONS) -> CorruptCheckpointError:
    with pytest.raises(CorruptCheckpointError) as info:
        read(path, options)
    return info.value


def assert_error(err: TorchWeightsError, cls: type[TorchWeightsError], code: str, *needles: str) -> None:
    assert type(err) is cls, (type(err), str(err))
    assert err.code == code, str(err)
    for needle in needles:
        assert needle in err.message, (needle, err.message)
    assert err.message.count("\n  - [") <= 1, f"one rule broken, several reported: {err.message}"


# ----------------------------------------------------------------------------------------------------- records


TENSORS: dict[str, torch.Tensor] = {
    "float32.matrix": torch.randn(4, 5),
    "float64": torch.randn(3, dtype=torch.float64),
    "float16": torch.randn(2, 3).half(),
    "bfloat16.weight": torch.randn(3, 2, 2).to(torch.bfloat16),
    "fp8.e4m3": torch.randn(7).to(torch.float8_e4m3fn),
    "fp8.e5m2": torch.randn(2, 2).to(torch.float8_e5m2),
    "int64": torch.arange(6).reshape(2, 3),
    "int32": torch.arange(4, dtype=torch.int32),
    "int16": torch.arange(3, dtype=torch.int16),
    "int8": torch.tensor([-1, 2, -3], dtype=torch.int8),
    "uint8": torch.tensor([1, 255], dtype=torch.uint8),
    "bool.mask": torch.tensor([[True, False], [False, True]]),
    "scalar": torch.tensor(3.5),
    "scalar.bool": torch.tensor(True),
    "empty": torch.empty(0, 3),
    "empty.middle": torch.empty(2, 0, 4, dtype=torch.bfloat16),
}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[str, Checkpoint]:
    path = str(tmp_path / "model.safetensors")
    save_file(TENSORS, path, metadata={"format": "pt", "note": "hello"})
    return path, read(path, OPTIONS)


def test_records_match_what_safetensors_wrote(saved: tuple[str, Checkpoint]) -> None:
    path, ckpt = saved
    assert ckpt.format == "safetensors"
    assert ckpt.path == path
    assert ckpt.files == (path,)
    assert set(ckpt.records) == set(TENSORS)
    for name, tensor in TENSORS.items():
        record = ckpt[name]
        assert record.name == name
        assert record.path == (name,)
        assert f"torch.{record.dtype}" == str(tensor.dtype)
        assert record.shape == tuple(tensor.shape)
        assert record.stride == tensor.stride()
        assert record.storage_offset == 0
        if tensor.numel():  # records.TensorRecord.is_contiguous says False for (2, 0, 4); torch says True
            assert record.is_contiguous
        assert record.nbytes == tensor.numel() * tensor.element_size()
        storage = record.storage
        assert storage is not None
        assert storage.key == name and storage.file == path
        assert storage.nbytes == record.nbytes
        assert record.byte_range == (storage.offset, storage.offset + storage.nbytes)
        assert file_bytes(path, storage.offset, storage.offset + storage.nbytes) == as_bytes(tensor)


def test_records_are_in_file_order_and_tile_the_data(saved: tuple[str, Checkpoint]) -> None:
    path, ckpt = saved
    header_len = ckpt.metadata["header_bytes"]
    position = 8 + header_len
    for record in ckpt.records.values():
        assert record.storage is not None
        assert record.storage.offset == position
        position += record.storage.nbytes
    assert position == os.path.getsize(path)
    raw = json.loads(file_bytes(path, 8, 8 + header_len))
    by_offset = sorted((v["data_offsets"], k) for k, v in raw.items() if k != "__metadata__")
    assert [r.storage.offset - 8 - header_len for r in ckpt.records.values() if r.storage] == [
        offsets[0] for offsets, _ in by_offset
    ]


def test_metadata(saved: tuple[str, Checkpoint]) -> None:
    path, ckpt = saved
    (header_len,) = struct.unpack("<Q", file_bytes(path, 0, 8))
    assert ckpt.metadata == {"safetensors": {"format": "pt", "note": "hello"}, "header_bytes": header_len}


def test_no_metadata_gives_empty_dict(tmp_path: Path) -> None:
    path = str(tmp_path / "x.safetensors")
    save_file({"w": torch.ones(2)}, path)
    assert read(path, OPTIONS).metadata["safetensors"] == {}


def test_null_metadata_is_accepted(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"__metadata__": None, "w": entry("F32", [1], 0, 4)}, bytes(4))
    assert read(path, OPTIONS).metadata["safetensors"] == {}


@pytest.mark.parametrize(
    ("code", "dtype", "array"),
    [
        ("U16", "uint16", np.array([1, 65535], dtype=np.uint16)),
        ("U32", "uint32", np.array([7, 2**32 - 1], dtype=np.uint32)),
        ("U64", "uint64", np.array([2**64 - 1], dtype=np.uint64)),
        ("C64", "complex64", np.array([1 + 2j, 3 - 4j], dtype=np.complex64)),
        ("F8_E8M0", "float8_e8m0fnu", np.array([127, 128, 1], dtype=np.uint8)),
    ],
)
def test_dtypes_safetensors_torch_cannot_write(tmp_path: Path, code: str, dtype: str, array: np.ndarray) -> None:
    data = array.tobytes()
    path = write_raw(tmp_path / "x.safetensors", {"t": entry(code, list(array.shape), 0, len(data))}, data)
    record = read(path, OPTIONS)["t"]
    assert record.dtype == dtype
    assert record.shape == array.shape
    assert record.byte_range is not None
    assert file_bytes(path, *record.byte_range) == data


@pytest.mark.parametrize("dtype", [d for d in dtypes.DTYPES.values() if d.safetensors], ids=lambda d: d.safetensors)
def test_every_known_code(tmp_path: Path, dtype: dtypes.DType) -> None:
    assert dtype.safetensors is not None
    nbytes = 6 * dtype.itemsize
    path = write_raw(tmp_path / "x.safetensors", {"t": entry(dtype.safetensors, [2, 3], 0, nbytes)}, bytes(nbytes))
    record = read(path, OPTIONS)["t"]
    assert (record.dtype, record.nbytes, record.stride) == (dtype.name, nbytes, (3, 1))


def test_empty_header_is_an_empty_checkpoint(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {})
    ckpt = read(path, OPTIONS)
    assert len(ckpt) == 0
    assert ckpt.metadata == {"safetensors": {}, "header_bytes": 2}


def test_header_padding_whitespace_is_fine(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", json.dumps({"w": entry("I8", [2], 0, 2)}) + "     ", b"\x01\x02")
    assert read(path, OPTIONS)["w"].shape == (2,)


def test_zero_size_tensors_never_overlap(tmp_path: Path) -> None:
    header = {
        "a": entry("F32", [2], 0, 8),
        "e1": entry("F32", [0], 4, 4),  # inside 'a': occupies no bytes
        "e2": entry("BF16", [3, 0], 0, 0),
        "b": entry("I8", [1], 8, 9),
        "e3": entry("F16", [0, 5], 9, 9),  # at the very end
    }
    path = write_raw(tmp_path / "x.safetensors", header, bytes(9))
    ckpt = read(path, OPTIONS)
    assert list(ckpt.records) == ["e2", "a", "e1", "b", "e3"]
    assert ckpt["e1"].byte_range == (8 + ckpt.metadata["header_bytes"] + 4,) * 2
    assert ckpt["e2"].stride == (1, 1)


def test_contiguous_strides_match_torch() -> None:
    for shape in [(), (0,), (3,), (2, 3), (2, 0, 3), (3, 0), (4, 1, 5, 2), (0, 0)]:
        assert contiguous_strides(shape) == torch.empty(shape).stride(), shape


def test_reads_only_the_header(tmp_path: Path) -> None:
    """A 4 GiB sparse data buffer: reading must not touch it (and must stay fast)."""
    nbytes = 4 << 30
    path = write_raw(tmp_path / "big.safetensors", {"huge": entry("U8", [nbytes], 0, nbytes)})
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) + nbytes)
    ckpt = read(path, OPTIONS)
    assert ckpt["huge"].nbytes == nbytes


def test_read_works_without_torch(tmp_path: Path) -> None:
    path = str(tmp_path / "x.safetensors")
    save_file({"w": torch.ones(2, 2), "b": torch.zeros(2)}, path)
    code = (
        "import sys; from torchweights.formats.safetensors import read; from torchweights.formats import ReadOptions; "
        f"c = read({path!r}, ReadOptions()); assert len(c) == 2, c; "
        "assert 'torch' not in sys.modules; assert 'safetensors' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ----------------------------------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as info:
        read(str(tmp_path / "nope.safetensors"), OPTIONS)
    assert info.value.code == "not-found"


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointReadError) as info:
        read(str(tmp_path), OPTIONS)
    assert "not a regular file" in info.value.message


def test_shorter_than_length_prefix(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x05\x00\x00")
    assert_error(read_error(str(path)), CorruptCheckpointError, "truncated", "truncated", "3 bytes", "re-download")


def test_header_longer_than_file(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"w": entry("F32", [1], 0, 4)}, declared=5000)
    assert_error(
        read_error(path), CorruptCheckpointError, "truncated", "truncated", "5,000 bytes", "file size is", "re-download"
    )


def test_header_larger_than_limit(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"w": entry("F32", [1], 0, 4)}, bytes(4))
    options = ReadOptions(limits=Limits(max_header_bytes=16))
    err = read_error(path, options)
    assert_error(err, ResourceLimitError, "limit-header-size", "max_header_bytes", "16 bytes")


def test_header_not_utf8(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", b'{"w\xff": {}}')
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-not-utf8", "UTF-8", "0xff", "byte 3")


@pytest.mark.parametrize("header", ['{"w": ', "", "not json", '{"w": NaN}'])
def test_header_not_json(tmp_path: Path, header: str) -> None:
    path = write_raw(tmp_path / "x.safetensors", header)
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-bad-header", "not valid JSON")


@pytest.mark.parametrize(("header", "kind"), [("[1, 2]", "array"), ('"x"', "string"), ("null", "null")])
def test_header_not_an_object(tmp_path: Path, header: str, kind: str) -> None:
    path = write_raw(tmp_path / "x.safetensors", header)
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-bad-header", f"JSON {kind}")


def test_header_nested_too_deep(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", "[" * 100_000 + "]" * 100_000)
    assert read_error(path).code == "safetensors-bad-header"


def test_duplicate_key(tmp_path: Path) -> None:
    one = json.dumps(entry("F32", [1], 0, 4))
    header = f'{{"dup.weight": {one}, "other": {json.dumps(entry("F32", [1], 4, 8))}, "dup.weight": {one}}}'
    path = write_raw(tmp_path / "x.safetensors", header, bytes(8))
    assert_error(
        read_error(path), CorruptCheckpointError, "safetensors-duplicate-key", "'dup.weight'", "more than once"
    )


def test_duplicate_key_inside_an_entry(tmp_path: Path) -> None:
    header = '{"w": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = write_raw(tmp_path / "x.safetensors", header, bytes(4))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-duplicate-key", "'w'", "'dtype'")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ([1, 2], "JSON array"),
        ("F32", "JSON string"),
        ({"dtype": "F32", "shape": [1]}, "lacks 'data_offsets'"),
        ({"data_offsets": [0, 4]}, "lacks 'dtype', 'shape'"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}, "unexpected 'extra'"),
    ],
)
def test_bad_entry(tmp_path: Path, value: Any, needle: str) -> None:
    data = bytes(4) if isinstance(value, dict) and "data_offsets" in value else b""
    path = write_raw(tmp_path / "x.safetensors", {"enc.w": value}, data)
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-bad-entry", "'enc.w'", needle)


@pytest.mark.parametrize("dtype", ["F128", "float32", "", 5, None])
def test_bad_dtype(tmp_path: Path, dtype: Any) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"enc.w": entry(dtype, [1], 0, 4)}, bytes(4))
    assert_error(
        read_error(path), CorruptCheckpointError, "safetensors-bad-dtype", "'enc.w'", "known dtypes are", "BF16", "F32"
    )


@pytest.mark.parametrize("shape", [[-1], [2.0], [True], "2", None, [[2]], {"0": 2}])
def test_bad_shape(tmp_path: Path, shape: Any) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"enc.w": entry("F32", shape, 0, 4)}, bytes(4))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-bad-shape", "'enc.w'", "non-negative integers")


def test_too_many_dimensions(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"enc.w": entry("F32", [1] * 5, 0, 4)}, bytes(4))
    err = read_error(path, ReadOptions(limits=Limits(max_tensor_dims=4)))
    assert_error(err, ResourceLimitError, "limit-tensor-dims", "'enc.w'", "5 dimensions", "max_tensor_dims")


@pytest.mark.parametrize(
    "offsets", [[0], [0, 4, 8], [4, 0], [-4, 0], ["0", "4"], [0.0, 4.0], [False, True], "0-4", None]
)
def test_bad_offsets(tmp_path: Path, offsets: Any) -> None:
    header = {"enc.w": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    path = write_raw(tmp_path / "x.safetensors", header, bytes(4))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-bad-offsets", "'enc.w'", "0 <= begin <= end")


def test_size_mismatch(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"enc.w": entry("BF16", [3, 4], 0, 20)}, bytes(20))
    assert_error(
        read_error(path),
        CorruptCheckpointError,
        "safetensors-size-mismatch",
        "'enc.w'",
        "20 bytes",
        "24 bytes",
        "(3, 4)",
    )


def test_data_truncated(tmp_path: Path) -> None:
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [3], 8, 20)}
    path = write_raw(tmp_path / "x.safetensors", header, bytes(15))
    assert_error(read_error(path), CorruptCheckpointError, "truncated", "5 bytes too early", "'b'", "re-download")


def test_real_file_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(10), "b": torch.ones(3, 3)}, str(path))
    path.write_bytes(path.read_bytes()[:-7])
    err = read_error(str(path))
    assert_error(err, CorruptCheckpointError, "truncated", "7 bytes too early")


def test_overlap(tmp_path: Path) -> None:
    header = {"first": entry("F32", [2], 0, 8), "second": entry("F32", [2], 4, 12)}
    path = write_raw(tmp_path / "x.safetensors", header, bytes(12))
    assert_error(
        read_error(path), CorruptCheckpointError, "safetensors-overlap", "'first'", "'second'", "overlap by 4 bytes"
    )


def test_same_range_twice_overlaps(tmp_path: Path) -> None:
    header = {"first": entry("F32", [2], 0, 8), "alias": entry("I32", [2], 0, 8)}
    path = write_raw(tmp_path / "x.safetensors", header, bytes(8))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-overlap", "'first'", "'alias'")


def test_gap_before_first(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"w": entry("F32", [1], 4, 8)}, bytes(8))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-gap", "4 bytes before 'w'")


def test_gap_between(tmp_path: Path) -> None:
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 6, 10)}
    path = write_raw(tmp_path / "x.safetensors", header, bytes(10))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-gap", "2 bytes between 'a' and 'b'")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"last.w": entry("F32", [1], 0, 4)}, bytes(7))
    assert_error(
        read_error(path), CorruptCheckpointError, "safetensors-trailing-bytes", "3 bytes after 'last.w'", "no tensor"
    )


def test_trailing_bytes_without_tensors(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", {}, bytes(5))
    assert read_error(path).code == "safetensors-trailing-bytes"


@pytest.mark.parametrize(
    ("meta", "needle"),
    [([], "JSON array"), ("x", "JSON string"), ({"epoch": 3}, "'epoch'"), ({"a": "x", "b": None}, "'b'")],
)
def test_bad_metadata(tmp_path: Path, meta: Any, needle: str) -> None:
    path = write_raw(tmp_path / "x.safetensors", {"__metadata__": meta, "w": entry("F32", [1], 0, 4)}, bytes(4))
    assert_error(read_error(path), CorruptCheckpointError, "safetensors-bad-metadata", "'__metadata__'", needle)


def test_all_problems_in_one_error(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"n": 1},
        "bad.dtype": entry("X9", [1], 0, 4),
        "bad.shape": entry("F32", [-2], 4, 8),
        "mismatch": entry("F32", [2], 8, 12),
        "ok": entry("F32", [1], 16, 20),
    }
    path = write_raw(tmp_path / "x.safetensors", header, bytes(24))
    err = read_error(path)
    assert err.code == "safetensors-bad-metadata"
    for code in [
        "safetensors-bad-metadata",
        "safetensors-bad-dtype",
        "safetensors-bad-shape",
        "safetensors-size-mismatch",
        "safetensors-gap",
        "safetensors-trailing-bytes",
    ]:
        assert f"[{code}]" in err.message, code
    for name in ["'bad.dtype'", "'bad.shape'", "'mismatch'", "'ok'"]:
        assert name in err.message
    assert "6 problems" in err.message
    assert "safetensors.torch.save_file" in err.message


def test_errors_are_value_errors(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "x.safetensors", "nope")
    with pytest.raises(ValueError):
        read(path, OPTIONS)


# ----------------------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_fail_cleanly(tmp_path: Path, data: st.DataObject) -> None:
    """Any damage to a valid file gives a valid checkpoint or a TorchWeightsError, never another exception."""
    good = tmp_path / "good.safetensors"
    if not good.exists():
        save_file({"a": torch.ones(3), "b": torch.zeros(2, 2, dtype=torch.bfloat16), "c": torch.tensor(True)}, good)
    raw = bytearray(good.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(raw[:cut]))
    try:
        ckpt = read(str(damaged), OPTIONS)
    except TorchWeightsError as err:
        assert isinstance(err, CorruptCheckpointError)
        assert err.code and err.message
    else:
        size = damaged.stat().st_size
        for record in ckpt.records.values():
            assert record.byte_range is not None
            assert record.byte_range[1] <= size


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_arbitrary_json_headers_fail_cleanly(tmp_path: Path, header: Any) -> None:
    path = write_raw(tmp_path / "x.safetensors", header)
    try:
        read(path, OPTIONS)
    except TorchWeightsError as err:
        assert isinstance(err, CorruptCheckpointError)
