"""The fast read paths of issue 5: bytes read straight into parameters (copy path), the meta path, ``mmap=True``,
bounded scratch buffers, CRC-32 checks on tensor data, and the pieces they are built from.

Every test compares against a hand-written correct load (``model.load_state_dict(torch.load(...))`` or the saved
tensors themselves), bit for bit. Nothing here is timed.
"""

from __future__ import annotations

import copy
import json
import os
import random
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from torchweights import records
from torchweights.storage import compression, io_settings
from torchweights.storage import crc as _crc32
from torchweights.storage import engine as _engine
from torchweights.storage import files as _io
from torchweights.storage import read as storage
from torchweights.storage import scratch as _scratch
from torchweights.storage.targets import memory_of


class Net(torch.nn.Module):
    """Mixed sizes and kinds: linears, a norm, a conv, a BatchNorm (int64 buffer), an embedding."""

    def __init__(self, dim: int = 24) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(40, dim)
        self.fc1 = torch.nn.Linear(dim, 3 * dim)
        self.fc2 = torch.nn.Linear(3 * dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.conv = torch.nn.Conv1d(dim, 8, 3)
        self.bn = torch.nn.BatchNorm1d(8)


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(30, 8)
        self.head = torch.nn.Linear(8, 30, bias=False)
        self.head.weight = self.embed.weight


def _random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            out[name] = torch.randn(t.shape, dtype=t.dtype)
        else:
            out[name] = torch.randint(0, 1000, t.shape, dtype=t.dtype)
    return out


def _expect(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``load_state_dict`` makes of ``sd`` in a copy of ``model`` (not on the meta device)."""
    ref = copy.deepcopy(model)
    ref.load_state_dict(sd)
    return ref.state_dict()


def _same(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert list(got) == list(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype, name
        assert got[name].device.type == "cpu", name
        assert torch.equal(got[name], t), name


def _write(fmt: str, sd: dict[str, torch.Tensor], tmp: Path) -> Path:
    if fmt == "torch-zip":
        torch.save(sd, tmp / "m.pt")
        return tmp / "m.pt"
    if fmt == "legacy":
        torch.save(sd, tmp / "m.pt", _use_new_zipfile_serialization=False)
        return tmp / "m.pt"
    if fmt == "safetensors":
        safetensors_torch.save_file(sd, str(tmp / "m.safetensors"))
        return tmp / "m.safetensors"
    folder = tmp / "shards"
    folder.mkdir()
    names = list(sd)
    parts = [names[0::3], names[1::3], names[2::3]]
    weight_map = {}
    for i, part in enumerate(parts):
        file = f"model-{i + 1:05d}-of-00003.safetensors"
        safetensors_torch.save_file({n: sd[n].contiguous() for n in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


FORMATS = ["torch-zip", "legacy", "safetensors", "sharded"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_copy_path_is_bit_exact_and_writes_in_place(fmt: str, tmp_path: Path) -> None:
    model = Net()
    sd = _random_state(model)
    path = _write(fmt, sd, tmp_path)
    before = {name: t.data_ptr() for name, t in model.state_dict().items()}
    report = tw.load_into(model, path)
    assert report.ok and report.applied
    _same(model, _expect(model, sd))
    # the parameters were filled where they are: same memory, no new tensors
    assert {name: t.data_ptr() for name, t in model.state_dict().items()} == before
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("piece", [64, 1000, 16 << 20])
def test_pieces_and_threads_do_not_change_the_bytes(
    threads: int, piece: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big tensors are split into pieces read by several threads; any split gives the same result."""
    model = Net(dim=40)
    sd = _random_state(model, seed=threads)
    path = _write("torch-zip", sd, tmp_path)
    readers: set[str] = set()
    real = _engine.Engine.read

    def spy(self: Any, *args: Any) -> Any:
        readers.add(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(_engine.Engine, "read", spy)
    with io_settings(threads=threads, piece_bytes=piece):
        tw.load_into(model, path)
    _same(model, _expect(model, sd))
    if threads > 1 and piece < 1000 + 1:  # many pieces: read by the pool, never by the caller's thread
        assert readers and all(name.startswith("torchweights-read") for name in readers)


@pytest.mark.parametrize("fmt", FORMATS)
def test_meta_model_is_allocated_once_and_filled(fmt: str, tmp_path: Path) -> None:
    sd = _random_state(Net())
    path = _write(fmt, sd, tmp_path)
    with torch.device("meta"):
        model = Net()
    tw.load_into(model, path)
    _same(model, _expect(Net(), sd))
    assert all(isinstance(p, torch.nn.Parameter) and not p.is_meta for p in model.parameters())


def test_casts_go_through_the_scratch_buffer(tmp_path: Path) -> None:
    model = Net()
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in _random_state(model).items()}
    path = _write("torch-zip", sd, tmp_path)
    report = tw.load_into(model, path)
    assert any(a.cast for a in report.plan.actions)
    _same(model, _expect(model, sd))
    # dtype="checkpoint" keeps the file's dtype: new bf16 tensors, filled by the same read
    kept = Net()
    tw.load_into(kept, path, dtype="checkpoint")
    assert kept.fc1.weight.dtype == torch.bfloat16 and torch.equal(kept.fc1.weight, sd["fc1.weight"])
    assert isinstance(kept.fc1.weight, torch.nn.Parameter)


def test_views_shared_storages_and_transposed_tensors(tmp_path: Path) -> None:
    """Several parameters sliced out of one storage, and one saved as a transposed (non-contiguous) view."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 5))
    flat = torch.randn(6 * 4 + 6 + 5)
    big = torch.randn(6, 5)
    sd = {
        "0.weight": flat[:24].view(6, 4),
        "0.bias": flat[24:30],
        "1.weight": big.t(),  # (5, 6) view with strides (1, 5)
        "1.bias": flat[30:35],
    }
    path = tmp_path / "views.pt"
    torch.save(sd, path)
    ckpt = tw.open(path)
    assert not ckpt.records["1.weight"].is_contiguous
    assert ckpt.records["0.weight"].storage == ckpt.records["0.bias"].storage
    expected = {k: v.clone() for k, v in sd.items()}
    tw.load_into(model, path)
    _same(model, expected)
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 5))
    tw.load_into(meta, path)
    _same(meta, expected)
    assert meta[1].weight.is_contiguous()  # the model gets its own memory in its own layout


def test_one_storage_feeding_two_untied_parameters(tmp_path: Path) -> None:
    """A checkpoint with tied weights loaded into a model that does not tie them: both get the bytes."""
    src = Tied()
    with torch.no_grad():
        src.embed.weight.copy_(torch.randn(30, 8))
    torch.save(src.state_dict(), tmp_path / "tied.pt")
    ckpt = tw.open(tmp_path / "tied.pt")
    assert ckpt.records["embed.weight"].storage == ckpt.records["head.weight"].storage

    class Untied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(30, 8)
            self.head = torch.nn.Linear(8, 30, bias=False)

    dst = Untied()
    tw.load_into(dst, tmp_path / "tied.pt")
    assert torch.equal(dst.embed.weight, src.embed.weight) and torch.equal(dst.head.weight, src.embed.weight)
    assert dst.embed.weight.data_ptr() != dst.head.weight.data_ptr()


def test_tied_model_parameters_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = Tied()
    torch.save(src.state_dict(), tmp_path / "tied.pt")
    seen: list[list[str]] = []
    real_fill = storage.fill

    def spy(requests: Any, **kwargs: Any) -> Any:
        requests = list(requests)
        seen.append([r.name for r, _ in requests])
        return real_fill(requests, **kwargs)

    monkeypatch.setattr(storage, "fill", spy)
    for meta in (False, True):
        if meta:
            with torch.device("meta"):
                dst = Tied()
        else:
            dst = Tied()
        report = tw.load_into(dst, tmp_path / "tied.pt")
        assert report.ok
        assert len(seen[-1]) == 1  # one read for the pair
        assert dst.head.weight is dst.embed.weight and torch.equal(dst.embed.weight, src.embed.weight)


def _big_endian_copy(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED) -> None:
    ckpt = tw.open(src)
    units = {
        r.storage.member: (r.itemsize // 2 if r.dtype.startswith("complex") else r.itemsize)
        for r in ckpt.records.values()
        if r.storage
    }
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("byteorder"):
                data = b"big"
            elif info.filename in units:
                unit = units[info.filename]
                data = b"".join(data[i : i + unit][::-1] for i in range(0, len(data), unit))
            zout.writestr(info.filename, data, compress_type=compression)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_big_endian_and_compressed_members(compression: int, tmp_path: Path) -> None:
    model = Net()
    sd = _random_state(model)
    sd["fc1.weight"] = sd["fc1.weight"].double()  # a cast too
    torch.save(sd, tmp_path / "le.pt")
    _big_endian_copy(tmp_path / "le.pt", tmp_path / "be.pt", compression)
    ckpt = tw.open(tmp_path / "be.pt")
    assert ckpt.metadata["byteorder"] == "big"
    assert all(r.storage and r.storage.compression == compression for r in ckpt.records.values())
    expected = _expect(model, sd)
    with io_settings(scratch_bytes=64 << 10, threads=2):  # pieces smaller than fc1.weight
        tw.load_into(model, tmp_path / "be.pt")
        _same(model, expected)
        with torch.device("meta"):
            meta = Net()
        tw.load_into(meta, tmp_path / "be.pt")
        _same(meta, expected)
        loaded = tw.load(tmp_path / "be.pt")
    for name, t in sd.items():
        assert torch.equal(loaded[name], t), name


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_crc_mismatch_of_a_compressed_member_is_collected(compression: int, tmp_path: Path) -> None:
    """A compressed member whose content changed is reported with the others, not raised from a reader thread."""
    sd = {"a": torch.randn(5000), "b": torch.randn(3000)}
    torch.save(sd, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as zin, zipfile.ZipFile(tmp_path / "z.pt", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=compression)
    ckpt = tw.open(tmp_path / "z.pt")
    member = ckpt.records["b"].storage.member
    # the recorded CRC of member b no longer matches its content (as after bit rot inside the compressed stream)
    with zipfile.ZipFile(tmp_path / "z.pt") as zf:
        info = zf.getinfo(member)
    raw = (tmp_path / "z.pt").read_bytes()
    wrong = (info.CRC ^ 0xFFFF).to_bytes(4, "little")
    old_crc = info.CRC.to_bytes(4, "little")
    assert raw.count(old_crc) == 2  # the local header and the central directory entry
    (tmp_path / "bad.pt").write_bytes(raw.replace(old_crc, wrong))
    bad = tw.open(tmp_path / "bad.pt")
    out_a, out_b = torch.empty(5000), torch.empty(3000)
    result = storage.fill([(bad.records["a"], out_a), (bad.records["b"], out_b)], check_crc=True)
    assert [m.ref.member for m in result.bad_crc] == [member]
    assert result.crc_checked == 2
    assert torch.equal(out_a, sd["a"]) and torch.equal(out_b, sd["b"])  # every read still done
    with pytest.raises(tw.CorruptCheckpointError) as error:
        tw.load(tmp_path / "bad.pt")
    assert error.value.code == "bad-crc"
    loaded = tw.load(tmp_path / "bad.pt", check_crc=False)
    assert torch.equal(loaded["b"], sd["b"])


def test_compressed_members_are_inflated_in_bounded_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = {"w": torch.randn(300_000), "b": torch.randn(7)}
    torch.save(sd, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as zin, zipfile.ZipFile(tmp_path / "z.pt", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    sizes = _record_allocations(monkeypatch)
    with io_settings(scratch_bytes=128 << 10, threads=2):
        loaded = tw.load(tmp_path / "z.pt")
        result = storage.fill([(tw.open(tmp_path / "z.pt").records["w"], out := torch.empty(300_000))], check_crc=True)
    assert torch.equal(loaded["w"], sd["w"]) and torch.equal(loaded["b"], sd["b"]) and torch.equal(out, sd["w"])
    assert result.crc_checked == 1 and not result.bad_crc
    assert sizes and max(n for n, _ in sizes) <= 64 << 10  # 1.2 MB inflated through 64 KiB pieces


def _record_allocations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    sizes: list[tuple[int, str]] = []
    real = _scratch._allocate

    def spy(nbytes: int, *, pinned: bool = False, kind: str = "scratch") -> torch.Tensor:
        sizes.append((nbytes, kind))
        return real(nbytes, pinned=pinned, kind=kind)

    monkeypatch.setattr(_scratch, "_allocate", spy)
    return sizes


def test_sharded_casts_use_only_the_scratch_buffer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak extra memory is bounded by the scratch setting, not by the checkpoint or the number of shards."""
    model = Net(dim=160)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in _random_state(model).items()}
    path = _write("sharded", sd, tmp_path)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    scratch = 64 << 10
    assert total > 4 * scratch
    sizes = _record_allocations(monkeypatch)
    with io_settings(scratch_bytes=scratch, threads=2):
        tw.load_into(model, path)
    _same(model, _expect(model, sd))
    assert sizes, "casts must go through scratch buffers"
    assert all(kind == "scratch" for _, kind in sizes)
    assert sum(n for n, _ in sizes) <= max(scratch, 2 * (64 << 10))  # two threads, one buffer each, at most


def test_same_dtype_loads_allocate_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for fmt in ("torch-zip", "sharded"):
        model = Net()
        sd = _random_state(model)
        folder = tmp_path / fmt
        folder.mkdir()
        path = _write(fmt, sd, folder)
        sizes = _record_allocations(monkeypatch)
        tw.load_into(model, path)
        _same(model, _expect(model, sd))
        assert sizes == [], f"{fmt}: bytes should land in the parameters directly"


def test_staging_path_used_for_gpu_destinations_works_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``direct=False`` sends every tensor through the staging buffers, as a CUDA destination does."""
    model = Net(dim=48)
    sd = _random_state(model)
    path = _write("torch-zip", sd, tmp_path)
    sizes = _record_allocations(monkeypatch)
    with io_settings(direct=False, scratch_bytes=128 << 10, threads=2):
        tw.load_into(model, path)
        loaded = tw.load(path)
    _same(model, _expect(model, sd))
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert sizes and all(n <= 64 << 10 for n, _ in sizes) and len(sizes) <= 4  # recycled, not one per tensor


def test_torch_threads_are_left_alone_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.set_num_threads is process-wide: a load (here one that casts, so torch does copies) must not call it
    unless io_settings(intra_op_threads=n) asks; when asked, the setting is restored afterwards."""
    model = Net()
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in _random_state(model).items()}
    path = _write("torch-zip", sd, tmp_path)
    real = torch.set_num_threads
    calls: list[int] = []
    seen: list[int] = []

    def spy(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    before = torch.get_num_threads()
    try:
        real(2)
        tw.load_into(model, path)
        loaded = tw.load(path)
        assert calls == [] and torch.get_num_threads() == 2
        _same(model, _expect(model, sd))
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())

        original_copy = torch.Tensor.copy_

        def watching_copy(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return original_copy(self, src, non_blocking)

        monkeypatch.setattr(torch.Tensor, "copy_", watching_copy)
        with io_settings(intra_op_threads=1):
            tw.load_into(model, path)
        monkeypatch.setattr(torch.Tensor, "copy_", original_copy)
        assert calls == [1, 2] and torch.get_num_threads() == 2  # set for the load, then restored
        assert seen and set(seen) == {1}
        _same(model, _expect(model, sd))
    finally:
        real(before)


# --------------------------------------------------------------------------------------------------------------
# mmap=True
# --------------------------------------------------------------------------------------------------------------


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    target = os.path.realpath(path)
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def _in_mapping(t: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    ptr = t.data_ptr()
    return any(lo <= ptr and ptr + t.numel() * t.element_size() <= hi for lo, hi in ranges)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
@pytest.mark.parametrize("fmt", ["torch-zip", "safetensors"])
def test_mmap_parameters_are_views_of_the_file(fmt: str, tmp_path: Path) -> None:
    sd = _random_state(Net())
    sd["fc2.weight"] = sd["fc2.weight"].double()  # needs a cast: read into the model's own memory instead
    path = _write(fmt, sd, tmp_path)
    original = path.read_bytes()
    with torch.device("meta"):
        model = Net()
    tw.load_into(model, path, mmap=True)
    _same(model, _expect(Net(), sd))
    ranges = _mapped_ranges(path)
    assert ranges, "the file is not mapped"
    assert _in_mapping(model.fc1.weight, ranges) and _in_mapping(model.embed.weight, ranges)
    assert not _in_mapping(model.fc2.weight, ranges)
    assert isinstance(model.fc1.weight, torch.nn.Parameter) and model.fc1.weight.requires_grad
    with torch.no_grad():
        model.fc1.weight.add_(1.0)  # copy-on-write: the process sees it, the file does not
    assert path.read_bytes() == original
    state = tw.load(path, mmap=True)
    assert _in_mapping(state["fc1.weight"], _mapped_ranges(path))
    assert all(torch.equal(state[k], v) for k, v in sd.items())


def test_mmap_refuses_a_device(tmp_path: Path) -> None:
    path = _write("safetensors", {"w": torch.ones(3)}, tmp_path)
    # a device this machine has ("cuda:0" is refused before, as a device a CPU build lacks)
    with pytest.raises(tw.RuleError, match="mmap=True"):
        tw.load(path, mmap=True, map_location="meta")


def _unstamped(path: Path, monkeypatch: pytest.MonkeyPatch) -> tw.Checkpoint:
    """A checkpoint whose refs carry no file stamp (as refs made by hand): the reads below then meet a file that
    shrinks after the stamp check, mid-read, as they would without it."""
    with monkeypatch.context() as patch:
        patch.setattr(records, "stamp_for", lambda file: None)
        ckpt = tw.open(path)
    assert all(r.storage is None or r.storage.stamp is None for r in ckpt.records.values())
    return ckpt


def test_truncated_files_are_errors_not_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _random_state(Net())
    path = _write("safetensors", sd, tmp_path)
    stamped = tw.open(path)
    ckpt = _unstamped(path, monkeypatch)
    os.truncate(path, os.path.getsize(path) - 100)
    for kwargs in ({}, {"mmap": True}):
        with pytest.raises(tw.CorruptCheckpointError) as info:
            tw.load(stamped, **kwargs)
        assert info.value.code == "file-changed"  # seen before any read
        with pytest.raises(tw.CorruptCheckpointError) as info:
            tw.load(ckpt, **kwargs)
        assert info.value.code == "truncated"
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load_into(Net(), ckpt)
    assert info.value.code == "truncated"


# --------------------------------------------------------------------------------------------------------------
# CRC-32
# --------------------------------------------------------------------------------------------------------------


def _flip(path: Path, record: Any, at: int = 5) -> None:
    raw = bytearray(path.read_bytes())
    start, _ = record.byte_range
    raw[start + at] ^= 0x40
    path.write_bytes(bytes(raw))


def test_bit_flipped_weight_is_refused_by_default(tmp_path: Path) -> None:
    model = Net()
    sd = _random_state(model)
    path = _write("torch-zip", sd, tmp_path)
    rec = tw.open(path).records["fc2.weight"]
    _flip(path, rec)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "bad-crc"
    assert "'fc2.weight'" in str(info.value) and rec.storage.member in str(info.value)
    assert "check_crc=False" in str(info.value)
    loaded = tw.load(path, check_crc=False)
    assert not torch.equal(loaded["fc2.weight"], sd["fc2.weight"])
    assert torch.equal(loaded["fc1.weight"], sd["fc1.weight"])


def test_bad_crc_in_load_into_says_what_was_written(tmp_path: Path) -> None:
    model = Net()
    sd = _random_state(model)
    path = _write("torch-zip", sd, tmp_path)
    _flip(path, tw.open(path).records["norm.weight"], at=0)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load_into(model, path)
    assert info.value.code == "bad-crc" and "written in place" in str(info.value)
    assert "'norm.weight'" in str(info.value)

    # assigned tensors (meta model, mmap) are only assigned after every check passed: the model is untouched
    for kwargs in ({}, {"mmap": True}):
        with torch.device("meta"):
            meta = Net()
        with pytest.raises(tw.CorruptCheckpointError) as info:
            tw.load_into(meta, path, **kwargs)
        message = str(info.value)
        assert info.value.code == "bad-crc" and ("left untouched" in message or "Nothing was loaded" in message)
        assert all(p.is_meta for p in meta.parameters())

    fresh = Net()
    tw.load_into(fresh, path, check_crc=False)
    assert not torch.equal(fresh.norm.weight, sd["norm.weight"]) and torch.equal(fresh.fc1.weight, sd["fc1.weight"])


def test_crc_covers_bytes_no_parameter_needs(tmp_path: Path) -> None:
    """A storage's CRC covers the whole member: bytes outside the loaded views are read (through scratch) too."""
    flat = torch.randn(40)
    torch.save({"0.weight": flat[:12].view(3, 4), "0.bias": flat[12:15], "spare": flat[15:]}, tmp_path / "s.pt")
    rec = tw.open(tmp_path / "s.pt").records["spare"]
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    tw.load_into(model, tmp_path / "s.pt", strict="model")
    _flip(tmp_path / "s.pt", rec, at=8)  # only in the part no parameter takes
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load_into(model, tmp_path / "s.pt", strict="model")
    assert info.value.code == "bad-crc"
    tw.load_into(model, tmp_path / "s.pt", strict="model", check_crc=False)
    assert torch.equal(model[0].weight, flat[:12].view(3, 4))


def test_crc_pieces_combine_like_zlib() -> None:
    rng = random.Random(5)
    for _ in range(100):
        a = rng.randbytes(rng.randint(0, 5000))
        b = rng.randbytes(rng.randint(0, 5000))
        assert _crc32.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    data = torch.randint(0, 256, (100_000,), dtype=torch.uint8)
    mem = memory_of(data)
    assert _crc32.crc32(mem, 0, data.data_ptr()) == zlib.crc32(mem) == _crc32.crc32(mem)
    assert _crc32.crc32_backend() in _crc32.CRC32_BACKENDS


@pytest.mark.parametrize("name", _crc32.CRC32_BACKENDS)
def test_every_crc_backend_agrees_with_zlib(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = _crc32._load_backend(name)
    if loaded is None:
        pytest.skip(f"{name} is not installed here")
    monkeypatch.setattr(_crc32, "_crc", (name, *loaded))
    assert _crc32.crc32_backend() == name
    data = torch.randint(0, 256, (3 << 20,), dtype=torch.uint8)
    mem = memory_of(data)
    whole = zlib.crc32(mem)
    assert _crc32.crc32(mem, 0, data.data_ptr()) == whole
    assert _crc32.crc32(mem) == whole  # no address: still right, whichever backend
    head = _crc32.crc32(mem[:1000], 0, data.data_ptr())
    assert _crc32.crc32(mem[1000:], head, data.data_ptr() + 1000) == whole  # continued from a value
    assert _crc32.crc32(mem[:0], 7, data.data_ptr()) == 7


def test_crc_backend_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_crc32, "_crc", None)
    monkeypatch.setenv("TORCHWEIGHTS_CRC32", "zlib")
    assert _crc32.crc32_backend() == "zlib"
    monkeypatch.setattr(_crc32, "_crc", None)
    monkeypatch.setenv("TORCHWEIGHTS_CRC32", "no-such-backend")  # unknown: the fastest installed one
    assert _crc32.crc32_backend() == next(n for n in _crc32.CRC32_BACKENDS if _crc32._load_backend(n) is not None)


def test_inflate_is_bounded_and_exact() -> None:
    import io

    raw = os.urandom(50_000) + bytes(150_000)
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = comp.compress(raw) + comp.flush()
    fh = io.BytesIO(b"junk" + data)
    out = memoryview(bytearray(4096))
    got = bytearray()
    for n in compression.inflate(fh, 4, len(data), len(raw), out):
        assert n <= 4096
        got += out[:n]
    assert bytes(got) == raw
    with pytest.raises(EOFError):
        list(compression.inflate(io.BytesIO(data), 0, len(data), len(raw) + 1, out))


def test_stored_member_crc_is_checked_per_storage(tmp_path: Path) -> None:
    sd = _random_state(Net())
    path = _write("torch-zip", sd, tmp_path)
    ckpt = tw.open(path)
    records = [r for r in ckpt.records.values() if r.storage]
    targets = [(r, torch.empty(r.shape, dtype=getattr(torch, r.dtype))) for r in records]
    with io_settings(piece_bytes=256, threads=3):  # many pieces per storage, combined
        result = storage.fill(targets, check_crc=True)
    assert result.crc_checked == len({r.storage.key for r in records}) and not result.bad_crc
    assert all(torch.equal(t, sd[r.name]) for r, t in targets)
    assert result.bytes_read == sum(r.storage.nbytes for r in {r.storage.key: r for r in records}.values())


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="needs posix_fadvise")
@pytest.mark.parametrize("nowait", [True, False])
def test_files_out_of_the_page_cache_load_the_same(
    nowait: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cold path (non-blocking attempt, then read-ahead hints and a blocking read) gives the same bytes."""
    monkeypatch.setattr(_io, "_nowait_works", nowait and _io._nowait_works)
    model = Net(dim=64)
    sd = _random_state(model)
    path = _write("torch-zip", sd, tmp_path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    with io_settings(piece_bytes=4096, threads=2):
        tw.load_into(model, path)
    _same(model, _expect(model, sd))


class _Many(torch.nn.Module):
    """Many small tensors: the shape where one system call per tensor would dominate."""

    def __init__(self, count: int = 60) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(6, 5) for _ in range(count))


def _count_preadv(monkeypatch: pytest.MonkeyPatch, cap: int | None = None) -> list[int]:
    """Count ``preadv`` calls (each call's number of buffers); with ``cap``, each call returns at most ``cap``
    bytes, as a kernel may (a signal, a network filesystem)."""
    calls: list[int] = []
    real = os.preadv

    def preadv(fd: int, buffers: Any, offset: int, *flags: int) -> int:
        buffers = list(buffers)
        calls.append(len(buffers))
        if cap is not None:
            kept, room = [], cap
            for b in buffers:
                if room <= 0:
                    break
                kept.append(memoryview(b)[:room])
                room -= len(kept[-1])
            buffers = kept
        return real(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", preadv)  # the non-blocking first try of read_ahead
    monkeypatch.setattr(_io, "_preadv", preadv)  # every other read (os.preadv, chosen at import)
    return calls


@pytest.mark.parametrize("fmt", ["torch-zip", "safetensors"])
@pytest.mark.parametrize("threads", [1, 2])
def test_consecutive_small_tensors_are_read_by_one_vectored_call(
    fmt: str, threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _Many()
    sd = _random_state(model, seed=3)
    path = _write(fmt, sd, tmp_path)
    target = _Many()
    calls = _count_preadv(monkeypatch)
    piece = 4096  # 120 tensors of 24 or 120 bytes: several pieces, so two threads share them
    with io_settings(threads=threads, piece_bytes=piece):
        report = tw.load_into(target, path)
    assert report.ok
    _same(target, _expect(target, sd))
    # zip members are apart by their local headers, safetensors tensors are back to back: either way one vectored
    # read per piece of about 4 KiB, not one read per tensor
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    assert sum(calls) >= 120
    assert len(calls) <= nbytes // piece + 3, calls


@pytest.mark.parametrize("fmt", ["torch-zip", "safetensors"])
def test_vectored_reads_survive_short_counts(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Many(20)
    sd = _random_state(model, seed=4)
    path = _write(fmt, sd, tmp_path)
    target = _Many(20)
    calls = _count_preadv(monkeypatch, cap=37)  # every call stops after 37 bytes, mid-buffer
    report = tw.load_into(target, path)
    assert report.ok
    _same(target, _expect(target, sd))
    assert len(calls) > 40


def test_vectored_read_of_a_file_cut_short_is_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Many(20)
    path = _write("safetensors", _random_state(model, seed=5), tmp_path)
    target = _Many(20)
    checkpoint = _unstamped(path, monkeypatch)  # the records say what the whole file held
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 30)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.load_into(target, checkpoint)
    assert info.value.code == "truncated"
    assert "ended after" in info.value.message
