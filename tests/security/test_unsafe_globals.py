"""Pickles that would run code under ``pickle.load`` / ``torch.load(weights_only=False)``.

Every payload is checked three ways: as a raw pickle, inside a real ``torch.save`` zip, and inside a legacy
``torch.save`` file. torchweights must refuse each with :class:`UnsafeCheckpointError` (code ``unsafe-global``)
naming the global, say that nothing was executed, and indeed execute nothing: a marker file the payload would
create never appears. A canary test proves each payload really does create its marker under ``pickle.loads``.
"""

from __future__ import annotations

import builtins
import copyreg
import functools
import operator
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import (
    CorruptCheckpointError,
    TorchWeightsError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)
from torchweights.unpickle import Global, Stub, classify_global, unpickle

# --------------------------------------------------------------------------------------------------------------
# Payloads: objects whose pickle calls a dangerous global with arguments that create ``marker``
# --------------------------------------------------------------------------------------------------------------


class Reduce:
    """Pickles as ``fn(*args)``: what every pickle exploit boils down to."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _touch(marker: Path) -> str:
    return f"touch {marker}"


PAYLOADS: dict[str, tuple[Callable[[Path], Any], str]] = {
    # name: (payload factory, a global the refusal must name)
    "os.system": (lambda m: Reduce(os.system, _touch(m)), f"{os.system.__module__}.system"),
    "builtins.eval": (lambda m: Reduce(builtins.eval, f"open({str(m)!r}, 'w').close()"), "builtins.eval"),
    "builtins.exec": (lambda m: Reduce(builtins.exec, f"open({str(m)!r}, 'w').close()"), "builtins.exec"),
    "subprocess.Popen": (lambda m: Reduce(subprocess.Popen, ["touch", str(m)]), "subprocess.Popen"),
    "functools.partial": (
        lambda m: Reduce(functools.partial(os.system, _touch(m))),
        "functools.partial",
    ),
    "operator.methodcaller": (
        lambda m: Reduce(operator.methodcaller("__call__", _touch(m)), os.system),
        "operator.methodcaller",
    ),
    "builtins.compile+exec": (
        lambda m: Reduce(builtins.exec, Reduce(builtins.compile, f"open({str(m)!r}, 'w')", "<x>", "exec")),
        "builtins.compile",
    ),
    "dangerous-reference-only": (lambda m: {"not even called": os.system}, f"{os.system.__module__}.system"),
}


def _canary_code(payloads: dict[str, bytes]) -> str:
    return textwrap.dedent(
        f"""
        import pickle, time
        for name, data in {payloads!r}.items():
            try:
                pickle.loads(data)
            except Exception:
                pass
        time.sleep(0.5)
        """
    )


def test_canary_payloads_really_run_code_under_pickle(tmp_path: Path) -> None:
    """Without this, 'the marker was never created' would prove nothing."""
    payloads = {
        name: pickle.dumps(make(tmp_path / name), protocol=2)
        for name, (make, _) in PAYLOADS.items()
        if name != "dangerous-reference-only"
    }
    subprocess.run([sys.executable, "-c", _canary_code(payloads)], check=True, cwd=tmp_path, timeout=60)
    for name in payloads:
        assert (tmp_path / name).exists(), f"payload {name} does not run code under pickle.loads"


def _assert_refused(info: pytest.ExceptionInfo[UnsafeCheckpointError], global_name: str) -> None:
    err = info.value
    assert err.code == "unsafe-global"
    assert "Nothing was executed" in str(err)
    assert f"'{global_name}'" in str(err), str(err)


def _markers(folder: Path) -> list[Path]:
    return sorted(folder.glob("MARKER*"))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_raw_pickle_payload_is_refused(tmp_path: Path, name: str, protocol: int) -> None:
    make, global_name = PAYLOADS[name]
    data = pickle.dumps({"w": [1.0, 2.0], "payload": make(tmp_path / "MARKER")}, protocol=protocol)
    with pytest.raises(UnsafeCheckpointError) as info:
        unpickle(data)
    _assert_refused(info, global_name)
    path = tmp_path / "payload.pkl"
    path.write_bytes(data)
    if protocol >= 2:
        with pytest.raises(UnsafeCheckpointError) as info:
            tw.open(path)
        _assert_refused(info, global_name)
    else:  # detect() may call a protocol 0/1 pickle a text file or unknown: refused before any unpickling
        with pytest.raises(TorchWeightsError):
            tw.open(path)
    time.sleep(0.05)
    assert _markers(tmp_path) == []


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_torch_save_payload_is_refused(tmp_path: Path, name: str, protocol: int, legacy: bool) -> None:
    make, global_name = PAYLOADS[name]
    path = tmp_path / "model.pt"
    checkpoint = {"state_dict": {"w": torch.ones(3)}, "payload": make(tmp_path / "MARKER")}
    torch.save(checkpoint, path, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    for verb in (tw.open, tw.load):
        with pytest.raises(UnsafeCheckpointError) as info:
            verb(path)
        _assert_refused(info, global_name)
    time.sleep(0.05)
    assert _markers(tmp_path) == []


def test_torch_load_recursion_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner.pt"
    torch.save({"payload": Reduce(os.system, _touch(tmp_path / "MARKER"))}, inner)
    outer = tmp_path / "outer.pt"
    torch.save({"w": torch.ones(1), "nested": Reduce(torch.load, str(inner))}, outer)
    with pytest.raises(UnsafeCheckpointError) as info:
        tw.open(outer)
    _assert_refused(info, "torch.serialization.load")
    assert _markers(tmp_path) == []


# --------------------------------------------------------------------------------------------------------------
# Hand-written opcode sequences: globals spelled every way pickle allows
# --------------------------------------------------------------------------------------------------------------


def _u(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def _hand_written(marker: Path) -> Iterator[tuple[str, bytes, str]]:
    cmd = _touch(marker)
    system = os.system.__module__
    # STACK_GLOBAL whose module and name strings come from the memo, written long before
    yield (
        "stack-global-from-memo",
        b"\x80\x04" + _u(system) + b"\x94" + _u("system") + b"\x94" + b"00" + _u(cmd) + b"\x94"
        b"0h\x00h\x01\x93h\x02\x85R.",
        f"{system}.system",
    )
    yield "stack-global-os", b"\x80\x04" + _u("os") + _u("system") + b"\x93" + _u(cmd) + b"\x85R.", "os.system"
    # protocol 0 INST: instantiate-and-call in one opcode
    yield "inst", f"(S'{cmd}'\nios\nsystem\n.".encode(), "os.system"
    # OBJ: the class is the first item after the MARK
    yield "obj", f"(cos\nsystem\nS'{cmd}'\no.".encode(), "os.system"
    # protocol 0 GLOBAL + REDUCE, Python 2 names mapped to Python 3 (__builtin__ -> builtins)
    yield "py2-builtin-eval", f"c__builtin__\neval\n(S'open({str(marker)!r}, \"w\")'\ntR.".encode(), "builtins.eval"
    # getattr chains: getattr(<the builtins module>, 'eval')(...)
    yield (
        "getattr-main-builtins-eval",
        b"\x80\x02c__builtin__\ngetattr\nc__main__\n__builtins__\n" + _u("eval") + b"\x86R"
        b"(" + _u(f"open({str(marker)!r}, 'w')") + b"tR.",
        "__main__.__builtins__.eval",
    )
    yield (
        "getattr-reexported-os",
        b"\x80\x02c__builtin__\ngetattr\nctorch\nos\n" + _u("system") + b"\x86R" + _u(cmd) + b"\x85R.",
        "torch.os.system",
    )
    yield (
        "getattr-import",
        b"\x80\x02c__builtin__\ngetattr\nc__builtin__\n__import__\n" + _u("os") + b"\x85R" + _u("system") + b"\x86R"
        b"" + _u(cmd) + b"\x85R.",
        "builtins.__import__",
    )
    yield (
        "getattr-subclasses",
        b"\x80\x02c__builtin__\ngetattr\nc__builtin__\nobject\n" + _u("__subclasses__") + b"\x86R)R.",
        "builtins.object.__subclasses__",
    )
    yield (
        "dotted-stack-global",
        b"\x80\x04" + _u("torch") + _u("os.system") + b"\x93" + _u(cmd) + b"\x85R.",
        "torch.os.system",
    )
    yield "import-module", b"\x80\x02cimportlib\nimport_module\n" + _u("os") + b"\x85R.", "importlib.import_module"
    yield (
        "torch-load",
        b"\x80\x02ctorch.serialization\nload\n" + _u(str(marker)) + b"\x85R.",
        "torch.serialization.load",
    )
    yield "load-from-bytes", b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x00\x85R.", "torch.storage._load_from_bytes"
    # dangerous, then garbage: the refusal wins over "corrupt"
    yield "dangerous-then-garbage", b"\x80\x02cos\nsystem\n" + _u(cmd) + b"\x85R\xff", "os.system"


@pytest.mark.parametrize("case", [c[0] for c in _hand_written(Path("MARKER"))])
def test_hand_written_payload_is_refused(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "MARKER"
    _, data, global_name = next(c for c in _hand_written(marker) if c[0] == case)
    with pytest.raises(UnsafeCheckpointError) as info:
        unpickle(data)
    _assert_refused(info, global_name)
    zipped = tmp_path / "model.pt"
    _write_zip(zipped, data)
    with pytest.raises(UnsafeCheckpointError) as info:
        tw.load(zipped)
    _assert_refused(info, global_name)
    assert _markers(tmp_path) == []


def _write_zip(path: Path, pkl: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")


def test_extension_codes_name_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    copyreg.add_extension(os.system.__module__, "system", 0x7FEE)
    try:
        data = pickle.dumps(Reduce(os.system, _touch(marker)), protocol=2)
        assert b"\x83" in data  # EXT2
        with pytest.raises(UnsafeCheckpointError) as info:
            unpickle(data)
        _assert_refused(info, f"{os.system.__module__}.system")
        zipped = tmp_path / "ext.pt"
        torch.save({"w": torch.ones(1), "payload": Reduce(os.system, _touch(marker))}, zipped)
        with pytest.raises(UnsafeCheckpointError) as info:
            tw.open(zipped)
        _assert_refused(info, f"{os.system.__module__}.system")
    finally:
        copyreg.remove_extension(os.system.__module__, "system", 0x7FEE)
    with pytest.raises(CorruptCheckpointError) as corrupt:  # no longer registered: nothing to resolve, nothing run
        unpickle(data)
    assert corrupt.value.code == "bad-pickle"
    assert _markers(tmp_path) == []


def test_every_dangerous_global_is_named_once(tmp_path: Path) -> None:
    data = pickle.dumps(
        [Reduce(os.system, "x"), Reduce(os.system, "y"), Reduce(builtins.eval, "1"), subprocess.call], protocol=4
    )
    with pytest.raises(UnsafeCheckpointError) as info:
        unpickle(data)
    message = str(info.value)
    assert message.count(f"'{os.system.__module__}.system'") == 1
    assert "'builtins.eval'" in message and "'subprocess.call'" in message and "3 globals" in message


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
        "functools.partial",
        "functools.reduce",
        "copyreg._reconstructor.__globals__",
        "copyreg.add_extension",
        "torch.load",
        "torch.serialization.load",
        "torch.hub.load",
        "torch.jit.load",
        "torch.storage._load_from_bytes",
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
        ("torch.nn.modules.linear.Linear", "unknown"),
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
    marker = tmp_path / "MARKER-make"
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


def test_allowing_a_dangerous_global_is_the_users_choice(tmp_path: Path) -> None:
    data = pickle.dumps({"cwd": Reduce(os.getcwd)}, protocol=2)
    qual = f"{os.getcwd.__module__}.getcwd"
    with pytest.raises(UnsafeCheckpointError) as info:
        unpickle(data)
    _assert_refused(info, qual)
    assert unpickle(data, allow_globals=frozenset({qual})).value == {"cwd": os.getcwd()}


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
