"""Polyglots: one file, two contents. A pickle placed before a zip is a pickle to ``pickle.load`` and to
``torch.load`` (which decides by the first bytes) and a torch zip to ``zipfile`` and tools that read the end;
data appended after a zip is ignored by zip readers and read by whatever looks for it.

``tw.load`` reads the file as what its first bytes say and refuses the payload (or the structure); scan reports
the second reading as ``polyglot`` / ``zip-trailing-data`` and walks both, so a payload in either half is named.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import CorruptCheckpointError, NotACheckpointError, TorchWeightsError
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    canary_in_process,
    flagged,
    refusal,
    touch,
    wait_for,
)

SYSTEM = f"{os.system.__module__}.system"


def _zip(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _payload(marker: Path) -> bytes:
    return pickle.dumps(Reduce(os.system, touch(marker)), protocol=2)


def test_canary_both_readings_are_real(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    data = _payload(canary) + _zip({"w": torch.ones(2)})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # a zip reader sees a clean torch.save archive...
        assert any(n.endswith("data.pkl") for n in zf.namelist())
    canary_in_process(data)  # ...a pickle reader (torch.load's legacy path) runs the payload
    assert wait_for([canary])


def test_payload_pickle_before_a_clean_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = _payload(tmp_path / "MARKER")
    path = tmp_path / "poly.pt"
    path.write_bytes(payload + _zip({"w": torch.ones(2)}))
    assert_refused(refusal(tw.load, path), SYSTEM)
    report = scan(path)
    finding = flagged(report, "dangerous-global", name=SYSTEM, member="the pickle")
    assert_offset(finding, payload)
    flagged(report, "polyglot")
    assert "archive/data.pkl" in [s.where for s in report.streams]  # the zip half was read too
    assert_cli_flags(capsys, path, "polyglot")
    assert_no_markers(tmp_path)


def test_clean_pickle_before_a_payload_zip(tmp_path: Path) -> None:
    """The pickle half is harmless; the zip half, which zip readers see, holds the payload."""
    evil = _zip({"w": torch.ones(2), "x": Reduce(os.system, touch(tmp_path / "MARKER"))})
    path = tmp_path / "poly.pt"
    path.write_bytes(pickle.dumps({"epoch": 3}, protocol=2) + evil)
    with pytest.raises(TorchWeightsError) as info:
        tw.load(path)  # a plain pickle with a zip glued after it
    assert info.value.code == "pickle-trailing-data"
    report = scan(path)
    flagged(report, "polyglot")
    finding = flagged(report, "dangerous-global", name=SYSTEM)
    assert finding.member is not None and finding.member.endswith("/data.pkl")
    assert_no_markers(tmp_path)


def test_legacy_checkpoint_with_a_zip_appended(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(3.0)}, legacy, _use_new_zipfile_serialization=False)
    evil = _zip({"x": Reduce(os.system, touch(tmp_path / "MARKER"))})
    path = tmp_path / "poly.pt"
    path.write_bytes(legacy.read_bytes() + evil)
    report = scan(path)
    flagged(report, "polyglot")
    flagged(report, "dangerous-global", name=SYSTEM)
    assert_no_markers(tmp_path)


def test_data_appended_after_a_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trailing.pt"
    path.write_bytes(_zip({"w": torch.ones(2)}) + _payload(tmp_path / "MARKER"))
    with pytest.raises(CorruptCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "zip-trailing-data"
    flagged(scan(path), "zip-trailing-data")
    assert_cli_flags(capsys, path, "zip-trailing-data")
    assert_no_markers(tmp_path)


def test_script_before_a_zip(tmp_path: Path) -> None:
    """Not a pickle in front, but a shell script: zip readers still find the archive (and its payload)."""
    evil = _zip({"w": torch.ones(2), "x": Reduce(os.system, touch(tmp_path / "MARKER"))})
    path = tmp_path / "script.pt"
    path.write_bytes(b"#!/bin/sh\necho hello\nexit 0\n" + evil)
    with zipfile.ZipFile(path) as zf:
        assert any(n.endswith("data.pkl") for n in zf.namelist())
    with pytest.raises(NotACheckpointError):
        tw.load(path)
    report = scan(path)
    flagged(report, "polyglot")
    flagged(report, "dangerous-global", name=SYSTEM)
    assert_no_markers(tmp_path)
