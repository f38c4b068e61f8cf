"""torch.distributed.checkpoint folders (``dcp.save(state_dict, checkpoint_id=folder)``, single process): a pickled
``.metadata`` that every reader unpickles first (``FileSystemReader.read_metadata``: the canary), and ``.distcp``
files holding tensor bytes and, for non-tensor items, whole ``torch.save`` blobs that ``dcp.load`` unpickles.

``tw.open``/``tw.load`` read ``.metadata`` and every item with the restricted unpickler: a payload in ``.metadata``
or in a non-tensor item is refused (``UnsafeCheckpointError``) and nothing runs; an unknown class in an item stays an
inert stub while the tensors load. scan reads ``.metadata`` and the items and flags a payload in them.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import torchweights.api as tw
from torchweights.errors import UnsafeCheckpointError
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.values import Stub

from ._helpers import (
    Reduce,
    alarms,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    flagged,
    touch,
    wait_for,
)

SYSTEM = f"{os.system.__module__}.system"


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        yield


def _folder(path: Path, state: dict[str, object] | None = None) -> Path:
    dcp.save(state or {"w": torch.arange(4.0), "step": 7}, checkpoint_id=str(path))
    assert (path / ".metadata").exists()
    return path


def _poison_metadata(folder: Path, marker: Path) -> bytes:
    """``.metadata`` replaced by a pickle of the real Metadata object with a payload beside it."""
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    data = pickle.dumps((metadata, Reduce(os.system, touch(marker))))
    (folder / ".metadata").write_bytes(data)
    return data


def test_canary_reading_the_metadata_runs_the_payload(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    folder = _folder(tmp_path / "ckpt")
    _poison_metadata(folder, canary)
    with contextlib.suppress(Exception):
        dcp.FileSystemReader(str(folder)).read_metadata()
    assert wait_for([canary])


def test_payload_in_metadata_is_refused_and_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path / "ckpt")
    data = _poison_metadata(folder, tmp_path / "MARKER")
    with pytest.raises(UnsafeCheckpointError):
        tw.load(folder)
    finding = flagged(scan(folder), "dangerous-global", name=SYSTEM)
    assert finding.file == str(folder / ".metadata")
    assert_offset(finding, data)
    assert_cli_flags(capsys, folder, "dangerous-global")
    assert_no_markers(tmp_path)


def test_hand_written_metadata_payload(tmp_path: Path) -> None:
    """The folder shape alone (a ``.metadata`` and a ``.distcp``), without torch.distributed writing it."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    data = pickle.dumps({"state_dict_metadata": {}, "x": Reduce(os.system, touch(tmp_path / "MARKER"))}, protocol=4)
    (folder / ".metadata").write_bytes(data)
    (folder / "__0_0.distcp").write_bytes(bytes(16))
    finding = flagged(scan(folder), "dangerous-global", name=SYSTEM)
    assert_offset(finding, data)
    assert_no_markers(tmp_path)


def test_clean_dcp_folder_is_not_an_alarm(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt")
    report = scan(folder)
    assert report.verdict == "clean", report.verdict
    assert not alarms(report), [(f.code, f.name) for f in alarms(report)]


def test_canary_dcp_load_runs_a_non_tensor_payload(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    folder = _folder(tmp_path / "ckpt", {"w": torch.ones(3), "extra": Reduce(os.system, touch(canary))})
    assert not canary.exists()  # saving did not run it
    dcp.load({"w": torch.zeros(3), "extra": None}, checkpoint_id=str(folder))
    assert wait_for([canary])


def test_payload_in_a_non_tensor_item(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    folder = _folder(tmp_path / "ckpt", {"w": torch.ones(3), "extra": Reduce(os.system, touch(marker))})
    report = scan(folder)
    assert [f for f in report.findings if f.name == SYSTEM and f.file.endswith(".distcp")]
    with pytest.raises(UnsafeCheckpointError):
        tw.load(folder)  # refused, as a payload anywhere in a pickle is: the item is not skipped silently
    assert_no_markers(tmp_path)


class Config:
    """A user class in a non-tensor item: torchweights never imports it."""

    def __init__(self) -> None:
        self.depth = 4


def test_an_unknown_class_in_an_item_stays_inert(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "ckpt", {"w": torch.ones(3), "config": Config()})
    ckpt = tw.open(folder)
    stub = ckpt.extras["config"]
    assert isinstance(stub, Stub) and stub.cls.endswith(".Config") and stub.attributes == {"depth": 4}
    assert torch.equal(tw.load(folder)["w"], torch.ones(3))
