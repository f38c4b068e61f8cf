"""``torchweights check --align auto / --write-rename / --adapt``: the mapping shown before anything loads, written
as a rename that loads the same keys, ambiguity as exit 1 with its code, and the options' errors."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchweights as tw
from torchweights.cli import main

MODELS = textwrap.dedent(
    """
    from torch import nn

    class Block(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            setattr(self, a, nn.Linear(8, 16))
            setattr(self, b, nn.Linear(16, 8))

    class Old(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block("fc", "proj") for _ in range(3)])
            self.head = nn.Linear(8, 10)

    class New(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Block("linear", "out") for _ in range(3)])
            self.classifier = nn.Linear(8, 10)

    class Twins(nn.Module):
        def __init__(self, a="left", b="right"):
            super().__init__()
            self.body = nn.Linear(4, 8)
            setattr(self, a, nn.Linear(8, 8))
            setattr(self, b, nn.Linear(8, 8))

    def old_twins():
        return Twins("first", "second")
    """
)


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, object]]:
    models = tmp_path / "tw_align_models.py"
    models.write_text(MODELS)
    namespace: dict[str, object] = {}
    exec(compile(MODELS, str(models), "exec"), namespace)
    torch.manual_seed(0)
    old = tmp_path / "old.pt"
    torch.save(namespace["Old"]().state_dict(), old)  # type: ignore[operator]
    twins = tmp_path / "twins.pt"
    torch.save(namespace["old_twins"]().state_dict(), twins)  # type: ignore[operator]
    yield {"models": str(models), "old": str(old), "twins": str(twins), "ns": namespace, "dir": tmp_path}
    sys.modules.pop("_torchweights_check_tw_align_models", None)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_align_auto_shows_the_mapping_as_json(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([files["old"], "--model", f"{files['models']}:New", "--align", "auto", "--json"], capsys)
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["applied"] is False and data["load_error"] is None
    pairs = {(p["source"], p["target"]) for p in data["alignment"]["pairs"]}
    assert ("blocks.0.fc", "layers.0.linear") in pairs and ("head", "classifier") in pairs
    assert len(pairs) == 7 and data["alignment"]["aligned"] == 14
    code, text, _ = run([files["old"], "--model", f"{files['models']}:New", "--align", "auto"], capsys)
    assert code == 0 and "blocks.{0..2}.fc    ->  layers.{0..2}.linear" in text
    assert "DRY RUN (strict=True): would load 14 of 14 (14 aligned, confidence" in text


def test_write_rename_then_load_without_align(files: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    target = Path(str(files["dir"])) / "keep" / "rename.json"
    argv = [str(files["old"]), "--model", f"{files['models']}:New", "--align", "auto", "--write-rename", str(target)]
    code, out, _ = run(argv, capsys)
    rename = json.loads(target.read_text())
    # one regex per family whose layer indices stay (blocks.{0..2}.fc -> layers.{0..2}.linear), one per module else
    assert code == 0 and f"wrote {len(rename)} renames to '{target}'" in out.replace("\n           ", " ")
    assert rename["^head\\."] == "classifier." and rename[r"^blocks\.(0|1|2)\.fc\."] == r"layers.\g<1>.linear."
    assert len(rename) == 3
    new = files["ns"]["New"]  # type: ignore[index]
    by_align, by_rename = new(), new()
    aligned = tw.load_into(by_align, str(files["old"]), align="auto")
    renamed = tw.load_into(by_rename, str(files["old"]), rename=rename)
    assert renamed.plan.alignment is None and renamed.ok
    assert {(a.target, a.source) for a in aligned.loaded} == {(a.target, a.source) for a in renamed.loaded}
    assert all(torch.equal(a, b) for a, b in zip(by_align.state_dict().values(), by_rename.state_dict().values()))


def test_ambiguity_exits_1_with_its_code(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [files["twins"], "--model", f"{files['models']}:Twins", "--align", "auto"]
    code, out, _ = run([*argv, "--json"], capsys)
    assert code == 1
    error = json.loads(out)["load_error"]
    assert error["code"] == "ambiguous-alignment" and "'^first\\\\.': 'left.'" in error["fix"]
    code, text, _ = run(argv, capsys)
    assert code == 1 and "FAILED: 1 ambiguous group (align='auto')" in text
    assert "ambiguous (1 group)" in text and "checkpoint  'first', 'second'" in text
    target = Path(files["dir"]) / "r.json"
    code, out, err = run([*argv, "--write-rename", str(target), "--json"], capsys)
    assert code == 2 and json.loads(out)["error"]["code"] == "no-rename-mapping" and not target.exists()


def test_write_rename_needs_an_alignment(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    target = Path(files["dir"]) / "r.json"
    code, out, err = run([files["old"], "--model", f"{files['models']}:New", "--write-rename", str(target)], capsys)
    assert code == 2 and not target.exists()
    assert "RenameMappingError [no-rename-mapping]" in err and "Fix: add --align auto." in err
    assert "source" in out  # the report came first: it shows why


def test_adapt_takes_lists_and_checks_names(
    files: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run([files["old"], "--model", f"{files['models']}:Old", "--adapt", "nope", "--json"], capsys)
    assert code == 2 and json.loads(out)["error"]["code"] == "bad-adapt"
    with pytest.raises(SystemExit) as usage:
        run([files["old"], "--model", f"{files['models']}:Old", "--adapt", ",", "--json"], capsys)
    assert usage.value.code == 2 and json.loads(capsys.readouterr().out)["error"]["code"] == "usage"
    from torchweights.adapt import registry
    from torchweights.adapt.base import Adapter

    for name in ("a1", "a2"):
        monkeypatch.setitem(registry.ADAPTERS, name, Adapter(name, "reshape", name, lambda *a: None))  # type: ignore[arg-type,return-value]
    code, text, _ = run(
        [files["old"], "--model", f"{files['models']}:Old", "--adapt", "a2,a1", "--adapt", "a2"], capsys
    )
    assert code == 0 and "options    adapt=['a2', 'a1']" in text
    code, text, _ = run([files["old"], "--model", f"{files['models']}:Old", "--adapt", "all"], capsys)
    every = "adapt=[" + ", ".join(repr(name) for name in registry.ADAPTERS) + "]"  # the table's order
    assert code == 0 and f"options {every}" in " ".join(text.split())


def test_write_rename_keeps_the_users_renames_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ambiguous norms settled with --rename, the rest aligned: the file written holds both, and alone loads the
    same keys as the aligned load."""
    from torch import nn

    source = (
        "from torch import nn\n"
        "class New(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.layers = nn.ModuleList(nn.Module() for _ in range(2))\n"
        "        for layer in self.layers:\n"
        "            layer.pre_norm = nn.LayerNorm(4)\n"
        "            layer.post_norm = nn.LayerNorm(4)\n"
        "            layer.ffn = nn.Linear(4, 8)\n"
    )
    models = tmp_path / "tw_rename_models.py"
    models.write_text(source)
    namespace: dict[str, object] = {}
    exec(compile(source, str(models), "exec"), namespace)
    old = nn.Module()
    old.blocks = nn.ModuleList(nn.Module() for _ in range(2))
    for block in old.blocks:
        block.ln_first = nn.LayerNorm(4)  # only declaration order tells these from pre/post
        block.ln_second = nn.LayerNorm(4)
        block.mlp = nn.Linear(4, 8)
    path = tmp_path / "old.pt"
    torch.save(old.state_dict(), path)
    out = tmp_path / "rename.json"
    base = [str(path), "--model", f"{models}:New", "--align", "auto", "--write-rename", str(out)]
    code, _, err = run(base, capsys)
    assert code == 2 and "--rename" in err and not out.exists()
    flags = ["--rename", r"\.ln_first\.=.pre_norm.", "--rename", r"\.ln_second\.=.post_norm."]
    code, _, _ = run([*base, *flags], capsys)
    assert code == 0
    mapping = json.loads(out.read_text())
    assert list(mapping)[:2] == [r"\.ln_first\.", r"\.ln_second\."]
    model = namespace["New"]()  # type: ignore[operator]
    assert tw.load_into(model, path, rename=mapping).ok
    assert torch.equal(model.layers[1].post_norm.weight, old.blocks[1].ln_second.weight)
    sys.modules.pop("_torchweights_check_tw_rename_models", None)


def test_write_rename_refuses_what_the_renames_alone_would_not_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fused qkv split into a renamed block's q/k/v is placed through the alignment: the renames alone would
    leave q/k/v missing, so nothing is written (the file's promise is to load the same keys without align)."""
    from torch import nn

    source = (
        "from torch import nn\n"
        "def new():\n"
        "    m = nn.Module()\n"
        "    m.blocks = nn.ModuleList(nn.Module() for _ in range(2))\n"
        "    for b in m.blocks:\n"
        "        b.attn = nn.Module()\n"
        "        for n in 'qkvo':\n"
        "            setattr(b.attn, n, nn.Linear(4, 4))\n"
        "        b.up = nn.Linear(4, 16)\n"
        "    return m\n"
    )
    models = tmp_path / "tw_qkv_models.py"
    models.write_text(source)
    old = nn.Module()
    old.h = nn.ModuleList(nn.Module() for _ in range(2))
    for b in old.h:
        b.attn = nn.Module()
        b.attn.qkv = nn.Linear(4, 12)
        b.attn.proj = nn.Linear(4, 4)
        b.fc = nn.Linear(4, 16)
    path = tmp_path / "old.pt"
    torch.save(old.state_dict(), path)
    out = tmp_path / "rename.json"
    argv = [str(path), "--model", f"{models}:new", "--align", "auto", "--adapt", "qkv", "--write-rename", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "would not load the same keys" in err and not out.exists()
    code, _, _ = run(argv[:-2], capsys)
    assert code == 0  # the load itself (with align) fits
    sys.modules.pop("_torchweights_check_tw_qkv_models", None)
