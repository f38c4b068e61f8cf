"""``torch.save(model)``: a whole pickled ``nn.Module`` whose class is gone by the time the file is read.

The model's module is written to a temporary file, imported, used to save, then removed from ``sys.modules`` and
``sys.path`` and deleted. It leaves a marker file if it is ever imported again, or if its ``__new__``,
``__setstate__``, a ``__reduce__`` callable or a hook runs. torchweights must name the tensors exactly as
``model.state_dict()`` does (non-persistent buffers excluded), load them bit for bit, and run none of it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights.api as tw
from security._helpers import MarkerModule
from torchweights.formats import ReadOptions, torch_zip
from torchweights.records import StorageRef
from torchweights.unpickle.stream import unpickle
from torchweights.unpickle.values import PickledStorage, Stub

MODULE = "twfull_model_defs"

# The module's code (``_trip`` comes from the shared marker prelude, see tests/security/_helpers.py).
MODULE_BODY = '''
import torch
from torch import nn


def rebuild_config(values):
    _trip("reduce callable")
    return Config(**values)


class Config:
    """Kept on the model as a plain attribute; pickles through __reduce__."""

    def __init__(self, **values):
        self.values = values

    def __reduce__(self):
        return rebuild_config, (self.values,)


def forward_hook(module, args, output):
    _trip("hook")


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("running", torch.arange(width, dtype=torch.float32))
        self.register_buffer("scratch", torch.ones(2), persistent=False)

    def __setstate__(self, state):
        _trip("setstate")
        super().__setstate__(state)

    def forward(self, x):
        return self.norm(self.lin(x)) + self.running


class Net(nn.Module):
    def __new__(cls, *args, **kwargs):
        _trip("new")
        return super().__new__(cls)

    def __init__(self, width=4):
        super().__init__()
        self.embed = nn.Embedding(10, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.heads = nn.ModuleDict(
            {
                "cls": nn.Linear(width, 3, bias=False),
                "reg": nn.Sequential(nn.Linear(width, 2), nn.ReLU(), nn.Linear(2, 1)),
            }
        )
        self.bn = nn.BatchNorm1d(width)
        self.conv = nn.Conv1d(width, width, 3, bias=False)
        self.register_buffer("step", torch.tensor(7))
        self.register_buffer("cache", torch.zeros(3), persistent=False)
        self.register_buffer("maybe", None)
        self.register_parameter("optional", None)
        self.scale = nn.Parameter(torch.tensor([0.5, 2.0], dtype=torch.float64))
        self.frozen = nn.Parameter(torch.linspace(0, 1, 6).to(torch.bfloat16).reshape(2, 3), requires_grad=False)
        self.tied = self.embed  # one module under two names: state_dict lists both
        self.config = Config(lr=0.1, layers=[4, 4])
        self.register_forward_hook(forward_hook)

    def __setstate__(self, state):
        _trip("setstate")
        super().__setstate__(state)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.heads["cls"](x)
'''


@dataclass
class Saved:
    folder: Path
    marker: Path
    state: dict[str, torch.Tensor]
    files: dict[str, Path]
    module: MarkerModule


def _train_a_little(model: Any) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(torch.tensor([[1, 2, 3]]))
    out.sum().backward()
    opt.step()
    model.bn(torch.randn(5, 4))  # moves running stats and num_batches_tracked


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Saved]:
    folder = tmp_path_factory.mktemp("full_model")
    module = MarkerModule(folder, MODULE, MODULE_BODY)
    with module as mod:
        torch.manual_seed(0)
        model = mod.Net()
        _train_a_little(model)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        files = {}
        for name, kwargs in {
            "zip": {},
            "zip-protocol4": {"pickle_protocol": 4},
            "legacy": {"_use_new_zipfile_serialization": False},
        }.items():
            files[name] = folder / f"{name}.pt"
            torch.save(model, files[name], **kwargs)
            files[f"{name}-nested"] = folder / f"{name}-nested.pt"
            torch.save({"model": model, "epoch": 3}, files[f"{name}-nested"], **kwargs)
    yield Saved(folder, module.marker, state, files, module)
    assert not module.marker.exists(), module.marker.read_text()


def _assert_untouched(saved: Saved) -> None:
    saved.module.assert_untouched()


def _assert_bit_identical(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape and got.stride() == expected.stride()
    assert torch.equal(
        got.contiguous().reshape(-1).view(torch.uint8), expected.contiguous().reshape(-1).view(torch.uint8)
    )


@pytest.mark.parametrize("fmt", ["zip", "zip-protocol4", "legacy"])
def test_names_are_state_dict_names(saved: Saved, fmt: str) -> None:
    ckpt = tw.open(saved.files[fmt])
    assert list(ckpt.records) == list(saved.state)
    assert "cache" not in ckpt.records and "blocks.0.scratch" not in ckpt.records  # non-persistent buffers
    assert "optional" not in ckpt.records and "maybe" not in ckpt.records  # None parameter / buffer
    assert "heads.cls.bias" not in ckpt.records  # bias=False
    assert "tied.weight" in ckpt.records and "embed.weight" in ckpt.records
    assert ckpt.records["scale"].is_parameter and ckpt.records["scale"].requires_grad
    assert not ckpt.records["frozen"].requires_grad and not ckpt.records["step"].is_parameter
    _assert_untouched(saved)


@pytest.mark.parametrize("fmt", ["zip", "zip-protocol4", "legacy"])
def test_values_are_bit_identical(saved: Saved, fmt: str) -> None:
    tensors = tw.load(saved.files[fmt])
    assert list(tensors) == list(saved.state)
    for name, expected in saved.state.items():
        _assert_bit_identical(tensors[name], expected)
    # tied weights share one storage, as in the model
    assert tensors["tied.weight"].untyped_storage().data_ptr() == tensors["embed.weight"].untyped_storage().data_ptr()
    _assert_untouched(saved)


@pytest.mark.parametrize("fmt", ["zip", "zip-protocol4", "legacy"])
def test_globals_name_the_classes(saved: Saved, fmt: str) -> None:
    ckpt = tw.open(saved.files[fmt])
    assert {
        f"{MODULE}.Net",
        f"{MODULE}.Block",
        f"{MODULE}.rebuild_config",
        f"{MODULE}.forward_hook",
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.container.ModuleList",
        "torch.nn.modules.container.ModuleDict",
        "torch.nn.modules.batchnorm.BatchNorm1d",
    } <= set(ckpt.globals)
    _assert_untouched(saved)


@pytest.mark.parametrize("fmt", ["zip", "zip-protocol4", "legacy"])
def test_model_nested_in_a_dict(saved: Saved, fmt: str) -> None:
    ckpt = tw.open(saved.files[f"{fmt}-nested"])
    assert list(ckpt.records) == [f"model.{name}" for name in saved.state]
    assert ckpt.extras == {"epoch": 3}
    tensors = tw.load(ckpt)
    for name, expected in saved.state.items():
        _assert_bit_identical(tensors[f"model.{name}"], expected)
    _assert_untouched(saved)


def test_root_object_is_an_inert_stub_of_the_model(saved: Saved) -> None:
    ckpt = torch_zip.read(str(saved.files["zip"]), ReadOptions())
    assert list(ckpt.records) == list(saved.state)
    with zipfile.ZipFile(saved.files["zip"]) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))

    def storage(pid: Any) -> PickledStorage:
        return PickledStorage(StorageRef(key=pid[2], file="x", offset=0, nbytes=1 << 20), "float32")

    root = unpickle(pkl, persistent_load=storage).value
    assert isinstance(root, Stub) and root.cls == f"{MODULE}.Net"
    config = root.attributes["config"]
    assert isinstance(config, Stub) and config.cls == f"{MODULE}.rebuild_config"
    assert config.args == ({"lr": 0.1, "layers": [4, 4]},)
    _assert_untouched(saved)
