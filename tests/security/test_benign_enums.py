"""Benign: enum members (a config's ``Color.RED``, by value; members pickled by name with
``enum.pickle_by_enum_name``; ``IntEnum`` and ``Flag``), from a project module that is gone when the file is read.

The module is deleted before loading and leaves a marker if it is ever imported or any of its code runs: the
members come back as inert references holding their value or name, and nothing runs.

Scan: a member by value pickles as a call of its class with the value (``REDUCE(Color, (1,))``), which is
exactly what a call of any function looks like; under the allow-list rule an unvetted call is a dangerous finding
whose message says how to trust the class (``allow_globals``), and with the classes allowed the file is clean.
A member by name (``getattr(ByName, 'ALPHA')``) is no call of the class: an unknown-class warning only.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
import torch

from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle
from torchweights.unpickle.values import Global, Stub

from ._helpers import CALL_OPS, FORMATS, Benign, load_benign, opcodes, save_benign

MODULE = "twbenign_enums"
BODY = """
import enum


class Color(enum.Enum):
    RED = 1
    GREEN = "g"


class ByName(enum.Enum):
    ALPHA = (1, 2)
    __reduce_ex__ = enum.pickle_by_enum_name


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 10


class Perm(enum.Flag):
    R = 4
    W = 2


class Strict(enum.Enum):
    ON = True

    def __new__(cls, value):
        _trip("new")
        obj = object.__new__(cls)
        obj._value_ = value
        return obj
"""
BY_VALUE = {f"{MODULE}.{name}" for name in ("Color", "Level", "Perm", "Strict")}
UNKNOWN = BY_VALUE | {f"{MODULE}.ByName.ALPHA"}


def _values(mod: Any) -> dict[str, Any]:
    return {
        "color": mod.Color.RED,
        "green": mod.Color.GREEN,
        "by_name": mod.ByName.ALPHA,
        "level": mod.Level.HIGH,
        "perm": mod.Perm.R | mod.Perm.W,
        "strict": mod.Strict.ON,
        "colors": [mod.Color.RED, mod.Color.RED],
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("enums"), _values, {"w": torch.arange(3.0)}, module=(MODULE, BODY))


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, cls in (
        ("color", "Color"),
        ("green", "Color"),
        ("level", "Level"),
        ("perm", "Perm"),
        ("strict", "Strict"),
    ):
        stub = got[key]
        assert isinstance(stub, Stub) and stub.cls == f"{MODULE}.{cls}", key
        assert stub.args == (expected[key].value,), key  # by value: the member's value, inert
    assert got["color"].args == (1,) and got["green"].args == ("g",)
    by_name = got["by_name"]
    assert isinstance(by_name, Global) and by_name.qualname == f"{MODULE}.ByName.ALPHA"
    assert [s.args for s in got["colors"]] == [(1,), (1,)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_enum_members_load_inert(saved: Benign, fmt: str) -> None:
    ckpt = load_benign(saved, fmt)  # imports nothing, runs nothing (the module would leave a mark)
    check(ckpt.extras, saved.reference[fmt])
    assert isinstance(saved.reference[fmt]["color"], enum.Enum)  # torch.load, while the module existed
    assert UNKNOWN - {f"{MODULE}.ByName.ALPHA"} <= set(ckpt.globals)


@pytest.mark.parametrize("protocol", list(range(6)))
def test_enum_members_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)
    assert saved.module is not None
    saved.module.assert_untouched()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_enum_members_by_value_are_calls_scan_cannot_vouch_for(saved: Benign, fmt: str) -> None:
    report = scan(saved.files[fmt])
    assert report.verdict == "dangerous" and report.loads  # tw.load reads it (inert stubs): only pickle.load calls
    calls = [f for f in report.findings if f.code == "dangerous-call"]
    assert {f.name for f in calls} == BY_VALUE
    data = saved.files[fmt].read_bytes() if fmt == "legacy" else None
    for finding in calls:
        assert finding.severity == "dangerous" and finding.offset is not None
        assert "1 argument" in finding.message and "Enum" in finding.message
        assert f"--allow-global {finding.name}" in finding.message
        if data is not None:  # the offset is the calling opcode, in the file's own bytes
            assert any(opcodes(data, start).get(finding.offset) in CALL_OPS for start in _starts(data))
    # a call is reported as the call, not also as an unknown class
    assert not {f.name for f in report.findings if f.code == "unknown-global"} & BY_VALUE
    assert saved.module is not None
    saved.module.assert_untouched()


def _starts(data: bytes) -> list[int]:
    from ._helpers import pickle_bounds

    return [start for start, _ in pickle_bounds(data, 5)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_enum_members_raise_no_alarm_once_their_classes_are_trusted(saved: Benign, fmt: str) -> None:
    # by name: getattr(ByName, 'ALPHA'), so the class and the member are both referenced (no call of the class)
    report = scan(saved.files[fmt], allow_globals=BY_VALUE)
    assert report.verdict == "clean", [(f.code, f.name) for f in report.findings]
    assert {f.name for f in report.findings if f.severity == "warning"} == {
        f"{MODULE}.ByName",
        f"{MODULE}.ByName.ALPHA",
    }
    assert all(report.globals[name] == "allowed" for name in BY_VALUE)
    assert saved.module is not None
    saved.module.assert_untouched()
