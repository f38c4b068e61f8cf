"""``tw.convert``: round trips from every input format, bit for bit; tied weights; views; dtypes; sharding; extras;
``to="torch"``; casts; safe writing (refusals, force, crash safety) and verification."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from _samples import random_bits
from torchweights import dtypes
from torchweights.errors import RuleError, WriteError
from torchweights.writers import safetensors as st_writer

convert_module = importlib.import_module("torchweights.tools.convert.plan")

SAFETENSORS_DTYPES = [
    d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        getattr(torch, "float8_e8m0fnu", None),
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.uint16,
        torch.uint32,
        torch.uint64,
        torch.bool,
        torch.complex64,
    )
    if d is not None
]


def _bits(t: torch.Tensor) -> bytes:
    t = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())  # contiguous() keeps odd strides of size-1 dims
    return b"" if t.numel() == 0 else bytes(t.reshape(-1).view(torch.uint8).tolist())


def _flat(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
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


def _state() -> dict[str, torch.Tensor]:
    """Every dtype safetensors holds, views of one storage, tied weights, 0-dim and empty tensors."""
    base = random_bits((6, 8), torch.float32, 1)
    emb = random_bits((10, 4), torch.float16, 2)
    sd: dict[str, torch.Tensor] = {
        f"dtype.{str(d)[6:]}": random_bits((3, 5), d, 10 + i) for i, d in enumerate(SAFETENSORS_DTYPES)
    }
    sd.update(
        {
            "views.base": base,
            "views.transposed": base.t(),
            "views.column": base[:, 3],
            "views.strided": base[1::2, ::3],
            "views.offset": base.view(-1)[5:17],
            "views.expanded": base[0:1, :].expand(3, 8),
            "tied.embed.weight": emb,
            "tied.head.weight": emb,
            "tied.half": emb[5:],
            "odd.scalar": torch.tensor(3.5),
            "odd.empty": torch.empty(0, 4),
            "odd.param": torch.nn.Parameter(random_bits((2, 3), torch.bfloat16, 3)),
        }
    )
    return sd


def _read_output(path: Path | str) -> dict[str, torch.Tensor]:
    """The output as safetensors' own loader sees it, with save_model-style aliases re-tied from __metadata__."""
    paths = [Path(path)]
    if str(path).endswith(".index.json"):
        index = json.loads(Path(path).read_text())
        paths = [Path(path).parent / name for name in sorted(set(index["weight_map"].values()))]
    out: dict[str, torch.Tensor] = {}
    for p in paths:
        tensors = safetensors_torch.load_file(str(p))
        out.update(tensors)
        with safetensors_torch.safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
        out.update({alias: tensors[kept] for alias, kept in meta.items() if kept in tensors and alias not in tensors})
    return out


def _assert_bit_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert tuple(got[name].shape) == tuple(tensor.shape), name
        assert _bits(got[name]) == _bits(tensor), name


class Opaque:
    """A class the reader never imports: it becomes an inert stub, not plain data."""


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU())
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scratch", torch.zeros(3), persistent=False)


def _write_source(kind: str, tmp: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint of one format and the flat dict torch.load(weights_only=False) gives for its weights."""
    if kind in ("torch-zip", "legacy"):
        sd = _state()
        if kind == "legacy":  # the legacy format has no storage class for uint16/32/64 and fp8
            sd = {k: v for k, v in sd.items() if dtypes.get(str(v.dtype)).storage_class}
        path = tmp / f"{kind}.pt"
        torch.save(sd, path, _use_new_zipfile_serialization=kind == "torch-zip")
        return path, _flat(torch.load(path, weights_only=False))
    if kind == "safetensors":
        sd = {k: v.contiguous() for k, v in _state().items() if not k.startswith(("tied.", "views."))}
        path = tmp / "src.safetensors"
        safetensors_torch.save_file(sd, str(path))
        return path, safetensors_torch.load_file(str(path))
    if kind == "sharded":
        sd = {k: v.contiguous() for k, v in _state().items() if not k.startswith(("tied.", "views."))}
        folder = tmp / "hf"
        folder.mkdir()
        names = sorted(sd)
        parts = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
        for file, keys in parts.items():
            safetensors_torch.save_file({k: sd[k] for k in keys}, str(folder / file))
        weight_map = {k: f for f, keys in parts.items() for k in keys}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return folder, sd
    if kind == "full-module":
        torch.manual_seed(0)
        model = Net()
        path = tmp / "model.pt"
        torch.save(model, path)
        return path, dict(torch.load(path, weights_only=False).state_dict())
    if kind == "torchscript":
        torch.manual_seed(0)
        scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5)))
        path = tmp / "scripted.pt"
        scripted.save(str(path))
        return path, dict(torch.jit.load(str(path)).state_dict())
    if kind == "lightning":
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.Adam(model.parameters())
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        ckpt = {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "optimizer_states": [opt.state_dict()],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.001, "layers": [4, 5], "name": "net"},
        }
        path = tmp / "epoch=3.ckpt"
        torch.save(ckpt, path)
        return path, _flat(torch.load(path, weights_only=False)["state_dict"])
    raise AssertionError(kind)


FORMATS = ["torch-zip", "legacy", "safetensors", "sharded", "full-module", "lightning", "torchscript"]


@pytest.mark.parametrize("kind", FORMATS)
def test_round_trip_to_safetensors_is_bit_identical(kind: str, tmp_path: Path) -> None:
    src, expected = _write_source(kind, tmp_path)
    report = tw.convert(src, tmp_path / "out.safetensors")
    assert report.verified and report.files[0] == str(tmp_path / "out.safetensors")
    _assert_bit_identical(_read_output(tmp_path / "out.safetensors"), expected)
    # tw.load of the output restores the same tensors, tied ones sharing memory again
    loaded = tw.load(tmp_path / "out.safetensors")
    _assert_bit_identical(loaded, expected)
    for alias, kept in report.aliases.items():
        assert loaded[alias].data_ptr() == loaded[kept].data_ptr()


@pytest.mark.parametrize("kind", FORMATS)
def test_round_trip_sharded_output(kind: str, tmp_path: Path) -> None:
    src, expected = _write_source(kind, tmp_path)
    total = sum(t.numel() * t.element_size() for t in expected.values())
    report = tw.convert(src, tmp_path / "out", max_shard_size=max(64, total // 3))
    index_path = tmp_path / "out" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) >= 3 and str(index_path) in report.files
    n = len(shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    written = set(index["weight_map"]) | set(report.aliases)
    assert written == set(expected)
    assert index["metadata"]["total_size"] == sum(
        expected[k].numel() * expected[k].element_size() for k in index["weight_map"]
    )
    _assert_bit_identical(_read_output(index_path), expected)
    ckpt = tw.open(tmp_path / "out")
    assert ckpt.format == "sharded-safetensors" and not ckpt.warnings
    _assert_bit_identical(tw.load(ckpt), expected)


def test_tied_weights_are_written_once_with_save_model_metadata(tmp_path: Path) -> None:
    model = Net()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    report = tw.convert(tmp_path / "sd.pt", tmp_path / "o.safetensors")
    assert report.aliases == {"head.weight": "embed.weight"}
    with safetensors_torch.safe_open(str(tmp_path / "o.safetensors"), "pt") as f:
        assert "head.weight" not in set(f.keys())
        meta = f.metadata()
    # save_model's convention, plus our own list of the (exact) aliases
    assert meta["head.weight"] == "embed.weight" and meta["format"] == "pt"
    assert json.loads(meta["torchweights.aliases"]) == {"head.weight": "embed.weight"}
    ours = tw.load(tmp_path / "o.safetensors")
    assert sorted(ours) == sorted(model.state_dict())
    assert ours["head.weight"].data_ptr() == ours["embed.weight"].data_ptr()
    fresh = Net()
    assert tw.load_into(fresh, tmp_path / "o.safetensors").ok
    assert torch.equal(fresh.head.weight, model.embed.weight) and fresh.head.weight is fresh.embed.weight
    # what save_model writes for the same model loads into the model just as well (load_into ties it)
    safetensors_torch.save_model(model, str(tmp_path / "hf.safetensors"))
    again = Net()
    assert tw.load_into(again, tmp_path / "hf.safetensors").ok and again.head.weight is again.embed.weight


def test_metadata_records_source_sha256_and_layout_matches_the_official_writer(tmp_path: Path) -> None:
    sd = {
        "b": random_bits((3,), torch.float16, 1),
        "a": random_bits((2,), torch.float64, 2),
        "c": random_bits((1,), torch.int8, 3),
    }
    torch.save(sd, tmp_path / "m.pt")
    tw.convert(tmp_path / "m.pt", tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0 and raw[8 + n - 1 : 8 + n] in (b" ", b"}")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    assert meta["torchweights.source_sha256"] == hashlib.sha256((tmp_path / "m.pt").read_bytes()).hexdigest()
    assert meta["torchweights.source"] == "m.pt" and meta["torchweights.source_format"] == "torch-zip"
    # the official writer's order: largest element size first, then by name
    safetensors_torch.save_file(sd, str(tmp_path / "official.safetensors"))
    official = (tmp_path / "official.safetensors").read_bytes()
    (m,) = struct.unpack("<Q", official[:8])
    assert {k: v["data_offsets"] for k, v in header.items()} == {
        k: v["data_offsets"] for k, v in json.loads(official[8 : 8 + m]).items() if k != "__metadata__"
    }
    assert raw[8 + n :] == official[8 + m :]


def test_complex128_and_other_dtypes_safetensors_lacks_are_refused_with_the_fix(tmp_path: Path) -> None:
    sd = {"ok": torch.ones(2), "z": torch.ones(2, dtype=torch.complex128), "q": torch.ones(2).to(torch.float8_e4m3fnuz)}
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(RuleError) as info:
        tw.convert(tmp_path / "c.pt", tmp_path / "out")
    err = info.value
    assert err.code == "unsupported-output-dtype"
    assert "'z'" in err.message and "'q'" in err.message and "to='torch'" in err.message and "select" in err.message
    assert not (tmp_path / "out").exists()
    # the fix works: leave them out, or keep them in a torch file
    tw.convert(tmp_path / "c.pt", tmp_path / "ok.safetensors", select=["ok"])
    assert list(safetensors_torch.load_file(str(tmp_path / "ok.safetensors"))) == ["ok"]
    tw.convert(tmp_path / "c.pt", tmp_path / "all.pt", to="torch")
    back = torch.load(tmp_path / "all.pt", weights_only=True)
    assert all(_bits(back[k]) == _bits(v) and back[k].dtype == v.dtype for k, v in sd.items())


@pytest.mark.parametrize("kind", ["torch-zip", "legacy", "lightning", "full-module"])
def test_to_torch_is_a_plain_state_dict_that_keeps_views_and_sharing(kind: str, tmp_path: Path) -> None:
    src, expected = _write_source(kind, tmp_path)
    report = tw.convert(src, tmp_path / "plain.pt", to="torch")
    assert report.verified
    back = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert type(back) is dict
    _assert_bit_identical(back, expected)
    source = torch.load(src, weights_only=False)
    if kind in ("torch-zip", "legacy"):
        assert back["views.transposed"].stride() == source["views.transposed"].stride()
        assert back["views.expanded"].stride() == (0, 1)
        ptr = back["views.base"].untyped_storage().data_ptr()
        assert all(back[f"views.{v}"].untyped_storage().data_ptr() == ptr for v in ("transposed", "column", "offset"))
        assert back["tied.head.weight"].data_ptr() == back["tied.embed.weight"].data_ptr()
    assert tw.open(tmp_path / "plain.pt").globals  # readable by our reader too
    if kind == "full-module":
        assert back["head.weight"].data_ptr() == back["embed.weight"].data_ptr()


def test_dtype_casts_floats_only_and_is_verified(tmp_path: Path) -> None:
    sd = {
        "w": random_bits((4, 4), torch.float32, 1).t(),
        "i": torch.arange(4),
        "h": torch.randn(3).half(),
        "b": torch.ones(2).bool(),
    }
    torch.save(sd, tmp_path / "f.pt")
    report = tw.convert(tmp_path / "f.pt", tmp_path / "bf.safetensors", dtype=torch.bfloat16)
    assert report.cast == 2
    out = safetensors_torch.load_file(str(tmp_path / "bf.safetensors"))
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"], sd["w"].to(torch.bfloat16))
    assert torch.equal(out["h"], sd["h"].to(torch.bfloat16))
    assert out["i"].dtype == torch.int64 and out["b"].dtype == torch.bool
    with pytest.raises(RuleError) as info:
        tw.convert(tmp_path / "f.pt", tmp_path / "x.safetensors", dtype="int8")
    assert info.value.code == "bad-dtype" and "bfloat16" in info.value.message


def test_extras_are_saved_as_json_and_dropped_data_is_noted(tmp_path: Path) -> None:
    src, _ = _write_source("lightning", tmp_path)
    report = tw.convert(src, tmp_path / "out")
    assert report.container == "state_dict"
    extras_file = tmp_path / "out" / "model.extras.json"
    assert report.extras_file == str(extras_file) and str(extras_file) in report.files
    document = json.loads(extras_file.read_text())
    assert document["extras"]["epoch"] == 3 and document["extras"]["hyper_parameters"]["layers"] == [4, 5]
    assert document["source_sha256"] == report.source_sha256
    assert any("optimizer_states" in note for note in report.notes)
    assert all(
        not k.startswith("optimizer") for k in safetensors_torch.load_file(str(tmp_path / "out/model.safetensors"))
    )

    torch.save({"w": torch.ones(2), "when": float("nan"), "obj": Opaque(), "step": 4}, tmp_path / "x.pt")
    report = tw.convert(tmp_path / "x.pt", tmp_path / "x.safetensors", allow_globals=[])
    assert json.loads((tmp_path / "x.extras.json").read_text())["extras"] == {"step": 4}
    assert any("'when" in n and "'obj" in n for n in report.notes), report.notes
    assert not tw.convert(tmp_path / "x.pt", tmp_path / "y.safetensors", extras=False).extras_file


def test_container_and_select(tmp_path: Path) -> None:
    ckpt = {"model": {"a.w": torch.ones(2), "b.w": torch.zeros(3)}, "ema": {"a.w": torch.full((2,), 2.0)}, "epoch": 1}
    torch.save(ckpt, tmp_path / "c.pt")
    auto = tw.convert(tmp_path / "c.pt", tmp_path / "auto.safetensors")
    assert auto.container == "model" and sorted(safetensors_torch.load_file(str(tmp_path / "auto.safetensors"))) == [
        "a.w",
        "b.w",
    ]
    tw.convert(tmp_path / "c.pt", tmp_path / "ema.safetensors", container="ema")
    assert torch.equal(safetensors_torch.load_file(str(tmp_path / "ema.safetensors"))["a.w"], ckpt["ema"]["a.w"])
    tw.convert(tmp_path / "c.pt", tmp_path / "all.safetensors", container="")
    assert sorted(safetensors_torch.load_file(str(tmp_path / "all.safetensors"))) == [
        "ema.a.w",
        "model.a.w",
        "model.b.w",
    ]
    sel = tw.convert(tmp_path / "c.pt", tmp_path / "sel.safetensors", select="a.*")
    assert list(safetensors_torch.load_file(str(tmp_path / "sel.safetensors"))) == ["a.w"]
    assert any("select" in n for n in sel.notes)
    with pytest.raises(RuleError) as info:
        tw.convert(tmp_path / "c.pt", tmp_path / "no.safetensors", container="nope")
    assert info.value.code == "bad-container" and "'model'" in info.value.message


def test_existing_outputs_are_never_overwritten_without_force(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "b.pt")
    out = tmp_path / "o.safetensors"
    tw.convert(tmp_path / "a.pt", out)
    before = out.read_bytes()
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "b.pt", out)
    assert info.value.code == "output-exists" and "force=True" in info.value.message
    assert out.read_bytes() == before
    tw.convert(tmp_path / "b.pt", out, force=True)
    assert torch.equal(safetensors_torch.load_file(str(out))["w"], torch.zeros(3))
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt", "o.safetensors"]


def test_force_removes_stale_shards_of_an_earlier_conversion(tmp_path: Path) -> None:
    torch.save({f"t{i}": torch.full((64,), float(i)) for i in range(4)}, tmp_path / "a.pt")
    tw.convert(tmp_path / "a.pt", tmp_path / "out", max_shard_size=256)
    assert len(os.listdir(tmp_path / "out")) == 5
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "a.pt", tmp_path / "out", max_shard_size="1GB")
    assert info.value.code == "output-exists"
    report = tw.convert(tmp_path / "a.pt", tmp_path / "out", max_shard_size="1GB", force=True)
    assert os.listdir(tmp_path / "out") == ["model.safetensors"]
    assert sum("left over" in n for n in report.notes) == 5


def test_converting_onto_the_source_is_refused(tmp_path: Path) -> None:
    safetensors_torch.save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "model.safetensors", tmp_path, force=True)
    assert "part of the source" in info.value.message
    assert (tmp_path / "model.safetensors").read_bytes() == before


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_conversion_killed_after_the_first_shard_leaves_nothing(
    exc: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save({f"t{i}": torch.full((64,), float(i)) for i in range(4)}, tmp_path / "src.pt")
    before = _listing(tmp_path)
    calls = []
    real = st_writer.write_file

    def failing(fh: Any, entries: Any, metadata: Any) -> Any:
        calls.append(len(entries))
        if len(calls) == 2:  # the first shard is complete on disk (as a temporary file)
            fh.write(b"half a shard")
            raise exc
        return real(fh, entries, metadata)

    monkeypatch.setattr(st_writer, "write_file", failing)
    with pytest.raises(type(exc)):
        tw.convert(tmp_path / "src.pt", tmp_path / "out" / "nested", max_shard_size=256)
    assert len(calls) == 2
    assert _listing(tmp_path) == before  # no shard, no index, no temporary file, not even the folders


def test_a_failure_after_the_renames_removes_the_outputs_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({f"t{i}": torch.full((64,), float(i)) for i in range(3)}, tmp_path / "src.pt")
    before = _listing(tmp_path)
    import torchweights.formats as formats

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("the final check could not read the index")

    monkeypatch.setattr(formats, "open_path", broken)
    with pytest.raises(OSError):
        tw.convert(tmp_path / "src.pt", tmp_path / "out", max_shard_size=256)
    assert _listing(tmp_path) == before


def test_verification_catches_an_output_that_does_not_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save({"w": torch.arange(16, dtype=torch.float32)}, tmp_path / "src.pt")
    real = st_writer.write_file

    def corrupting(fh: Any, entries: Any, metadata: Any) -> Any:
        out = real(fh, entries, metadata)
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x7f")  # one flipped byte in the last tensor
        return out

    monkeypatch.setattr(st_writer, "write_file", corrupting)
    with pytest.raises(WriteError) as info:
        tw.convert(tmp_path / "src.pt", tmp_path / "o.safetensors")
    assert info.value.code == "verify-failed" and "'w'" in info.value.message
    assert sorted(os.listdir(tmp_path)) == ["src.pt"]
    report = tw.convert(tmp_path / "src.pt", tmp_path / "o.safetensors", verify=False)
    assert not report.verified  # the same corruption goes unnoticed without verification


def test_byte_level_conversion_needs_no_torch(tmp_path: Path) -> None:
    base = random_bits((5, 7), torch.float32, 4)
    sd = {"w": base, "t": base.t(), "col": base[:, 2], "h": random_bits((3,), torch.bfloat16, 5), "tied": base}
    torch.save(sd, tmp_path / "src.pt")
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "import torchweights as tw\n"
        f"r = tw.convert({str(tmp_path / 'src.pt')!r}, {str(tmp_path / 'o.safetensors')!r})\n"
        f"r2 = tw.convert({str(tmp_path / 'src.pt')!r}, {str(tmp_path / 'o.pt')!r}, to='torch')\n"
        "d = tw.diff(r.files[0], r2.files[0])\n"
        "print(r.verified, r2.verified, d.summary)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "identical"]
    _assert_bit_identical(_read_output(tmp_path / "o.safetensors"), sd)
    _assert_bit_identical(torch.load(tmp_path / "o.pt", weights_only=True), sd)


def test_parse_size() -> None:
    parse = convert_module.parse_size
    assert parse("5GB") == 5 * 10**9 and parse("500MiB") == 500 * 2**20 and parse("1.5 kb") == 1500
    assert parse(1234) == 1234
    for bad in ("", "5 parsecs", "-1GB", 0):
        with pytest.raises(RuleError):
            parse(bad)


def test_header_is_padded_like_the_official_writer() -> None:
    for n in range(12):
        entries = [st_writer.Entry("x" * n, "float32", (1,), lambda: iter([b"\0" * 4]))]
        raw = st_writer.header_bytes(entries, {})
        (size,) = struct.unpack("<Q", raw[:8])
        assert size % 8 == 0 and len(raw) == 8 + size and json.loads(raw[8:])["x" * n]["dtype"] == "F32"
    assert dtypes.get("complex128").safetensors is None


def test_a_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path: Path) -> None:
    """640 = 0x280: the file starts with b'\\x80\\x02', the bytes of a protocol-2 pickle."""
    for pad in range(1000):
        entries = [st_writer.Entry("w", "float32", (2,), lambda: iter([b"\0" * 8]))]
        raw = st_writer.header_bytes(entries, {"note": "x" * pad})
        if struct.unpack("<Q", raw[:8])[0] == 640:
            break
    assert raw[:2] == b"\x80\x02"
    (tmp_path / "p.safetensors").write_bytes(raw + b"\0" * 8)
    ckpt = tw.open(tmp_path / "p.safetensors")
    assert ckpt.format == "safetensors" and list(ckpt.records) == ["w"]
    assert tw.verify(tmp_path / "p.safetensors").ok


def test_only_aliases_listed_by_convert_are_re_tied(tmp_path: Path) -> None:
    """save_model also drops views that differ from the kept one (here one row of it): a name alone cannot rebuild
    them, so only the pairs convert lists as exact are restored."""
    w = torch.arange(4.0).reshape(2, 2)
    safetensors_torch.save_model(_Pair(w), str(tmp_path / "hf.safetensors"))
    with safetensors_torch.safe_open(str(tmp_path / "hf.safetensors"), "pt") as f:
        assert set(f.keys()) == {"a"} and f.metadata() == {"b": "a"}  # the row dropped, recorded as b -> a
    assert len(tw.open(tmp_path / "hf.safetensors").records) == 1
    tensors = {"pt": torch.ones(2), "w": torch.zeros(2)}
    meta = {"format": "pt", "tied": "w", "torchweights.aliases": json.dumps({"tied2": "w", "pt": "w", "x": "nope"})}
    safetensors_torch.save_file(tensors, str(tmp_path / "m.safetensors"), metadata=meta)
    ckpt = tw.open(tmp_path / "m.safetensors")
    assert list(ckpt.records) == ["pt", "w", "tied2"] and ckpt.metadata["aliases"] == {"tied2": "w"}
    assert ckpt.records["tied2"].storage == ckpt.records["w"].storage


class _Pair(torch.nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(w)
        self.register_buffer("b", self.a.data[1])  # a partial view of the same storage


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_quantized_tensors_are_refused_for_both_outputs(tmp_path: Path) -> None:
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    torch.save({"q": q, "w": torch.ones(2)}, tmp_path / "q.pt")
    for to in ("safetensors", "torch"):
        with pytest.raises(RuleError) as info:
            tw.convert(tmp_path / "q.pt", tmp_path / f"out_{to}", to=to)
        assert info.value.code == "unsupported-output-dtype" and "'q'" in info.value.message
        assert "select" in info.value.message and "to='torch'" not in info.value.message
    assert os.listdir(tmp_path) == ["q.pt"]
    tw.convert(tmp_path / "q.pt", tmp_path / "w.pt", to="torch", select="w")
    assert list(torch.load(tmp_path / "w.pt", weights_only=True)) == ["w"]


def test_force_with_a_relative_destination_keeps_the_new_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.ones(3)}, "a.pt")
    tw.convert("a.pt", "o.safetensors")
    report = tw.convert("a.pt", "o.safetensors", force=True)
    assert report.files == ["o.safetensors"] and not any("left over" in n for n in report.notes)
    assert torch.equal(safetensors_torch.load_file("o.safetensors")["w"], torch.ones(3))


def test_nothing_selected_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(3)}, tmp_path / "a.pt")
    with pytest.raises(RuleError) as info:
        tw.convert(tmp_path / "a.pt", tmp_path / "o.safetensors", select="head.*")
    assert info.value.code == "nothing-selected" and "select=['head.*']" in info.value.message
    assert os.listdir(tmp_path) == ["a.pt"]


class Wrapper(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lightning_with_callbacks", ("state_dict",)),
        ("state_dict_alone", ("state_dict",)),
        ("model_beside_training_state", ("model",)),
        ("model_alone", ()),
        ("model_beside_weights", ()),
        ("module_with_a_submodule_called_model", ()),
        ("ema_only", ("ema",)),
    ],
)
def test_weights_container_is_chosen_from_names_alone(name: str, expected: tuple[str, ...], tmp_path: Path) -> None:
    from torchweights.plan.selection import choose_container

    w = {"l.weight": torch.ones(2, 2)}
    cases: dict[str, object] = {
        "lightning_with_callbacks": {
            "state_dict": w,
            "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
            "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2, 2)}}}],
        },
        "state_dict_alone": {"state_dict": w},
        "model_beside_training_state": {"model": w, "optimizer": {"state": {0: {"m": torch.zeros(2)}}}, "epoch": 1},
        "model_alone": {"model": w},
        "model_beside_weights": {"model": w, "head": {"weight": torch.zeros(1)}, "epoch": 1},
        "module_with_a_submodule_called_model": Wrapper(),
        "ema_only": {"ema": w, "optimizer": {"state": {0: {"m": torch.zeros(2)}}}},
    }
    torch.save(cases[name], tmp_path / "c.pt")
    path, _ = choose_container(tw.open(tmp_path / "c.pt"))
    assert path == expected


@pytest.mark.parametrize("pieces", [[b"abc", b"de"], [b"abc", b"defg", b"h"], [b"ab"]])
def test_a_source_that_changes_size_is_a_write_error(pieces: list[bytes]) -> None:
    from torchweights.writers import write_exactly

    out: list[bytes] = []
    if sum(map(len, pieces)) == 5:
        write_exactly(out.append, pieces, 5, "tensor 'w'")
        assert b"".join(out) == b"abcde"
        return
    with pytest.raises(WriteError) as error:
        write_exactly(out.append, pieces, 5, "tensor 'w'")
    assert error.value.code == "write-failed" and "tensor 'w'" in error.value.message
    assert sum(map(len, out)) <= 5  # never more than declared reaches the output
