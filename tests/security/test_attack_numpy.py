"""``.npy`` / ``.npz`` object arrays: the data of an object array is a pickle, which ``numpy.load(...,
allow_pickle=True)`` runs (the canary). Alone or inside a zip member.

``tw.load`` reads NumPy files with ``allow_pickle=False`` semantics: an object array is listed by ``tw.open`` and
refused by ``tw.load`` (``UnsupportedCheckpointError [unsupported-tensor]``, nothing unpickled); scan reads the object
array's pickle and flags the payload at its opcode.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torchweights.api as tw
from torchweights.errors import UnsupportedCheckpointError
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    flagged,
    read_members,
    touch,
    wait_for,
    write_zip,
)

SYSTEM = f"{os.system.__module__}.system"


def _npy(marker: Path, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    array = np.array([1, Reduce(os.system, touch(marker))], dtype=object)
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def _data_start(npy: bytes) -> int:
    major = npy[6]
    length = int.from_bytes(npy[8:10] if major == 1 else npy[8:12], "little")
    return (10 if major == 1 else 12) + length


def test_canary_numpy_load_runs_the_payload(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "a.npy"
    path.write_bytes(_npy(canary))
    code = f"import numpy; numpy.load({str(path)!r}, allow_pickle=True)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert wait_for([canary])


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_object_npy_payload(tmp_path: Path, version: tuple[int, int], capsys: pytest.CaptureFixture[str]) -> None:
    npy = _npy(tmp_path / "MARKER", version)
    path = tmp_path / "a.npy"
    path.write_bytes(npy)
    assert not tw.open(path).records
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "unsupported-tensor" and "'array' (NumPy object array" in str(info.value)
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member_contains="object array data")
    assert_offset(finding, npy, start=_data_start(npy))
    if version == (1, 0):
        assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


def test_object_npz_payload(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, clean=np.arange(3), evil=np.array([Reduce(os.system, touch(tmp_path / "MARKER"))], dtype=object))
    assert list(tw.open(path).records) == ["clean"]
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "unsupported-tensor" and "'evil' (NumPy object array" in str(info.value)
    assert list(tw.load(path, unsupported="skip")) == ["clean"]  # the user's explicit opt-out
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member="evil.npy (object array data)")
    npy = dict(read_members(path))["evil.npy"]
    assert_offset(finding, npy, start=_data_start(npy))
    assert_no_markers(tmp_path)


def test_object_npy_inside_a_torch_zip(tmp_path: Path) -> None:
    base = tmp_path / "base.pt"
    torch.save({"w": torch.ones(2)}, base)
    npy = _npy(tmp_path / "MARKER")
    path = write_zip(tmp_path / "with-npy.pt", [*read_members(base), ("base/extra/stats.npy", npy)])
    assert list(tw.load(path)) == ["w"]  # the member is never read by loading
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member_contains="base/extra/stats.npy")
    assert_offset(finding, npy, start=_data_start(npy))
    assert_no_markers(tmp_path)


def test_numeric_npy_is_not_an_alarm(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(10.0))
    report = scan(path)
    assert report.verdict == "clean"  # tw.load reads it, and nothing in it is a payload
    assert not [f for f in report.findings if f.severity in ("dangerous", "suspicious")]
    assert torch.equal(tw.load(path)["array"], torch.from_numpy(np.load(path)))
