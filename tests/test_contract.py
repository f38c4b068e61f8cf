"""One contract for every reader: the same state dicts saved in each format come back identical.

Names, dtypes and shapes from ``tw.open`` (no bytes read), and bit-identical tensors from ``tw.load``; for the
torch formats also strides, storage offsets and storage sharing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from _samples import random_bits
from torchweights import api, dtypes

ALL_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.bool,
    torch.complex128,
    torch.complex64,
    torch.complex32,
]
if hasattr(torch, "float8_e8m0fnu"):
    ALL_DTYPES.append(torch.float8_e8m0fnu)


def _bits(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    if t.numel() == 0:
        return b""
    return bytes(t.reshape(-1).view(torch.uint8).tolist())


def case_every_dtype() -> dict[str, object]:
    return {f"t_{str(d).removeprefix('torch.')}": random_bits((3, 5), d, i) for i, d in enumerate(ALL_DTYPES)}


def case_odd_shapes() -> dict[str, object]:
    return {
        "scalar": torch.tensor(3.5),
        "scalar_int": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 4),
        "empty3": torch.empty(2, 0, 3, dtype=torch.float16),
        "one": torch.ones(1),
        "big_rank": random_bits((1, 2, 1, 3, 1, 2), torch.float32, 1),
    }


def case_views() -> dict[str, object]:
    base = random_bits((6, 8), torch.float32, 2)
    return {
        "base": base,
        "column": base[:, 3],
        "row": base[2],
        "transposed": base.t(),
        "strided": base[1::2, ::3],
        "offset_flat": base.view(-1)[5:17],
    }


def case_parameters_and_nesting() -> dict[str, object]:
    lin = torch.nn.Linear(4, 3)
    return {
        "state_dict": {
            "encoder.weight": torch.nn.Parameter(random_bits((3, 4), torch.float32, 3)),
            "encoder.bias": lin.bias,
        },
        "layers": [{"w": random_bits((2, 2), torch.bfloat16, 4)}, {"w": random_bits((2, 2), torch.bfloat16, 5)}],
        "epoch": 9,
        "hyper_parameters": {"lr": 0.1, "name": "run"},
    }


def case_shared() -> dict[str, object]:
    emb = random_bits((10, 4), torch.float16, 6)
    return {"embed.weight": emb, "head.weight": emb, "half": emb[5:]}


CASES: dict[str, Callable[[], dict[str, object]]] = {
    "every_dtype": case_every_dtype,
    "odd_shapes": case_odd_shapes,
    "views": case_views,
    "parameters_and_nesting": case_parameters_and_nesting,
    "shared": case_shared,
}


def _flat(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """The dotted-name view torchweights promises: every tensor anywhere, list indices as '.0'."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


# ----- writers: each returns the path to open and the tensors it promises -----------------------------------


def _safetensors_ok(t: torch.Tensor) -> bool:
    return dtypes.get(str(t.dtype)).safetensors is not None


def _st_tensors(obj: dict[str, object]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in _flat(obj).items() if _safetensors_ok(v)}


def write_torch_zip(obj: dict[str, object], tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp / "ckpt.pt"
    torch.save(obj, path)
    return path, _flat(obj)


def write_torch_zip_protocol4(obj: dict[str, object], tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp / "weird_root_name.bin"
    torch.save(obj, path, pickle_protocol=4)
    return path, _flat(obj)


def write_torch_legacy(obj: dict[str, object], tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    # torch's legacy writer saves dtypes without a legacy storage class (fp8, uint16...) in a form torch itself
    # cannot read back; keep the ones it can.
    legacy_ok = {str(d) for d in ALL_DTYPES if dtypes.get(str(d)).storage_class}
    flat = _flat(obj)
    if any(str(t.dtype) not in legacy_ok for t in flat.values()):
        obj = {k: v for k, v in flat.items() if str(v.dtype) in legacy_ok}
        flat = _flat(obj)
    path = tmp / "legacy.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path, flat


def write_safetensors(obj: dict[str, object], tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = _st_tensors(obj)
    path = tmp / "model.safetensors"
    safetensors_torch.save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def write_sharded_safetensors(obj: dict[str, object], tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = _st_tensors(obj)
    names = list(tensors)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(shards):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        safetensors_torch.save_file({n: tensors[n] for n in part}, str(tmp / shard))
        weight_map.update(dict.fromkeys(part, shard))
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tmp, tensors


def write_sharded_torch(obj: dict[str, object], tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {k: v.detach().clone() for k, v in _flat(obj).items()}
    names = list(tensors)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: tensors[n] for n in part}, tmp / shard)
        weight_map.update(dict.fromkeys(part, shard))
    index = tmp / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index, tensors


WRITERS = {
    "torch-zip": write_torch_zip,
    "torch-zip-protocol4": write_torch_zip_protocol4,
    "torch-legacy": write_torch_legacy,
    "safetensors": write_safetensors,
    "sharded-safetensors": write_sharded_safetensors,
    "sharded-torch": write_sharded_torch,
}
KEEPS_LAYOUT = {"torch-zip", "torch-zip-protocol4", "torch-legacy"}
KEEPS_ORDER = KEEPS_LAYOUT | {"sharded-torch"}  # safetensors orders tensors by data offset, not by insertion


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("case", list(CASES))
def test_same_tensors_come_back(case: str, writer: str, tmp_path: Path) -> None:
    path, expected = WRITERS[writer](CASES[case](), tmp_path)
    ckpt = api.open(path)
    assert isinstance(ckpt, tw.Checkpoint)
    if writer in KEEPS_ORDER:
        assert list(ckpt.records) == list(expected), "names and order"
    else:
        assert sorted(ckpt.records) == sorted(expected), "names"
    for name, tensor in expected.items():
        record = ckpt.records[name]
        assert record.dtype == str(tensor.dtype).removeprefix("torch."), name
        assert record.shape == tuple(tensor.shape), name
        assert record.nbytes == tensor.numel() * tensor.element_size(), name

    loaded = api.load(path)
    assert list(loaded) == list(ckpt.records)
    for name, tensor in expected.items():
        got = loaded[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert _bits(got) == _bits(tensor), name
        if writer in KEEPS_LAYOUT:
            assert got.stride() == tensor.stride(), name
            assert got.storage_offset() == tensor.storage_offset(), name


@pytest.mark.parametrize("writer", sorted(KEEPS_LAYOUT))
def test_shared_storages_stay_shared(writer: str, tmp_path: Path) -> None:
    path, _ = WRITERS[writer](case_shared(), tmp_path)
    loaded = api.load(path)
    ptr = loaded["embed.weight"].untyped_storage().data_ptr()
    assert loaded["head.weight"].untyped_storage().data_ptr() == ptr
    assert loaded["half"].untyped_storage().data_ptr() == ptr
    loaded["embed.weight"][7, 0] = 1.0
    assert loaded["half"][2, 0] == 1.0


@pytest.mark.parametrize("writer", ["torch-zip", "torch-legacy"])
def test_extras_keep_plain_data(writer: str, tmp_path: Path) -> None:
    path, _ = WRITERS[writer](case_parameters_and_nesting(), tmp_path)
    ckpt = api.open(path)
    assert ckpt.extras["epoch"] == 9
    assert ckpt.extras["hyper_parameters"] == {"lr": 0.1, "name": "run"}
    assert ckpt.records["state_dict.encoder.weight"].is_parameter
    assert ckpt.records["layers.1.w"].path == ("layers", "1", "w")


def test_load_matches_torch_load_for_lightning_style_file(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 5, 5).permute(0, 1, 2, 3)[..., :4, :4].reshape(2, 3, 4, 4)).sum() if False else None
    loss = model[2](model[1](model[0](torch.randn(2, 3, 5, 5))).mean((2, 3))).sum()
    loss.backward()
    opt.step()
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [opt.state_dict()],
        "hyper_parameters": {"lr": 1e-3, "layers": [3, 4]},
    }
    path = tmp_path / "epoch=3.ckpt"
    torch.save(ckpt, path)
    ours = api.load(path)
    theirs = _flat(torch.load(path, weights_only=False))
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        assert _bits(ours[name]) == _bits(tensor) and ours[name].dtype == tensor.dtype, name
    opened = api.open(path)
    assert opened.extras["epoch"] == 3
    assert opened.extras["optimizer_states.0.param_groups"][0]["lr"] == 1e-3


def test_open_reads_no_tensor_bytes(tmp_path: Path) -> None:
    """Records carry byte ranges; opening a file whose tensor bytes are garbage still works."""
    path = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    ckpt = api.open(path)
    start, end = ckpt.records["w"].byte_range or (0, 0)
    assert end - start == 4000
    raw = bytearray(path.read_bytes())
    raw[start:end] = b"\x01" * 4000
    path.write_bytes(bytes(raw))
    assert api.open(path).records["w"].shape == (1000,)
    assert torch.equal(  # the bytes no longer match the zip CRC-32: tw.load refuses them unless told otherwise
        api.load(path, check_crc=False)["w"].view(torch.int32), torch.full((1000,), 0x01010101, dtype=torch.int32)
    )
