"""``tw.convert(..., to="dcp")`` and back: round trips bit for bit (dtypes, 0-dim, empty, views, nested names,
tied weights, extras), torch reading our folders (``dcp.load`` in one process and into an FSDP2 model on 2 ranks,
``dcp_to_torch_save``, plain ``pickle`` of ``.metadata``), atomic output, verification, and DCP folders as sources."""

from __future__ import annotations

import importlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as safetensors_torch
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import torchweights as tw
from _ranks import run_ranks
from _samples import random_bits
from torchweights.errors import WriteError

write_module = importlib.import_module("torchweights.tools.convert.write")

warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def _bits(t: torch.Tensor) -> bytes:
    t = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())
    return b"" if t.numel() == 0 else bytes(t.reshape(-1).view(torch.uint8).tolist())


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for name, t in a.items():
        u = b[name]
        assert (t.dtype, tuple(t.shape)) == (u.dtype, tuple(u.shape)), name
        assert _bits(t) == _bits(u), name


def _state() -> dict[str, torch.Tensor]:
    """fp32, bf16, fp16, int8, bool, 0-dim, empty, dotted (nested module) names."""
    return {
        "encoder.layers.0.weight": random_bits((6, 4), torch.float32, 1),
        "encoder.layers.0.bias": random_bits((6,), torch.bfloat16, 2),
        "decoder.proj.weight": random_bits((3, 5), torch.float16, 3),
        "codes": random_bits((7,), torch.int8, 4),
        "mask": torch.tensor([True, False, True]),
        "scale": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def _load_dcp(folder: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    into = {k: torch.zeros_like(v) for k, v in like.items()}
    dcp.load(into, checkpoint_id=str(folder), no_dist=True)
    return into


def test_safetensors_to_dcp_and_back_bit_for_bit(tmp_path: Path) -> None:
    sd = _state()
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    report = tw.convert(tmp_path / "m.safetensors", tmp_path / "ckpt", to="dcp")
    assert report.verified and report.to == "dcp" and report.tensors == len(sd)
    assert sorted(os.listdir(tmp_path / "ckpt")) == [".metadata", "__0_0.distcp"]
    _same(sd, _load_dcp(tmp_path / "ckpt", sd))  # torch reads it
    _same(sd, tw.load(tmp_path / "ckpt"))  # our reader too
    back = tw.convert(tmp_path / "ckpt", tmp_path / "back.safetensors")
    assert back.source_format == "dcp" and back.verified
    _same(sd, safetensors_torch.load_file(str(tmp_path / "back.safetensors")))


def test_pt_to_dcp_and_back_keeps_nesting_views_and_ties(tmp_path: Path) -> None:
    base = random_bits((4, 6), torch.float32, 7)
    emb = random_bits((5, 3), torch.bfloat16, 8)
    tree = {"enc": {"w": base[:, 1:5:2], "row": base[2]}, "emb": emb, "head": emb, "b": torch.ones(2, dtype=torch.half)}
    torch.save({"model": tree, "epoch": 3, "cfg": {"lr": 0.5, "sizes": [1, 2]}}, tmp_path / "m.pt")
    report = tw.convert(tmp_path / "m.pt", tmp_path / "ckpt", to="dcp", container="model")
    assert report.aliases == {"head": "emb"} and report.extras_file is None
    with open(tmp_path / "ckpt" / ".metadata", "rb") as fh:
        meta = pickle.load(fh)
    assert meta.planner_data["enc.w"] == ("enc", "w") and meta.planner_data["epoch"] == ("epoch",)
    assert meta.storage_data  # both tied names point at one stored copy
    places = {i.fqn: (s.relative_path, s.offset, s.length) for i, s in meta.storage_data.items()}
    assert places["head"] == places["emb"]
    dcp_to_torch_save(str(tmp_path / "ckpt"), str(tmp_path / "full.pt"))
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert full["epoch"] == 3 and full["cfg"] == {"lr": 0.5, "sizes": [1, 2]}  # extras as items, nested again
    _same({"w": tree["enc"]["w"], "row": tree["enc"]["row"]}, full["enc"])
    _same({"emb": emb, "head": emb}, {"emb": full["emb"], "head": full["head"]})
    loaded = tw.load(tmp_path / "ckpt")
    assert loaded["head"].untyped_storage().data_ptr() == loaded["emb"].untyped_storage().data_ptr()  # tied again
    tw.convert(tmp_path / "ckpt", tmp_path / "back.pt", to="torch")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    _same({"enc.w": tree["enc"]["w"], "enc.row": tree["enc"]["row"], "emb": emb, "head": emb, "b": tree["b"]}, back)


def test_metadata_matches_what_torch_writes(tmp_path: Path) -> None:
    sd = {"a": random_bits((2, 3), torch.float32, 1), "n.c": torch.tensor(3, dtype=torch.int8)}
    dcp.save(sd, checkpoint_id=str(tmp_path / "theirs"), no_dist=True)
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    tw.convert(tmp_path / "m.safetensors", tmp_path / "ours", to="dcp")
    ours, theirs = (pickle.loads((tmp_path / f / ".metadata").read_bytes()) for f in ("ours", "theirs"))
    assert ours.state_dict_metadata == theirs.state_dict_metadata  # dtypes, sizes, chunks, properties
    assert ours.planner_data == theirs.planner_data and ours.version == theirs.version
    assert set(ours.storage_data) == set(theirs.storage_data)  # MetadataIndex(fqn, offsets, index)
    for index, info in ours.storage_data.items():
        assert info.relative_path == "__0_0.distcp" and info.transform_descriptors is None
        with open(tmp_path / "ours" / info.relative_path, "rb") as fh:
            fh.seek(info.offset)
            alone = torch.load(io.BytesIO(fh.read(info.length)), weights_only=True)  # each chunk a whole archive
        _same({index.fqn: sd[index.fqn]}, {index.fqn: alone})


def test_cast_select_and_shards(tmp_path: Path) -> None:
    sd = _state()
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    report = tw.convert(
        tmp_path / "m.safetensors",
        tmp_path / "ckpt",
        to="dcp",
        dtype="bfloat16",
        select="encoder.*",
        max_shard_size=40,
    )
    assert report.cast == 1 and report.tensors == 2  # the bias is bfloat16 already
    assert sorted(os.listdir(tmp_path / "ckpt")) == [".metadata", "__0_0.distcp", "__0_1.distcp"]
    want = {k: v.to(torch.bfloat16) for k, v in sd.items() if k.startswith("encoder.")}
    _same(want, _load_dcp(tmp_path / "ckpt", want))


def test_refuses_existing_force_replaces_and_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = _state()
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "m.safetensors", out, to="dcp")
    assert info.value.code == "output-exists" and (out / "old.txt").exists()
    tw.convert(tmp_path / "m.safetensors", out, to="dcp", force=True)
    assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp"]  # the old folder is gone, not merged
    assert [n for n in os.listdir(tmp_path) if n != "m.safetensors" and n != "ckpt"] == []  # no leftovers

    def boom(*args: Any) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write_module.dcp_writer, "metadata_pickle", boom)
    with pytest.raises(WriteError):
        tw.convert(tmp_path / "m.safetensors", tmp_path / "deep" / "new", to="dcp")
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "m.safetensors"]  # no folder, no temporary, no parent
    with pytest.raises(WriteError):
        tw.convert(tmp_path / "m.safetensors", out, to="dcp", force=True)
    assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp"]  # a failed replace keeps the old folder
    _same(sd, tw.load(out))


def test_refuses_writing_over_its_source(tmp_path: Path) -> None:
    safetensors_torch.save_file(_state(), str(tmp_path / "m.safetensors"))
    tw.convert(tmp_path / "m.safetensors", tmp_path / "ckpt", to="dcp")
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "ckpt", tmp_path / "ckpt", to="dcp", force=True)
    assert info.value.code == "output-exists" and "part of the source" in str(info.value)
    assert sorted(os.listdir(tmp_path / "ckpt")) == [".metadata", "__0_0.distcp"]


def test_verify_rereads_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = _state()
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    real = write_module.chunk_source

    def damaged(item: Any) -> Any:
        source = real(item)
        if item.name != "decoder.proj.weight":
            return source

        def pieces() -> Any:
            for piece in source():
                piece = bytearray(piece)
                piece[0] ^= 1
                yield piece

        return pieces

    monkeypatch.setattr(write_module, "chunk_source", damaged)
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "m.safetensors", tmp_path / "ckpt", to="dcp")
    assert info.value.code == "verify-failed" and "decoder.proj.weight" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
    report = tw.convert(tmp_path / "m.safetensors", tmp_path / "ckpt", to="dcp", verify=False)
    assert not report.verified and (tmp_path / "ckpt" / ".metadata").exists()  # the damage is not caught


def test_dcp_saved_by_torch_converts_to_safetensors_and_shards(tmp_path: Path) -> None:
    sd = _state()
    dcp.save({"model": sd, "step": 7}, checkpoint_id=str(tmp_path / "theirs"), no_dist=True)
    tw.convert(tmp_path / "theirs", tmp_path / "one.safetensors", container="model")
    _same(sd, safetensors_torch.load_file(str(tmp_path / "one.safetensors")))
    report = tw.convert(tmp_path / "theirs", tmp_path / "set", max_shard_size=100, container="model")
    assert any(f.endswith("model.safetensors.index.json") for f in report.files)
    _same(sd, tw.load(tmp_path / "set" / "model.safetensors.index.json"))


def _fsdp_load(rank: int, world: int, folder: str) -> dict[str, bytes]:  # pragma: no cover - runs in a rank
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=folder)
    return {name: _bits(p.full_tensor()) for name, p in model.state_dict().items()}


def test_fsdp2_model_loads_our_folder_on_two_ranks(tmp_path: Path) -> None:
    sd = {
        "0.weight": random_bits((6, 8), torch.float32, 1),
        "0.bias": random_bits((6,), torch.float32, 2),
        "2.weight": random_bits((4, 6), torch.float32, 3),
        "2.bias": random_bits((4,), torch.float32, 4),
    }
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    tw.convert(tmp_path / "m.safetensors", tmp_path / "ckpt", to="dcp")
    results = run_ranks(_fsdp_load, 2, str(tmp_path / "ckpt"))
    want = {name: _bits(t) for name, t in sd.items()}
    assert results == [want, want]
