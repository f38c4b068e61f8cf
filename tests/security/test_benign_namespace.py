"""Benign: ``argparse.Namespace`` (how scripts save their command-line arguments: ``torch.save({"args": args,
...})``), nested namespaces, and ``types.SimpleNamespace``.

They come back as real namespaces equal to what ``torch.load(weights_only=False)`` returns (attributes set
straight into the instance dict, no descriptor run), and scan raises no alarm.
"""

from __future__ import annotations

import argparse
import types
from typing import Any

import pytest
import torch

from torchweights.unpickle.stream import unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _values(_: Any) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--name", default="run")
    parser.add_argument("--device", default=None)
    parser.add_argument("--amp", action="store_true")
    return {
        "args": parser.parse_args(["--lr", "0.01", "--layers", "4", "8", "--amp"]),
        "plain_args": argparse.Namespace(lr=0.1, name="run", layers=[1, 2], device=None),
        "nested_args": argparse.Namespace(model=argparse.Namespace(depth=12, heads=[4, 8]), seed=0),
        "empty_args": argparse.Namespace(),
        "simple_namespace": types.SimpleNamespace(depth=12, heads=[4, 8]),
        "simple_nested": types.SimpleNamespace(inner=types.SimpleNamespace(x=1), args=argparse.Namespace(y=2)),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("namespace"), _values, {"w": torch.arange(3.0)})


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("args", "plain_args", "nested_args", "empty_args"):
        assert type(got[key]) is argparse.Namespace and got[key] == expected[key], key
    assert type(got["nested_args"].model) is argparse.Namespace
    assert got["args"].layers == [4, 8] and got["args"].amp is True and got["args"].device is None
    for key in ("simple_namespace", "simple_nested"):
        assert type(got[key]) is types.SimpleNamespace and got[key] == expected[key], key
    assert type(got["simple_nested"].args) is argparse.Namespace


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_namespaces_load_as_torch_load_reads_them(saved: Benign, fmt: str) -> None:
    extras = load_benign(saved, fmt).extras
    check(extras, saved.reference[fmt])
    check(extras, saved.values)


@pytest.mark.parametrize("protocol", list(range(6)))
def test_namespaces_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_namespaces_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])
