"""Benign: ``collections.OrderedDict``, first of all ``model.state_dict()`` itself (an OrderedDict carrying a
``_metadata`` attribute with per-module versions), and OrderedDicts of plain values (configs, per-layer stats).

Order is kept exactly, tensors are bit-identical to ``torch.load(weights_only=False)``, and scan raises no alarm.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import torch

from torchweights.unpickle.stream import unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def _values(_: Any) -> dict[str, Any]:
    return {
        "ordered": collections.OrderedDict([("b", 1), ("a", 2), ("c", [3])]),
        "nested_ordered": collections.OrderedDict(
            [("z", collections.OrderedDict([("y", 1.5)])), ("a", {"plain": collections.OrderedDict()})]
        ),
        "empty_ordered": collections.OrderedDict(),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    tensors = {"state_dict": _model().state_dict(), "ema": collections.OrderedDict(w=torch.ones(2))}
    return save_benign(tmp_path_factory.mktemp("ordered"), _values, tensors)


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("ordered", "nested_ordered", "empty_ordered"):
        assert type(got[key]) is collections.OrderedDict, key
        assert list(got[key].items()) == list(expected[key].items()), key
    assert type(got["nested_ordered"]["z"]) is collections.OrderedDict


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_ordered_dicts_load_as_torch_load_reads_them(saved: Benign, fmt: str) -> None:
    ckpt = load_benign(saved, fmt)  # names in state_dict() order, bit-identical tensors
    check(ckpt.extras, saved.reference[fmt])
    assert [n for n in ckpt.records if n.startswith("state_dict.")] == [
        f"state_dict.{k}" for k in saved.reference[fmt]["state_dict"]
    ]
    assert hasattr(saved.reference[fmt]["state_dict"], "_metadata")  # what state_dict() pickles, and it reads


@pytest.mark.parametrize("protocol", list(range(6)))
def test_ordered_dicts_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_ordered_dicts_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])
