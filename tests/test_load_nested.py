"""``tw.load(path, nested=True)``: the file's structure with tensors in place; resuming training from it."""

from __future__ import annotations

import argparse
import collections
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import torchweights as tw
from torchweights.errors import RuleError
from torchweights.unpickle.values import Stub

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen)) for _ in range(n)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


Setup = Callable[[nn.Module], tuple[torch.optim.Optimizer, Any]]


def _adam_step(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4, amsgrad=True)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _sgd_onecycle(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20)


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, batches: list[Any]) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def _resume(ckpt: Any, setup: Setup) -> tuple[nn.Module, torch.optim.Optimizer, Any, int]:
    torch.manual_seed(123)  # fresh objects with other initial values: everything must come from the checkpoint
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt, sched = setup(model)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    return model, opt, sched, ckpt["epoch"]


@pytest.mark.parametrize("setup", [_adam_step, _sgd_onecycle], ids=["adam-steplr", "sgd-momentum-onecycle"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_resume_training_bit_for_bit(tmp_path: Path, setup: Setup, legacy: bool) -> None:
    batches = _batches(10)
    model = _model()
    opt, sched = setup(model)
    _train(model, opt, sched, batches[:5])
    path = tmp_path / "ckpt.pt"
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": 5}
    torch.save(saved, path, _use_new_zipfile_serialization=not legacy)

    ours = tw.load(path, nested=True)
    theirs = torch.load(path, weights_only=True)
    runs = []
    for ckpt in (theirs, ours):
        model, opt, sched, start = _resume(ckpt, setup)
        assert start == 5
        losses = _train(model, opt, sched, batches[start:])
        runs.append((losses, model.state_dict(), opt.state_dict(), sched.state_dict()))
    (losses_a, model_a, opt_a, sched_a), (losses_b, model_b, opt_b, sched_b) = runs
    assert losses_a == losses_b
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert model_a[key].dtype == model_b[key].dtype and torch.equal(model_a[key], model_b[key]), key
    _same(opt_a, opt_b)
    _same(sched_a, sched_b)


def _same(a: Any, b: Any, where: str = "") -> None:
    """Same structure, types and values; tensors equal bit for bit with the same dtype and flags."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and type(a) is type(b), where
        assert a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad, where
        assert torch.equal(_bits(a), _bits(b)), where
        return
    if isinstance(a, torch.Size):  # the unpickler gives a torch.Size as the tuple it is equal to
        assert type(b) is tuple and b == a, where
        return
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
        if hasattr(a, "__dict__"):
            _same(vars(a), vars(b), f"{where}.__dict__")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}.{i}")
    elif isinstance(a, argparse.Namespace):
        _same(vars(a), vars(b), where)
    else:
        assert a == b or (a != a and b != b), where


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _extras_checkpoint() -> dict[str, Any]:
    torch.manual_seed(0)
    shared = torch.randn(6)
    model = nn.Linear(2, 3)
    return {
        "model": model.state_dict(),
        "epoch": 7,
        "step": np.int64(1234),
        "loss": np.float32(0.25),
        "best": float("nan"),
        "name": "run-1",
        "args": argparse.Namespace(lr=0.1, layers=[1, 2]),
        "tied": [shared, shared, shared[2:]],
        "pair": (shared, {"inner": shared[:1]}),
        "ordered": collections.OrderedDict(b=1, a=torch.arange(3)),
        "counts": collections.Counter(x=2),
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "empty": {},
        "half": torch.ones(2, dtype=torch.float16),
        "grad": torch.ones(2, requires_grad=True),
        "table": np.arange(6, dtype=np.float32).reshape(2, 3),
    }


@pytest.mark.parametrize("how", ["zip", "zip-protocol-2", "legacy", "pickle-4"])
def test_structure_as_torch_load(tmp_path: Path, how: str) -> None:
    obj = _extras_checkpoint()
    path = tmp_path / "ckpt.pt"
    if how == "pickle-4":
        path.write_bytes(pickle.dumps(obj, protocol=4))
        theirs = pickle.loads(path.read_bytes())
    else:
        torch.save(obj, path, pickle_protocol=2 if how == "zip-protocol-2" else 4,
                   _use_new_zipfile_serialization=how != "legacy")  # fmt: skip
        theirs = torch.load(path, weights_only=False)
    ours = tw.load(path, nested=True)
    table = ours.pop("table")
    np.testing.assert_array_equal(table, theirs.pop("table"))
    _same(theirs, ours)
    assert ours["tied"][0] is ours["tied"][1] is ours["pair"][0]  # one tensor object, as torch.load gives
    for view in (ours["tied"][2], ours["pair"][1]["inner"]):  # views share their base's storage, as in the file
        # (pickle.dumps saves each view's storage on its own: pickle.loads does not share them either)
        shared = view.untyped_storage().data_ptr() == ours["tied"][0].untyped_storage().data_ptr()
        assert shared == (how != "pickle-4")
    assert ours["model"]._metadata == theirs["model"]._metadata  # state_dict versions, for load_state_dict
    assert ours["grad"].requires_grad


def test_pickled_model_stays_stubs_with_tensors_in_place(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    model[0].register_buffer("mask", torch.ones(3), persistent=False)
    path = tmp_path / "model.pt"
    torch.save({"model": model, "epoch": 1}, path)
    ours = tw.load(path, nested=True)
    assert ours["epoch"] == 1
    stub = ours["model"]
    assert isinstance(stub, Stub) and stub.cls == "torch.nn.modules.container.Sequential"
    linear = stub.attributes["_modules"]["0"]
    assert isinstance(linear, Stub) and linear.cls == "torch.nn.modules.linear.Linear"
    weight = linear.attributes["_parameters"]["weight"]
    assert isinstance(weight, nn.Parameter) and weight.requires_grad
    assert torch.equal(weight, model[0].weight)
    assert torch.equal(linear.attributes["_buffers"]["mask"], torch.ones(3))  # not in state_dict, still read
    assert linear.attributes["in_features"] == 2 and linear.attributes["training"] is True
    again = tw.load(path, nested=True)  # every load is a fresh copy
    assert again["model"] is not stub


def test_allowed_class_is_real_and_others_stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "nestpkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import dataclasses\n@dataclasses.dataclass\nclass Config:\n    width: int = 4\n    name: str = 'x'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import nestpkg

        path = tmp_path / "c.pt"
        torch.save({"config": nestpkg.Config(8, "y"), "w": torch.ones(2)}, path)
        inert = tw.load(path, nested=True)
        assert isinstance(inert["config"], Stub) and inert["config"].cls == "nestpkg.Config"
        assert inert["config"].attributes == {"width": 8, "name": "y"}
        real = tw.load(path, nested=True, allow_globals=["nestpkg.Config"])
        assert real["config"] == nestpkg.Config(8, "y")
    finally:
        sys_modules_pop("nestpkg")


def sys_modules_pop(name: str) -> None:
    import sys

    sys.modules.pop(name, None)


def test_nested_with_select_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"a": torch.ones(1)}, path)
    with pytest.raises(RuleError) as caught:
        tw.load(path, nested=True, select=["a"])
    assert caught.value.code == "nested-select"


def test_flat_formats_give_their_dict(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2), "b.c": torch.zeros(1)}, str(path))
    ours = tw.load(path, nested=True)
    assert list(ours) == ["a", "b.c"] and torch.equal(ours["a"], torch.ones(2))


def test_shared_and_cyclic_containers(tmp_path: Path) -> None:
    inner: list[Any] = [torch.ones(1)]
    loop: list[Any] = []
    loop.append(loop)
    loop.append(torch.zeros(1))
    obj = {"a": inner, "b": inner, "loop": loop}
    path = tmp_path / "c.pt"
    torch.save(obj, path)
    ours = tw.load(path, nested=True)
    assert ours["a"] is ours["b"]
    assert ours["loop"][0] is ours["loop"] and torch.equal(ours["loop"][1], torch.zeros(1))
