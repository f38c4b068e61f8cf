"""torch.package archives (``PackageExporter``): pickle resources, binary resources and the Python source of
interned modules. ``PackageImporter.load_pickle`` runs a payload in a pickle resource (the canary) and imports
(runs) the package's own source.

``tw.load`` reads every pickle resource as data and refuses a payload in any (naming the resource); scan flags it
at its opcode, and lists source files as code the archive carries (never run, never mistaken for a payload).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.package import PackageExporter, PackageImporter

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_clean_scan,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    flagged,
    read_members,
    refusal,
    touch,
    wait_for,
)

SYSTEM = f"{os.system.__module__}.system"


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.package warns about TypedStorage
        yield


def _export(path: Path, marker: Path | None = None, *, binary: bytes | None = None, source: str | None = None) -> Path:
    with PackageExporter(str(path)) as exporter:
        exporter.extern(["torch.**", os.system.__module__, "os", "sys"])
        state: dict[str, object] = {"w": torch.arange(3.0)}
        if marker is not None:
            state["hook"] = Reduce(os.system, touch(marker))
        exporter.save_pickle("weights", "sd.pkl", state)
        if binary is not None:
            exporter.save_binary("weights", "blob", binary)
        if source is not None:
            exporter.save_source_string("helpers", source)
    return path


def test_canary_load_pickle_runs_the_payload(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    path = _export(tmp_path / "pkg.pt", canary)
    PackageImporter(str(path)).load_pickle("weights", "sd.pkl")
    assert wait_for([canary])


def test_payload_in_a_pickle_resource(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _export(tmp_path / "pkg.pt", tmp_path / "MARKER")
    for verb in (tw.open, tw.load):
        err = assert_refused(refusal(verb, path), SYSTEM)
        assert "weights/sd.pkl" in str(err)
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member="pkg/weights/sd.pkl")
    assert_offset(finding, dict(read_members(path))["pkg/weights/sd.pkl"])
    assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


def test_payload_in_a_binary_resource(tmp_path: Path) -> None:
    payload = pickle.dumps(Reduce(os.system, touch(tmp_path / "MARKER")), protocol=2)
    path = _export(tmp_path / "pkg.pt", binary=payload)
    assert_refused(refusal(tw.load, path), SYSTEM)  # it starts like a pickle: read as one, and refused
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member="pkg/weights/blob")
    assert_offset(finding, payload)
    assert_no_markers(tmp_path)


def test_clean_package_is_clean(tmp_path: Path) -> None:
    path = _export(tmp_path / "pkg.pt")
    assert torch.equal(tw.load(path)["weights/sd.pkl/w"], torch.arange(3.0))
    assert_clean_scan(path)


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.path.insert(0, '.')\n",
        "import os\nos.environ.setdefault('OMP_NUM_THREADS', '1')\n",
        "class Helper:\n    __slots__ = ()\n",
    ],
    ids=["sys-path", "os-environ", "class"],
)
def test_source_of_an_interned_module_is_code_not_a_payload(tmp_path: Path, source: str) -> None:
    """A package's own Python source is listed as code it carries; it is not a pickle, so the lines of an
    ordinary module (``import sys`` / ``sys.path...``) must not be read as pickle opcodes naming globals."""
    marker = tmp_path / "MARKER"
    path = _export(tmp_path / "pkg.pt", source=f"{source}open({str(marker)!r}, 'w').close()\n")
    assert "weights/sd.pkl/w" in tw.load(path)  # never imported
    report = assert_clean_scan(path)
    assert "pkg/helpers.py" in report.code_files
    assert_no_markers(tmp_path)
