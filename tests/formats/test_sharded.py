"""The sharded-checkpoint reader: entry points, the merge, and every hardening rule of the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import torchweights.formats
from torchweights.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    ResourceLimitError,
    ShardIndexError,
    TorchWeightsError,
    UnsafeCheckpointError,
)
from torchweights.formats import ReadOptions
from torchweights.formats import safetensors as safetensors_reader
from torchweights.formats.sharded import read
from torchweights.limits import Limits
from torchweights.records import Checkpoint

OPTIONS = ReadOptions()
INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


# ----------------------------------------------------------------------------------------------------- helpers


def make_tensors(names: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, i + 1, generator=gen) for i, name in enumerate(names)}


def write_shard(path: Path, tensors: Mapping[str, torch.Tensor], kind: str = "safetensors") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "safetensors":
        save_file(dict(tensors), str(path), metadata={"format": "pt"})
    elif kind == "zip":
        torch.save(dict(tensors), path)
    elif kind == "legacy":
        torch.save(dict(tensors), path, _use_new_zipfile_serialization=False)
    else:  # pragma: no cover
        raise ValueError(kind)


def write_index(
    folder: Path, weight_map: Mapping[str, Any], name: str = INDEX, metadata: Any = None, **extra: Any
) -> Path:
    index: dict[str, Any] = {"metadata": {"total_size": 123} if metadata is None else metadata}
    index.update(extra)
    index["weight_map"] = dict(weight_map)
    path = folder / name
    path.write_text(json.dumps(index, indent=2))
    return path


def make_set(
    folder: Path,
    shards: Mapping[str, Mapping[str, torch.Tensor]],
    kind: str | Mapping[str, str] = "safetensors",
    index_name: str = INDEX,
) -> Path:
    """Write shards and an index that maps every tensor to the shard holding it."""
    weight_map: dict[str, str] = {}
    for shard_name, tensors in shards.items():
        shard_kind = kind if isinstance(kind, str) else kind[shard_name]
        write_shard(folder / shard_name, tensors, shard_kind)
        weight_map.update(dict.fromkeys(tensors, shard_name))
    return write_index(folder, dict(sorted(weight_map.items())), index_name)


def two_shards() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "model-00001-of-00002.safetensors": make_tensors(["embed.weight", "layers.0.w", "layers.0.b"], seed=1),
        "model-00002-of-00002.safetensors": make_tensors(["layers.1.w", "layers.1.b", "head.weight"], seed=2),
    }


def file_bytes(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(end - start)


def shard_error(path: Path | str, options: ReadOptions = OPTIONS) -> ShardIndexError:
    with pytest.raises(ShardIndexError) as info:
        read(str(path), options)
    return info.value


def assert_error(err: TorchWeightsError, cls: type[TorchWeightsError], code: str, *needles: str) -> None:
    assert type(err) is cls, (type(err), str(err))
    assert err.code == code, str(err)
    for needle in needles:
        assert needle in err.message, (needle, err.message)


# ----------------------------------------------------------------------------------------------------- reading


def test_safetensors_set_from_index_path(tmp_path: Path) -> None:
    shards = two_shards()
    index = make_set(tmp_path, shards)
    ckpt = read(str(index), OPTIONS)
    names = list(shards)
    assert ckpt.path == str(index)
    assert ckpt.format == "sharded-safetensors"
    assert ckpt.files == (str(index), *(str(tmp_path / n) for n in names))
    in_file_order = [t for n in names for t in safetensors_reader.read(str(tmp_path / n), OPTIONS).records]
    assert list(ckpt.records) == in_file_order  # shard order, then file order within each shard
    assert ckpt.metadata["index"] == {"total_size": 123}
    assert ckpt.metadata["shards"] == {n: 3 for n in names}
    assert ckpt.metadata["shard_formats"] == dict.fromkeys(names, "safetensors")
    assert ckpt.metadata["shard_metadata"][names[0]]["safetensors"] == {"format": "pt"}
    assert ckpt.metadata["unindexed"] == []
    assert ckpt.warnings == []
    for shard_name, tensors in shards.items():
        for name, tensor in tensors.items():
            record = ckpt[name]
            assert record.storage is not None
            assert record.storage.file == str(tmp_path / shard_name)
            assert record.storage.key == f"{shard_name}:{name}"
            assert record.shape == tuple(tensor.shape)
            assert record.byte_range is not None
            assert file_bytes(record.storage.file, *record.byte_range) == tensor.numpy().tobytes()


def test_folder_entry_point(tmp_path: Path) -> None:
    index = make_set(tmp_path, two_shards())
    by_folder = read(str(tmp_path), OPTIONS)
    by_index = read(str(index), OPTIONS)
    assert by_folder.path == str(index)
    assert by_folder.files == by_index.files
    assert by_folder.records == by_index.records


def test_relative_index_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_set(tmp_path, two_shards())
    monkeypatch.chdir(tmp_path)
    ckpt = read(INDEX, OPTIONS)
    assert len(ckpt) == 6
    assert ckpt.files[1] == os.path.join(".", "model-00001-of-00002.safetensors")


def test_storage_keys_unique_across_shards(tmp_path: Path) -> None:
    """Both shards hold a storage keyed '0' (torch files number storages from 0); merged keys must not collide."""
    shards = {
        "a.bin": {"x": torch.ones(2), "y": torch.ones(3)},
        "b.bin": {"z": torch.zeros(2)},
    }
    ckpt = read(str(make_set(tmp_path, shards, kind="zip", index_name=BIN_INDEX)), OPTIONS)
    keys = [r.storage.key for r in ckpt.records.values() if r.storage]
    assert len(set(keys)) == len(keys) == 3
    assert all(k.startswith(("a.bin:", "b.bin:")) for k in keys)


def test_tied_tensors_keep_sharing_a_storage_key(tmp_path: Path) -> None:
    base = torch.arange(6.0)
    shards = {"a.bin": {"w": base, "w_view": base[2:]}, "b.bin": {"z": torch.zeros(2)}}
    ckpt = read(str(make_set(tmp_path, shards, kind="zip", index_name=BIN_INDEX)), OPTIONS)
    assert ckpt["w"].storage is not None and ckpt["w_view"].storage is not None
    assert ckpt["w"].storage.key == ckpt["w_view"].storage.key
    assert ckpt["w"].storage.key != ckpt["z"].storage.key  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_torch_bin_set(tmp_path: Path, kind: str) -> None:
    shards = {
        "pytorch_model-00001-of-00002.bin": make_tensors(["a.weight", "a.bias"], seed=3),
        "pytorch_model-00002-of-00002.bin": make_tensors(["b.weight"], seed=4),
    }
    index = make_set(tmp_path, shards, kind=kind, index_name=BIN_INDEX)
    ckpt = read(str(tmp_path), OPTIONS)
    assert ckpt.path == str(index)
    assert ckpt.format == "sharded-torch"
    assert set(ckpt.records) == {"a.weight", "a.bias", "b.weight"}
    assert ckpt.globals == tuple(sorted(set(ckpt.globals)))
    assert ckpt.metadata["shards"] == {"pytorch_model-00001-of-00002.bin": 2, "pytorch_model-00002-of-00002.bin": 1}
    for tensors in shards.values():
        for name, tensor in tensors.items():
            assert ckpt[name].shape == tuple(tensor.shape)
            assert ckpt[name].dtype == "float32"


def test_mixed_set_is_plain_sharded(tmp_path: Path) -> None:
    shards = {"part-1.safetensors": make_tensors(["a"]), "part-2.bin": make_tensors(["b"])}
    ckpt = read(
        str(make_set(tmp_path, shards, kind={"part-1.safetensors": "safetensors", "part-2.bin": "zip"})), OPTIONS
    )
    assert ckpt.format == "sharded"
    assert ckpt.metadata["shard_formats"] == {"part-1.safetensors": "safetensors", "part-2.bin": "torch-zip"}


def test_public_open_on_a_folder(tmp_path: Path) -> None:
    import torchweights.api

    index = make_set(tmp_path, two_shards())
    ckpt = torchweights.api.open(tmp_path)
    assert ckpt.path == str(index)
    assert ckpt.format == "sharded-safetensors"


def test_shards_in_natural_order(tmp_path: Path) -> None:
    shards = {f"model-{i}.safetensors": make_tensors([f"t{i}"]) for i in (10, 2, 1)}
    ckpt = read(str(make_set(tmp_path, shards)), OPTIONS)
    assert list(ckpt.metadata["shards"]) == ["model-1.safetensors", "model-2.safetensors", "model-10.safetensors"]
    assert list(ckpt.records) == ["t1", "t2", "t10"]


def test_shards_in_a_subfolder(tmp_path: Path) -> None:
    shards = {"shards/a.safetensors": make_tensors(["x"]), "shards/b.safetensors": make_tensors(["y"])}
    ckpt = read(str(make_set(tmp_path, shards)), OPTIONS)
    assert set(ckpt.records) == {"x", "y"}


def test_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "blobs").mkdir()
    write_shard(tmp_path / "blobs" / "abc123", make_tensors(["x"]))
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "blobs" / "abc123")
    write_index(tmp_path, {"x": "model.safetensors"})
    assert list(read(str(tmp_path), OPTIONS).records) == ["x"]


def test_no_index_metadata(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", make_tensors(["x"]))
    (tmp_path / INDEX).write_text(json.dumps({"weight_map": {"x": "a.safetensors"}}))
    assert read(str(tmp_path), OPTIONS).metadata["index"] == {}


def test_unindexed_tensors_are_kept_and_reported(tmp_path: Path) -> None:
    extra = [f"layers.{i}.rotary.inv_freq" for i in range(12)]
    write_shard(tmp_path / "a.safetensors", make_tensors(["x", *extra]))
    write_shard(tmp_path / "b.safetensors", make_tensors(["y", "stray"]))
    write_index(tmp_path, {"x": "a.safetensors", "y": "b.safetensors"})
    ckpt = read(str(tmp_path), OPTIONS)
    assert set(ckpt.records) == {"x", "y", "stray", *extra}
    assert sorted(ckpt.metadata["unindexed"]) == sorted([*extra, "stray"])
    assert ckpt.metadata["unindexed"][-1] == "stray"  # shard order
    assert len(ckpt.warnings) == 1
    warning = ckpt.warnings[0]
    assert "\n" not in warning
    assert "13 tensors" in warning
    assert "'layers.{0..11}.rotary.inv_freq'" in warning
    assert "'stray'" in warning


# ----------------------------------------------------------------------------------------------------- entry errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        read(str(tmp_path / "nope"), OPTIONS)


def test_folder_without_index(tmp_path: Path) -> None:
    write_shard(tmp_path / "model.safetensors", make_tensors(["x"]))
    assert_error(shard_error(tmp_path), ShardIndexError, "shard-no-index", "no *.index.json", str(tmp_path))


def test_folder_with_several_indexes(tmp_path: Path) -> None:
    make_set(tmp_path, two_shards())
    write_index(tmp_path, {"x": "a.bin"}, name=BIN_INDEX)
    err = shard_error(tmp_path)
    assert_error(err, ShardIndexError, "shard-many-indexes", f"'{INDEX}'", f"'{BIN_INDEX}'", "Pass one index file")


def test_index_larger_than_limit(tmp_path: Path) -> None:
    index = make_set(tmp_path, two_shards())
    options = ReadOptions(limits=Limits(max_index_bytes=64))
    with pytest.raises(ResourceLimitError) as info:
        read(str(index), options)
    assert_error(info.value, ResourceLimitError, "limit-index-size", "max_index_bytes", "64 bytes")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"weight_map": ', "not valid UTF-8 JSON"),
        (b'{"weight_map": {"x": "a\xff"}}', "not valid UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"metadata": {}}', "no 'weight_map'"),
        (b'{"weight_map": ["a.safetensors"]}', "no 'weight_map'"),
        (b'{"weight_map": {"x": 3, "y": null}}', "maps 'x', 'y' to something other than a file name"),
        (b'{"weight_map": {}}', "weight_map is empty"),
        (b'{"weight_map": {"x": "a.safetensors"}, "metadata": [1]}', "'metadata' is not a JSON object"),
        (b'{"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}}', "lists 'x' more than once"),
        (b'{"weight_map": {"x": "a.safetensors"}, "weight_map": {"x": "a.safetensors"}}', "'weight_map' more than"),
    ],
)
def test_bad_index(tmp_path: Path, content: bytes, needle: str) -> None:
    write_shard(tmp_path / "a.safetensors", make_tensors(["x"]))
    (tmp_path / INDEX).write_bytes(content)
    assert_error(shard_error(tmp_path / INDEX), ShardIndexError, "shard-bad-index", needle, "re-download the index")


# ----------------------------------------------------------------------------------------------------- path escapes


@pytest.mark.parametrize(
    ("shard_name", "needle"),
    [
        ("/etc/passwd", "absolute path"),
        ("../outside.safetensors", "'..'"),
        ("sub/../../outside.safetensors", "'..'"),
        ("sub\\model.safetensors", "backslash"),
        ("C:/weights/model.safetensors", "drive letter"),
        ("c:model.safetensors", "drive letter"),
        ("", "empty file name"),
        ("a\x00b", "NUL"),
    ],
)
def test_unsafe_shard_names(tmp_path: Path, shard_name: str, needle: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    write_shard(tmp_path / "outside.safetensors", make_tensors(["x"]))
    write_shard(folder / "ok.safetensors", make_tensors(["y"]))
    write_index(folder, {"x": shard_name, "y": "ok.safetensors"})
    err = shard_error(folder)
    shown = shard_name if shard_name.isprintable() else repr(shard_name)[1:-1]
    assert_error(err, ShardIndexError, "shard-path-escape", f"shard '{shown}'", needle)
    assert "1 tensor" in err.message


def test_symlink_escaping_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    write_shard(tmp_path / "secret.safetensors", make_tensors(["x"]))
    (folder / "model-1.safetensors").symlink_to(tmp_path / "secret.safetensors")
    write_index(folder, {"x": "model-1.safetensors"})
    err = shard_error(folder)
    assert_error(
        err,
        ShardIndexError,
        "shard-path-escape",
        "'model-1.safetensors'",
        "outside the index's folder",
        "through a symbolic link",
    )


def test_symlinked_subfolder_escaping(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_shard(tmp_path / "elsewhere" / "a.safetensors", make_tensors(["x"]))
    (folder / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    write_index(folder, {"x": "sub/a.safetensors"})
    assert shard_error(folder).code == "shard-path-escape"


def make_hub_cache(cache: Path, repo: str, revision: str = "abc123") -> Path:
    """A Hugging Face hub cache repository: shards in blobs/, the snapshot holding symbolic links to them."""
    snapshot = cache / repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (cache / repo / "blobs").mkdir()
    weight_map = {}
    for i, (name, tensors) in enumerate(two_shards().items()):
        write_shard(cache / repo / "blobs" / f"blob{i}", tensors)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
        weight_map.update(dict.fromkeys(tensors, name))
    index_blob = cache / repo / "blobs" / "index-blob"
    index_blob.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (snapshot / INDEX).symlink_to(Path("..", "..", "blobs", "index-blob"))
    return snapshot


def test_hugging_face_cache_snapshot(tmp_path: Path) -> None:
    snapshot = make_hub_cache(tmp_path, "models--org--model")
    ckpt = read(str(snapshot), OPTIONS)
    assert len(ckpt) == 6
    assert ckpt.files[1] == str(snapshot / "model-00001-of-00002.safetensors")


def test_hugging_face_cache_link_into_another_repository(tmp_path: Path) -> None:
    snapshot = make_hub_cache(tmp_path, "models--org--model")
    make_hub_cache(tmp_path, "models--evil--other")
    link = snapshot / "model-00002-of-00002.safetensors"
    link.unlink()
    link.symlink_to(Path("..", "..", "..", "models--evil--other", "blobs", "blob1"))
    assert shard_error(snapshot).code == "shard-path-escape"


def test_shard_name_naming_the_folder(tmp_path: Path) -> None:
    write_index(tmp_path, {"x": "."})
    assert shard_error(tmp_path).code == "shard-path-escape"


def test_escapes_and_missing_reported_together(tmp_path: Path) -> None:
    write_index(tmp_path, {"x": "../up.safetensors", "y": "gone.safetensors"})
    err = shard_error(tmp_path)
    assert err.code == "shard-path-escape"
    assert "[shard-path-escape]" in err.message and "[shard-missing]" in err.message


# ----------------------------------------------------------------------------------------------------- index vs shards


def test_missing_shards(tmp_path: Path) -> None:
    shards = {f"model-0000{i}-of-00004.safetensors": make_tensors([f"l{i}.w", f"l{i}.b"]) for i in range(1, 5)}
    make_set(tmp_path, shards)
    os.remove(tmp_path / "model-00002-of-00004.safetensors")
    os.remove(tmp_path / "model-00004-of-00004.safetensors")
    err = shard_error(tmp_path)
    assert_error(
        err,
        ShardIndexError,
        "shard-missing",
        "2 of 4 shards",
        "'model-00002-of-00004.safetensors' (2 tensors)",
        "'model-00004-of-00004.safetensors' (2 tensors)",
        "incomplete",
    )
    assert "00001" not in err.message


def test_tensor_missing_from_its_shard(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", make_tensors(["x"]))
    write_shard(tmp_path / "b.safetensors", make_tensors(["y", "moved"]))
    write_index(
        tmp_path,
        {"x": "a.safetensors", "ghost.weight": "a.safetensors", "moved": "a.safetensors", "y": "b.safetensors"},
    )
    err = shard_error(tmp_path)
    assert_error(
        err,
        ShardIndexError,
        "shard-tensor-missing",
        "2 tensors",
        "'ghost.weight' (indexed in 'a.safetensors', in no shard)",
        "'moved' (indexed in 'a.safetensors', found in 'b.safetensors')",
        "re-download the whole checkpoint",
    )


def test_tensor_in_two_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", make_tensors(["x", "shared.weight"], seed=1))
    write_shard(tmp_path / "b.safetensors", make_tensors(["y", "shared.weight"], seed=2))
    write_index(tmp_path, {"x": "a.safetensors", "y": "b.safetensors", "shared.weight": "a.safetensors"})
    err = shard_error(tmp_path)
    assert_error(
        err,
        ShardIndexError,
        "shard-duplicate-tensor",
        "'shared.weight' (in 'a.safetensors', 'b.safetensors')",
        "more than one shard",
    )


def test_many_problems_are_folded(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.safetensors", make_tensors(["x"]))
    write_index(tmp_path, {"x": "a.safetensors", **{f"ghost.{i}": "a.safetensors" for i in range(20)}})
    err = shard_error(tmp_path)
    assert err.code == "shard-tensor-missing"
    assert "20 tensors" in err.message and "… and 12 more" in err.message


def test_corrupt_shard_keeps_its_error_and_names_the_shard(tmp_path: Path) -> None:
    make_set(tmp_path, two_shards())
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpointError) as info:
        read(str(tmp_path), OPTIONS)
    err = info.value
    assert err.code == "truncated"
    assert "shard 'model-00002-of-00002.safetensors'" in err.message
    assert err.path == str(shard)


class _RunsCode:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned",))


def test_unsafe_shard_keeps_the_names_it_refused(tmp_path: Path) -> None:
    """An error from a shard is the shard's error with context: every attribute (here the refused names) kept."""
    import pickle

    shards = {
        "pytorch_model-00001-of-00002.bin": make_tensors(["a"]),
        "pytorch_model-00002-of-00002.bin": make_tensors(["b"]),
    }
    make_set(tmp_path, shards, kind="zip", index_name=BIN_INDEX)
    bad = tmp_path / "pytorch_model-00002-of-00002.bin"
    bad.write_bytes(pickle.dumps({"b": _RunsCode()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError) as info:
        read(str(tmp_path / BIN_INDEX), OPTIONS)
    err = info.value
    assert err.code == "unsafe-global"
    assert err.names == (f"{os.system.__module__}.system",), err.names
    assert err.message.startswith("shard 'pytorch_model-00002-of-00002.bin' of ")
    assert err.path == str(bad)
    assert isinstance(err.__cause__, UnsafeCheckpointError) and err.__cause__.names == err.names


def test_shard_error_keeps_every_attribute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attributes a reader's error carries (a LoadError's report, a path it named) survive the shard's context."""
    from torchweights.errors import LoadError

    make_set(tmp_path, two_shards())
    report = object()

    def failing(path: str, options: ReadOptions) -> Checkpoint:
        raise LoadError("it does not fit", report=report, code="shape-mismatch", path="/elsewhere")

    monkeypatch.setattr(torchweights.formats, "open_path", failing)
    with pytest.raises(LoadError) as info:
        read(str(tmp_path), OPTIONS)
    err = info.value
    assert err.report is report and err.code == "shape-mismatch" and err.path == "/elsewhere"
    assert err.message.startswith("shard 'model-00001-of-00002.safetensors' of ")
    assert err.message.endswith(": it does not fit") and err.message.count("shape-mismatch") == 0
    assert str(err) == f"[shape-mismatch] {err.message}" and err.args == (err.message,)


def test_shard_that_is_an_lfs_pointer(tmp_path: Path) -> None:
    from torchweights.errors import NotACheckpointError

    make_set(tmp_path, two_shards())
    (tmp_path / "model-00001-of-00002.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123456\n"
    )
    with pytest.raises(NotACheckpointError) as info:
        read(str(tmp_path), OPTIONS)
    assert info.value.code == "lfs-pointer"
    assert info.value.message.startswith("shard 'model-00001-of-00002.safetensors' of ")


def test_shard_limits_are_honoured(tmp_path: Path) -> None:
    make_set(tmp_path, two_shards())
    with pytest.raises(ResourceLimitError) as info:
        read(str(tmp_path), ReadOptions(limits=Limits(max_header_bytes=32)))
    assert info.value.code == "limit-header-size"


def test_index_naming_another_index(tmp_path: Path) -> None:
    make_set(tmp_path / "inner", two_shards())
    write_index(tmp_path, {"x": f"inner/{INDEX}"}, name="outer.index.json")
    err = shard_error(tmp_path / "outer.index.json")
    assert_error(err, ShardIndexError, "shard-nested-index", "Nested indexes are not supported")


def test_index_naming_itself(tmp_path: Path) -> None:
    write_index(tmp_path, {"x": INDEX})
    assert shard_error(tmp_path).code == "shard-nested-index"


def test_read_works_without_torch(tmp_path: Path) -> None:
    make_set(tmp_path, two_shards())
    code = (
        "import sys; from torchweights.formats.sharded import read; from torchweights.formats import ReadOptions; "
        f"c = read({str(tmp_path)!r}, ReadOptions()); assert len(c) == 6, c; "
        "assert 'torch' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
