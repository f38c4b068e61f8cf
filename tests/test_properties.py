"""Property tests: damaged copies of valid checkpoints fail cleanly, quickly and within bounded memory.

Every format gets one small valid file (built once per session by ``tests/_samples.py``, which also holds the
mutation strategies, the zip helpers and the bounds shared with ``test_fuzz_formats.py``). Hypothesis then truncates
it, flips bytes, overwrites or deletes slices, aiming at the parts that matter (the zip's ``data.pkl``, the legacy
stream's pickles and storage headers, the safetensors length field and JSON header, a sharded set's index and
shards). For each damaged file ``tw.open`` and then ``tw.load`` must either succeed (flipped tensor bytes load fine)
or raise a :class:`~torchweights.errors.TorchWeightsError` subclass: never ``KeyError``, ``struct.error``,
``zipfile``, ``zlib`` or torch errors, ``MemoryError`` or ``RecursionError``. Each example must take under 2 s (of
CPU, and of wall time through the Hypothesis deadline; a hard alarm interrupts hangs) and allocate at most 65 MiB
plus 20 times the input size (traced with :mod:`tracemalloc`; the process's peak RSS is bounded as well).

The default run is short and deterministic (``derandomize=True``). Environment variables for longer runs:
``TW_FUZZ_EXAMPLES`` (examples per test, default 60), ``TW_FUZZ_DEADLINE_MS`` (wall-clock deadline, default 2000;
0 turns it off on a busy machine) and ``TW_FUZZ_FLOOR`` (the fixed part of the memory bound, in bytes), e.g.
``TW_FUZZ_EXAMPLES=2000 pytest tests/test_properties.py``.

Specific hostile-but-well-formed files follow the fuzz tests.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import pickle
import struct
import tracemalloc
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import torchweights as tw
from _samples import (
    FUZZ,
    MIB,
    SHARDED_LIMITS,
    Sample,
    base_samples,
    damaged,
    damaged_pickle,
    exercise,
    patch_member,
    pkl_name,
    rezip,
    set_central_field,
    zip_members,
)
from torchweights.errors import CorruptCheckpointError, NotACheckpointError, TorchWeightsError
from torchweights.formats import ReadOptions
from torchweights.formats import safetensors as safetensors_reader
from torchweights.limits import DEFAULT_LIMITS

# --------------------------------------------------------------------------------------------------------------
# The valid files
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    return base_samples(tmp_path_factory)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("damaged")


def _run(sample: Sample, workdir: Path, replace: dict[str, bytes]) -> TorchWeightsError | None:
    """Write ``sample`` with ``replace`` applied and exercise it."""
    path = sample.write(workdir / sample.name, replace)
    size = sum(len(b) for b in {**sample.files, **replace}.values())
    error = exercise(path, size, limits=SHARDED_LIMITS if sample.entry == "." else DEFAULT_LIMITS)
    event(f"{type(error).__name__}: {error.code}" if error else "loaded")  # see --hypothesis-show-statistics
    return error


# --------------------------------------------------------------------------------------------------------------
# Crafted zips
# --------------------------------------------------------------------------------------------------------------


# Crafted torch zips: a pickler that writes storages as persistent ids the way torch.save does.


@dataclass
class _Storage:
    key: str
    numel: int
    cls: Any = torch.FloatStorage


class _View:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})``."""

    def __init__(self, storage: _Storage, offset: Any, size: Any, stride: Any, dtype: Any = None) -> None:
        self.args = (storage, offset, size, stride)
        self.dtype = dtype

    def __reduce__(self) -> tuple[Any, ...]:
        if self.dtype is not None:
            return (torch._utils._rebuild_tensor_v3, (*self.args, False, collections.OrderedDict(), self.dtype))
        return (torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def _pickle(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _craft_zip(
    obj: Any,
    storages: dict[str, bytes],
    *,
    byteorder: str = "little",
    compression: int = zipfile.ZIP_STORED,
    pkl: bytes | None = None,
) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        zf.writestr("archive/data.pkl", _pickle(obj) if pkl is None else pkl)
        zf.writestr("archive/byteorder", byteorder)
        for key, content in storages.items():
            zf.writestr(f"archive/data/{key}", content)
        zf.writestr("archive/version", "3\n")
    return out.getvalue()


_FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()


# --------------------------------------------------------------------------------------------------------------
# Fuzz: every format, whole-file damage
# --------------------------------------------------------------------------------------------------------------

SINGLE = ["zip", "zip-protocol4", "legacy", "model", "safetensors", "pickle"]
ZIPS = ["zip", "zip-protocol4", "model"]
SHARDED = ["sharded-safetensors", "sharded-bin"]


@pytest.mark.parametrize("fmt", SINGLE)
@FUZZ
@given(data=st.data())
def test_damaged_file_fails_cleanly(samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject) -> None:
    sample = samples[fmt]
    strategy = damaged_pickle(sample.main) if fmt == "pickle" else damaged(sample.main)
    _run(sample, workdir, {sample.entry: data.draw(strategy, label="file")})


@pytest.mark.parametrize("fmt", SHARDED)
@FUZZ
@given(data=st.data())
def test_damaged_shard_or_index_fails_cleanly(
    samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject
) -> None:
    sample = samples[fmt]
    name = data.draw(st.sampled_from(sorted(sample.files)), label="which file")
    _run(sample, workdir, {name: data.draw(damaged(sample.files[name]), label="file")})


# --------------------------------------------------------------------------------------------------------------
# Fuzz: aimed at the parts that are parsed
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ZIPS)
@FUZZ
@given(data=st.data())
def test_zip_flips_inside_data_pkl(samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject) -> None:
    """Raw damage inside data.pkl's bytes (random flips mostly hit tensor bytes): the CRC must catch it."""
    sample = samples[fmt]
    member = zip_members(sample.main)[pkl_name(sample.main)]
    mutated = data.draw(damaged(sample.main, member.data, member.data + member.size), label="file")
    _run(sample, workdir, {sample.entry: mutated})


@pytest.mark.parametrize("fmt", ZIPS)
@FUZZ
@given(data=st.data())
def test_zip_damaged_pickle_with_valid_crc(
    samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject
) -> None:
    """Damage data.pkl and fix the checksums, so the damaged pickle reaches the unpickler."""
    sample = samples[fmt]
    name = pkl_name(sample.main)
    with zipfile.ZipFile(io.BytesIO(sample.main)) as zf:
        pkl = zf.read(name)
    new = data.draw(damaged_pickle(pkl), label="data.pkl")
    mutated = patch_member(sample.main, name, new) if len(new) == len(pkl) else rezip(sample.main, {name: new})
    _run(sample, workdir, {sample.entry: mutated})


@pytest.mark.parametrize("fmt", ZIPS)
@FUZZ
@given(data=st.data())
def test_zip_damaged_directory(samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject) -> None:
    """Damage aimed at the central directory and the local headers."""
    sample = samples[fmt]
    members = zip_members(sample.main)
    regions = [(min(m.central for m in members.values()), len(sample.main))]
    regions += [(m.local, m.data) for m in members.values()]
    lo, hi = data.draw(st.sampled_from(regions), label="region")
    _run(sample, workdir, {sample.entry: data.draw(damaged(sample.main, lo, hi), label="file")})


def _legacy_regions(sample: Sample, folder: Path) -> tuple[int, list[int]]:
    """End of the legacy stream's pickles, and the offset of each storage's 8-byte element count."""
    ckpt = tw.open(sample.write(folder))
    headers = sorted({r.storage.offset - 8 for r in ckpt.records.values() if r.storage is not None})
    return headers[0], headers


@FUZZ
@given(data=st.data())
def test_legacy_damaged_pickles_and_storage_headers(
    samples: dict[str, Sample], workdir: Path, data: st.DataObject
) -> None:
    sample = samples["legacy"]
    pickles_end, headers = _legacy_regions(sample, workdir / "legacy-layout")
    raw = sample.main
    if data.draw(st.booleans(), label="storage header"):
        at = data.draw(st.sampled_from(headers), label="header")
        count = data.draw(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([2**60, 2**40, -1, 0]), label="numel")
        mutated = raw[:at] + struct.pack("<q", count) + raw[at + 8 :]
    else:
        mutated = data.draw(damaged_pickle(raw[:pickles_end]), label="pickles") + raw[pickles_end:]
    _run(sample, workdir, {sample.entry: mutated})


@FUZZ
@given(data=st.data())
def test_safetensors_damaged_length_and_header(samples: dict[str, Sample], workdir: Path, data: st.DataObject) -> None:
    sample = samples["safetensors"]
    raw = sample.main
    header_end = 8 + struct.unpack_from("<Q", raw)[0]
    if data.draw(st.booleans(), label="length field"):
        length = data.draw(st.integers(0, 2**64 - 1) | st.integers(header_end - 16, header_end + 16), label="length")
        mutated = struct.pack("<Q", max(0, min(length, 2**64 - 1))) + raw[8:]
    else:
        mutated = data.draw(damaged(raw, 0, header_end), label="file")
    _run(sample, workdir, {sample.entry: mutated})


_ints = st.integers(-(2**70), 2**70) | st.sampled_from([0, 1, -1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64])


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


_json = st.recursive(
    st.none()
    | st.booleans()
    | _ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["F32", "BF16", "I64", "BOOL", "F8_E4M3", "C64", "U64", "Q8"]),
    _json_containers,
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_safetensors_hostile_header_values(samples: dict[str, Sample], workdir: Path, data: st.DataObject) -> None:
    """Well-formed JSON with hostile values: huge, negative or mistyped shapes, offsets and dtypes."""
    sample = samples["safetensors"]
    raw = sample.main
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8 : 8 + n])
    entry = data.draw(st.sampled_from(sorted(header)), label="entry")
    field = data.draw(
        st.sampled_from(["dtype", "shape", "data_offsets", "extra", "(delete)", "(whole)"]), label="field"
    )
    if field == "(delete)":
        del header[entry]
    elif field == "(whole)" or not isinstance(header[entry], dict):
        header[entry] = data.draw(_json, label="value")
    else:
        header[entry][field] = data.draw(_json | st.lists(_ints, max_size=4), label="value")
    text = json.dumps(header).encode()
    _run(sample, workdir, {sample.entry: struct.pack("<Q", len(text)) + text + raw[8 + n :]})


_SHARD_NAMES = st.sampled_from(
    [
        "",
        ".",
        "..",
        "../escape.safetensors",
        "/etc/hostname",
        "C:\\weights.bin",
        "sub/../model-00001-of-00002.safetensors",
        "nul\x00.safetensors",
        "x" * 300,
        "missing.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ]
) | st.text(max_size=12)


@pytest.mark.parametrize("fmt", SHARDED)
@FUZZ
@given(data=st.data())
def test_sharded_hostile_index(samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject) -> None:
    """Well-formed index JSON naming hostile, missing, nested or wrong shards, or with odd structure."""
    sample = samples[fmt]
    index_name = next(n for n in sample.files if n.endswith(".index.json"))
    index = json.loads(sample.files[index_name])
    weight_map = index["weight_map"]
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        op = data.draw(st.sampled_from(["rename", "add", "delete", "metadata", "weight_map", "root"]), label="op")
        if op == "rename" and weight_map:
            weight_map[data.draw(st.sampled_from(sorted(weight_map)))] = data.draw(_SHARD_NAMES | _json)
        elif op == "add":
            weight_map[data.draw(st.text(max_size=8))] = data.draw(_SHARD_NAMES)
        elif op == "delete" and weight_map:
            del weight_map[data.draw(st.sampled_from(sorted(weight_map)))]
        elif op == "metadata":
            index["metadata"] = data.draw(_json)
        elif op == "weight_map":
            index["weight_map"] = data.draw(_json)
            break
        elif op == "root":
            index = data.draw(_json)
            break
    _run(sample, workdir, {index_name: json.dumps(index).encode()})


# --------------------------------------------------------------------------------------------------------------
# Hostile files with a valid structure
# --------------------------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _corrupt(path: Path, code: str | None = None) -> CorruptCheckpointError:
    """Exercise ``path`` and return its CorruptCheckpointError (checking the code when given)."""
    error = exercise(path, path.stat().st_size)
    assert isinstance(error, CorruptCheckpointError), repr(error)
    if code is not None:
        assert error.code == code, str(error)
    return error


def test_crafted_zip_is_read_like_torch(tmp_path: Path) -> None:
    """The crafting helpers make files torch itself loads; so the hostile variants below differ only as intended."""
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        data = _craft_zip({"w": _View(_Storage("0", 4), 1, (3,), (1,))}, {"0": _FOUR_FLOATS}, compression=compression)
        path = _write(tmp_path, f"ok-{compression}.pt", data)
        expected = torch.load(path, weights_only=True)["w"]
        assert exercise(path, len(data)) is None
        assert torch.equal(tw.load(path)["w"], expected)


def test_zip_storage_numel_far_larger_than_member(tmp_path: Path) -> None:
    data = _craft_zip({"w": _View(_Storage("0", 2**40), 0, (4,), (1,))}, {"0": _FOUR_FLOATS})
    error = _corrupt(_write(tmp_path, "numel.pt", data), "storage-size")
    assert "4398046511104" in error.message  # names the claimed size


@pytest.mark.parametrize(
    ("offset", "size", "stride"),
    [
        (0, (5,), (1,)),  # one element past the end
        (0, (3,), (2,)),  # size*stride reaches element 4 of 4
        (0, (2, 3), (3, 1)),
        (4, (1,), (1,)),  # starts at the end
        (2**62, (1,), (1,)),
        (0, (2**40, 2**40), (1, 1)),
        (0, (4,), (-1,)),  # negative stride
        (0, (-2,), (1,)),  # negative size
        (-1, (2,), (1,)),  # negative offset
        (0, (2,), (1, 1)),  # sizes and strides disagree
        (0, (1,) * 65, (1,) * 65),  # too many dimensions
    ],
)
def test_zip_view_outside_its_storage(
    tmp_path: Path, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    data = _craft_zip({"w": _View(_Storage("0", 4), offset, size, stride)}, {"0": _FOUR_FLOATS})
    _corrupt(_write(tmp_path, "view.pt", data), "bad-record")


def test_zip_zero_stride_view_beyond_int64_fails_on_load(tmp_path: Path) -> None:
    data = _craft_zip({"w": _View(_Storage("0", 4), 0, (2**70,), (0,))}, {"0": _FOUR_FLOATS})
    _corrupt(_write(tmp_path, "zero-stride.pt", data), "bad-record")


def test_zip_zero_stride_view_beyond_int64_fails_on_open(tmp_path: Path) -> None:
    """A zero stride keeps the view inside its storage, but 2**70 elements is no tensor torch can describe."""
    data = _craft_zip({"w": _View(_Storage("0", 4), 0, (2**70,), (0,))}, {"0": _FOUR_FLOATS})
    with pytest.raises(CorruptCheckpointError):
        tw.open(_write(tmp_path, "zero-stride.pt", data))


def test_zip_missing_storage_member(samples: dict[str, Sample], tmp_path: Path) -> None:
    raw = samples["zip"].main
    storage = next(n for n in zip_members(raw) if "/data/" in n)
    _corrupt(_write(tmp_path, "zip.pt", rezip(raw, {storage: None})), "missing-storage")


def test_zip_without_data_pkl(samples: dict[str, Sample], tmp_path: Path) -> None:
    raw = samples["zip"].main
    error = exercise(_write(tmp_path, "zip.pt", rezip(raw, {pkl_name(raw): None})), len(raw))
    assert isinstance(error, TorchWeightsError)


def test_zero_byte_files(tmp_path: Path) -> None:
    error = exercise(_write(tmp_path, "empty.pkl", b""), 0)
    assert isinstance(error, NotACheckpointError) and error.code == "empty-file"
    empty_pkl = _craft_zip({}, {}, pkl=b"")
    _corrupt(_write(tmp_path, "empty-pkl.pt", empty_pkl), "truncated")


def test_zip_members_sharing_bytes(tmp_path: Path) -> None:
    """Two storages whose directory entries point at the same bytes: each would be read again (a zip bomb)."""
    obj = {"a": _View(_Storage("0", 4), 0, (4,), (1,)), "b": _View(_Storage("1", 4), 0, (4,), (1,))}
    data = _craft_zip(obj, {"0": _FOUR_FLOATS, "1": _FOUR_FLOATS})
    members = zip_members(data)
    data = set_central_field(data, "archive/data/1", 42, "<I", members["archive/data/0"].local)
    _corrupt(_write(tmp_path, "overlap.pt", data), "zip-overlap")


def test_zip_directory_sizes_past_end_of_file(samples: dict[str, Sample], tmp_path: Path) -> None:
    """data.pkl's sizes in the central directory claim 1 GiB: nothing that large may be allocated."""
    raw = samples["zip"].main
    name = pkl_name(raw)
    data = set_central_field(raw, name, 20, "<I", 1 << 30)  # compressed size
    data = set_central_field(data, name, 24, "<I", 1 << 30)  # uncompressed size
    _corrupt(_write(tmp_path, "sizes.pt", data), "truncated")


def test_zip_member_offset_past_end_of_file(samples: dict[str, Sample], tmp_path: Path) -> None:
    raw = samples["zip"].main
    for name in zip_members(raw):
        data = set_central_field(raw, name, 42, "<I", 0xFFFFFFF0)  # local header offset
        assert isinstance(exercise(_write(tmp_path, "offset.pt", data), len(data)), CorruptCheckpointError), name


def test_zip_record_member_with_bad_crc(samples: dict[str, Sample], tmp_path: Path) -> None:
    raw = samples["zip"].main
    for name in zip_members(raw):
        if name.endswith(("/byteorder", "/version", "/.format_version", "/data.pkl")):
            member = zip_members(raw)[name]
            data = bytearray(raw)
            data[member.data] ^= 0x20
            error = _corrupt(_write(tmp_path, "crc.pt", bytes(data)), "bad-crc")
            assert name in error.message


@pytest.mark.parametrize(
    ("field", "fmt", "value", "code"),
    [
        (8, "<H", 0x0001, "zip-encrypted"),  # general purpose flags: encrypted
        (10, "<H", 99, "zip-compression"),  # compression method torch never writes and zipfile cannot read
        (6, "<H", 0x0063, "bad-zip"),  # "version needed to extract" 9.9: zipfile's NotImplementedError
    ],
)
def test_zip_pickle_member_features_zipfile_refuses(
    samples: dict[str, Sample], tmp_path: Path, field: int, fmt: str, value: int, code: str | None
) -> None:
    raw = samples["zip"].main
    data = set_central_field(raw, pkl_name(raw), field, fmt, value)
    _corrupt(_write(tmp_path, "feature.pt", data), code)


@pytest.mark.parametrize(
    ("field", "fmt", "value"),
    [
        (8, "<H", 0x0020),  # compressed patched data: zipfile's NotImplementedError
        (10, "<H", zipfile.ZIP_BZIP2),  # the deflate stream read as bzip2: OSError
        (10, "<H", zipfile.ZIP_LZMA),  # ... as lzma: LZMAError
        (16, "<I", 0),  # wrong CRC-32
    ],
)
def test_zip_compressed_pickle_member_damaged(tmp_path: Path, field: int, fmt: str, value: int) -> None:
    data = _craft_zip({"w": _View(_Storage("0", 4), 0, (4,), (1,))}, {"0": _FOUR_FLOATS}, compression=8)
    data = set_central_field(data, pkl_name(data), field, fmt, value)
    _corrupt(_write(tmp_path, "deflated.pt", data))


def test_zip_deflated_pickle_stream_damaged(tmp_path: Path) -> None:
    data = _craft_zip({"w": _View(_Storage("0", 4), 0, (4,), (1,))}, {"0": _FOUR_FLOATS}, compression=8)
    member = zip_members(data)[pkl_name(data)]
    damaged_data = bytearray(data)
    damaged_data[member.data : member.data + 4] = b"\xff\xff\xff\xff"  # not a deflate block: zlib.error
    _corrupt(_write(tmp_path, "deflated.pt", bytes(damaged_data)), "bad-member")


def test_zip_deflate_size_claim_beyond_deflate_ratio(tmp_path: Path) -> None:
    data = _craft_zip({"w": _View(_Storage("0", 4), 0, (4,), (1,))}, {"0": _FOUR_FLOATS}, compression=8)
    name = pkl_name(data)
    data = set_central_field(data, name, 24, "<I", 1 << 30)  # claims data.pkl inflates to 1 GiB
    _corrupt(_write(tmp_path, "bomb.pt", data), "limit-inflate")


def test_zip_big_endian_storage_not_a_whole_number_of_elements(tmp_path: Path) -> None:
    storage = _Storage("0", 6, torch.UntypedStorage)
    data = _craft_zip({"w": _View(storage, 0, (1,), (1,), torch.float32)}, {"0": bytes(6)}, byteorder="big")
    _corrupt(_write(tmp_path, "be.pt", data), "bad-record")


def test_legacy_storage_count_header_says_2_60(samples: dict[str, Sample], tmp_path: Path) -> None:
    sample = samples["legacy"]
    _, headers = _legacy_regions(sample, tmp_path / "layout")
    for count in (2**60, 2**63 - 1, -1, -(2**63)):
        at = headers[0]
        data = sample.main[:at] + struct.pack("<q", count) + sample.main[at + 8 :]
        _corrupt(_write(tmp_path, "legacy.pt", data), "truncated")


def test_legacy_protocol_record_that_is_not_an_int(samples: dict[str, Sample], tmp_path: Path) -> None:
    """A numpy array where the protocol version belongs: comparing it must not raise numpy's ValueError."""
    raw = samples["legacy"].main
    magic_end = raw.index(b".") + 1  # the magic number is the first pickle: PROTO, LONG1, STOP
    rest = raw[magic_end:]
    proto_end = rest.index(b".") + 1
    data = raw[:magic_end] + pickle.dumps(np.array([1001, 1001]), protocol=2) + rest[proto_end:]
    _corrupt(_write(tmp_path, "legacy.pt", data), "bad-header")


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 2**32, 311])
def test_safetensors_header_length_beyond_file(samples: dict[str, Sample], tmp_path: Path, length: int) -> None:
    """Detection may no longer see a safetensors file (any TorchWeightsError); the reader itself says truncated."""
    data = struct.pack("<Q", length) + samples["safetensors"].main[8:]
    path = _write(tmp_path, "model.safetensors", data)
    assert isinstance(exercise(path, len(data)), TorchWeightsError)
    with pytest.raises(CorruptCheckpointError) as info:
        safetensors_reader.read(str(path), ReadOptions())
    assert info.value.code == "truncated"


def test_pickle_nested_twenty_thousand_levels(tmp_path: Path) -> None:
    """No RecursionError, whichever part of the reader walks the tree: the plain data opens (no tensors, the list in
    extras) and loads as an empty state dict."""
    shallow = _write(tmp_path, "shallow.pkl", b"\x80\x02" + b"]" * 10 + b"a" * 9 + b".")
    tw.load(tw.open(shallow))  # the modules and caches a first read sets up are not this file's cost (run alone)
    depth = 20_000  # far past the interpreter recursion limit (1000)
    body = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    path = _write(tmp_path, "deep.pkl", body)
    # 20,000 levels walked by every part of the reader under tracemalloc take 1.3-2.3 s of CPU on the 2-core dev VM
    # (more when the machine is shared); a walk quadratic in the depth would take minutes, so 6 s still catches it
    assert exercise(path, len(body), cpu_seconds=6.0) is None
    ckpt = tw.open(path)
    assert not ckpt.records and isinstance(ckpt.extras[""], list)


def test_pickle_billion_laughs(tmp_path: Path) -> None:
    """A tiny pickle whose shared lists expand to 10**40 paths to one tensor: refused, not walked."""
    tree: Any = [torch.empty(1, device="meta")]
    for _ in range(40):
        tree = [tree] * 10
    body = pickle.dumps({"t": tree}, protocol=2)
    assert len(body) < 4096
    error = exercise(_write(tmp_path, "laughs.pkl", body), len(body))
    assert isinstance(error, TorchWeightsError) and error.code.startswith("limit-"), repr(error)


def _meta_pickle(size: bytes) -> bytes:
    """A plain pickle of ``{'m': meta tensor}`` whose size tuple is ``size`` (pickle opcodes for one int)."""
    raw = pickle.dumps({"m": torch.empty(3, device="meta")}, protocol=2)
    assert raw.count(b"K\x03\x85") == 1
    return raw.replace(b"K\x03\x85", size + b"\x85")


@pytest.mark.parametrize("size", [b"J\xff\xff\xff\xff", b"\x8a\x09" + (2**70).to_bytes(9, "little")])
def test_meta_tensor_with_impossible_size_fails_on_load(tmp_path: Path, size: bytes) -> None:
    _corrupt(_write(tmp_path, "meta.pkl", _meta_pickle(size)), "bad-record")


def test_meta_tensor_with_negative_size_fails_on_open(tmp_path: Path) -> None:
    """Meta tensors have no storage to fit, but their sizes must still be valid."""
    with pytest.raises(CorruptCheckpointError):
        tw.open(_write(tmp_path, "meta.pkl", _meta_pickle(b"J\xff\xff\xff\xff")))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"S'\\x1'\n.", id="STRING-bad-hex-escape"),
        pytest.param(b"S'\\'\n.", id="STRING-trailing-backslash"),
        pytest.param(b"V\\u12\n.", id="UNICODE-truncated-escape"),
    ],
)
def test_pickle_text_opcodes_with_bad_escapes(tmp_path: Path, body: bytes) -> None:
    """Text opcodes decode escapes; a bad escape is a corrupt pickle, not a codec error."""
    _corrupt(_write(tmp_path, "escape.pkl", b"\x80\x02" + body), "bad-pickle")


def test_sharded_index_naming_an_unencodable_shard(samples: dict[str, Sample], tmp_path: Path) -> None:
    sample = samples["sharded-safetensors"]
    index = json.loads(sample.files["model.safetensors.index.json"])
    index["weight_map"]["a.weight"] = "\ud800.safetensors"
    path = sample.write(tmp_path / "set", {"model.safetensors.index.json": json.dumps(index).encode()})
    error = exercise(path, sample.size, limits=SHARDED_LIMITS)
    assert isinstance(error, CorruptCheckpointError)


def test_sharded_index_read_is_bounded_by_file_size(samples: dict[str, Sample], tmp_path: Path) -> None:
    sample = samples["sharded-safetensors"]
    peak = _open_peak(sample.write(tmp_path / "set"))  # the folder: detect does not read the index
    assert peak < 8 * MIB, f"opening {sample.size} bytes of sharded checkpoint allocated {peak:,} bytes"


def test_detect_json_read_is_bounded_by_file_size(tmp_path: Path) -> None:
    path = _write(tmp_path, "config.json", json.dumps({"model_type": "bert", "hidden_size": 768}).encode())
    peak = _open_peak(path)
    assert peak < 8 * MIB, f"opening a {path.stat().st_size}-byte JSON file allocated {peak:,} bytes"


def _open_peak(path: Path) -> int:
    """Peak traced allocation of ``tw.open(path)`` (errors ignored)."""
    tracemalloc.start()
    try:
        with contextlib.suppress(TorchWeightsError):
            tw.open(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


_FORMATS = {
    "zip": "torch-zip",
    "zip-protocol4": "torch-zip",
    "legacy": "torch-legacy",
    "model": "torch-zip",
    "safetensors": "safetensors",
    "pickle": "pickle",
    "sharded-safetensors": "sharded-safetensors",
    "sharded-bin": "sharded-torch",
}


def test_every_format_is_covered(samples: dict[str, Sample], tmp_path: Path) -> None:
    """One valid file per format, each read by the reader meant to be fuzzed, with its tensors."""
    assert set(SINGLE) | set(SHARDED) == set(samples) == set(_FORMATS)
    for name, sample in samples.items():
        ckpt = tw.open(sample.write(tmp_path / name), limits=SHARDED_LIMITS)
        assert ckpt.format == _FORMATS[name] and ckpt.records, name
