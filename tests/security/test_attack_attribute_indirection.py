"""Reaching a dangerous function without naming it: ``builtins.getattr(<module>, 'system')``, dotted names
(``torch.os.system``, ``os.path.join``-style, resolved attribute by attribute from protocol 4 on),
``operator.attrgetter``, ``builtins.__dict__.get('eval')``, and dunders (``getattr(SomeClass, '__reduce__')``,
``().__class__``), the first step of every sandbox escape.

``getattr`` itself is allowed (bound methods pickle through it) but answered inertly: its result is a reference
named after what was asked for, classified like any global. The refusal names the spelled-out chain; scan flags
it at the call (or the STACK_GLOBAL) that builds it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.policy import classify_global
from torchweights.unpickle.stream import unpickle

from ._helpers import (
    CALL_OPS,
    NAMING_OPS,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    canary_in_process,
    flagged,
    opener,
    refusal,
    torch_zip_members,
    touch,
    u,
    wait_for,
    write_zip,
)

GETATTR = b"c__builtin__\ngetattr\n"


def _call1(arg: str) -> bytes:
    return u(arg) + b"\x85R"


# name: (pickle from the marker path, the name refused (and flagged), opcodes it is flagged at, canary is safe)
CASES: dict[str, tuple[Callable[[Path], bytes], str, frozenset[str], bool]] = {
    "getattr-reexported-module": (
        lambda m: b"\x80\x02" + GETATTR + b"ctorch\nos\n" + u("system") + b"\x86R" + _call1(touch(m)) + b".",
        "torch.os.system",
        CALL_OPS | NAMING_OPS,
        True,
    ),
    "getattr-main-builtins": (
        lambda m: b"\x80\x02"
        + GETATTR
        + b"c__main__\n__builtins__\n"
        + u("eval")
        + b"\x86R"
        + _call1(opener(m))
        + b".",
        "__main__.__builtins__.eval",
        CALL_OPS,
        True,
    ),
    "getattr-of-import": (
        lambda m: b"\x80\x02" + GETATTR + b"c__builtin__\n__import__\n" + _call1("os") + u("system") + b"\x86R"
        b"" + _call1(touch(m)) + b".",
        "builtins.__import__",
        NAMING_OPS,
        True,
    ),
    "dotted-stack-global": (
        lambda m: b"\x80\x04" + u("torch") + u("os.system") + b"\x93" + _call1(touch(m)) + b".",
        "torch.os.system",
        frozenset({"STACK_GLOBAL"}),
        True,
    ),
    "dotted-global-protocol-4": (
        lambda m: b"\x80\x04ctorch\nos.system\n" + _call1(touch(m)) + b".",
        "torch.os.system",
        frozenset({"GLOBAL"}),
        True,
    ),
    "dotted-through-os-path": (
        lambda m: b"\x80\x04" + u("os") + u("path.os.system") + b"\x93" + _call1(touch(m)) + b".",
        "os.path.os.system",
        frozenset({"STACK_GLOBAL"}),
        True,
    ),
    "dotted-deep-reexport": (
        lambda m: b"\x80\x04" + u("torch.nn.modules.module") + u("sys.modules") + b"\x93.",
        "torch.nn.modules.module.sys.modules",
        frozenset({"STACK_GLOBAL"}),
        False,
    ),
    "operator-attrgetter": (
        lambda m: b"\x80\x02coperator\nattrgetter\n"
        + _call1("system")
        + b"ctorch\nos\n\x85R"
        + _call1(touch(m))
        + b".",
        "operator.attrgetter",
        NAMING_OPS,
        True,
    ),
    "builtins-dict-get": (
        lambda m: b"\x80\x04" + u("builtins") + u("__dict__.get") + b"\x93" + _call1("exec") + _call1(opener(m)) + b".",
        "builtins.__dict__.get",
        frozenset({"STACK_GLOBAL"}),
        True,
    ),
    "getattr-builtins-dict": (
        lambda m: b"\x80\x02" + GETATTR + GETATTR + b"c__builtin__\n__dict__\n" + u("get") + b"\x86R"
        b"" + _call1("eval") + _call1(opener(m)) + b".",
        "builtins.__dict__",
        NAMING_OPS,
        False,  # pickle itself cannot fetch the builtins module's __dict__ by GLOBAL: reference only
    ),
    "getattr-class-reduce": (
        lambda m: b"\x80\x02" + GETATTR + b"ctorch.nn.modules.linear\nLinear\n" + u("__reduce__") + b"\x86R.",
        "torch.nn.modules.linear.Linear.__reduce__",
        CALL_OPS,
        False,
    ),
    "getattr-value-dunder": (
        lambda m: b"\x80\x02" + GETATTR + b")" + u("__class__") + b"\x86R.",
        "builtins.tuple.__class__",
        CALL_OPS,
        False,
    ),
    "getattr-subclasses": (
        lambda m: b"\x80\x02" + GETATTR + b"c__builtin__\nobject\n" + u("__subclasses__") + b"\x86R)R.",
        "builtins.object.__subclasses__",
        CALL_OPS,
        False,
    ),
}


@pytest.mark.parametrize("case", [name for name, c in CASES.items() if c[3]])
def test_canary_indirection_runs_code_under_pickle(tmp_path: Path, case: str) -> None:
    canary = tmp_path / "CANARY"
    canary_in_process(CASES[case][0](canary))  # each creates one file in tmp_path, nothing else
    assert wait_for([canary]), case


@pytest.mark.parametrize("case", list(CASES))
def test_indirection_is_refused_and_flagged(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, name, ops, _ = CASES[case]
    assert classify_global(name) == "dangerous"
    data = make(tmp_path / "MARKER")
    assert_refused(refusal(unpickle, data), name)
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    assert_refused(refusal(tw.load, path), name)
    finding = flagged(scan(path), "dangerous-global", name=name, member="archive/data.pkl")
    assert_offset(finding, data, ops)
    if case == "getattr-reexported-module":
        assert "getattr" in finding.message
        assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


def test_getattr_of_a_harmless_name_stays_inert(tmp_path: Path) -> None:
    """Bound methods pickle as ``getattr(obj, name)``: allowed, nothing looked up, the name only reported."""
    data = b"\x80\x02" + GETATTR + b"cmy_project\nNet\n)\x81" + u("_hook") + b"\x86R."
    path = write_zip(tmp_path / "model.pt", torch_zip_members(b"\x80\x02}" + u("hook") + data[2:-1] + b"s."))
    report = scan(path)
    assert report.verdict == "clean"
    assert [f.code for f in report.findings if f.severity != "info"] == ["unknown-global"] * 2
    assert report.globals["my_project.Net._hook"] == "unknown"
    assert report.globals["builtins.getattr"] == "safe"
    assert "my_project" not in sys.modules
