"""The bytes a read returns are the bytes the file was opened with: CRC-32 checked on every path that reads whole
zip members (``load``, ``convert``, ``diff``), files that changed since ``tw.open`` refused, ``map_location``
callables in torch's form, and CRC checks the reader cannot make reported in ``Checkpoint.warnings``."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from torchweights.records import StorageRef
from torchweights.storage import raw
from torchweights.storage.contents import logical_bytes
from torchweights.storage.mapping import mapped_tensors
from torchweights.storage.read import fill

safetensors_torch = pytest.importorskip("safetensors.torch")


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(16, 8, generator=gen),
        "encoder.bias": torch.randn(16, generator=gen),
        "head.weight": torch.randn(4, 16, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor(7),
    }


def _flip(path: Path, name: str, at: int = 5) -> None:
    """One bit flipped inside tensor ``name``'s bytes, as bit rot would (the zip directory stays intact)."""
    start, _ = tw.open(path).records[name].byte_range  # type: ignore[misc]
    raw = bytearray(path.read_bytes())
    raw[start + at] ^= 0x40
    path.write_bytes(bytes(raw))


def _recompressed(src: Path, dst: Path, compression: int) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=compression)


def _corrupt_member_crc(path: Path, member: str) -> None:
    """Change the CRC-32 a member records (local header and central directory), as bit rot inside a compressed
    stream that still inflates would look."""
    with zipfile.ZipFile(path) as zf:
        crc = zf.getinfo(member).CRC
    raw = path.read_bytes()
    old = crc.to_bytes(4, "little")
    assert raw.count(old) == 2
    path.write_bytes(raw.replace(old, (crc ^ 0xFFFF).to_bytes(4, "little")))


# --------------------------------------------------------------------------------------------------------------
# bug 2: convert and diff check the CRC-32 of what they read
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["safetensors", "torch"])
def test_convert_refuses_a_flipped_weight_and_leaves_nothing(tmp_path: Path, to: str) -> None:
    src = tmp_path / "src.pt"
    torch.save(_weights(), src)
    _flip(src, "encoder.weight")
    with pytest.raises(tw.CorruptCheckpointError) as load_error:
        tw.load(src)
    assert load_error.value.code == "bad-crc"
    out = tmp_path / "out"
    out.mkdir()
    dst = out / ("model.safetensors" if to == "safetensors" else "model.pt")
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.convert(src, dst, to=to)
    assert info.value.code == "bad-crc"
    assert "'encoder.weight'" in info.value.message and "Nothing was written" in info.value.message
    assert os.listdir(out) == []  # no output, no temporary file


def test_convert_checks_a_view_that_spans_part_of_its_storage(tmp_path: Path) -> None:
    """A tensor that is a slice of a bigger storage: the member's CRC covers the bytes outside the slice too."""
    flat = torch.randn(64)
    src = tmp_path / "views.pt"
    torch.save({"head": flat[:16].view(4, 4), "tail": flat[40:]}, src)
    rec = tw.open(src).records["tail"]
    raw = bytearray(src.read_bytes())
    raw[rec.storage.offset + 20 * 4 + 1] ^= 0x01  # in element 20: in neither view
    src.write_bytes(bytes(raw))
    assert torch.equal(tw.load(src, check_crc=False)["head"], flat[:16].view(4, 4))
    for kwargs in ({"to": "safetensors"}, {"to": "torch"}, {"to": "safetensors", "dtype": "float16"}):
        dst = tmp_path / f"o-{len(os.listdir(tmp_path))}"
        with pytest.raises(tw.CorruptCheckpointError) as info:
            tw.convert(src, dst, **kwargs)
        assert info.value.code == "bad-crc", kwargs
        assert not dst.exists()


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_convert_checks_compressed_members(tmp_path: Path, compression: int) -> None:
    torch.save(_weights(), tmp_path / "plain.pt")
    src = tmp_path / "z.pt"
    _recompressed(tmp_path / "plain.pt", src, compression)
    tw.convert(src, tmp_path / "ok.safetensors")  # intact: converts
    member = tw.open(src).records["encoder.bias"].storage.member
    _corrupt_member_crc(src, member)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.convert(src, tmp_path / "bad.safetensors")
    assert info.value.code == "bad-crc" and "'encoder.bias'" in info.value.message
    assert not (tmp_path / "bad.safetensors").exists()


def test_diff_refuses_a_flipped_weight(tmp_path: Path) -> None:
    sd = _weights()
    torch.save(sd, tmp_path / "a.pt")
    safetensors_torch.save_file(sd, str(tmp_path / "b.safetensors"))
    assert tw.diff(tmp_path / "a.pt", tmp_path / "b.safetensors").identical
    _flip(tmp_path / "a.pt", "head.weight", at=0)
    for a, b in (("a.pt", "b.safetensors"), ("b.safetensors", "a.pt"), ("a.pt", "a.pt")):
        with pytest.raises(tw.CorruptCheckpointError) as info:
            tw.diff(tmp_path / a, tmp_path / b)
        assert info.value.code == "bad-crc" and "'head.weight'" in info.value.message


def test_storage_bytes_are_checked_by_default(tmp_path: Path) -> None:
    src = tmp_path / "w.pt"
    torch.save(_weights(), src)
    _flip(src, "encoder.bias")
    rec = tw.open(src).records["encoder.bias"]
    with pytest.raises(tw.CorruptCheckpointError) as info:
        raw.read_storage_bytes(rec.storage)
    assert info.value.code == "bad-crc"
    with pytest.raises(tw.CorruptCheckpointError):
        logical_bytes(rec)
    assert len(raw.read_storage_bytes(rec.storage, check_crc=False)) == rec.storage.nbytes
    flipped = logical_bytes(rec, check_crc=False)
    assert flipped != bytes(_weights()["encoder.bias"].numpy().tobytes())


# --------------------------------------------------------------------------------------------------------------
# bug 7: a file changed between tw.open and the read is refused, not read at the old offsets
# --------------------------------------------------------------------------------------------------------------


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """New content in the same inode, with a modification time that differs from the old one (a rewrite that
    lands within the filesystem's timestamp granularity keeps the old time: see the _stamps docstring)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def _replace(path: Path, data: bytes) -> None:
    """New content under the same name by a rename: a new inode (as a download or ``torch.save`` to a temp file)."""
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def _reads(ckpt: tw.Checkpoint) -> dict[str, Any]:
    """Every path that reads tensor bytes from an opened checkpoint."""
    model = torch.nn.Linear(8, 16)
    rec = ckpt.records["encoder.weight"]
    return {
        "load": lambda: tw.load(ckpt),
        "load-mmap": lambda: tw.load(ckpt, mmap=True),
        "load-no-crc": lambda: tw.load(ckpt, check_crc=False),
        "load_into": lambda: tw.load_into(model, ckpt, strict=False),
        "fill": lambda: fill([(rec, torch.empty(16, 8))]),
        "mapped": lambda: mapped_tensors([rec]),
        "byte-range": lambda: raw.read_byte_range(rec.storage, 0, 8),
        "logical": lambda: logical_bytes(rec, check_crc=False),
        "convert": lambda: tw.convert(ckpt, ckpt.path + ".safetensors", force=True),
    }


@pytest.mark.parametrize("change", ["rename", "in-place", "shorter", "longer"])
def test_a_file_changed_since_open_is_refused(tmp_path: Path, change: str) -> None:
    path = tmp_path / "w.pt"
    torch.save(_weights(0), path)
    (tmp_path / "new").mkdir()
    other = tmp_path / "new" / "w.pt"
    torch.save(_weights(1), other)  # same names and shapes, other values: the same offsets
    new = other.read_bytes()
    assert len(new) == path.stat().st_size
    for read in _reads(tw.open(path)).values():
        read()  # unchanged: every path reads
    os.unlink(tmp_path / "w.pt.safetensors")
    ckpt = tw.open(path)
    if change == "rename":
        _replace(path, new)
    elif change == "in-place":
        _rewrite_in_place(path, new)
    elif change == "shorter":
        _rewrite_in_place(path, new[:-100])
    else:
        _rewrite_in_place(path, new + b"\0" * 100)
    for name, read in _reads(ckpt).items():
        with pytest.raises(tw.CorruptCheckpointError) as info:
            read()
        assert info.value.code == "file-changed", name
        assert "tw.open" in info.value.message and str(path) in info.value.message
    assert not (tmp_path / "w.pt.safetensors").exists()
    if change in ("rename", "in-place"):
        reopened = tw.load(path)  # opened again: the new content
        assert torch.equal(reopened["encoder.weight"], _weights(1)["encoder.weight"])


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_a_changed_file_with_compressed_members_is_refused(tmp_path: Path, compression: int) -> None:
    torch.save(_weights(0), tmp_path / "a.pt")
    torch.save(_weights(1), tmp_path / "b.pt")
    path = tmp_path / "z.pt"
    _recompressed(tmp_path / "a.pt", path, compression)
    tw.load(path)
    ckpt = tw.open(path)
    rec = ckpt.records["encoder.bias"]
    _recompressed(tmp_path / "b.pt", tmp_path / "z2.pt", compression)
    os.replace(tmp_path / "z2.pt", path)
    for read in (
        lambda: tw.load(ckpt),
        lambda: raw.read_byte_range(rec.storage, 0, 8),
        lambda: raw.storage_crc(rec.storage),
    ):
        with pytest.raises(tw.CorruptCheckpointError) as info:
            read()
        assert info.value.code == "file-changed"


def test_shards_and_safetensors_are_stamped_per_file(tmp_path: Path) -> None:
    sd = _weights()
    safetensors_torch.save_file({k: v for k, v in sd.items() if k.startswith("encoder")}, tmp_path / "m-1.safetensors")
    safetensors_torch.save_file(
        {k: v for k, v in sd.items() if not k.startswith("encoder")}, tmp_path / "m-2.safetensors"
    )
    index = {"metadata": {}, "weight_map": {k: f"m-{1 if k.startswith('encoder') else 2}.safetensors" for k in sd}}
    (tmp_path / "model.safetensors.index.json").write_text(__import__("json").dumps(index))
    ckpt = tw.open(tmp_path)
    stamps = {r.storage.file: r.storage.stamp for r in ckpt.records.values()}
    assert len(stamps) == 2 and all(s is not None for s in stamps.values())
    assert tw.load(ckpt)["head.weight"].dtype == torch.bfloat16
    _replace(tmp_path / "m-2.safetensors", (tmp_path / "m-2.safetensors").read_bytes())  # same bytes, new inode
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load(ckpt)
    assert info.value.code == "file-changed" and "m-2.safetensors" in info.value.message
    assert "replaced by another file" in info.value.message
    # a ref made by hand has no stamp and is read as it is
    assert StorageRef("k", str(tmp_path / "m-1.safetensors"), 0, 4).stamp is None


# --------------------------------------------------------------------------------------------------------------
# bug 6: map_location callables in torch's form
# --------------------------------------------------------------------------------------------------------------


def _saved_on_cuda(path: Path) -> None:
    """A checkpoint whose storages say they were saved from ``cuda:1`` (torch.save on a GPU machine), made by
    editing the location strings of a CPU save (same length, so the pickle stays valid)."""
    torch.save(_weights(), path)
    with zipfile.ZipFile(path) as zin:
        items = [(info, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w") as zout:
        for info, data in items:
            if info.filename.endswith("data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == 1  # memoized after its first use
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:1")
            zout.writestr(info, data)


def test_map_location_callables_as_torch_calls_them(tmp_path: Path) -> None:
    path = tmp_path / "gpu.pt"
    _saved_on_cuda(path)
    assert {r.storage.location for r in tw.open(path).records.values()} == {"cuda:1"}
    seen: list[tuple[Any, str]] = []

    def keep(storage: Any, location: str) -> Any:
        seen.append((storage, location))
        return storage

    loaded = tw.load(path, map_location=keep)  # torch's idiom: keep every storage on the CPU
    assert {loc for _, loc in seen} == {"cuda:1"}
    assert all(isinstance(s, torch.UntypedStorage) and s.device.type == "cpu" for s, _ in seen)
    expected = torch.load(path, map_location=lambda storage, loc: storage, weights_only=True)
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert tensor.device.type == "cpu" and torch.equal(loaded[name], tensor), name
    cpu = tw.load(path, map_location=lambda storage, loc: storage.cpu())
    assert all(t.device.type == "cpu" for t in cpu.values())
    # a device in place of a storage, or a keyword-only default after the two arguments, are accepted too
    assert all(t.is_meta for t in tw.load(path, map_location=lambda storage, loc: "meta").values())
    assert all(t.is_meta for t in tw.load(path, map_location=lambda s, loc, *, x=0: torch.device("meta")).values())
    # torch: None means the saved location; here the saved device does not exist, as with torch.load
    with pytest.raises((RuntimeError, AssertionError)):
        torch.load(path, map_location=lambda storage, loc: None, weights_only=True)
    assert tw.load(path, map_location={"cuda:1": "cpu"})["encoder.bias"].device.type == "cpu"


def test_map_location_callable_of_one_argument_still_works(tmp_path: Path) -> None:
    path = tmp_path / "gpu.pt"
    _saved_on_cuda(path)
    seen: list[str] = []
    loaded = tw.load(path, map_location=lambda location: seen.append(location) or "cpu")
    assert set(seen) == {"cuda:1"} and all(t.device.type == "cpu" for t in loaded.values())


@pytest.mark.parametrize(
    "bad",
    [
        lambda: "cpu",  # takes nothing
        lambda a, b, c: "cpu",  # takes three
        lambda storage, loc: 3.5,  # returns neither a storage nor a device
        lambda storage, loc: storage.no_such_method(),  # fails inside
    ],
)
def test_a_bad_map_location_callable_is_a_rule_error(tmp_path: Path, bad: Any) -> None:
    torch.save(_weights(), tmp_path / "w.pt")
    with pytest.raises(tw.RuleError) as info:
        tw.load(tmp_path / "w.pt", map_location=bad)
    assert info.value.code == "bad-map-location"
    assert "map_location" in info.value.message and "lambda storage, location: storage" in info.value.message


# --------------------------------------------------------------------------------------------------------------
# bug 11: a CRC-32 the reader cannot check, and a location it had to assume, are said in Checkpoint.warnings
# --------------------------------------------------------------------------------------------------------------


def _rewritten(src: Path, dst: Path, edit: Any) -> None:
    """A copy of a torch zip with each member's bytes passed through ``edit(name, data)`` (CRCs recomputed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info)))


def test_a_member_longer_than_its_storage_is_a_warning(tmp_path: Path) -> None:
    sd = _weights()
    torch.save(sd, tmp_path / "w.pt")
    member = tw.open(tmp_path / "w.pt").records["encoder.bias"].storage.member
    assert tw.open(tmp_path / "w.pt").warnings == []
    _rewritten(tmp_path / "w.pt", tmp_path / "long.pt", lambda name, data: data + b"\0" * 8 if name == member else data)
    ckpt = tw.open(tmp_path / "long.pt")
    assert ckpt.records["encoder.bias"].storage.crc32 is None
    assert ckpt.records["encoder.weight"].storage.crc32 is not None
    (warning,) = [w for w in ckpt.warnings if "CRC-32" in w]
    assert "1 member is not checked" in warning and repr(member) in warning and "72 bytes, storage 64" in warning
    assert torch.equal(tw.load(ckpt)["encoder.bias"], sd["encoder.bias"])


def test_a_location_that_is_not_a_string_is_a_warning(tmp_path: Path) -> None:
    torch.save(_weights(), tmp_path / "w.pt")

    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("data.pkl"):
            return data
        assert data.count(b"X\x03\x00\x00\x00cpu") == 1  # memoized after its first use
        return data.replace(b"X\x03\x00\x00\x00cpu", b"K\x07")  # the int 7 where 'cpu' was

    _rewritten(tmp_path / "w.pt", tmp_path / "odd.pt", edit)
    ckpt = tw.open(tmp_path / "odd.pt")
    assert {r.storage.location for r in ckpt.records.values()} == {"cpu"}
    (warning,) = [w for w in ckpt.warnings if "location" in w]
    assert "4 storages record a location that is not a device name" in warning and "(7)" in warning
    assert all(r.storage.crc32 is not None for r in ckpt.records.values())  # the CRC is still checked
    assert torch.equal(tw.load(ckpt)["head.weight"], _weights()["head.weight"])


def test_per_channel_quantization_scales_are_read_and_checked(tmp_path: Path) -> None:
    """Per-channel scales and zero points are tensors of their own storages, read whole (and CRC-checked) when the
    quantized tensor is built."""
    with warnings.catch_warnings():  # torch deprecates quantized tensor creation (warned once per process)
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(
            torch.randn(4, 6), torch.tensor([0.5, 0.25, 0.125, 1.0]), torch.tensor([0, 3, 1, 2]), 0, torch.quint8
        )
    path = tmp_path / "q.pt"
    torch.save({"q": q}, path)
    got = tw.load(path)["q"]
    assert torch.equal(got.int_repr(), q.int_repr()) and got.q_per_channel_axis() == 0
    assert torch.equal(got.q_per_channel_scales(), q.q_per_channel_scales())
    assert torch.equal(got.q_per_channel_zero_points(), q.q_per_channel_zero_points())
    scales = tw.open(path).records["q"].quantization["scales"]  # type: ignore[index]
    data = bytearray(path.read_bytes())
    data[scales.storage.offset + 1] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "bad-crc" and f"'{scales.name}'" in info.value.message
