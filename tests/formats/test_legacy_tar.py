"""Torch tar checkpoints (torch.save's first releases): records, values, sharing, and every malformed variant.

Files come from ``tests/fixtures/make_legacy_tar.py``, which writes them the way the old ``torch.save`` did; the
later layout is also checked against today's ``torch.load``, whose ``legacy_load`` still reads it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import tarfile
import warnings
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchweights as tw
from torchweights.cli import main as cli_main
from torchweights.detect.content import detect
from torchweights.errors import (
    CorruptCheckpointError,
    ResourceLimitError,
    TorchWeightsError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from torchweights.limits import Limits

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_legacy_tar", FIXTURES / "make_legacy_tar.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_legacy_tar"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
K = gen.K


def _expect(path: str | Path, exc: type[TorchWeightsError], code: str, *fragments: str, **kwargs: Any) -> Any:
    with pytest.raises(exc) as info:
        tw.open(path, **kwargs)
    err = info.value
    assert err.code == code, str(err)
    for fragment in fragments:
        assert fragment in err.message, err.message
    return err


def _write_members(tmp_path: Path, members: list[tuple[str, bytes]], name: str = "bad.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(gen.tar_bytes(members))
    return path


def _members(spec: Any) -> dict[str, bytes]:
    return dict(spec.members())


def _small(**changes: Any) -> Any:
    """A two-tensor file to vary: ``w`` (2, 3) float32 and ``v``, a view of its second row."""
    storages = [gen.Storage.of(K + 16, np.arange(6, dtype=np.float32), "float32")]
    tensors = [
        gen.Tensor(K + 100, K + 16, "float32", (2, 3), (3, 1)),
        gen.Tensor(K + 101, K + 16, "float32", (3,), (1,), offset=3),
    ]
    spec = gen.Spec({"w": gen.TensorRef(K + 100), "v": gen.TensorRef(K + 101)}, storages, tensors)
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


# ---------------------------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize("name", sorted(gen.FIXTURES))
def test_committed_fixture_is_what_the_generator_writes(name: str) -> None:
    spec, _ = gen.FIXTURES[name]()
    assert (FIXTURES / name).read_bytes() == spec.build()


@pytest.mark.parametrize("name", sorted(gen.FIXTURES))
def test_detect_still_says_legacy_tar(name: str) -> None:
    assert detect(str(FIXTURES / name)) == "legacy-tar"


def test_open_lists_names_dtypes_shapes_without_reading_bytes() -> None:
    ckpt = tw.open(FIXTURES / "legacy_tar.pt")
    assert ckpt.format == "legacy-tar"
    _, expected = gen.example()
    assert list(ckpt.records) == list(expected)
    for name, array in expected.items():
        record = ckpt.records[name]
        assert record.shape == array.shape, name
        assert record.dtype == str(array.dtype), name
    weight_t = ckpt.records["state_dict.fc.weight_t"]
    assert weight_t.stride == (1, 4)
    assert ckpt.records["state_dict.mask"].stride == (1, 2)
    assert ckpt.records["state_dict.emb.weight"].storage_offset == 4  # view offset 3 + tensor offset 1
    assert ckpt.records["state_dict.slice"].stride == (5,)
    assert ckpt.extras == {"epoch": 7, "arch": "net", "history.0.loss": 0.25}
    assert ckpt.metadata["layout"] == "late"
    assert ckpt.metadata["storages"] == 6 and ckpt.metadata["storage_views"] == 1
    assert ckpt.metadata["members"] == ["sys_info", "pickle", "tensors", "storages"]
    assert ckpt.metadata["sys_info"]["type_sizes"]["long"] == 8
    # Globals of every member: the tensor classes come only from 'tensors', the storage classes from 'storages'.
    assert {"torch.FloatTensor", "torch.FloatStorage", "torch.HalfStorage", "__main__.Net"} <= set(ckpt.globals)
    assert "torch.nn.modules.linear.Linear" in ckpt.globals
    assert ckpt.warnings == []


def test_storage_offsets_are_absolute_positions_of_the_bytes_in_the_tar() -> None:
    path = FIXTURES / "legacy_tar.pt"
    data = path.read_bytes()
    ckpt = tw.open(path)
    _, expected = gen.example()
    offsets = gen.member_offsets(data)
    start, size = offsets["storages"]
    for name in ("state_dict.fc.bias", "state_dict.steps", "state_dict.half"):
        record = ckpt.records[name]
        assert record.storage is not None
        assert start <= record.storage.offset and record.storage.offset + record.storage.nbytes <= start + size
        lo, hi = record.byte_range or (0, 0)
        assert data[lo:hi] == expected[name].astype(expected[name].dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", sorted(gen.FIXTURES))
def test_load_gives_the_numbers_the_generator_wrote(name: str) -> None:
    _, expected = gen.FIXTURES[name]()
    loaded = tw.load(FIXTURES / name)
    assert set(loaded) == set(expected)
    for key, array in expected.items():
        want = torch.from_numpy(np.ascontiguousarray(array))
        assert loaded[key].dtype == want.dtype, key
        assert torch.equal(loaded[key], want), key


def test_views_and_tied_tensors_share_storage_after_load() -> None:
    loaded = tw.load(FIXTURES / "legacy_tar.pt")

    def ptr(name: str) -> int:
        return loaded[name].untyped_storage().data_ptr()

    same = ["state_dict.fc.weight", "state_dict.fc.weight_t", "state_dict.slice", "model.fc.weight"]
    assert len({ptr(n) for n in same}) == 1
    assert ptr("state_dict.fc.bias") == ptr("history.0.best") == ptr("model.fc.bias")
    assert ptr("state_dict.fc.bias") != ptr("state_dict.fc.weight")
    loaded["state_dict.fc.weight"][0, 1] = 42.0  # a write through one name shows through its views
    assert loaded["state_dict.fc.weight_t"][1, 0] == 42.0 and loaded["state_dict.slice"][0] == 42.0


def test_storage_view_tensor_shares_its_root_storage(tmp_path: Path) -> None:
    root = np.arange(10, dtype=np.float64)
    spec = gen.Spec(
        {"whole": gen.TensorRef(K + 1), "part": gen.TensorRef(K + 2)},
        [gen.Storage.of(K + 16, root, "float64")],
        [
            gen.Tensor(K + 1, K + 16, "float64", (10,), (1,)),
            gen.Tensor(K + 2, K + 32, "float64", (2,), (2,), offset=1),  # inside the view: view[1], view[3]
        ],
        [gen.View(K + 32, K + 16, 4, 5)],  # root[4:9]
    )
    loaded = tw.load(spec.write(tmp_path / "views.pt"))
    assert loaded["part"].tolist() == [5.0, 7.0]
    assert loaded["part"].untyped_storage().data_ptr() == loaded["whole"].untyped_storage().data_ptr()


def test_pickled_module_is_named_like_its_state_dict() -> None:
    ckpt = tw.open(FIXTURES / "legacy_tar.pt")
    model_names = [n for n in ckpt.records if n.startswith("model.")]
    assert model_names == ["model.fc.weight", "model.fc.bias"]


def test_load_into_finds_the_pickled_module(tmp_path: Path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

    model = Net()
    tw.load_into(model, FIXTURES / "legacy_tar.pt", strict=False)
    _, expected = gen.example()
    assert torch.equal(model.fc.weight.detach(), torch.from_numpy(expected["model.fc.weight"]))
    assert torch.equal(model.fc.bias.detach(), torch.from_numpy(expected["model.fc.bias"]))


def test_today_torch_load_reads_the_same_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's torch.load (legacy_load) as an independent reader of the later layout."""

    class Net(torch.nn.Module):
        pass

    monkeypatch.setattr(sys.modules["__main__"], "Net", Net, raising=False)
    spec, expected = gen.example(empty=False)
    path = spec.write(tmp_path / "old.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.load(path, weights_only=False)
    ours = tw.load(path)
    for name in expected:
        if name.startswith("state_dict."):
            ref = theirs["state_dict"][name.removeprefix("state_dict.")]
        elif name.startswith("model."):
            ref = getattr(theirs["model"].fc, name.rsplit(".", 1)[1])
        else:
            ref = theirs["history"][0]["best"]
        assert ref.dtype == ours[name].dtype and ref.stride() == ours[name].stride(), name
        assert torch.equal(ref, ours[name]), name
    assert theirs["epoch"] == tw.open(path).extras["epoch"]


def test_early_layout(tmp_path: Path) -> None:
    ckpt = tw.open(FIXTURES / "legacy_tar_early.pt")
    assert ckpt.metadata["layout"] == "early" and ckpt.metadata["storage_views"] == 0
    assert ckpt.records["row"].storage_offset == 3
    assert ckpt.records["row"].storage == ckpt.records["a"].storage
    assert ckpt.extras == {"note": "early"}


def test_no_dimensions_means_empty_before_torch_0_4() -> None:
    record = tw.open(FIXTURES / "legacy_tar.pt").records["state_dict.empty"]
    assert record.shape == (0,) and record.dtype == "float32" and record.nbytes == 0


@pytest.mark.parametrize("dtype", sorted(gen.CLASS_STEM))
def test_every_storage_class(tmp_path: Path, dtype: str) -> None:
    values = np.array([[0, 1, 2], [3, 4, 5]]).astype(dtype)
    spec = gen.Spec(
        {"x": gen.TensorRef(K + 1)},
        [gen.Storage.of(K + 16, values, dtype)],
        [gen.Tensor(K + 1, K + 16, dtype, (2, 3), (3, 1))],
    )
    loaded = tw.load(spec.write(tmp_path / f"{dtype}.pt"))["x"]
    assert torch.equal(loaded, torch.from_numpy(values))


def test_cuda_location_is_recorded(tmp_path: Path) -> None:
    spec = gen.Spec(
        {"x": gen.TensorRef(K + 1)},
        [gen.Storage.of(K + 16, [1.0, 2.0], "float32", location="cuda:1")],
        [gen.Tensor(K + 1, K + 16, "float32", (2,), (1,))],
    )
    ckpt = tw.open(spec.write(tmp_path / "cuda.pt"))
    record = ckpt.records["x"]
    assert record.storage is not None and record.storage.location == "cuda:1"
    assert "torch.cuda.FloatTensor" in ckpt.globals
    assert tw.load(ckpt)["x"].tolist() == [1.0, 2.0]  # map_location defaults to cpu


def test_padding_in_the_dimension_field_is_ignored(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[0].padding = b"\xde\xad\xbe\xef"  # the 4 bytes after the C int, as torch.load skips them
    assert tw.open(spec.write(tmp_path / "pad.pt")).records["w"].shape == (2, 3)


def test_member_names_are_compared_as_tar_does(tmp_path: Path) -> None:
    members = [(f"./{name}", data) for name, data in _small().members()]
    members.append(("README", b"an extra member is ignored"))
    ckpt = tw.open(_write_members(tmp_path, members, "dotted.pt"))
    assert sorted(ckpt.records) == ["v", "w"]
    assert "README" in ckpt.metadata["members"]


def test_gnu_tar_and_missing_sys_info(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.GNU_FORMAT) as tar:
        for name, data in _small().members():
            if name != "sys_info":
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "gnu.pt"
    path.write_bytes(buf.getvalue())
    ckpt = tw.open(path)
    assert "sys_info" not in ckpt.metadata
    assert tw.load(ckpt)["v"].tolist() == [3.0, 4.0, 5.0]


def test_pax_long_names_are_followed(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in _small().members():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("x" * 150)  # a pax 'path' record
        tar.addfile(info, io.BytesIO(b""))
    path = tmp_path / "pax.pt"
    path.write_bytes(buf.getvalue())
    assert "x" * 150 in tw.open(path).metadata["members"]


def test_cli_inspect(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inspect", str(FIXTURES / "legacy_tar.pt")]) == 0
    out = capsys.readouterr().out
    assert "legacy-tar" in out and "weight_t" in out and "storage_views" in out


# ----------------------------------------------------------------------------------------- malformed files


def test_truncated_inside_storage_data(tmp_path: Path) -> None:
    data = _small().build()
    start, _ = gen.member_offsets(data)["storages"]
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: start + 40])
    _expect(path, CorruptCheckpointError, "truncated", "tar member 'storages'", "re-download")


def test_truncated_before_a_member(tmp_path: Path) -> None:
    data = _small().build()
    start, _ = gen.member_offsets(data)["tensors"]
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: start - 512 + 100])  # inside the tensors header
    err = _expect(path, CorruptCheckpointError, "tar-missing-member", "'tensors'", "'storages'")
    assert "is missing" in err.message


def test_damaged_tar_header(tmp_path: Path) -> None:
    data = bytearray(_small().build())
    start, _ = gen.member_offsets(bytes(data))["pickle"]
    data[start - 512 + 10] ^= 0xFF  # a byte of the 'pickle' member's name
    path = tmp_path / "header.pt"
    path.write_bytes(bytes(data))
    _expect(path, CorruptCheckpointError, "tar-bad-header", "checksum")


def test_duplicate_members(tmp_path: Path) -> None:
    members = _small().members()
    members.append(("pickle", gen.dumps({"w": "replaced"})))
    _expect(_write_members(tmp_path, members), CorruptCheckpointError, "tar-duplicate-member", "'pickle'", "torch")


def test_missing_members_are_all_named(tmp_path: Path) -> None:
    members = [(n, d) for n, d in _small().members() if n not in ("tensors", "storages")]
    err = _expect(_write_members(tmp_path, members), CorruptCheckpointError, "tar-missing-member")
    assert "'storages', 'tensors'" in err.message


def test_member_that_is_a_link(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in _small().members():
            info = tarfile.TarInfo(name)
            if name == "storages":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path = tmp_path / "link.pt"
    path.write_bytes(buf.getvalue())
    _expect(path, CorruptCheckpointError, "tar-bad-member", "'storages'", "not a regular file")


def _recount(member: bytes, old: int, new: int) -> bytes:
    head = gen.dumps(old)
    assert member.startswith(head)
    return gen.dumps(new) + member[len(head) :]


@pytest.mark.parametrize("member", ["storages", "tensors"])
def test_oversized_counts(tmp_path: Path, member: str) -> None:
    spec = _small()
    members = _members(spec)
    old = len(spec.storages) if member == "storages" else len(spec.tensors)
    members[member] = _recount(members[member], old, 10**12)
    what = "storage" if member == "storages" else "tensor"
    _expect(
        _write_members(tmp_path, list(members.items())),
        CorruptCheckpointError,
        "bad-record",
        f"declares 1000000000000 {what}s",
        f"member '{member}'",
    )


def test_count_that_is_not_an_int(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    members["tensors"] = gen.dumps("two") + members["tensors"][len(gen.dumps(2)) :]
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", "'two'")


def test_more_records_than_the_count_says_is_not_read(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    members["tensors"] = _recount(members["tensors"], 2, 1)  # the second tensor is never read
    err = _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "missing-storage")
    assert str(K + 101) in err.message and "neither" in err.message


def test_storage_larger_than_its_member(tmp_path: Path) -> None:
    spec = _small()  # one storage of 6 floats
    members = _members(spec)
    body = members["storages"]
    numel_at = body.index(np.int64(6).tobytes())
    members["storages"] = body[:numel_at] + np.int64(10**9).tobytes() + body[numel_at + 8 :]
    _expect(
        _write_members(tmp_path, list(members.items())),
        CorruptCheckpointError,
        "truncated",
        f"storage {K + 16}",
        "4000000000 bytes",
    )


def test_negative_storage_size(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    body = members["storages"]
    numel_at = body.index(np.int64(6).tobytes())
    members["storages"] = body[:numel_at] + np.int64(-6).tobytes() + body[numel_at + 8 :]
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", "-6 float32")


def test_tensor_past_its_storage_and_negative_stride_are_both_reported(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[0].stride = (4, 1)  # reaches element 8 of 6
    spec.tensors[1].stride = (-1,)
    err = _expect(
        spec.write(tmp_path / "strides.pt"),
        CorruptCheckpointError,
        "bad-record",
        "2 tensors that do not fit",
        "reaches byte 28 of a 24-byte storage",
        "negative size, stride or offset",
    )
    assert str(K + 100) in err.message and str(K + 101) in err.message


def test_offset_past_the_storage(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[1].offset = 4  # elements 4..6 of 6
    _expect(spec.write(tmp_path / "offset.pt"), CorruptCheckpointError, "bad-record", "reaches byte 28")


def test_tensor_past_its_storage_view(tmp_path: Path) -> None:
    spec = _small(views=[gen.View(K + 32, K + 16, 2, 2)])
    spec.tensors[1].storage = K + 32
    spec.tensors[1].offset = 0  # three elements over a two-element view (the root would have room)
    _expect(spec.write(tmp_path / "view.pt"), CorruptCheckpointError, "bad-record", "of a 8-byte storage")


@pytest.mark.parametrize(
    ("view", "fragment"),
    [
        ((K + 32, K + 16, 4, 5), "outside its 6-element root"),
        ((K + 32, K + 999, 0, 1), "which it does not define"),
        ((K + 32, K + 16, -1, 1), "outside its 6-element root"),
        ((K + 16, K + 16, 0, 1), "twice"),
    ],
)
def test_bad_storage_views(tmp_path: Path, view: tuple[int, int, int, int], fragment: str) -> None:
    spec = _small(views=[gen.View(*view)])
    _expect(spec.write(tmp_path / "views.pt"), CorruptCheckpointError, "bad-record", fragment)


def test_malformed_views_list(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    empty_views = gen.dumps([])
    assert members["storages"].endswith(empty_views)
    members["storages"] = members["storages"][: -len(empty_views)] + gen.dumps({"not": "a list"})
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", "storage views")


def test_missing_views_list(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    members["storages"] = members["storages"][: -len(gen.dumps([]))]
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "truncated", "storage views")


def test_too_many_dimensions(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[0].shape = (1,) * 70
    spec.tensors[0].stride = (1,) * 70
    _expect(spec.write(tmp_path / "dims.pt"), ResourceLimitError, "limit-tensor-dims", "70 dimensions")
    _expect(
        FIXTURES / "legacy_tar.pt",
        ResourceLimitError,
        "limit-tensor-dims",
        "max_tensor_dims",
        limits=Limits(max_tensor_dims=1),
    )


def test_negative_dimension_count(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    body = members["tensors"]
    ndim_at = body.index(np.int32(2).tobytes() + b"\0\0\0\0" + np.int64(2).tobytes())
    members["tensors"] = body[:ndim_at] + np.int32(-3).tobytes() + body[ndim_at + 4 :]
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", "-3 dimensions")


def test_dimensions_past_the_member(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    members["tensors"] = members["tensors"][:-4]  # the last tensor's offset is cut
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "truncated", "storage offset")


def test_tensor_of_an_unknown_storage(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[1].storage = K + 999
    _expect(spec.write(tmp_path / "unknown.pt"), CorruptCheckpointError, "missing-storage", str(K + 999))


def test_tensor_without_storage_but_with_elements(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[1].storage = None
    _expect(spec.write(tmp_path / "nostorage.pt"), CorruptCheckpointError, "bad-record", "0-byte storage")


def test_pickle_naming_a_key_no_member_defines(tmp_path: Path) -> None:
    spec = _small()
    spec.obj = {"w": gen.TensorRef(K + 100), "ghost": gen.TensorRef(K + 555)}
    _expect(spec.write(tmp_path / "ghost.pt"), CorruptCheckpointError, "missing-storage", str(K + 555))


@pytest.mark.parametrize("pid", ["abc", "12x"])
def test_pickle_with_a_persistent_id_that_is_not_a_key(tmp_path: Path, pid: str) -> None:
    spec = _small()
    members = _members(spec)
    members["pickle"] = b"\x80\x02X" + len(pid).to_bytes(4, "little") + pid.encode() + b"Q."
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", "persistent id")


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ("not a tuple", "expected (key, location, storage class)"),
        (("k", "cpu", None), "malformed storage record"),
        ((K + 16, "cpu", "FloatStorage"), "not a typed torch storage class"),
    ],
)
def test_malformed_storage_records(tmp_path: Path, record: Any, fragment: str) -> None:
    spec = _small()
    members = _members(spec)
    body = members["storages"]
    good = gen.dumps((K + 16, "cpu", gen.storage_class("float32")))
    assert good in body
    members["storages"] = body.replace(good, gen.dumps(record))
    _expect(_write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", fragment)


def test_tensor_class_used_as_storage_class(tmp_path: Path) -> None:
    spec = _small()
    members = _members(spec)
    good = gen.dumps((K + 16, "cpu", gen.storage_class("float32")))
    members["storages"] = members["storages"].replace(good, gen.dumps((K + 16, "cpu", gen.tensor_class("float32"))))
    _expect(
        _write_members(tmp_path, list(members.items())), CorruptCheckpointError, "bad-record", "'torch.FloatTensor'"
    )


def test_duplicate_tensor_key(tmp_path: Path) -> None:
    spec = _small()
    spec.tensors[1].key = K + 100
    _expect(spec.write(tmp_path / "dup.pt"), CorruptCheckpointError, "bad-record", f"tensor {K + 100} twice")


def test_big_endian_writer_is_unsupported(tmp_path: Path) -> None:
    _expect(
        _small(little_endian=False).write(tmp_path / "be.pt"),
        UnsupportedCheckpointError,
        "unsupported-legacy-tar-platform",
        "big-endian",
    )
    _expect(
        _small(long_size=4).write(tmp_path / "win.pt"),
        UnsupportedCheckpointError,
        "unsupported-legacy-tar-platform",
        "4-byte",
    )


# ---------------------------------------------------------------------------------------------------- safety


def _exec_payload(marker: Path) -> Any:
    return gen.Call("builtins", "exec", (f"open({str(marker)!r}, 'w').close()",))


def test_payload_canary_really_runs_under_pickle(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "ran"
    pickle.loads(gen.dumps({"x": _exec_payload(marker)}))
    assert marker.exists()


def test_dangerous_global_in_the_pickle_member(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = _small()
    spec.obj = {"w": gen.TensorRef(K + 100), "boom": _exec_payload(marker)}
    err = _expect(spec.write(tmp_path / "evil.pt"), UnsafeCheckpointError, "unsafe-global", "exec", "Nothing was")
    assert "member 'pickle'" in err.message
    with pytest.raises(UnsafeCheckpointError):
        tw.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_dangerous_global_in_the_tensors_member(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = _small()
    members = _members(spec)
    good = gen.dumps((K + 100, K + 16, gen.tensor_class("float32")))
    assert good in members["tensors"]
    members["tensors"] = members["tensors"].replace(good, gen.dumps((K + 100, K + 16, _exec_payload(marker))))
    err = _expect(_write_members(tmp_path, list(members.items())), UnsafeCheckpointError, "unsafe-global")
    assert "member 'tensors'" in err.message
    assert not marker.exists()


def test_danger_is_reported_before_corruption(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = _small()
    spec.obj = {"boom": _exec_payload(marker)}
    spec.tensors[0].stride = (9, 9)  # also broken
    _expect(spec.write(tmp_path / "both.pt"), UnsafeCheckpointError, "unsafe-global")
    members = _members(spec)
    members["storages"] = _recount(members["storages"], 1, 10**9)
    _expect(_write_members(tmp_path, list(members.items()), "both2.pt"), UnsafeCheckpointError, "unsafe-global")
    assert not marker.exists()


def test_unknown_classes_stay_inert(tmp_path: Path) -> None:
    spec = _small()
    spec.obj = OrderedDict(w=gen.TensorRef(K + 100), cfg=gen.Instance("my_project.config", "TrainConfig", {"lr": 1}))
    ckpt = tw.open(spec.write(tmp_path / "cfg.pt"))
    assert "my_project.config.TrainConfig" in ckpt.globals
    assert list(ckpt.records) == ["w"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_raise_only_our_errors(tmp_path: Path, data: st.DataObject) -> None:
    original = (FIXTURES / "legacy_tar.pt").read_bytes()
    raw = bytearray(original[: data.draw(st.integers(0, 5200), label="keep")])
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if raw:
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(raw))
    try:
        ckpt = tw.open(path)
    except TorchWeightsError:
        return
    with contextlib.suppress(TorchWeightsError):
        tw.load(ckpt)
