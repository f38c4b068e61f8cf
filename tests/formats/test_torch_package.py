"""torch.package archives: every pickle resource read as data, tensors named ``<resource>/<dotted name>``.

Packages are made with a real ``torch.package.PackageExporter`` in ``tmp_path``; the interned model module is
written there too and put on ``sys.path`` so the exporter can find its source. Variants are made by rewriting one
member of a real package.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.package import PackageExporter, PackageImporter

import torchweights as tw

pytestmark = pytest.mark.filterwarnings("ignore:.*TypedStorage:UserWarning")

_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)
        self.register_buffer("steps", torch.arange(4))

    def forward(self, x):
        return self.norm(self.fc(x))


class Config:
    def __init__(self, width):
        self.width = width
"""


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An importable ``tw_pkg_models`` module, written to ``tmp_path``."""
    (tmp_path / "tw_pkg_models.py").write_text(_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "tw_pkg_models", raising=False)
    return importlib.import_module("tw_pkg_models")


def _package(path: Path, models: Any) -> Any:
    torch.manual_seed(0)
    net = models.Net()
    with PackageExporter(str(path)) as exporter:
        exporter.intern("tw_pkg_models")
        exporter.extern(["torch", "torch.**"])
        exporter.save_pickle("models", "net.pkl", net)
        exporter.save_pickle("weights", "state.pkl", {"state_dict": net.state_dict(), "epoch": 3})
        exporter.save_pickle("weights", "views", {"w": net.fc.weight, "t": net.fc.weight.t()})  # no .pkl suffix
        exporter.save_pickle("config", "cfg.pkl", models.Config(16))
        exporter.save_text("notes", "readme.txt", "hello")
    return net


def _rewrite(src: Path, dst: Path, change: Any) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)
    return dst


def test_every_resource_is_read(tmp_path: Path, models: Any) -> None:
    path = tmp_path / "pkg.pt"
    net = _package(path, models)
    ckpt = tw.open(path)
    assert ckpt.format == "torch-package"
    expected = [f"models/net.pkl/{k}" for k in net.state_dict()]
    expected += [f"weights/state.pkl/state_dict.{k}" for k in net.state_dict()]
    expected += ["weights/views/w", "weights/views/t"]
    assert list(ckpt.records) == expected
    assert ckpt.records["models/net.pkl/fc.weight"].path == ("models/net.pkl", "fc", "weight")
    assert ckpt.records["models/net.pkl/fc.weight"].is_parameter
    assert ckpt.extras["weights/state.pkl/epoch"] == 3
    assert ckpt.extras["config/cfg.pkl"].cls == "tw_pkg_models.Config"  # an inert stub, never imported
    assert "tw_pkg_models.Net" in ckpt.globals
    assert ckpt.metadata["code_files"] == {"tw_pkg_models.py": len(_MODULE.encode())}
    assert ckpt.metadata["resources"] == {"notes/readme.txt": 5}
    assert "torch" in ckpt.metadata["extern_modules"]
    assert ckpt.metadata[".data/version"]


def test_tensors_match_package_importer(tmp_path: Path, models: Any) -> None:
    path = tmp_path / "pkg.pt"
    _package(path, models)
    loaded = tw.load(path)
    importer = PackageImporter(str(path))
    for name, tensor in importer.load_pickle("models", "net.pkl").state_dict().items():
        got = loaded[f"models/net.pkl/{name}"]
        assert got.dtype == tensor.dtype and got.stride() == tensor.stride()
        assert torch.equal(got, tensor)
    views = importer.load_pickle("weights", "views")
    assert torch.equal(loaded["weights/views/t"], views["t"]) and loaded["weights/views/t"].stride() == (1, 3)
    # One storage per tensor in the package, shared by every resource that pickled it.
    assert (
        loaded["weights/views/t"].untyped_storage().data_ptr() == loaded["weights/views/w"].untyped_storage().data_ptr()
    )
    assert (
        loaded["models/net.pkl/fc.weight"].untyped_storage().data_ptr()
        == loaded["weights/views/w"].untyped_storage().data_ptr()
    )


def test_load_into_picks_a_resource(tmp_path: Path, models: Any) -> None:
    path = tmp_path / "pkg.pt"
    net = _package(path, models)
    fresh = models.Net()
    report = tw.load_into(fresh, path)
    assert report.applied
    for name, tensor in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor)


def test_mangled_globals_are_inert_stubs(tmp_path: Path, models: Any) -> None:
    src = tmp_path / "pkg.pt"
    _package(src, models)
    dst = _rewrite(
        src,
        tmp_path / "mangled.pt",
        lambda name, data: data.replace(b"ctw_pkg_models\nNet\n", b"c<torch_package_0>.tw_pkg_models\nNet\n"),
    )
    with zipfile.ZipFile(dst) as zf:
        assert b"<torch_package_0>.tw_pkg_models" in zf.read(next(n for n in zf.namelist() if n.endswith("net.pkl")))
    ckpt = tw.open(dst)
    assert "tw_pkg_models.Net" in ckpt.globals
    assert not any("torch_package" in g for g in ckpt.globals)
    assert "models/net.pkl/fc.weight" in ckpt.records


def test_mangled_dangerous_global_is_refused(tmp_path: Path, models: Any) -> None:
    src = tmp_path / "pkg.pt"
    _package(src, models)
    marker = tmp_path / "ran"

    def evil(name: str, data: bytes) -> bytes:
        if not name.endswith("config/cfg.pkl"):
            return data
        command = f"touch {marker}".encode()
        return b"\x80\x03c<torch_package_0>.torch\nload\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."

    with pytest.raises(tw.UnsafeCheckpointError) as info:
        tw.open(_rewrite(src, tmp_path / "evil.pt", evil))
    # refused by the shared table, which judges a mangled name by what torch.package would import
    assert info.value.names == ("<torch_package_0>.torch.load",)
    assert "'<torch_package_0>.torch.load'" in info.value.message
    assert not marker.exists()


def test_missing_storage_member(tmp_path: Path, models: Any) -> None:
    src = tmp_path / "pkg.pt"
    _package(src, models)
    dst = _rewrite(src, tmp_path / "broken.pt", lambda name, data: None if name.endswith(".data/0.storage") else data)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "missing-storage"
    assert ".data/0.storage" in info.value.message


def test_bad_persistent_id(tmp_path: Path, models: Any) -> None:
    src = tmp_path / "pkg.pt"
    _package(src, models)
    pid = b"\x80\x03(X\x06\x00\x00\x00bogusxq\x00tQ."  # persistent id ('bogusx',)
    dst = _rewrite(src, tmp_path / "bad.pt", lambda name, data: pid if name.endswith("config/cfg.pkl") else data)
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "bad-record"
    assert "bogusx" in info.value.message


# ------------------------------------------------------------------------------ TorchScript modules in a package


_CAPTURED = torch.arange(6.0).reshape(2, 3)


class _Traced(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
        self.norm = torch.nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x)) + _CAPTURED[1]  # a captured tensor: a TorchScript constant


def _script_package(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    import torch.package.package_exporter as package_exporter

    monkeypatch.setattr(package_exporter, "_gate_torchscript_serialization", False)
    torch.manual_seed(0)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)))
    traced = torch.jit.trace(_Traced().eval(), torch.randn(4, 3))
    with PackageExporter(str(path)) as exporter:
        exporter.extern(["torch", "torch.**"])
        exporter.save_pickle("models", "scripted.pkl", scripted)
        exporter.save_pickle("models", "both.pkl", {"net": traced, "first": scripted[0].weight, "epoch": 7})
    return scripted, traced


def test_embedded_torchscript_modules_are_read_as_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ts.pt"
    scripted, traced = _script_package(path, monkeypatch)
    ckpt = tw.open(path)
    expected = [f"models/scripted.pkl/{k}" for k in scripted.state_dict()]
    expected += [f"models/both.pkl/net.{k}" for k in traced.state_dict()] + ["models/both.pkl/first"]
    expected += [".data/ts_code/1/constants.pkl/c0"]
    assert list(ckpt.records) == expected
    assert ckpt.records["models/scripted.pkl/0.weight"].is_parameter
    assert not ckpt.records["models/both.pkl/net.norm.running_mean"].is_parameter
    assert ckpt.extras == {"models/both.pkl/epoch": 7}
    assert ckpt.metadata["torchscript_modules"] == {"models/scripted.pkl": ["0"], "models/both.pkl": ["1"]}
    code = ckpt.metadata["code_files"]
    with zipfile.ZipFile(path) as zf:
        # every TorchScript code file the package holds, by its size (where TorchScript puts nn.Linear's code
        # depends on what the process scripted before: a test must not rely on the path)
        in_zip = {i.filename[len("ts/") :]: i.file_size for i in zf.infolist() if "/ts_code/code/" in i.filename}
    assert code == in_zip and any(name.endswith(".py") for name in code)
    assert not ckpt.warnings

    loaded = tw.load(ckpt)
    importer = PackageImporter(str(path))
    for resource, prefix, module in (("scripted.pkl", "", importer.load_pickle("models", "scripted.pkl")),):
        for name, tensor in module.state_dict().items():
            got = loaded[f"models/{resource}/{prefix}{name}"]
            assert got.dtype == tensor.dtype and got.stride() == tensor.stride() and torch.equal(got, tensor)
    both = importer.load_pickle("models", "both.pkl")
    for name, tensor in both["net"].state_dict().items():
        assert torch.equal(loaded[f"models/both.pkl/net.{name}"], tensor), name
    assert torch.equal(loaded[".data/ts_code/1/constants.pkl/c0"], _CAPTURED)
    # one storage for the tensor the package pickled and the same tensor inside the scripted module
    assert loaded["models/both.pkl/first"].data_ptr() == loaded["models/scripted.pkl/0.weight"].data_ptr()


def test_embedded_torchscript_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ts.pt"
    _script_package(path, monkeypatch)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("TorchScript was imported")

    monkeypatch.setattr(torch._C, "_import_ir_module_from_package", refuse)
    monkeypatch.setattr(torch.jit._script, "unpackage_script_module", refuse)
    assert len(tw.load(path)) == 13
    report = tw.scan(path)
    assert report.verdict == "clean"
    flagged = [f for f in report.findings if f.code == "torchscript-code"]
    assert sorted((f.severity, f.member) for f in flagged) == [
        ("warning", "models/both.pkl"),
        ("warning", "models/scripted.pkl"),
    ]
    assert all(f"'{f.member}'" in f.message and "TorchScript code" in f.message for f in flagged)


def test_embedded_torchscript_missing_its_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "ts.pt"
    _script_package(src, monkeypatch)
    dst = _rewrite(
        src, tmp_path / "broken.pt", lambda name, data: None if name.endswith("ts_code/1/data.pkl") else data
    )
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "missing-member"
    assert "'ts/.data/ts_code/1/data.pkl'" in info.value.message and "'models/both.pkl'" in info.value.message


def test_embedded_torchscript_id_must_be_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "ts.pt"
    _script_package(src, monkeypatch)
    dst = _rewrite(
        src,
        tmp_path / "bad.pt",
        lambda name, data: data.replace(b"X\x01\x00\x00\x000", b"X\x02\x00\x00\x00..") if "scripted" in name else data,
    )
    with pytest.raises(tw.CorruptCheckpointError) as info:
        tw.open(dst)
    assert info.value.code == "bad-record" and "('..',)" in info.value.message


def test_calling_unpackage_script_module_makes_a_stub(tmp_path: Path) -> None:
    """The global is an inert reference: a pickle that calls it gets a stub, and nothing is imported or run."""
    payload = b"\x80\x02ctorch.jit._script\nunpackage_script_module\nX\x01\x00\x00\x000\x85R."
    path = tmp_path / "call.pkl"
    path.write_bytes(payload)
    from torchweights.unpickle.stream import unpickle
    from torchweights.unpickle.values import Stub

    value = unpickle(payload).value
    assert isinstance(value, Stub) and value.cls == "torch.jit._script.unpackage_script_module"
    assert value.args == ("0",)
