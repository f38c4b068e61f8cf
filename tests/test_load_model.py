"""tw.load_model: whole pickled models rebuilt as torch.load(weights_only=False) rebuilds them, running only trusted
code; refusals (untrusted, wrong or missing package, TorchScript) name the globals and the way out."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

import torchweights as tw

PKG = "twm_models"

SOURCES = {
    "__init__.py": "",
    "config.py": """
        from dataclasses import dataclass, field

        @dataclass
        class Config:
            width: int = 8
            depth: int = 2
            names: list = field(default_factory=lambda: ["a", "b"])
    """,
    "blocks.py": """
        import torch
        import torch.nn.functional as F
        from torch import nn

        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.lin = nn.Linear(width, width)
                self.norm = nn.LayerNorm(width)
                self.register_buffer("scale", torch.full((width,), 0.5))
                self.register_buffer("cache", torch.zeros(2), persistent=False)
                self.act = F.gelu
                self.tags = {"kind": "block", "ids": [1, 2, 3]}
                self.offset = torch.arange(width, dtype=torch.float32)  # a tensor kept as a plain attribute

            def forward(self, x):
                return self.act(self.norm(self.lin(x))) * self.scale + self.offset

        class Stateful(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.proj = nn.Linear(width, width, bias=False)
                self.version = 2

            def __getstate__(self):
                state = self.__dict__.copy()
                state["saved_with"] = "getstate"
                return state

            def __setstate__(self, state):
                state["restored_by"] = "setstate"
                super().__setstate__(state)

            def forward(self, x):
                return self.proj(x)
    """,
    "model.py": """
        import torch
        from torch import nn
        from .blocks import Block, Stateful
        from .config import Config

        class Model(nn.Module):
            def __init__(self, config=None):
                super().__init__()
                self.config = config or Config()
                self.blocks = nn.ModuleList([Block(self.config.width) for _ in range(self.config.depth)])
                self.extra = Stateful(self.config.width)
                self.head = nn.Linear(self.config.width, 3)
                self.post = self.scale_output  # a bound method kept as an attribute
                self.ref = Model.scale_output  # a plain function reference
                self.frozen = nn.Linear(3, 3)
                for p in self.frozen.parameters():
                    p.requires_grad_(False)

            def scale_output(self, y):
                return y * 2

            def forward(self, x):
                for block in self.blocks:
                    x = block(x)
                return self.frozen(self.post(self.head(self.extra(x))))
    """,
}


def write_package(root: Path, name: str = PKG) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for file, text in SOURCES.items():
        (folder / file).write_text(textwrap.dedent(text))


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    write_package(tmp_path / "src")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    importlib.invalidate_caches()
    yield importlib.import_module(f"{PKG}.model")
    for name in [n for n in sys.modules if n == PKG or n.startswith(PKG + ".")]:
        del sys.modules[name]


SAVES: dict[str, Callable[[Any, Path], None]] = {
    "zip": lambda m, p: torch.save(m, p),
    "legacy": lambda m, p: torch.save(m, p, _use_new_zipfile_serialization=False),
    "protocol4": lambda m, p: torch.save(m, p, pickle_protocol=4),
}


def same_output(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            same_output(x, y)
    else:
        assert a == b


def assert_same_model(got: nn.Module, want: nn.Module, x: Any) -> None:
    """Same classes, module tree, state dict bits, flags, non-tensor attributes and forward output."""
    assert type(got) is type(want)
    assert [(n, type(m)) for n, m in got.named_modules()] == [(n, type(m)) for n, m in want.named_modules()]
    sg, sw = got.state_dict(), want.state_dict()
    assert list(sg) == list(sw)
    for key in sw:
        assert sg[key].dtype == sw[key].dtype and sg[key].shape == sw[key].shape, key
        assert torch.equal(sg[key].view(-1).view(torch.uint8), sw[key].view(-1).view(torch.uint8)), key
    assert [m.training for m in got.modules()] == [m.training for m in want.modules()]
    assert [(n, type(p), p.requires_grad) for n, p in got.named_parameters()] == [
        (n, type(p), p.requires_grad) for n, p in want.named_parameters()
    ]
    for (name, mg), (_, mw) in zip(got.named_modules(), want.named_modules()):
        plain_g = {k: v for k, v in vars(mg).items() if not k.startswith("_") and not isinstance(v, torch.Tensor)}
        plain_w = {k: v for k, v in vars(mw).items() if not k.startswith("_") and not isinstance(v, torch.Tensor)}
        assert sorted(plain_g) == sorted(plain_w), name
        for k, v in plain_w.items():
            if callable(v) and hasattr(v, "__func__"):  # a bound method: bound to the rebuilt module
                assert plain_g[k].__func__ is v.__func__ and plain_g[k].__self__ is mg
            elif not isinstance(v, (nn.Module, list, dict)) or isinstance(v, (list, dict)):
                assert plain_g[k] == v, (name, k)
        for k, v in vars(mw).items():
            if isinstance(v, torch.Tensor) and not k.startswith("_"):
                assert torch.equal(getattr(mg, k), v), (name, k)
    with torch.no_grad():
        same_output(got(*x), want(*x))


def torch_models() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[Any, ...]]]]:
    def cnn() -> nn.Module:
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        )
        model(torch.randn(2, 3, 8, 8))  # running statistics that differ from the defaults
        return model.eval()

    def containers() -> nn.Module:
        model = nn.ModuleDict({"enc": nn.ModuleList([nn.Linear(4, 4), nn.Tanh()]), "dec": nn.Linear(4, 2)})
        for p in model["enc"].parameters():
            p.requires_grad_(False)

        class _Seq(nn.Sequential):  # forward over the dict's modules
            pass

        return nn.Sequential(model["enc"][0], model["enc"][1], model["dec"])

    def tied() -> nn.Module:
        model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
        model[1].weight = model[0].weight
        return model

    return {
        "mlp": (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), lambda: (torch.randn(3, 4),)),
        "cnn": (cnn, lambda: (torch.randn(2, 3, 8, 8),)),
        "lstm": (lambda: nn.LSTM(4, 8, num_layers=2, batch_first=True), lambda: (torch.randn(2, 5, 4),)),
        "transformer": (
            lambda: nn.TransformerEncoder(
                nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, activation="gelu"),
                2,
                enable_nested_tensor=False,
            ).eval(),
            lambda: (torch.randn(2, 5, 16),),
        ),
        "containers": (containers, lambda: (torch.randn(3, 4),)),
        "tied": (tied, lambda: (torch.tensor([[1, 2, 3]]),)),
    }


@pytest.mark.parametrize("save", sorted(SAVES))
@pytest.mark.parametrize("kind", sorted(torch_models()))
def test_torch_models_match_torch_load_without_trust(kind: str, save: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    build, inputs = torch_models()[kind]
    path = tmp_path / f"{kind}.pt"
    SAVES[save](build(), path)
    got = tw.load_model(path)
    assert_same_model(got, torch.load(path, weights_only=False), inputs())
    if kind == "tied":
        assert got[0].weight is got[1].weight


@pytest.mark.parametrize("save", sorted(SAVES))
def test_custom_package_matches_torch_load(save: str, package: ModuleType, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "custom.pt"
    SAVES[save](package.Model(), path)
    got = tw.load_model(path, trust=[PKG])
    want = torch.load(path, weights_only=False)
    assert_same_model(got, want, (torch.randn(2, 8),))
    assert got.config == want.config and type(got.config).__name__ == "Config"
    assert got.extra.restored_by == "setstate" and got.extra.saved_with == "getstate"
    assert got.blocks[0].act is torch.nn.functional.gelu
    assert got.ref is package.Model.scale_output
    assert not got.frozen.weight.requires_grad and got.head.weight.requires_grad
    assert got.blocks[0].cache.shape == (2,)  # a non-persistent buffer comes back as torch.load gives it


def test_map_location_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(nn.Linear(2, 2), path)
    got = tw.load_model(path, map_location="meta")
    assert got.weight.is_meta
    got = tw.load_model(path, map_location=lambda storage, location: storage)
    assert got.weight.device.type == "cpu"


def test_a_dict_holding_a_model_gives_the_model(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    model = nn.Linear(2, 2)
    torch.save({"epoch": 3, "model": model, "optimizer": None}, path)
    assert torch.equal(tw.load_model(path).weight, model.weight)


def test_a_state_dict_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(tw.RuleError) as info:
        tw.load_model(path)
    assert info.value.code == "not-a-model" and "load_into" in str(info.value)


# -- refusals ---------------------------------------------------------------------------------------------------------


def test_untrusted_package_is_refused_naming_every_global(package: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save(package.Model(), path)
    for trust in ((), ["twm"], ["twm_models_other"], ["other"]):  # none covers the package by whole components
        with pytest.raises(tw.UnsafeCheckpointError) as info:
            tw.load_model(path, trust=trust)
        message = str(info.value)
        assert info.value.code == "untrusted-global"
        for name in ("twm_models.model.Model", "twm_models.blocks.Block", "twm_models.config.Config"):
            assert name in message
        assert "trust=['twm_models']" in message


def test_missing_package_names_the_class_and_the_ways_out(
    package: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "custom.pt"
    torch.save(package.Model(), path)
    for name in [n for n in sys.modules if n == PKG or n.startswith(PKG + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "src" not in Path(p).parts[-1:]])
    with pytest.raises(tw.UnsupportedCheckpointError) as info:
        tw.load_model(path, trust=[PKG])
    assert info.value.code == "missing-class"
    assert "twm_models." in str(info.value) and "rename_classes" in str(info.value)
    assert "tw.load_into" in str(info.value)


def test_rename_classes_loads_a_moved_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_package(tmp_path / "old", "twm_old")
    monkeypatch.syspath_prepend(str(tmp_path / "old"))
    importlib.invalidate_caches()
    old = importlib.import_module("twm_old.model")
    torch.manual_seed(0)
    want = old.Model()
    path = tmp_path / "m.pt"
    torch.save(want, path)
    for name in [n for n in sys.modules if n.startswith("twm_old")]:
        monkeypatch.delitem(sys.modules, name)
    write_package(tmp_path / "new", "twm_new")
    monkeypatch.syspath_prepend(str(tmp_path / "new"))
    importlib.invalidate_caches()
    renames = {
        f"twm_old.{m}.{c}": f"twm_new.{m}.{c}"
        for m, c in (("model", "Model"), ("blocks", "Block"), ("blocks", "Stateful"), ("config", "Config"))
    }
    renames["twm_old.model.Model.scale_output"] = "twm_new.model:Model.scale_output"
    with pytest.raises(tw.UnsafeCheckpointError) as info:  # the new names must be trusted too
        tw.load_model(path, trust=["twm_old"], rename_classes=renames)
    assert "twm_new" in str(info.value)
    got = tw.load_model(path, trust=["twm_new"], rename_classes=renames)
    assert type(got).__module__ == "twm_new.model"
    for key, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[key], value)
    # the package gone: the refusal says so and how to rename all of it; one package-wide entry does
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "old")])
    importlib.invalidate_caches()
    with pytest.raises(tw.UnsafeCheckpointError) as info:
        tw.load_model(path, trust=["twm_new"])
    assert "'twm_old' is not installed here" in str(info.value) and "rename_classes={'twm_old'" in str(info.value)
    whole = tw.load_model(path, trust=["twm_new"], rename_classes={"twm_old": "twm_new"})
    assert type(whole).__module__ == "twm_new.model" and type(whole.blocks[0]).__module__ == "twm_new.blocks"
    x = torch.randn(2, 8)
    assert torch.equal(whole(x), got(x))
    # a rename the file does not need is a misspelt old name: said, with the file's own class names
    with pytest.raises(tw.RuleError) as rule:
        tw.load_model(path, trust=["twm_new"], rename_classes={"twm_olde": "twm_new"})
    assert rule.value.code == "bad-rename" and "'twm_old.model.Model'" in str(rule.value)
    for name in [n for n in sys.modules if n.startswith(("twm_old", "twm_new"))]:
        del sys.modules[name]


def test_torchscript_is_refused_pointing_to_jit_and_tw_load(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(tw.UnsupportedCheckpointError) as info:
        tw.load_model(path)
    assert info.value.code == "unsupported-model-format"
    assert "torch.jit.load" in str(info.value) and "tw.load(path)" in str(info.value)


def test_tw_load_allowing_a_module_class_points_to_load_model(package: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "custom.pt"
    torch.save(package.Model(), path)
    with pytest.raises(tw.RuleError) as info:
        tw.load(path, allow_globals=["twm_models.model.Model"])
    assert info.value.code == "module-allowed" and "load_model" in str(info.value)
    assert len(tw.load(path)) == len(package.Model().state_dict())


# -- every torch.nn module class --------------------------------------------------------------------------------------


def outcome(fn: Callable[[], Any]) -> Any:
    """``fn()``, or the text of the error it raises."""
    try:
        return fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_torch_classes.py"


def test_every_nn_module_torch_save_can_pickle_loads_without_trust(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_torch_classes_lm", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    try:
        spec.loader.exec_module(tool)
        loaded, problems = 0, []
        for obj in tool.saved_objects():
            if not isinstance(obj, nn.Module):
                continue
            path = tmp_path / "module.pt"
            try:
                torch.save(obj, path)
            except Exception:  # unpicklable (a lambda, a lock): torch.save refuses it
                continue
            try:
                got = tw.load_model(path)
            except Exception as exc:
                problems.append((type(obj).__qualname__, repr(exc)[:200]))
                continue
            want = torch.load(path, weights_only=False)
            loaded += 1
            same = type(got) is type(want) and sorted(vars(got)) == sorted(vars(want))
            if same and "_modules" not in vars(want):  # a module torch.load cannot rebuild whole either
                continue  # (quantized functional modules pickle via their __reduce__ without Module state)
            same = same and [type(m) for m in got.modules()] == [type(m) for m in want.modules()]
            sg, sw = outcome(got.state_dict), outcome(want.state_dict)
            if isinstance(sw, str):  # torch.load's module cannot give a state dict either: the same error
                same = same and sg == sw
                sg, sw = {}, {}
            same = same and list(sg) == list(sw)
            same = same and all(
                type(sg[k]) is type(sw[k])
                and (
                    not isinstance(sw[k], torch.Tensor)
                    or sw[k].is_meta
                    or isinstance(sw[k], nn.parameter.UninitializedTensorMixin)
                    or torch.equal(sg[k], sw[k])
                )
                for k in sw
            )
            if not same:
                problems.append((type(obj).__qualname__, "differs"))
    finally:
        sys.modules.pop(spec.name, None)
    assert not problems, problems[:5]
    assert loaded > 500


def test_a_compiled_model_is_refused_with_the_fix(tmp_path: Path) -> None:
    """torch.save(torch.compile(model)) pickles torch._dynamo's compiler state: refused, saying what it is and how
    to save the model instead (the original module, or its state dict)."""
    path = tmp_path / "compiled.pt"
    torch.save(torch.compile(nn.Linear(3, 4)), path)
    for load in (tw.load, tw.load_model):
        with pytest.raises(tw.UnsafeCheckpointError) as info:
            load(path)
        assert "torch.compile'd model" in str(info.value) and "model._orig_mod" in str(info.value)


def test_a_dict_of_several_models_says_which_came_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "two.pt"
    torch.save({"ema": nn.Linear(2, 3), "model": nn.Linear(2, 2), "epoch": 1}, path)
    with caplog.at_level("WARNING", logger="torchweights"):
        got = tw.load_model(path)
    assert isinstance(got, nn.Linear) and got.out_features == 2
    assert "returns 'model'" in caplog.text and "'ema'" in caplog.text
