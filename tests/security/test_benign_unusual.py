"""Benign but unusual values next to the weights: they come back as real data in ``Checkpoint.extras`` (or as
inert stubs for classes torchweights does not know), and nothing from the file is imported or run to get them.

The classes the checkpoint uses (an Enum, a dataclass config, a Lightning-style ``AttributeDict``) live in a
module that is deleted before loading, and that writes a marker file if it is ever imported or if any of its code
runs again.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import decimal
import fractions
import pathlib
import pickle
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchweights.api as tw
from torchweights.unpickle import Global, Stub, unpickle

MODULE = "twbenign_cfg"
STDLIB = frozenset(sys.stdlib_module_names)

MODULE_SOURCE = '''
import dataclasses
import enum
import os

ARMED = {armed!r}
MARKER = {marker!r}


def _trip(what):
    if os.path.exists(ARMED):
        with open(MARKER, "a") as f:
            f.write(what + "\\n")


_trip("import")


class Color(enum.Enum):
    RED = 1
    GREEN = "g"


class ByName(enum.Enum):
    ALPHA = (1, 2)
    __reduce_ex__ = enum.pickle_by_enum_name


@dataclasses.dataclass
class TrainConfig:
    lr: float
    layers: list
    name: str
    color: Color

    def __setstate__(self, state):
        _trip("setstate")
        self.__dict__.update(state)


class AttributeDict(dict):
    """Lightning's hparams container: a dict whose keys are also attributes."""

    def __getattr__(self, key):
        _trip("getattr")
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(key) from exc

    def __setstate__(self, state):
        _trip("setstate")
'''


@dataclass
class Saved:
    """Everything written while the module existed."""

    folder: Path
    marker: Path
    values: dict[str, Any]
    files: dict[str, Path]
    raw: dict[int, bytes]


def _values(mod: Any) -> dict[str, Any]:
    return {
        "np_f64": np.float64(1.5),
        "np_i32": np.int32(-7),
        "np_bool": np.bool_(True),
        "np_f16": np.float16(0.25),
        "np_arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "np_obj": np.array([1, "a", None, [2]], dtype=object),
        "np_fortran": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        "np_big_endian": np.arange(5, dtype=">f8"),
        "np_dtype": np.dtype("int16"),
        "np_dtype_big_endian": np.dtype(">u4"),
        "np_struct": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "np_datetime": np.array(["2024-01-02", "2024-03-04"], dtype="datetime64[D]"),
        "np_strings": np.array(["ab", "cde"]),
        "args": argparse.Namespace(lr=0.1, name="run", layers=[1, 2], device=None),
        "simple_namespace": types.SimpleNamespace(depth=12, heads=[4, 8]),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "default": collections.defaultdict(list, {"x": [1, 2]}),
        "counter": collections.Counter("abracadabra"),
        "deque": collections.deque([1, 2, 3], maxlen=5),
        "color": mod.Color.RED,
        "by_name": mod.ByName.ALPHA,
        "path": pathlib.Path("/data/run1/ckpt"),
        "pure_path": pathlib.PurePosixPath("relative/dir"),
        "windows_path": pathlib.PureWindowsPath("C:/runs/x"),
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc),
        "when_naive": datetime.datetime(2001, 2, 3),
        "day": datetime.date(2024, 1, 1),
        "delta": datetime.timedelta(hours=3, microseconds=5),
        "decimal": decimal.Decimal("1.10"),
        "fraction": fractions.Fraction(1, 3),
        "complex": 3 - 4j,
        "slice": slice(1, 10, 2),
        "set": {1, 2, (3, "x")},
        "frozenset": frozenset({"a", "b"}),
        "bytes": b"\x00\x01\xff",
        "bytearray": bytearray(b"xy"),
        "big_int": 2**100 + 1,
        "nan": float("nan"),
        "hyper_parameters": mod.AttributeDict(lr=1e-3, betas=(0.9, 0.999), scheduler={"name": "cosine"}),
        "hparams_name": "kwargs",
        "pytorch-lightning_version": "2.2.0",
        "epoch": 3,
        "global_step": 1000,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 3}}}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0, 1]}]}],
        "config": mod.TrainConfig(lr=0.01, layers=[64, 32], name="small", color=mod.Color.GREEN),
    }


def _tensors() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    return {
        "state_dict": {"layer.weight": torch.randn(3, 3, generator=gen), "layer.bias": torch.zeros(3)},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5), "best_model_path": "best.ckpt"}},
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    folder = tmp_path_factory.mktemp("benign")
    armed, marker = folder / "ARMED", folder / "MARKER"
    source = folder / f"{MODULE}.py"
    source.write_text(MODULE_SOURCE.format(armed=str(armed), marker=str(marker)))
    sys.path.insert(0, str(folder))
    try:
        mod = __import__(MODULE)
        values = _values(mod)
        checkpoint = {**_tensors(), **values}
        files = {}
        for name, kwargs in {
            "zip": {},
            "zip-protocol4": {"pickle_protocol": 4},
            "zip-protocol5": {"pickle_protocol": 5},
            "legacy": {"_use_new_zipfile_serialization": False},
        }.items():
            files[name] = folder / f"{name}.pt"
            torch.save(checkpoint, files[name], **kwargs)
        raw = {p: pickle.dumps(values, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)}
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)
    source.unlink()
    for cache in folder.glob("__pycache__"):
        for f in cache.iterdir():
            f.unlink()
        cache.rmdir()
    armed.touch()  # from now on, any code of the module that runs leaves a mark
    yield Saved(folder, marker, values, files, raw)
    assert not marker.exists(), marker.read_text()
    assert MODULE not in sys.modules


def _same_array(got: Any, expected: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == expected.dtype and got.dtype.str == expected.dtype.str
    assert got.shape == expected.shape
    assert got.flags.f_contiguous == expected.flags.f_contiguous
    assert got.flags.c_contiguous == expected.flags.c_contiguous
    if expected.dtype.hasobject:
        assert got.tolist() == expected.tolist()
    else:
        assert got.tobytes(order="A") == expected.tobytes(order="A")
    assert got.flags.writeable


def check_values(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every benign value came back as the same real data (or, for the module's classes, an inert stub)."""
    for key in ("np_f64", "np_i32", "np_bool", "np_f16"):
        assert type(got[key]) is type(expected[key]) and got[key] == expected[key], key
    for key in ("np_arr", "np_obj", "np_fortran", "np_big_endian", "np_struct", "np_datetime", "np_strings"):
        _same_array(got[key], expected[key])
    for key in ("np_dtype", "np_dtype_big_endian"):
        assert isinstance(got[key], np.dtype) and got[key] == expected[key] and got[key].str == expected[key].str
    assert got["args"] == expected["args"] and isinstance(got["args"], argparse.Namespace)
    assert got["simple_namespace"] == expected["simple_namespace"]
    assert type(got["simple_namespace"]) is types.SimpleNamespace
    assert type(got["ordered"]) is collections.OrderedDict and list(got["ordered"].items()) == [("b", 1), ("a", 2)]
    assert type(got["default"]) is collections.defaultdict and got["default"].default_factory is list
    assert got["default"] == {"x": [1, 2]}
    assert type(got["counter"]) is collections.Counter and got["counter"] == expected["counter"]
    assert type(got["deque"]) is collections.deque and got["deque"] == expected["deque"] and got["deque"].maxlen == 5
    # paths come back as pure paths: same text, no file system access
    assert got["path"] == pathlib.PurePosixPath("/data/run1/ckpt") and isinstance(got["path"], pathlib.PurePath)
    assert got["pure_path"] == expected["pure_path"] and got["windows_path"] == expected["windows_path"]
    for key in ("when", "when_naive", "day", "delta", "decimal", "fraction", "complex", "slice", "set", "frozenset"):
        assert type(got[key]) is type(expected[key]) and got[key] == expected[key], key
    assert got["when"].tzinfo is datetime.timezone.utc
    assert str(got["decimal"]) == "1.10"
    for key in ("bytes", "bytearray", "big_int", "hparams_name", "pytorch-lightning_version", "epoch", "global_step"):
        assert type(got[key]) is type(expected[key]) and got[key] == expected[key], key
    assert got["nan"] != got["nan"]
    assert got["loops"] == expected["loops"] and got["optimizer_states"] == expected["optimizer_states"]
    # the module's own classes: inert stubs that keep every bit of their data
    color = got["color"]
    assert isinstance(color, Stub) and color.cls == f"{MODULE}.Color" and color.args == (1,)
    by_name = got["by_name"]
    assert isinstance(by_name, Global) and by_name.qualname == f"{MODULE}.ByName.ALPHA"
    hp = got["hyper_parameters"]
    assert isinstance(hp, Stub) and hp.cls == f"{MODULE}.AttributeDict"
    assert hp.dictitems == {"lr": 1e-3, "betas": (0.9, 0.999), "scheduler": {"name": "cosine"}}
    config = got["config"]
    assert isinstance(config, Stub) and config.cls == f"{MODULE}.TrainConfig"
    attrs = config.attributes
    assert attrs["lr"] == 0.01 and attrs["layers"] == [64, 32] and attrs["name"] == "small"
    assert isinstance(attrs["color"], Stub) and attrs["color"].args == ("g",)


@pytest.mark.parametrize("fmt", ["zip", "zip-protocol4", "zip-protocol5", "legacy"])
def test_benign_values_are_extras(saved: Saved, fmt: str) -> None:
    before = set(sys.modules)
    ckpt = tw.open(saved.files[fmt])
    check_values(ckpt.extras, saved.values)
    assert list(ckpt.records) == [
        "state_dict.layer.weight",
        "state_dict.layer.bias",
        "callbacks.ModelCheckpoint.best_model_score",
    ]
    assert ckpt.extras["callbacks.ModelCheckpoint.best_model_path"] == "best.ckpt"
    assert {f"{MODULE}.TrainConfig", f"{MODULE}.Color", f"{MODULE}.AttributeDict"} <= set(ckpt.globals)
    tensors = tw.load(ckpt)
    expected = _tensors()
    for name, value in expected["state_dict"].items():
        assert torch.equal(tensors[f"state_dict.{name}"], value)
    assert torch.equal(tensors["callbacks.ModelCheckpoint.best_model_score"], torch.tensor(0.5))
    # nothing was imported for the file: at most torchweights' own lazy imports and the stdlib they use
    new_modules = {m for m in set(sys.modules) - before if m.split(".")[0] not in {"torchweights", *STDLIB}}
    assert not new_modules, new_modules
    assert not saved.marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_benign_values_from_raw_pickles(saved: Saved, protocol: int) -> None:
    result = unpickle(saved.raw[protocol])
    check_values(result.value, saved.values)
    assert not saved.marker.exists()


def test_benign_extras_are_independent_copies(saved: Saved) -> None:
    # arrays are new writable buffers, not views of the file
    first = tw.open(saved.files["zip"]).extras["np_arr"]
    first[0, 0] = 100.0
    assert tw.open(saved.files["zip"]).extras["np_arr"][0, 0] == 0.0
