"""torch.distributed.checkpoint folders as a format: ``tw.open`` gives the records from ``.metadata`` and each item's
embedded archive, ``tw.load`` is bit-identical to ``dcp_to_torch_save`` then ``torch.load``, ``tw.load_into`` loads
through the normal planner, and what is not read yet is refused with our own codes."""

from __future__ import annotations

import dataclasses
import io
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

import torchweights as tw
from _ranks import run_ranks
from torchweights.errors import CorruptCheckpointError, UnsupportedCheckpointError
from torchweights.storage.read import fill
from torchweights.storage.regions import regions as tw_regions


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        yield


def _state() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i8": torch.randint(-128, 127, (7,), dtype=torch.int8, generator=g),
        "i64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "flag": torch.tensor([True, False, True]),
        "c64": torch.randn(2, dtype=torch.complex64, generator=g),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 4),
        "view": torch.arange(12.0).reshape(3, 4)[:, 1],  # a strided view: DCP saves it as its own chunk
        "nested": {"w": torch.randn(2, 2, generator=g), "list": [torch.ones(1), torch.zeros(2)]},
        "epoch": 9,
        "config": {"lr": 0.1, "name": "run"},
    }


def _tensors(value: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{dotted name: tensor}`` of a nested state dict, as ``tw.load`` names them."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    out: dict[str, torch.Tensor] = {}
    for key, sub in items:
        out.update(_tensors(sub, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def test_load_is_bit_identical_to_dcp_to_torch_save(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    dcp.save(_state(), checkpoint_id=str(folder))
    dcp_to_torch_save(str(folder), str(tmp_path / "ref.pt"))
    expected = _tensors(torch.load(tmp_path / "ref.pt", weights_only=True))
    loaded = tw.load(folder)
    assert list(loaded) == list(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert (got.dtype, got.shape, got.stride()) == (want.dtype, want.shape, want.stride()), name
        assert _bits(got) == _bits(want), name


def test_open_gives_records_chunks_and_extras(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    dcp.save(_state(), checkpoint_id=str(folder))
    ckpt = tw.open(folder)
    assert ckpt.format == "dcp"
    record = ckpt.records["nested.list.1"]
    assert (record.dtype, record.shape, record.path) == ("float32", (2,), ("nested", "list", "1"))
    assert ckpt.records["scalar"].shape == () and ckpt.records["empty"].shape == (0, 4)
    assert record.storage is not None and record.storage.file == str(folder / "__0_0.distcp")
    assert ckpt.records["f32"].chunks is None and "dcp_chunks" not in ckpt.metadata  # one chunk: a plain record
    assert ckpt.extras == {"epoch": 9, "config.lr": 0.1, "config.name": "run"}
    assert ckpt.files == (str(folder / ".metadata"), str(folder / "__0_0.distcp"))
    assert ckpt.get_tensor("bf16").dtype == torch.bfloat16


def test_open_does_not_import_torch(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    dcp.save({"w": torch.ones(2, 3)}, checkpoint_id=str(folder))
    code = (
        "import sys, torchweights as tw\n"
        f"ckpt = tw.open({str(folder)!r})\n"
        "assert ckpt.records['w'].shape == (2, 3)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_load_into_a_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    folder = tmp_path / "ckpt"
    dcp.save({"model": source.state_dict(), "step": 3}, checkpoint_id=str(folder))
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    report = tw.load_into(target, folder)
    assert report.ok, report
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def _item(data: bytes, files: dict[str, bytearray], relative: str) -> tuple[int, int]:
    blob = files.setdefault(relative, bytearray())
    start = len(blob)
    blob.extend(data)
    return start, len(data)


def _write(
    folder: Path, tensors: dict[str, list[tuple[tuple[int, ...], torch.Tensor]]], size: dict[str, tuple[int, ...]]
) -> Metadata:
    """A folder written by hand as torch's FileSystemWriter writes one (each chunk a torch.save archive in a
    .distcp file, ``.metadata`` the pickled ``Metadata``), with tensors split in chunks as several ranks save them."""
    folder.mkdir()
    files: dict[str, bytearray] = {}
    entries, storage = {}, {}
    for fqn, chunks in tensors.items():
        listed = []
        for rank, (offsets, chunk) in enumerate(chunks):
            buffer = io.BytesIO()
            torch.save(chunk, buffer)
            start, length = _item(buffer.getvalue(), files, f"__{rank}_0.distcp")
            listed.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=chunk.size()))
            storage[MetadataIndex(fqn, torch.Size(offsets), len(listed) - 1)] = _StorageInfo(
                f"__{rank}_0.distcp", start, length
            )
        entries[fqn] = TensorStorageMetadata(TensorProperties(dtype=chunks[0][1].dtype), torch.Size(size[fqn]), listed)
    metadata = Metadata(state_dict_metadata=entries, planner_data={k: (k,) for k in entries}, storage_data=storage)
    for relative, blob in files.items():
        (folder / relative).write_bytes(bytes(blob))
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    return metadata


def test_a_tensor_in_several_chunks_loads(tmp_path: Path) -> None:
    full = torch.arange(12.0).reshape(4, 3)
    folder = tmp_path / "ckpt"
    _write(folder, {"w": [((0, 0), full[:2].clone()), ((2, 0), full[2:].clone())]}, {"w": (4, 3)})
    dcp_to_torch_save(str(folder), str(tmp_path / "ref.pt"))  # torch reads the hand-written folder
    assert torch.equal(torch.load(tmp_path / "ref.pt")["w"], full)
    record = tw.open(folder).records["w"]
    assert (record.shape, record.stride, record.storage, record.view_key, record.byte_range) == (
        (4, 3),
        (3, 1),
        None,
        None,
        None,
    )
    assert record.has_data and record.chunks is not None
    assert [(at, piece.shape) for at, piece in record.chunks] == [((0, 0), (2, 3)), ((2, 0), (2, 3))]
    assert torch.equal(tw.load(folder)["w"], full)


_FULL = torch.arange(24.0).reshape(4, 6)


@pytest.mark.parametrize(
    ("pieces", "fault"),
    [
        ([((0, 0), _FULL[:3]), ((2, 0), _FULL[2:])], "overlap"),
        ([((0, 0), _FULL[:2]), ((3, 0), _FULL[3:])], "gap"),
        ([((0, 0), _FULL[:2]), ((2, 3), _FULL[2:])], "reaches past"),
        ([((0, 0), _FULL[:2, :3]), ((2, 0), _FULL[2:])], "gap"),
    ],
    ids=["overlap", "gap", "out-of-bounds", "short-chunk"],
)
def test_chunks_that_do_not_tile_the_tensor_are_refused(
    tmp_path: Path, pieces: list[tuple[tuple[int, ...], torch.Tensor]], fault: str
) -> None:
    folder = tmp_path / "ckpt"
    _write(folder, {"w": [(at, t.clone()) for at, t in pieces]}, {"w": (4, 6)})
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(folder)
    assert info.value.code == "bad-dcp-metadata"
    assert "'w'" in info.value.message and fault in info.value.message


def test_a_chunk_of_another_shape_than_listed_is_refused(tmp_path: Path) -> None:
    """The chunk's archive holds a tensor of other sizes than .metadata lists for it (the tiling is right)."""
    folder = tmp_path / "ckpt"
    metadata = _write(folder, {"w": [((0, 0), _FULL[:2].clone()), ((2, 0), _FULL[2:].clone())]}, {"w": (4, 6)})
    entry = metadata.state_dict_metadata["w"]
    assert isinstance(entry, TensorStorageMetadata)
    entry.chunks[0] = ChunkStorageMetadata(offsets=torch.Size((0, 0)), sizes=torch.Size((1, 6)))
    entry.chunks.append(ChunkStorageMetadata(offsets=torch.Size((1, 0)), sizes=torch.Size((1, 6))))
    metadata.storage_data[MetadataIndex("w", torch.Size((1, 0)))] = metadata.storage_data[
        MetadataIndex("w", torch.Size((2, 0)), 1)
    ]
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(folder)
    assert info.value.code == "bad-dcp-metadata"
    assert "chunk [0, 0] of tensor 'w' is float32 [2, 6], but .metadata says float32 [1, 6]" in info.value.message


def test_a_single_hand_written_chunk_loads(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    _write(folder, {"w": [((0,), torch.arange(5, dtype=torch.int16))]}, {"w": (5,)})
    assert torch.equal(tw.load(folder)["w"], torch.arange(5, dtype=torch.int16))


def _rewrite(folder: Path, change: object) -> None:
    metadata = pickle.loads((folder / ".metadata").read_bytes())
    metadata.storage_data = {k: change(v) for k, v in metadata.storage_data.items()}  # type: ignore[operator]
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize(
    ("change", "cls", "code"),
    [
        (
            lambda v: dataclasses.replace(v, relative_path="../outside.distcp"),
            CorruptCheckpointError,
            "bad-dcp-metadata",
        ),
        (lambda v: dataclasses.replace(v, length=v.length + 10**6), CorruptCheckpointError, "bad-dcp-metadata"),
        (
            lambda v: dataclasses.replace(v, transform_descriptors=["zstd"]),
            UnsupportedCheckpointError,
            "unsupported-dcp-item",
        ),
    ],
    ids=["outside-the-folder", "outside-the-file", "transforms"],
)
def test_items_it_cannot_read_are_refused(tmp_path: Path, change: object, cls: type, code: str) -> None:
    folder = tmp_path / "ckpt"
    dcp.save({"w": torch.ones(3)}, checkpoint_id=str(folder))
    (tmp_path / "outside.distcp").write_bytes((folder / "__0_0.distcp").read_bytes())
    _rewrite(folder, change)
    with pytest.raises(cls) as info:
        tw.open(folder)
    assert info.value.code == code


def test_a_chunk_that_disagrees_with_the_metadata_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    metadata = _write(folder, {"w": [((0,), torch.ones(4))]}, {"w": (4,)})
    metadata.state_dict_metadata["w"] = dataclasses.replace(
        metadata.state_dict_metadata["w"], properties=TensorProperties(dtype=torch.float16)
    )
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(folder)
    assert info.value.code == "bad-dcp-metadata" and "float16" in info.value.message


def test_a_metadata_that_is_not_dcps_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    (tmp_path / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(tmp_path)
    assert info.value.code == "bad-dcp-metadata"


# ------------------------------------------------------------------------------------------------------------------
# Folders saved by several ranks: FSDP2 shards (uneven: a rank with one row, a rank with none), DTensors sharded on
# dim 1 and on a 2-D mesh
# ------------------------------------------------------------------------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    model[1].to(torch.bfloat16)
    model.register_buffer("steps", torch.arange(6, dtype=torch.int64))
    return model


def _extra(world: int) -> dict[str, torch.Tensor]:
    """The DTensors' full values (the same on every rank)."""
    g = torch.Generator().manual_seed(1)
    out = {"cols": torch.randn(3, 10, generator=g)}
    if world == 4:
        out["grid"] = torch.randint(-1000, 1000, (5, 6), dtype=torch.int32, generator=g)
    return out


def _save_sharded(rank: int, world: int, folder: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    model = _model()
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    state: dict[str, object] = {"model": model.state_dict(), "step": 5}
    mesh = init_device_mesh("cpu", (world,))
    full = _extra(world)
    state["cols"] = distribute_tensor(full["cols"], mesh, [Shard(1)])
    if world == 4:
        grid = init_device_mesh("cpu", (2, 2))
        state["grid"] = distribute_tensor(full["grid"], grid, [Shard(0), Shard(1)])
    dcp.save(state, checkpoint_id=folder)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """DCP folders saved by 2 and 4 FSDP2 ranks, with the reference ``dcp_to_torch_save`` file of each."""
    out = {}
    for world in (2, 4):
        folder = tmp_path_factory.mktemp(f"dcp{world}") / "ckpt"
        run_ranks(_save_sharded, world, str(folder))
        dcp_to_torch_save(str(folder), str(folder.parent / "ref.pt"))
        out[world] = folder
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_a_folder_saved_by_several_ranks_loads_bit_identical(sharded: dict[int, Path], world: int) -> None:
    folder = sharded[world]
    expected = _tensors(torch.load(folder.parent / "ref.pt", weights_only=True))
    ckpt = tw.open(folder)
    weight = ckpt.records["model.0.weight"]
    assert weight.shape == (7, 5) and weight.chunks is not None and len(weight.chunks) == world
    assert ckpt.records["model.steps"].chunks is None  # a buffer FSDP does not shard: one chunk, a plain record
    assert ckpt.records["cols"].chunks is not None and {at[0] for at, _ in ckpt.records["cols"].chunks} == {0}
    loaded = tw.load(folder)
    assert list(loaded) == list(expected) and set(expected) >= {"model.1.weight", "cols"}
    for name, want in expected.items():
        got = loaded[name]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        assert _bits(got) == _bits(want), name
    assert _bits(loaded["cols"]) == _bits(_extra(world)["cols"])
    mapped = tw.load(folder, mmap=True)  # pieces are read, not mapped: one new contiguous tensor each
    assert all(_bits(mapped[n]) == _bits(want) for n, want in expected.items())
    assert mapped["model.0.weight"].is_contiguous() and mapped["cols"].is_contiguous()
    if world == 4:
        assert torch.equal(loaded["grid"], _extra(4)["grid"]) and len(ckpt.records["grid"].chunks or ()) == 4
        part = torch.zeros(3, 3, dtype=torch.int32)  # a box across the 2-D mesh's four pieces
        fill([(p, part[s]) for p, s in tw_regions(ckpt.records["grid"], (1, 2), (3, 3))])
        assert torch.equal(part, _extra(4)["grid"][1:4, 2:5])


@pytest.mark.parametrize("world", [2, 4])
def test_load_into_a_plain_model_from_a_sharded_folder(sharded: dict[int, Path], world: int) -> None:
    target = _model()
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    report = tw.load_into(target, sharded[world])
    assert report.ok, report
    for name, value in _model().state_dict().items():
        got = target.state_dict()[name]
        assert got.dtype == value.dtype and torch.equal(got, value), name


def test_convert_diff_verify_and_scan_a_sharded_folder(sharded: dict[int, Path], tmp_path: Path) -> None:
    folder = sharded[4]
    expected = tw.load(folder.parent / "ref.pt")
    for out in (tmp_path / "st" / "out.safetensors", tmp_path / "pt" / "out.pt", tmp_path / "set"):
        to = "torch" if out.suffix == ".pt" else "safetensors"
        limit = 200 if out.name == "set" else "5GB"  # the folder: a sharded set of 3 shards
        report = tw.convert(folder, out, to=to, container="", max_shard_size=limit)
        assert report is not None
        back = tw.load(out)
        assert set(back) == set(expected)
        for name, want in expected.items():
            assert back[name].dtype == want.dtype and _bits(back[name]) == _bits(want), (out.name, name)
        assert tw.diff(folder, out).identical
    assert tw.diff(folder, sharded[2]).by_status("identical")  # the same model saved by 2 and by 4 ranks
    assert tw.verify(folder).ok
    scan = tw.scan(folder)
    assert scan.verdict == "clean", scan.findings
    assert scan.loads


def _load_resharded(rank: int, world: int, folder: str) -> dict[str, Any]:
    """On each rank: load the folder into a fresh FSDP2 model of ``world`` ranks; each rank's local shards and the
    full tensors after the load, and the bytes it read."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(123)  # other values than the folder's
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    model[1].to(torch.bfloat16)
    model.register_buffer("steps", torch.zeros(6, dtype=torch.int64))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    report = tw.load_into(model, folder)
    state = model.state_dict()
    local = {k: (v.to_local() if hasattr(v, "to_local") else v).clone() for k, v in state.items()}
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in state.items()}
    return {"ok": report.ok, "local": local, "full": full}


@pytest.mark.parametrize(("saved", "loaded"), [(2, 4), (4, 2)])
def test_a_sharded_folder_loads_into_an_fsdp2_model_of_another_world(
    sharded: dict[int, Path], saved: int, loaded: int
) -> None:
    """Saved on 2 ranks, loaded on 4 and the reverse: each rank's shards hold its rows of the saved tensors."""
    results = run_ranks(_load_resharded, loaded, str(sharded[saved]))
    want = _model().state_dict()
    for rank, result in enumerate(results):
        assert result["ok"], rank
        for name, value in want.items():
            got = result["full"][name]
            assert got.dtype == value.dtype and _bits(got) == _bits(value), (rank, name)
            if name != "steps":  # FSDP2 shards dim 0 in torch.chunk pieces
                pieces = torch.chunk(value, loaded)
                mine = pieces[rank] if rank < len(pieces) else value[:0]
                assert _bits(result["local"][name]) == _bits(mine), (rank, name)


def test_verify_checks_the_crc_of_every_chunk(tmp_path: Path) -> None:
    """A flipped bit in a ``.distcp`` file, inside a chunk's bytes: ``tw.load`` refuses it (``bad-crc``), and so does
    ``verify``, naming the member."""
    folder = tmp_path / "ckpt"
    dcp.save({"w": torch.randn(100, 100), "b": torch.randn(100)}, checkpoint_id=str(folder))
    clean = tw.verify(folder)
    assert clean.ok and any("match their recorded CRC-32" in c.detail for c in clean.checks)
    ref = tw.open(folder)["w"].storage
    assert ref is not None and ref.crc32 is not None
    data = bytearray(Path(ref.file).read_bytes())
    data[ref.offset + 500] ^= 1
    Path(ref.file).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as exc:
        tw.load(folder)
    assert exc.value.code == "bad-crc"
    report = tw.verify(folder)
    assert not report.ok
    assert [c.code for c in report.problems] == ["bad-crc"] and "archive/data/0" in report.problems[0].detail


def test_verify_counts_and_hashes_the_folders_files(tmp_path: Path) -> None:
    """A DCP folder is its files: verify counts them, and a sha256 manifest is checked against each of them (it
    used to look for the folder itself in the manifest)."""
    import hashlib

    folder = tmp_path / "ckpt"
    dcp.save({"w": torch.randn(10, 10)}, checkpoint_id=str(folder))
    files = sorted(p for p in folder.iterdir() if p.is_file())
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files))
    report = tw.verify(folder, manifest=manifest)
    assert report.ok, str(report)
    assert sorted(report.files) == sorted(str(p) for p in files)
    assert sum(c.name.startswith("sha256") for c in report.checks) == len(files)
