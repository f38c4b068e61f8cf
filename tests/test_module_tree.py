"""The module tree of a pickled model, read from its stubs (``Checkpoint.modules``, ``inspect --modules``).

``str(node)`` is compared with torch's own ``print(model)`` for the torch.nn layers whose ``extra_repr`` is rebuilt
from saved attributes, in every pickle-based format: torch zip (pickle protocols 2 and 4), legacy, a plain pickle.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torch import nn

import torchweights as tw
from torchweights.cli import main as cli_main
from torchweights.formats.modules import ModuleNode

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _layers() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.Linear(4, 4, bias=False),
        nn.Bilinear(2, 3, 4),
        nn.Conv1d(2, 4, 3),
        nn.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=1, bias=False, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same", groups=2),
        nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1),
        nn.BatchNorm1d(4),
        nn.BatchNorm2d(8, momentum=None, affine=False, track_running_stats=False),
        nn.InstanceNorm2d(3),
        nn.LayerNorm((4, 5), eps=1e-6, bias=False),
        nn.GroupNorm(2, 4),
        nn.RMSNorm(4),
        nn.LocalResponseNorm(2),
        nn.Dropout(0.25),
        nn.Dropout2d(inplace=True),
        nn.ReLU(inplace=True),
        nn.ReLU(),
        nn.ReLU6(),
        nn.SiLU(),
        nn.Tanh(),
        nn.Sigmoid(),
        nn.LeakyReLU(0.2, inplace=True),
        nn.ELU(alpha=0.5),
        nn.GELU(approximate="tanh"),
        nn.GELU(),
        nn.Hardtanh(-2.0, 2.0),
        nn.Softplus(beta=2.0),
        nn.Softmax(dim=-1),
        nn.LogSoftmax(dim=1),
        nn.PReLU(3),
        nn.Hardshrink(),
        nn.Threshold(0.1, 20.0),
        nn.Flatten(),
        nn.Unflatten(1, (2, 5)),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.AdaptiveMaxPool1d(4),
        nn.Embedding(10, 4, padding_idx=0, max_norm=1.0),
        nn.EmbeddingBag(10, 3, mode="sum"),
        nn.EmbeddingBag(10, 3, max_norm=2.0, padding_idx=1),
        nn.LSTM(4, 6, num_layers=2, batch_first=True, dropout=0.1, bidirectional=True),
        nn.GRU(4, 6),
        nn.RNN(4, 6, nonlinearity="relu", bias=False),
        nn.LSTMCell(4, 5),
        nn.RNNCell(4, 5, nonlinearity="relu"),
        nn.Upsample(scale_factor=2.0, mode="nearest"),
        nn.Upsample(size=(4, 4), mode="bilinear"),
        nn.PixelShuffle(2),
        nn.ZeroPad2d((1, 1, 2, 0)),
        nn.ConstantPad1d(2, 3.5),
        nn.ReflectionPad2d(1),
        nn.Identity(),
        nn.MultiheadAttention(8, 2),
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2),
        nn.ModuleList([nn.Linear(2, 2) for _ in range(3)] + [nn.Linear(2, 3), nn.Linear(2, 3)]),
        nn.ModuleList(),
        nn.ModuleDict({"a": nn.Linear(1, 1), "b": nn.Sequential(nn.ReLU())}),
    )
    model[7].eval()
    return model


def _save(model: object, path: Path, how: str) -> Path:
    if how == "zip":
        torch.save(model, path)
    elif how == "zip-protocol-2":
        torch.save(model, path, pickle_protocol=2)
    elif how == "legacy":
        torch.save(model, path, _use_new_zipfile_serialization=False)
    elif how == "pickle-4":
        path.write_bytes(pickle.dumps(model, protocol=4))
    return path


@pytest.mark.parametrize("how", ["zip", "zip-protocol-2", "legacy", "pickle-4"])
def test_tree_prints_like_torch(tmp_path: Path, how: str) -> None:
    model = _layers()
    path = _save(model, tmp_path / "model.pt", how)
    trees = tw.open(path).modules
    assert list(trees) == [""]
    assert str(trees[""]) == repr(model)


def test_tree_as_data(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Conv1d(4, 2, 3, bias=False)))
    model[1].register_buffer("scratch", torch.zeros(2, dtype=torch.float16), persistent=False)
    model[2].anchors = torch.ones(5, 2)
    model[2].eval()
    model[0].weight.requires_grad_(False)
    ckpt = tw.open(_save({"model": model, "epoch": 3}, tmp_path / "m.pt", "zip"))
    node = ckpt.modules["model"]
    assert [name for name, _ in node.named_modules()] == [name for name, _ in model.named_modules()]
    linear = node.children["0"]
    assert linear is not None and linear.cls == "torch.nn.modules.linear.Linear" and linear.name == "Linear"
    assert linear.attributes == {"in_features": 3, "out_features": 4}
    assert linear.parameters["weight"] is not None and linear.parameters["weight"].shape == (4, 3)
    assert linear.parameters["weight"].requires_grad is False
    bn = node.children["1"]
    assert bn is not None and bn.attributes["eps"] == 1e-5 and bn.attributes["momentum"] == 0.1
    assert bn.non_persistent == ("scratch",)
    assert bn.buffers["scratch"] is not None and bn.buffers["scratch"].dtype == "float16"
    assert bn.buffers["num_batches_tracked"] is not None and bn.buffers["num_batches_tracked"].dtype == "int64"
    inner = node.children["2"]
    assert inner is not None and inner.training is False and node.training is True
    assert inner.tensors["anchors"].shape == (5, 2)
    conv = inner.children["0"]
    assert conv is not None and conv.parameters == {"weight": conv.parameters["weight"], "bias": None}
    assert conv.attributes["kernel_size"] == (3,)
    data = node.to_dict()
    json.dumps(data)
    assert data["children"]["0"]["attributes"] == {"in_features": 3, "out_features": 4}
    assert data["children"]["2"]["tensors"]["anchors"]["shape"] == [5, 2]


def test_shared_module_and_cycle(tmp_path: Path) -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    ckpt = tw.open(_save(model, tmp_path / "m.pt", "zip"))
    node = ckpt.modules[""]
    assert node.children["0"] is node.children["2"]
    assert str(node) == repr(model)
    assert node.to_dict()["children"]["2"] == {"class": "torch.nn.modules.linear.Linear", "same_as": "0"}
    assert [name for name, _ in node.named_modules()] == ["", "0", "1"]  # each module once, as torch


def test_custom_class_shows_its_plain_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "treepkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\n"
        "class Block(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.hidden = 16\n"
        "        self.name = 'enc'\n"
        "        self.config = {'depth': 2}\n"
        "        self.proj = torch.nn.Linear(2, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import treepkg

        path = _save(treepkg.Block(), tmp_path / "m.pt", "zip")
    finally:
        sys.modules.pop("treepkg", None)
    node = tw.open(path).modules[""]
    assert node.cls == "treepkg.Block"
    assert node.attributes == {"hidden": 16, "name": "enc"}
    assert node.other == {"config": "{'depth': 2}"}
    assert str(node) == (
        "Block(\n  hidden=16, name='enc'\n  (proj): Linear(in_features=2, out_features=2, bias=True)\n)"
    )


def test_legacy_tar_and_state_dict(tmp_path: Path) -> None:
    legacy_tar = Path(__file__).parent / "fixtures" / "legacy_tar.pt"
    trees = tw.open(legacy_tar).modules
    assert list(trees) == ["model"]
    assert str(trees["model"]) == "Net(\n  (fc): Linear(in_features=4, out_features=3, bias=True)\n)"
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict(), "epoch": 1}, path)
    assert tw.open(path).modules == {}


def _cli(*argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(list(argv)) == 0
    return out.getvalue()


def test_inspect_modules_cli(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ModuleList([nn.ReLU() for _ in range(4)]))
    path = _save(model, tmp_path / "m.pt", "zip")
    assert _cli("inspect", "--modules", str(path)) == repr(model) + "\n"
    wrapped = _save({"model": model, "ema": model}, tmp_path / "w.pt", "zip")
    assert _cli("inspect", "--modules", str(wrapped)) == f"model = {model!r}\nema = {model!r}\n"
    data = json.loads(_cli("inspect", "--json", str(path)))
    assert data["modules"][""]["children"]["0"]["attributes"]["kernel_size"] == [3, 3]
    state = tmp_path / "sd.pt"
    torch.save(model.state_dict(), state)
    said = _cli("inspect", "--modules", str(state))
    assert said.count("\n") == 1 and "state dict" in said and "no module tree" in said
    assert json.loads(_cli("inspect", "--json", str(state)))["modules"] == {}


def test_inspect_modules_imports_no_torch(tmp_path: Path) -> None:
    path = _save(nn.Sequential(nn.Linear(2, 3)), tmp_path / "m.pt", "zip")
    code = (
        "import sys\nfrom torchweights.cli import main\n"
        f"main(['inspect', '--modules', {str(path)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Sequential(\n  (0): Linear(in_features=2, out_features=3, bias=True)")


def test_node_str_is_render() -> None:
    node = ModuleNode("torch.nn.modules.activation.ReLU", attributes={"inplace": True})
    assert str(node) == "ReLU(inplace=True)"
