"""``torchweights diff A B``: exit 0 identical, 1 differs, 2 unreadable; text and --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchweights.cli import main


def test_diff_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = {"w": torch.arange(6.0), "b": torch.ones(2)}
    torch.save(sd, tmp_path / "a.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pt")
    torch.save({"w": torch.arange(6.0) + 0.25, "b": torch.ones(2)}, tmp_path / "c.pt")
    assert main(["diff", str(tmp_path / "dp.pt"), str(tmp_path / "a.pt")]) == 0
    out = capsys.readouterr().out
    assert "\nidentical\n" in out and "stripped 'module.'" in out
    assert main(["diff", str(tmp_path / "c.pt"), str(tmp_path / "a.pt")]) == 1
    out = capsys.readouterr().out
    assert "same layout, values differ in 1 tensor (largest: 'w' max abs 0.25" in out
    assert main(["diff", str(tmp_path / "c.pt"), str(tmp_path / "a.pt"), "--atol", "0.5"]) == 0
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "c.pt"), str(tmp_path / "a.pt"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["different"] == 1 and data["tensors"][0]["max_abs"] == 0.25
    assert main(["diff", str(tmp_path / "missing.pt"), str(tmp_path / "a.pt")]) == 2
    assert "CheckpointNotFoundError" in capsys.readouterr().err
