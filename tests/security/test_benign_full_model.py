"""Benign: a whole pickled module (``torch.save(model)``): standard ``torch.nn`` layers inside a project model
class with a custom ``__setstate__``, a forward hook and a config object, from a module that is deleted before
loading and leaves a marker if any of its code runs.

``tw.load`` names and loads the tensors exactly as ``torch.load(weights_only=False).state_dict()`` has them, and
the classes stay inert stubs. Scan knows the ``torch.nn`` layers (no warning), warns about the project's classes,
and reports the one thing ``pickle.load`` would run that nobody vetted: the config's ``__reduce__`` function,
called with the config's values (a dangerous call, until the user allows it by name; then the file is clean).
(``tests/test_full_model_pickle.py`` checks the naming in depth.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan

from ._helpers import FORMATS, MarkerModule, alarms, assert_same_tensor, no_new_imports

MODULE = "twbenign_model"
BODY = """
import torch
from torch import nn


def rebuild_config(values):
    _trip("reduce callable")
    return Config(**values)


class Config:
    def __init__(self, **values):
        self.values = values

    def __reduce__(self):
        return rebuild_config, (self.values,)


def forward_hook(module, args, output):
    _trip("hook")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.rnn = nn.GRU(4, 4, batch_first=True)
        self.head = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Dropout(0.1), nn.Linear(8, 2))
        self.config = Config(width=4)
        self.register_buffer("steps", torch.tensor(3))
        self.register_forward_hook(forward_hook)

    def __setstate__(self, state):
        _trip("setstate")
        super().__setstate__(state)
"""


def _model(mod: Any) -> Any:
    torch.manual_seed(0)
    net = mod.Net()
    net.bn(torch.randn(6, 4))  # running statistics move
    return net


@dataclass
class Saved:
    module: MarkerModule
    files: dict[str, Path]  # format -> torch.save(model); "<format>-dict" -> torch.save({"model": model, ...})
    reference: dict[str, dict[str, torch.Tensor]]  # file -> torch.load(weights_only=False).state_dict()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    folder = tmp_path_factory.mktemp("full_model")
    module = MarkerModule(folder, MODULE, BODY)
    files, reference = {}, {}
    with module as mod:
        model = _model(mod)
        for fmt, kwargs in FORMATS.items():
            files[fmt] = folder / f"{fmt}.pt"
            torch.save(model, files[fmt], **kwargs)
            reference[fmt] = dict(torch.load(files[fmt], weights_only=False).state_dict())
            files[f"{fmt}-dict"] = folder / f"{fmt}-dict.pt"
            torch.save({"model": model, "epoch": 3}, files[f"{fmt}-dict"], **kwargs)
            loaded = torch.load(files[f"{fmt}-dict"], weights_only=False)["model"].state_dict()
            reference[f"{fmt}-dict"] = {f"model.{k}": v for k, v in loaded.items()}
    return Saved(module, files, reference)


FILES = [*FORMATS, *(f"{fmt}-dict" for fmt in FORMATS)]


@pytest.mark.parametrize("name", FILES)
def test_pickled_module_loads_as_its_state_dict(saved: Saved, name: str) -> None:
    with no_new_imports():
        tensors = tw.load(saved.files[name])
    expected = saved.reference[name]
    assert list(tensors) == list(expected)
    for key, value in expected.items():
        assert_same_tensor(tensors[key], value)
    saved.module.assert_untouched()


@pytest.mark.parametrize("name", FILES)
def test_pickled_module_reports_only_its_project_call(saved: Saved, name: str) -> None:
    report = scan(saved.files[name])
    assert report.verdict == "dangerous" and report.loads
    (call,) = alarms(report)
    assert call.code == "dangerous-call" and call.name == f"{MODULE}.rebuild_config"
    assert "1 argument: <dict of 1 items>" in call.message and "allow_globals" in call.message
    assert report.globals["torch.nn.modules.rnn.GRU"] == "known"
    saved.module.assert_untouched()


@pytest.mark.parametrize("name", FILES)
def test_pickled_module_raises_no_alarm_once_its_reduce_function_is_trusted(saved: Saved, name: str) -> None:
    report = scan(saved.files[name], allow_globals=[f"{MODULE}.rebuild_config"])
    assert report.verdict == "clean" and report.exit_code == 0 and not alarms(report)
    warnings = [f for f in report.findings if f.severity == "warning"]
    assert all(f.code == "unknown-global" for f in warnings)
    unknown = {f.name or "" for f in warnings}
    assert unknown == {f"{MODULE}.Net", f"{MODULE}.forward_hook"}  # torch.nn layers are known: no warning
    assert {n for n, v in report.globals.items() if v == "known"} >= {
        "torch.nn.modules.rnn.GRU",
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.container.Sequential",
    }
    saved.module.assert_untouched()
