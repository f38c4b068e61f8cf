"""Benign: a Lightning-style checkpoint: ``state_dict``, ``optimizer_states``, ``lr_schedulers``, ``loops``,
``callbacks`` (with a tensor inside), ``hyper_parameters`` as an ``AttributeDict``-like dict subclass holding
nested dicts and an ``argparse.Namespace``, a dataclass config holding an enum, version strings and counters.

The project's classes live in a module that is deleted before loading and leaves a marker if it is ever imported
or any of its code runs (``__setstate__``, ``__getattr__``): they come back as inert stubs keeping every bit of
their data, and the tensors are bit-identical to ``torch.load(weights_only=False)``. Scan warns about the unknown
classes; the enum member in the config pickles as a call of its class (``REDUCE(Color, (1,))``), which scan
cannot tell from a call of any function: a dangerous call until the class is allowed by name, then clean.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle
from torchweights.unpickle.values import Stub

from ._helpers import FORMATS, Benign, alarms, load_benign, save_benign

MODULE = "twbenign_cfg"
BODY = '''
import dataclasses
import enum


class Color(enum.Enum):
    RED = 1
    GREEN = "g"


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
UNKNOWN = {f"{MODULE}.TrainConfig", f"{MODULE}.Color", f"{MODULE}.AttributeDict"}


def _values(mod: Any) -> dict[str, Any]:
    return {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.2.0",
        "hparams_name": "kwargs",
        "hyper_parameters": mod.AttributeDict(
            lr=1e-3,
            betas=(0.9, 0.999),
            scheduler={"name": "cosine", "warmup": {"steps": 100}},
            args=argparse.Namespace(batch_size=32, precision="bf16-mixed"),
        ),
        "datamodule_hyper_parameters": mod.AttributeDict(root="/data", folds=[0, 1]),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 3}}}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0, 1]}]}],
        "lr_schedulers": [{"T_max": 10, "eta_min": 0, "base_lrs": [0.001], "last_epoch": 3, "_step_count": 4}],
        "config": mod.TrainConfig(lr=0.01, layers=[64, 32], name="small", color=mod.Color.GREEN),
        "color": mod.Color.RED,
    }


def _tensors() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    return {
        "state_dict": {"layer.weight": torch.randn(3, 3, generator=gen), "layer.bias": torch.zeros(3)},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5), "best_model_path": "best.ckpt"}},
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("lightning"), _values, _tensors(), module=(MODULE, BODY))


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Plain values equal; the module's classes are inert stubs that keep every bit of their data."""
    for key in ("epoch", "global_step", "pytorch-lightning_version", "hparams_name"):
        assert type(got[key]) is type(expected[key]) and got[key] == expected[key], key
    for key in ("loops", "optimizer_states", "lr_schedulers"):
        assert got[key] == expected[key], key
    hp = got["hyper_parameters"]
    assert isinstance(hp, Stub) and hp.cls == f"{MODULE}.AttributeDict"
    assert hp.dictitems == dict(expected["hyper_parameters"])
    assert type(hp.dictitems["args"]) is argparse.Namespace
    assert got["datamodule_hyper_parameters"].dictitems == dict(expected["datamodule_hyper_parameters"])
    config = got["config"]
    assert isinstance(config, Stub) and config.cls == f"{MODULE}.TrainConfig"
    attrs = config.attributes
    assert attrs["lr"] == 0.01 and attrs["layers"] == [64, 32] and attrs["name"] == "small"
    assert isinstance(attrs["color"], Stub) and attrs["color"].args == ("g",)
    assert {k: v for k, v in attrs.items() if k != "color"} == {
        k: v for k, v in vars(expected["config"]).items() if k != "color"
    }
    color = got["color"]
    assert isinstance(color, Stub) and color.cls == f"{MODULE}.Color" and color.args == (1,)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_lightning_checkpoint_loads_inert(saved: Benign, fmt: str) -> None:
    ckpt = load_benign(saved, fmt)  # imports nothing, runs nothing, tensors as torch.load reads them
    check(ckpt.extras, saved.reference[fmt])
    assert list(ckpt.records) == [
        "state_dict.layer.weight",
        "state_dict.layer.bias",
        "callbacks.ModelCheckpoint.best_model_score",
    ]
    assert ckpt.extras["callbacks.ModelCheckpoint.best_model_path"] == "best.ckpt"
    assert set(ckpt.globals) >= UNKNOWN


@pytest.mark.parametrize("protocol", list(range(6)))
def test_lightning_values_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)
    assert saved.module is not None
    saved.module.assert_untouched()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_lightning_checkpoint_raises_no_alarm_once_its_enum_is_trusted(saved: Benign, fmt: str) -> None:
    (call,) = alarms(scan(saved.files[fmt]))
    assert call.code == "dangerous-call" and call.name == f"{MODULE}.Color" and "Enum" in call.message
    report = scan(saved.files[fmt], allow_globals=[f"{MODULE}.Color"])
    assert report.verdict == "clean" and not alarms(report)
    assert {f.name for f in report.findings if f.severity == "warning"} == UNKNOWN - {f"{MODULE}.Color"}
    assert saved.module is not None
    saved.module.assert_untouched()
