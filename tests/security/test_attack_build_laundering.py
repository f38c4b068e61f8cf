"""BUILD that changes code rather than data ("laundering"): no dangerous call in sight, yet after ``pickle.load``
something harmless-looking behaves differently.

* slot state ``(None, {'__class__': Evil})`` on an object: pickle sets slot state with ``setattr``, so the object
  becomes an ``Evil`` (whose ``__del__``, ``__eq__``... run later); the same for ``__reduce__``, ``__getattr__``...
* BUILD on a global: a module (``torch._utils``, whose ``_rebuild_tensor_v2`` every later ``torch.load`` calls), a
  class, or one of the reconstructors torchweights itself allows; pickle overwrites its attributes.

Refused as ``'<name> (attributes set by BUILD)'`` / ``'<class>.__class__ (set by BUILD)'``, flagged at the BUILD
opcode, and nothing is set anywhere (the real modules are checked afterwards).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle

from ._helpers import (
    NAMING_OPS,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    flagged,
    refusal,
    torch_zip_members,
    touch,
    u,
    wait_for,
    write_zip,
)

BUILD = frozenset({"BUILD"})
PACKAGE = "twsec_target"  # written by the canary test only; never imported in this process

# A package whose submodule, class and objects a payload rewires; written into a temporary folder for the canary.
PACKAGE_INIT = "from . import sub\n"
PACKAGE_SUB = textwrap.dedent(
    """
    import os

    MARKER = {marker!r}


    def hook(cmd):
        return "harmless"


    class Plain:
        @staticmethod
        def greet(cmd):
            return "hello"


    class Evil:
        def __del__(self):
            open(MARKER, "w").close()
    """
)


def _newobj(module: str, cls: str) -> bytes:
    return f"c{module}\n{cls}\n".encode() + b")\x81"


# name: (pickle from the shell command, names refused (the first is flagged at the BUILD opcode))
CASES: dict[str, tuple[Callable[[str], bytes], tuple[str, ...]]] = {
    "slot-class-swap": (
        lambda c: b"\x80\x02"
        + _newobj(f"{PACKAGE}.sub", "Plain")
        + b"N}"
        + u("__class__")
        + f"c{PACKAGE}.sub\nEvil\n".encode()
        + b"s\x86b.",
        (f"{PACKAGE}.sub.Plain.__class__ (set by BUILD)",),
    ),
    "slot-reduce": (
        lambda c: b"\x80\x02"
        + _newobj("my_project", "Cfg")
        + b"}"
        + u("lr")
        + b"G?\xb9\x99\x99\x99\x99\x99\x9as}"
        + u("__reduce__")
        + b"cmy_project\nrebuild\ns\x86b.",
        ("my_project.Cfg.__reduce__ (set by BUILD)",),
    ),
    "slot-getattr-on-namespace": (
        lambda c: b"\x80\x02cargparse\nNamespace\n)RN}" + u("__getattr__") + b"cmy_project\nlookup\ns\x86b.",
        ("argparse.Namespace.__getattr__ (set by BUILD)",),  # a real object is named by its type
    ),
    "build-on-module": (
        # torch._utils._rebuild_tensor_v2 = torch._utils._rebuild_parameter: every later torch.load is rewired
        lambda c: b"\x80\x02ctorch\n_utils\n}" + u("_rebuild_tensor_v2") + b"ctorch._utils\n_rebuild_parameter\nsb.",
        ("torch._utils (attributes set by BUILD)",),
    ),
    "build-on-module-with-payload": (
        lambda c: b"\x80\x02" + f"c{PACKAGE}\nsub\n}}".encode() + u("hook") + b"cos\nsystem\nsb.",
        (f"{PACKAGE}.sub (attributes set by BUILD)", "os.system"),
    ),
    "slot-build-on-class": (
        lambda c: b"\x80\x02" + f"c{PACKAGE}.sub\nPlain\nN}}".encode() + u("greet") + b"cos\nsystem\ns\x86b.",
        (f"{PACKAGE}.sub.Plain (attributes set by BUILD)", "os.system"),
    ),
    "build-on-allowed-reconstructor": (
        lambda c: b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}" + u("__defaults__") + b")sb.",
        ("torch._utils._rebuild_tensor_v2 (attributes set by BUILD)",),
    ),
    "build-on-safe-class": (
        lambda c: b"\x80\x02ccollections\nOrderedDict\nN}" + u("__init__") + b"cmy_project\ninit\ns\x86b.",
        ("collections.OrderedDict (attributes set by BUILD)",),
    ),
}

# What the canary does after pickle.loads, to show the code changed (each creates the marker only if it did).
AFTERWARDS = {
    "slot-class-swap": "del value",
    "build-on-module-with-payload": f"import {PACKAGE}; {PACKAGE}.sub.hook({{cmd!r}})",
    "slot-build-on-class": f"import {PACKAGE}; {PACKAGE}.sub.Plain.greet({{cmd!r}})",
}


@pytest.mark.parametrize("case", list(AFTERWARDS))
def test_canary_laundering_changes_code_under_pickle(tmp_path: Path, case: str) -> None:
    canary = tmp_path / "CANARY"
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text(PACKAGE_INIT)
    (package / "sub.py").write_text(PACKAGE_SUB.format(marker=str(canary)))
    cmd = touch(canary)
    data = CASES[case][0](cmd)
    code = f"import pickle, gc\nvalue = pickle.loads({data!r})\n{AFTERWARDS[case].format(cmd=cmd)}\ngc.collect()\n"
    baseline = f"import {PACKAGE}\n{AFTERWARDS[case].format(cmd=cmd).replace('del value', 'pass')}\n"
    subprocess.run([sys.executable, "-c", baseline], check=True, cwd=tmp_path, timeout=60)
    assert not canary.exists()  # without the pickle, the same calls are harmless
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=60)
    assert wait_for([canary]), case


@pytest.mark.parametrize("case", list(CASES))
def test_laundering_build_is_refused_and_flagged(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, names = CASES[case]
    data = make(touch(tmp_path / "MARKER"))
    assert_refused(refusal(unpickle, data), *names)
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    assert_refused(refusal(tw.load, path), *names)
    report = scan(path)
    finding = flagged(report, "dangerous-global", name=names[0], member="archive/data.pkl")
    assert_offset(finding, data, BUILD)
    assert "sets attributes" in finding.message
    for other in names[1:]:
        assert_offset(flagged(report, "dangerous-global", name=other), data, NAMING_OPS)
    if case == "build-on-module":
        assert_cli_flags(capsys, path, "dangerous-global")
    assert PACKAGE not in sys.modules and "my_project" not in sys.modules
    assert_no_markers(tmp_path)


def test_nothing_was_set_on_the_real_module(tmp_path: Path) -> None:
    """After tw.load and scan of the torch._utils rewiring, torch is intact and still loads files."""
    original = torch._utils._rebuild_tensor_v2
    data = CASES["build-on-module"][0]("")
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    refusal(tw.load, path)
    scan(path)
    assert torch._utils._rebuild_tensor_v2 is original
    clean = tmp_path / "clean.pt"
    torch.save({"w": torch.arange(3.0)}, clean)
    assert torch.equal(torch.load(clean)["w"], torch.arange(3.0))


def test_dict_state_with_dunder_keys_is_data(tmp_path: Path) -> None:
    """A dict state only fills the instance ``__dict__`` under pickle (no descriptor runs): an unknown class whose
    state has a key named ``__class__`` is an inert stub holding it, not an alarm."""
    data = b"\x80\x02" + _newobj("my_project", "Cfg") + b"}" + u("__class__") + u("text") + b"sb."
    value = unpickle(data).value
    assert value.cls == "my_project.Cfg" and value.attributes == {"__class__": "text"}
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    report = scan(path)
    assert report.verdict == "clean"
    assert not [f for f in report.findings if f.severity in ("dangerous", "suspicious")]
