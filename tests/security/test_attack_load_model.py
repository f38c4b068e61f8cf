"""tw.load_model on hostile whole-model pickles: payloads beside or inside the module state, look-alike packages,
dotted-attribute escapes, getattr chains, calls of torch functions and of trusted functions. Loaded with
trust=["torch"] and trust=[the test's package]: the marker file is never created and the error names the global."""

from __future__ import annotations

import builtins
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import torchweights as tw

from ._helpers import Reduce, assert_no_markers, qualname, torch_zip_members, touch, u, write_zip

PKG = "twm_attack"

MODEL = """
import torch
from torch import nn

def make_marker(path):
    open(path, "w").close()

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    @staticmethod
    def marker(path):
        open(path, "w").close()

    def forward(self, x):
        return self.fc(x)
"""

#: a look-alike package whose import alone creates a marker: it must never be imported
LOOKALIKE = """
open({marker!r}, "w").close()
from torch import nn

class Linear(nn.Linear):
    pass
"""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    src = tmp_path / "src"
    (src / PKG).mkdir(parents=True)
    (src / PKG / "__init__.py").write_text("")
    (src / PKG / "model.py").write_text(MODEL)
    for name in ("torch_fake", f"{PKG}_evil"):
        (src / name).mkdir()
        (src / name / "__init__.py").write_text(LOOKALIKE.format(marker=str(tmp_path / f"MARKER_{name}")))
    monkeypatch.syspath_prepend(str(src))
    importlib.invalidate_caches()
    yield importlib.import_module(f"{PKG}.model")
    for name in [n for n in sys.modules if n.startswith((PKG, "torch_fake"))]:
        del sys.modules[name]


TRUSTS = (["torch"], [PKG])


def refused(path: Path, trust: list[str], *names: str, code: str | None = None) -> tw.UnsafeCheckpointError:
    with pytest.raises(tw.UnsafeCheckpointError) as info:
        tw.load_model(path, trust=trust)
    for name in names:
        assert name in str(info.value), str(info.value)
    if code is not None:
        assert info.value.code == code, info.value.code
    assert_no_markers(path.parent)
    return info.value


def saved(model: nn.Module, path: Path, **kwargs: Any) -> Path:
    torch.save(model, path, **kwargs)
    return path


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(
    "fn",
    [os.system, subprocess.Popen, builtins.eval, builtins.exec, torch.load],
    ids=["os.system", "Popen", "eval", "exec", "torch.load"],
)
def test_a_payload_beside_the_module_state_is_refused(
    fn: Any, legacy: bool, package: ModuleType, tmp_path: Path
) -> None:
    marker = tmp_path / "MARKER_beside"
    args: tuple[Any, ...] = {
        "system": (touch(marker),),
        "Popen": (["touch", str(marker)],),
        "eval": (f"open({str(marker)!r}, 'w')",),
        "exec": (f"open({str(marker)!r}, 'w')",),
        "load": (str(marker),),
    }[fn.__name__]
    model = package.Model()
    model.payload = Reduce(fn, *args)
    path = saved(model, tmp_path / "beside.pt", _use_new_zipfile_serialization=not legacy)
    for trust in TRUSTS:
        refused(path, trust, qualname(fn).replace("builtins.", ""), code="unsafe-global")


def test_a_payload_inside_the_state_dict_is_refused(package: ModuleType, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER_inside"
    model = package.Model()
    model.fc._buffers["hidden"] = Reduce(os.system, touch(marker))  # where state_dict() would look
    model.fc.__dict__["_forward_hooks"][0] = Reduce(os.system, touch(marker))
    path = saved(model, tmp_path / "inside.pt")
    for trust in TRUSTS:
        refused(path, trust, qualname(os.system))


def test_look_alike_packages_are_not_trusted_and_never_imported(package: ModuleType, tmp_path: Path) -> None:
    for name, trust in (("torch_fake", ["torch"]), (f"{PKG}_evil", [PKG])):
        lookalike = importlib.import_module(name)  # imported here only to pickle it: its marker goes now
        (tmp_path / f"MARKER_{name}").unlink()
        model = package.Model()
        model.fc = lookalike.Linear(2, 2)
        path = saved(model, tmp_path / f"{name}.pt")
        del sys.modules[name]
        err = refused(path, trust, f"{name}.Linear", code="untrusted-global")
        assert f"'{name}'" in str(err).split("pass trust=")[1].split("]")[0]
        assert name not in sys.modules


@pytest.mark.parametrize(
    "attribute", ["Model.__init__.__globals__", "Model.__dict__", "os.system", "Model.forward.__code__"]
)
def test_dotted_attribute_escapes_are_refused(attribute: str, package: ModuleType, tmp_path: Path) -> None:
    pkl = b"\x80\x04" + u(f"{PKG}.model") + u(attribute) + b"\x93" + b"."
    path = write_zip(tmp_path / "dotted.pt", torch_zip_members(pkl))
    for trust in TRUSTS:
        refused(path, trust, f"{PKG}.model.{attribute}", code="unsafe-global")


def test_calling_a_torch_function_is_refused(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    model.act = Reduce(torch._C._nn.gelu, torch.ones(2))  # a reference is fine; a call is not
    path = saved(model, tmp_path / "call.pt")
    for trust in (["torch"], []):
        refused(path, trust, "torch._C._nn.gelu", code="unsafe-call")


def test_a_trusted_function_is_never_called(package: ModuleType, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER_trusted_function"
    model = package.Model()
    model.payload = Reduce(package.make_marker, str(marker))
    path = saved(model, tmp_path / "fn.pt")
    error = refused(path, [PKG], f"{PKG}.model.make_marker", code="unsafe-call")
    assert f"allow_globals=['{PKG}.model.make_marker']" in str(error)  # the exact opt-in, copyable
    assert tw.load_model(path, trust=[PKG], allow_globals=[f"{PKG}.model.make_marker"]) is not None  # named: called
    assert marker.exists()  # the one way to run a function: name it exactly
    marker.unlink()


@pytest.mark.parametrize("protocol", [2, 4])
def test_getattr_chains_are_refused(protocol: int, package: ModuleType, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER_getattr"
    model = package.Model()
    model.payload = Reduce(Reduce(getattr, package.Model, "marker"), str(marker))  # a static method, then called
    path = saved(model, tmp_path / "getattr.pt", pickle_protocol=protocol)
    refused(path, [PKG], "getattr", code="unsafe-call")
    model = package.Model()
    model.payload = Reduce(Reduce(getattr, package.Model, "__init__"), model)
    path = saved(model, tmp_path / "dunder.pt", pickle_protocol=protocol)
    refused(path, [PKG], "__init__")


def test_trust_never_covers_dangerous_names(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER_trust"
    model = nn.Linear(2, 2)
    model.payload = Reduce(os.system, touch(marker))
    path = saved(model, tmp_path / "trust.pt")
    for trust in (["posix"], ["os"], ["builtins", "posix", "subprocess"]):
        error = refused(path, trust, qualname(os.system), code="unsafe-global")
        # load_model's own words: tw.open's "allow exactly these" would be wrong advice here
        assert "load_model never imports" in str(error) and "allow_globals=[" not in str(error), str(error)
        assert error.names == (qualname(os.system),)
    rename = {"torch.nn.modules.linear.Linear": "posix.system"}
    with pytest.raises(tw.UnsafeCheckpointError) as info:
        tw.load_model(saved(nn.Linear(2, 2), tmp_path / "rename.pt"), rename_classes=rename, trust=["posix"])
    assert "posix.system" in str(info.value)
    assert_no_markers(tmp_path)


def test_build_cannot_set_dunder_attributes(package: ModuleType, tmp_path: Path) -> None:
    model = package.Model()
    model.__dict__["__class__"] = "x"  # pickled into the instance state that BUILD applies
    path = saved(model, tmp_path / "build.pt")
    refused(path, [PKG], "__class__", code="unsafe-call")


class _Writer:
    """A class whose construction writes a file (as ``SummaryWriter`` or ``logging.FileHandler`` do)."""

    def __init__(self, path: str) -> None:
        Path(path).write_text("written")


@pytest.mark.parametrize("library", ["torch", "numpy", "logging"])
def test_trust_never_covers_torch_numpy_or_the_standard_library(
    library: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trust=["torch"]`` (or numpy, or a stdlib module) must not make every class of that library callable: some
    write files or start processes when built (``torch.utils.tensorboard.SummaryWriter``, ``logging.FileHandler``
    are neither torch's module classes nor dangerous by name). Such names need an exact ``allow_globals`` entry,
    and the message says so instead of suggesting a trust that would not work."""
    from torchweights.unpickle.trust import trust_verdict

    module = ModuleType(f"{library}.twm_writer")
    module.Writer = _Writer  # type: ignore[attr-defined]
    _Writer.__module__, _Writer.__qualname__ = module.__name__, "Writer"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    name = f"{library}.twm_writer.Writer"
    model = nn.Linear(2, 2)
    model.payload = Reduce(_Writer, str(tmp_path / "MARKER_writer"))
    path = saved(model, tmp_path / "library.pt")
    error = refused(path, [library], name, code="untrusted-global")
    assert "allow_globals" in str(error) and f"trust={[library]!r}" not in str(error), str(error)
    assert trust_verdict(name, [library]) == "untrusted" and trust_verdict(name, [library], [name]) == "trusted"
    # the real logging.FileHandler, trusted by package, is refused the same way
    assert trust_verdict("logging.FileHandler", ["logging"]) == "untrusted"
    assert trust_verdict("__main__.Net", ["__main__"]) == "trusted"
    # named exactly, the user's choice is honoured: the class is built (and writes its file)
    tw.load_model(path, allow_globals=[name])
    assert (tmp_path / "MARKER_writer").read_text() == "written"
    (tmp_path / "MARKER_writer").unlink()


def test_a_trusted_package_data_global_is_never_resolved(package: ModuleType, tmp_path: Path) -> None:
    """A pickle may name any attribute of a trusted package; a module-level dict named so could then be changed in
    place (SETITEM on the package's own registry). Pass 1 already refuses mutating a named global (bad-pickle);
    pass 2 on its own resolves only classes and functions, never data."""
    import io

    from torchweights.rebuild.unpickler import RebuildUnpickler
    from torchweights.unpickle.trust import TrustRules

    registry: dict[str, Any] = {}
    package.REGISTRY = registry  # type: ignore[attr-defined]
    name = package.__name__.encode()
    mutate = b"\x80\x02c" + name + b"\nREGISTRY\nX\x04\x00\x00\x00evilX\x03\x00\x00\x00yess."
    path = write_zip(tmp_path / "registry.pt", torch_zip_members(mutate, root="registry"))
    with pytest.raises(tw.TorchWeightsError):
        tw.load_model(path, trust=[PKG])
    rules = TrustRules(trust=(PKG,))
    for data in (mutate, b"\x80\x02c" + name + b"\nREGISTRY\n."):
        unpickler = RebuildUnpickler(io.BytesIO(data), rules, str(path), persistent_load=lambda pid: None)
        with pytest.raises(tw.UnsafeCheckpointError) as info:
            unpickler.load()
        assert info.value.code == "unsafe-call" and "REGISTRY" in str(info.value)
    assert registry == {}
