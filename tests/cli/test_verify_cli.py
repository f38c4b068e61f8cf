"""``torchweights verify PATH [--manifest SHA256SUMS]``: exit 0 ok, 1 a check failed, 2 nothing to verify."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from torchweights.cli import main


def test_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(4)}, path)
    assert main(["verify", str(path)]) == 0
    assert "ok:" in capsys.readouterr().out
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  m.pt\n")
    assert main(["verify", str(path), "--manifest", str(tmp_path / "SHA256SUMS"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and any(c["check"] == "sha256 'm.pt'" for c in data["checks"])
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  m.pt\n")
    assert main(["verify", str(path), "--manifest", str(tmp_path / "SHA256SUMS")]) == 1
    assert "FAIL sha256 'm.pt' [sha256-mismatch]" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing.pt")]) == 2
