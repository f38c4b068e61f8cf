"""Benign: ``collections.defaultdict`` with the usual factories (``list``, ``int``, ``dict``, ``set``, another
defaultdict's type), as metric accumulators and optimizer bookkeeping save them.

They come back as defaultdicts with the same factory and items as ``torch.load(weights_only=False)`` returns (the
factory is one of the builtin types, never an arbitrary callable from the file), and scan raises no alarm.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch

from torchweights.unpickle.stream import unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _values(_: Any) -> dict[str, Any]:
    nested: collections.defaultdict[str, Any] = collections.defaultdict(dict)
    nested["loss"]["train"] = 0.5
    return {
        "default": collections.defaultdict(list, {"x": [1, 2]}),
        "counts": collections.defaultdict(int, {"a": 3, "b": 0}),
        "nested": nested,
        "sets": collections.defaultdict(set, {"seen": {1, 2}}),
        "no_factory": collections.defaultdict(None, {"k": "v"}),
        "empty": collections.defaultdict(list),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("defaultdict"), _values, {"w": torch.arange(3.0)})


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("default", "counts", "nested", "sets", "no_factory", "empty"):
        assert type(got[key]) is collections.defaultdict, key
        assert got[key].default_factory is expected[key].default_factory, key
        assert got[key] == expected[key], key
    assert got["default"] == {"x": [1, 2]} and got["default"].default_factory is list


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_defaultdicts_load_as_torch_load_reads_them(saved: Benign, fmt: str) -> None:
    check(load_benign(saved, fmt).extras, saved.reference[fmt])


@pytest.mark.parametrize("protocol", list(range(6)))
def test_defaultdicts_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_defaultdicts_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])
