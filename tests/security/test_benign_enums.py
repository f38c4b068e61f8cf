"""Benign: enum members (a config's ``Color.RED``, by value; members pickled by name with
``enum.pickle_by_enum_name``; ``IntEnum`` and ``Flag``), from a project module that is gone when the file is read.

The module is deleted before loading and leaves a marker if it is ever imported or any of its code runs: the
members come back as inert references holding their value or name, the classes are reported as unknown
(warnings, not alarms), and nothing runs.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
import torch

from torchweights.unpickle import Global, Stub, unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign

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
UNKNOWN = {f"{MODULE}.{name}" for name in ("Color", "Level", "Perm", "Strict")} | {f"{MODULE}.ByName.ALPHA"}


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
def test_enum_members_raise_no_alarm(saved: Benign, fmt: str) -> None:
    # by name: getattr(ByName, 'ALPHA'), so the class and the member are both referenced
    assert_clean_scan(saved.files[fmt], unknown=UNKNOWN | {f"{MODULE}.ByName"})
    assert saved.module is not None
    saved.module.assert_untouched()
