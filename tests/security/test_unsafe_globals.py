"""The policy behind every refusal: which globals are dangerous, safe or unknown (``classify_global``), what
happens to unknown classes (inert stubs, never imported) and to globals the user allows by name (imported and
called for real, exactly those). The attack families themselves are in ``test_attack_*.py``.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import CorruptCheckpointError, UnsupportedCheckpointError
from torchweights.unpickle.policy import classify_global
from torchweights.unpickle.stream import unpickle
from torchweights.unpickle.values import Global, Stub

from ._helpers import Reduce, assert_refused, qualname, refusal
from ._helpers import u as _u


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "posix.system",
        "nt.system",
        "subprocess.check_output",
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr.__call__",
        "builtins.__import__",
        "builtins.open",
        "builtins.type",
        "__builtin__.eval",
        "sys.exit",
        "shutil.rmtree",
        "socket.create_connection",
        "importlib.import_module",
        "runpy.run_path",
        "pickle.loads",
        "_pickle.loads",
        "marshal.loads",
        "types.FunctionType",
        "code.InteractiveInterpreter",
        "pydoc.locate",
        "webbrowser.open",
        "ctypes.CDLL",
        "operator.attrgetter",
        "_operator.attrgetter",
        "functools.reduce",
        "copyreg._reconstructor.__globals__",
        "copyreg.add_extension",
        "torch.load",
        "torch.serialization.load",
        "torch.hub.load",
        "torch.jit.load",
        "torch.os.system",
        "torch.nn.modules.module.sys.modules",
        "numpy.load",
        "numpy.lib.npyio.load",
        "numpy.lib._npyio_impl.load",
        "numpy.testing.rundocs",
        "anything.__reduce__",
        "mylib.helpers.__builtins__",
    ],
)
def test_classify_dangerous(name: str) -> None:
    assert classify_global(name) == "dangerous"


@pytest.mark.parametrize(
    "name,kind",
    [
        ("torch._utils._rebuild_tensor_v2", "safe"),
        ("torch.FloatStorage", "safe"),
        ("collections.OrderedDict", "safe"),
        ("builtins.getattr", "safe"),  # answered inertly; what it reaches is classified on its own
        ("numpy.core.multiarray._reconstruct", "safe"),
        ("torch.nn.modules.linear.Linear", "known"),  # torch's own classes: tools/make_torch_classes.py
        ("torch.nn.functional.relu", "known"),
        ("torch.nn.parameter.UninitializedParameter", "known"),
        ("ultralytics.nn.tasks.DetectionModel", "unknown"),
        ("my_project.models.Net", "unknown"),
        ("__main__.MyModel", "unknown"),
        ("builtins.print", "unknown"),
        ("enum.Enum", "unknown"),
    ],
)
def test_classify_benign(name: str, kind: str) -> None:
    assert classify_global(name) == kind


# --------------------------------------------------------------------------------------------------------------
# Unknown and allowed globals
# --------------------------------------------------------------------------------------------------------------


def test_unknown_class_from_missing_module_is_a_stub() -> None:
    data = b"\x80\x02cno_such_package.sub\nThing\n)\x81}" + _u("x") + b"K\x01sb."
    result = unpickle(data)
    assert isinstance(result.value, Stub) and result.value.cls == "no_such_package.sub.Thing"
    assert result.value.attributes == {"x": 1}
    assert "no_such_package.sub.Thing" in result.globals
    assert "no_such_package" not in sys.modules


ALLOWED_SOURCE = """
import os
MARKER = {marker!r}


class MyClass:
    def __init__(self, value):
        self.value = value
        self.created = True

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.restored = True


def make(value):
    with open(MARKER, "a") as f:
        f.write("make called\\n")
    return ("made", value)
"""


@pytest.fixture
def allowed_module(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An importable module ``twsec_allowed`` with a class and a function; removed again afterwards."""
    name = "twsec_allowed"
    marker = tmp_path / "ALLOWED-make"  # the user allows this one to run: not a payload's marker
    (tmp_path / f"{name}.py").write_text(ALLOWED_SOURCE.format(marker=str(marker)))
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, marker
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def _dump_with_module(name: str, protocol: int = 2) -> bytes:
    module = __import__(name)
    data = pickle.dumps({"obj": module.MyClass(5), "made": Reduce(module.make, 7)}, protocol=protocol)
    del sys.modules[name]
    return data


def test_not_allowed_means_not_imported(allowed_module: tuple[str, Path]) -> None:
    name, marker = allowed_module
    data = _dump_with_module(name)
    value = unpickle(data).value
    assert isinstance(value["obj"], Stub) and value["obj"].attributes == {"value": 5, "created": True}
    assert isinstance(value["made"], Stub) and value["made"].cls == f"{name}.make" and value["made"].args == (7,)
    assert name not in sys.modules and not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_allowed_class_is_really_constructed(allowed_module: tuple[str, Path], protocol: int) -> None:
    name, marker = allowed_module
    data = _dump_with_module(name, protocol)
    value = unpickle(data, allow_globals=frozenset({f"{name}.MyClass"})).value
    obj = value["obj"]
    assert type(obj).__name__ == "MyClass" and type(obj).__module__ == name
    assert obj.value == 5 and obj.created and obj.restored  # its own __setstate__ ran: the user allowed it
    assert isinstance(value["made"], Stub)  # only exactly what was allowed
    assert not marker.exists()


def test_allowed_function_is_called(allowed_module: tuple[str, Path], tmp_path: Path) -> None:
    name, marker = allowed_module
    data = _dump_with_module(name)
    value = unpickle(data, allow_globals=frozenset({f"{name}.make", f"{name}.MyClass"})).value
    assert value["made"] == ("made", 7)
    assert marker.read_text() == "make called\n"


def test_allowed_globals_through_tw_open(allowed_module: tuple[str, Path], tmp_path: Path) -> None:
    name, _ = allowed_module
    module = __import__(name)
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.arange(3.0), "cfg": module.MyClass({"lr": 0.1})}, path)
    del sys.modules[name]
    stub = tw.open(path).extras["cfg"]
    assert isinstance(stub, Stub) and name not in sys.modules
    ckpt = tw.open(path, allow_globals=[f"{name}.MyClass"])
    assert type(ckpt.extras["cfg"]).__name__ == "MyClass" and ckpt.extras["cfg"].value == {"lr": 0.1}
    assert torch.equal(tw.load(path, allow_globals=[f"{name}.MyClass"])["w"], torch.arange(3.0))


def test_allowing_a_dangerous_global_never_imports_it(tmp_path: Path) -> None:
    """A name that runs code or touches the system by itself stays refused even when allowed: the machine never
    imports it (the verbs refuse such an allow list upfront, ``dangerous-allowed``)."""
    data = pickle.dumps({"cwd": Reduce(os.getcwd)}, protocol=2)
    qual = qualname(os.getcwd)
    assert_refused(refusal(unpickle, data), qual)
    assert_refused(refusal(unpickle, data, allow_globals=frozenset({qual})), qual)


def test_allowed_global_that_cannot_be_imported() -> None:
    data = b"\x80\x02cno_such_package_tw\nThing\n)R."
    with pytest.raises(UnsupportedCheckpointError) as info:
        unpickle(data, allow_globals=frozenset({"no_such_package_tw.Thing"}))
    assert info.value.code == "allowed-global-missing"


def test_allowed_global_that_fails_is_a_corrupt_checkpoint(allowed_module: tuple[str, Path]) -> None:
    name, _ = allowed_module
    data = b"\x80\x02c" + name.encode() + b"\nMyClass\n)R."  # MyClass() without its argument
    with pytest.raises(CorruptCheckpointError) as info:
        unpickle(data, allow_globals=frozenset({f"{name}.MyClass"}))
    assert "MyClass" in str(info.value)


def test_getattr_on_inert_objects_stays_inert() -> None:
    # bound methods pickle as getattr(obj, name) (LazyLinear's hooks do): allowed, and nothing is looked up
    data = b"\x80\x02c__builtin__\ngetattr\ncmy_project\nNet\n)\x81" + _u("_hook") + b"\x86R."
    result = unpickle(data)
    assert isinstance(result.value, Global) and result.value.qualname == "my_project.Net._hook"
    assert "my_project.Net._hook" in result.globals


def test_module_with_bound_method_hooks_opens(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.register_forward_hook(torch.nn.Identity().forward)  # pickled as getattr(<Identity>, 'forward')
    path = tmp_path / "hooked.pt"
    torch.save(model, path)
    ckpt = tw.open(path)
    assert list(ckpt.records) == list(model.state_dict())
    assert "builtins.getattr" in ckpt.globals
    assert "torch.nn.modules.linear.Identity.forward" in ckpt.globals
    lazy = tmp_path / "lazy.pt"
    torch.save(torch.nn.LazyLinear(3), lazy)  # its load hooks are bound methods too
    assert "torch.nn.modules.linear.LazyLinear._infer_parameters" in tw.open(lazy).globals
