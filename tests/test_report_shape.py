"""Every report object has one shape: ``summary`` (a one-line ``str`` property), ``__str__`` (the text the CLI
prints), ``to_dict()`` (plain data) and a short ``__repr__`` (``<LoadReport 'es.pt' into M: OK: loaded 2 of 2>``).
Checked on real files for :class:`LoadReport`, :class:`ScanReport`, :class:`DiffReport`, :class:`VerifyReport`
and :class:`ConvertReport`; ``LoadReport.missing_keys`` / ``unexpected_keys`` are compared with torch's own."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from torchweights.cli import main
from torchweights.errors import LoadError
from torchweights.tools.scan.text import render_text


class _Net(torch.nn.Module):
    def __init__(self, width: int = 64, depth: int = 40) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, 10)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "es.pt"
    torch.save(_Net().state_dict(), path)
    return path


def _reports(checkpoint: Path, tmp_path: Path) -> list[Any]:
    out = tmp_path / "es.safetensors"
    return [
        tw.load_into(_Net(), checkpoint),
        tw.scan(checkpoint),
        tw.convert(checkpoint, out),
        tw.diff(checkpoint, out),
        tw.verify(checkpoint),
    ]


def test_every_report_has_one_shape(checkpoint: Path, tmp_path: Path) -> None:
    reports = _reports(checkpoint, tmp_path)
    names = [type(r).__name__ for r in reports]
    assert names == ["LoadReport", "ScanReport", "ConvertReport", "DiffReport", "VerifyReport"]
    for report in reports:
        name = type(report).__name__
        assert isinstance(type(report).__dict__["summary"], property), name
        summary = report.summary
        assert isinstance(summary, str) and summary and "\n" not in summary, name
        text = repr(report)
        assert text.startswith(f"<{name} '") and text.endswith(f": {summary}>"), text
        assert len(text) < 300, text  # a dataclass repr would dump every field (the plan, the findings...)
        assert str(report) != text and str(report).strip(), name
        json.dumps(report.to_dict())  # plain data


def test_summaries_say_the_outcome(checkpoint: Path, tmp_path: Path) -> None:
    load, scan, convert, diff, verify = _reports(checkpoint, tmp_path)
    assert load.summary == "OK: loaded 84 of 84"
    assert repr(load) == f"<LoadReport '{checkpoint}' into _Net: OK: loaded 84 of 84>"
    assert scan.summary.startswith("clean: ") and repr(scan).startswith(f"<ScanReport '{checkpoint}' (torch-zip): ")
    assert convert.summary.startswith("safetensors: 84 tensors, ") and "verified bit for bit" in convert.summary
    assert diff.summary == "identical"
    assert verify.summary.startswith("ok: ")


def test_scan_report_prints_what_the_cli_prints(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "f": print}, path)  # a global the scanner flags; nothing is ever run
    report = tw.scan(path)
    assert str(report) == render_text(report)
    out = io.StringIO()
    with redirect_stdout(out):
        main(["scan", str(path)])
    timing = re.compile(r"; \d+\.\d{3} s$", re.M)  # the CLI scans again: only the time taken may differ
    assert timing.sub("", out.getvalue()) == timing.sub("", str(report)) and timing.search(str(report))
    severities = [f.severity for f in report.findings]
    assert report.summary.startswith(f"{report.verdict}: {len(severities)} finding")
    for severity in set(severities):
        assert f"{severities.count(severity)} {severity}" in report.summary


def test_missing_and_unexpected_keys_match_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    saved = _Net(depth=3).state_dict()
    saved.pop("layers.1.bias")
    saved.pop("norm.weight")
    saved["extra.weight"] = torch.randn(3)
    saved["layers.9.bias"] = torch.randn(64)
    path = tmp_path / "partial.pt"
    torch.save(saved, path)
    expected = _Net(depth=3).load_state_dict(torch.load(path), strict=False)
    report = tw.load_into(_Net(depth=3), path, strict=False)
    with pytest.raises(LoadError) as info:  # the report a failed load carries says the same
        tw.load_into(_Net(depth=3), path)
    for got in (report, info.value.report):
        assert got is not None
        assert sorted(got.missing_keys) == sorted(expected.missing_keys) == ["layers.1.bias", "norm.weight"]
        assert sorted(got.unexpected_keys) == sorted(expected.unexpected_keys)
        assert sorted(got.unexpected_keys) == ["extra.weight", "layers.9.bias"]
