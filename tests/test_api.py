"""The public surface: exact exports, torch-free opening, load options, and errors from the top-level verbs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw


def test_all_is_exact() -> None:
    import __future__

    import inspect

    # Most names are resolved on first access (PEP 562): touch every exported one, then nothing else may be public.
    for name in tw.__all__:
        getattr(tw, name)
    public = {
        name
        for name, value in vars(tw).items()
        if not name.startswith("_") and not inspect.ismodule(value) and not isinstance(value, __future__._Feature)
    }
    assert set(tw.__all__) - {"__version__"} == public


def test_every_error_is_a_builtin_and_has_a_code() -> None:
    errors = [getattr(tw, n) for n in tw.__all__ if n.endswith("Error") and n != "TorchWeightsError"]
    for cls in errors:
        assert issubclass(cls, tw.TorchWeightsError)
        assert issubclass(cls, (ValueError, OSError)), cls
        code = [c for c, entry in tw.errors.CODES.items() if entry.cls is cls][-1]  # registered for this class
        err = cls("what happened", code=code)
        assert err.code == code and str(err) == f"[{code}] what happened"
        assert cls("x").code == cls.default_code


def _make_files(tmp: Path) -> dict[str, Path]:
    sd = {"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3, dtype=torch.bfloat16)}
    files = {"zip": tmp / "z.pt", "legacy": tmp / "l.pt", "st": tmp / "m.safetensors"}
    torch.save(sd, files["zip"])
    torch.save(sd, files["legacy"], _use_new_zipfile_serialization=False)
    safetensors_torch.save_file(sd, str(files["st"]))
    shard_dir = tmp / "sharded"
    shard_dir.mkdir()
    safetensors_torch.save_file({"a.weight": sd["a.weight"]}, str(shard_dir / "s1.safetensors"))
    safetensors_torch.save_file({"a.bias": sd["a.bias"]}, str(shard_dir / "s2.safetensors"))
    index = {"weight_map": {"a.weight": "s1.safetensors", "a.bias": "s2.safetensors"}}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    files["sharded"] = shard_dir
    return files


def test_open_never_imports_torch(tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    code = (
        "import sys, torchweights as tw\n"
        f"for p in {[str(p) for p in files.values()]!r}:\n"
        "    ck = tw.open(p)\n"
        "    assert sorted(ck.records) == ['a.bias', 'a.weight'], (p, list(ck.records))\n"
        "    assert ck.records['a.bias'].dtype == 'bfloat16'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_load_accepts_an_opened_checkpoint_and_map_location(tmp_path: Path) -> None:
    files = _make_files(tmp_path)
    ckpt = tw.open(files["zip"])
    first = tw.load(ckpt)
    second = tw.load(files["zip"], map_location=torch.device("cpu"))
    mapped = tw.load(files["zip"], map_location={"cpu": "cpu"})
    for name in first:
        assert torch.equal(first[name], second[name]) and torch.equal(first[name], mapped[name])
        assert first[name].device.type == "cpu"
    assert tw.load(files["zip"], map_location=lambda loc: "cpu")["a.weight"].device.type == "cpu"


def test_load_returns_plain_tensors_without_grad(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "m.pt"
    torch.save(model, path)  # parameters pickled as nn.Parameter with requires_grad
    loaded = tw.load(path)
    assert set(loaded) == {"weight", "bias"}
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in loaded.values())
    assert tw.open(path).records["weight"].is_parameter


def test_meta_tensors_come_back_on_meta(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"w": torch.empty(3, 5, device="meta")}, path)
    ckpt = tw.open(path)
    assert ckpt.records["w"].storage is None and ckpt.records["w"].shape == (3, 5)
    assert tw.load(path)["w"].is_meta


def test_big_endian_zip_files_are_byteswapped(tmp_path: Path) -> None:
    """torch zip files record a byte order; a big-endian file loads with the right values."""
    import zipfile

    src = tmp_path / "le.pt"
    values = {
        "f": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "c": torch.tensor([1 + 2j], dtype=torch.complex64),
    }
    torch.save(values, src)
    ckpt = tw.open(src)
    dst = tmp_path / "be.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        keys = {r.storage.member: r for r in ckpt.records.values() if r.storage}
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("byteorder"):
                data = b"big"
            elif info.filename in keys:
                unit = 4
                data = b"".join(data[i : i + unit][::-1] for i in range(0, len(data), unit))
            zout.writestr(info, data)
    assert tw.open(dst).metadata["byteorder"] == "big"
    loaded = tw.load(dst)
    assert torch.equal(loaded["f"], values["f"])
    assert torch.equal(loaded["c"], values["c"])


def test_a_dcp_folder_without_dcp_metadata_says_so(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(b"\x80\x04N.")
    (tmp_path / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(tmp_path)
    assert info.value.code == "bad-dcp-metadata"
    assert "Metadata" in info.value.message


def test_torchscript_archives_are_read(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    module = torch.nn.Linear(2, 2)
    torch.jit.save(torch.jit.script(module), path)
    loaded = tw.load(path)
    assert list(loaded) == ["weight", "bias"]
    assert torch.equal(loaded["weight"], module.weight.detach())


def test_not_a_checkpoint_through_the_top_level(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1234\n")
    with pytest.raises(tw.NotACheckpointError) as info:
        tw.load(path)
    assert info.value.code == "lfs-pointer"
    assert "git lfs pull" in info.value.message


def test_plain_pickle_without_tensors_is_data(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "config.pkl"
    config = {"lr": 0.1, "layers": [1, 2]}
    path.write_bytes(pickle.dumps(config, protocol=4))
    ckpt = tw.open(path)
    assert ckpt.format == "pickle" and not ckpt.records and ckpt.extras == {"": config}
    assert tw.load(path) == {}


def test_allow_globals_accepts_a_single_string(tmp_path: Path) -> None:
    path = tmp_path / "z.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert list(tw.open(path, allow_globals="collections.OrderedDict").records) == ["w"]


@pytest.mark.parametrize("map_location", ["bogus", torch.float16, {"cpu": "nope:1"}, 3.5])
def test_a_map_location_that_is_no_device_is_a_rule_error(tmp_path: Path, map_location: object) -> None:
    """Not torch's bare RuntimeError / TypeError from the first allocation: bad-map-location, naming the value."""
    path = tmp_path / "m.pt"
    torch.save({"a": torch.ones(2)}, path)
    with pytest.raises(tw.RuleError) as info:
        tw.load(path, map_location=map_location)
    assert info.value.code == "bad-map-location" and "not a device" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_map_location_this_machine_lacks_is_a_rule_error(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save({"a": torch.ones(2)}, path)
    with pytest.raises(tw.RuleError) as info:
        tw.load(path, map_location="cuda:0")
    assert info.value.code == "bad-map-location" and "no cuda device" in str(info.value)
