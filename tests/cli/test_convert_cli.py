"""``torchweights convert``: output, --json, refusal to overwrite (exit 2), --force, options passed through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

from torchweights.cli import main


def _source(tmp: Path) -> Path:
    emb = torch.randn(5, 3)
    path = tmp / "run.ckpt"
    torch.save({"state_dict": {"emb.weight": emb, "head.weight": emb, "b": torch.ones(2)}, "epoch": 4}, path)
    return path


def test_convert_prints_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "verified bit for bit" in out and "model.safetensors" in out and "'head.weight' = 'emb.weight'" in out
    assert sorted(safetensors_torch.load_file(str(tmp_path / "out" / "model.safetensors"))) == ["b", "emb.weight"]
    assert json.loads((tmp_path / "out" / "model.extras.json").read_text())["extras"] == {"epoch": 4}


def test_convert_refuses_to_overwrite_then_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path)
    dst = tmp_path / "w.safetensors"
    assert main(["convert", str(src), str(dst), "--no-extras"]) == 0
    capsys.readouterr()
    assert main(["convert", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("WriteError [output-exists]") and "--force" in err
    assert main(["convert", str(src), str(dst), "--force", "--no-extras", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == [str(dst)] and report["verified"] is True and report["container"] == "state_dict"


def test_convert_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path)
    code = main(
        ["convert", str(src), str(tmp_path / "t.pt"), "--to", "torch", "--dtype", "float16", "--select", "emb.*"]
    )
    assert code == 0
    back = torch.load(tmp_path / "t.pt", weights_only=True)
    assert list(back) == ["emb.weight"] and back["emb.weight"].dtype == torch.float16
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "x"), "--max-shard-size", "lots"]) == 2
    assert "RuleError [bad-size]" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
