"""Legacy torch streams (``torch.save(..., _use_new_zipfile_serialization=False)``, the format before 1.6): five
pickles back to back (magic number, protocol version, sys_info, the object, the storage keys), then raw storage
bytes. ``torch.load(weights_only=False)`` unpickles all five, so a payload spliced into any of them runs; the canary
shows it for each.

``tw.load`` refuses the payload wherever it is, naming the global and the pickle; scan reads all five and flags it
at its opcode, inside the spliced pickle's byte range.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    flagged,
    pickle_bounds,
    refusal,
    touch,
    wait_for,
)

SYSTEM = f"{os.system.__module__}.system"
PICKLES = ["magic", "protocol", "sys_info", "object", "storage-keys"]


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("legacy") / "legacy.pt"
    torch.save(
        {"w": torch.arange(4.0), "b": torch.ones(2, dtype=torch.int64)}, path, _use_new_zipfile_serialization=False
    )
    return path.read_bytes()


def _splice(legacy: bytes, which: str, marker: Path) -> tuple[bytes, int, int]:
    """The stream with pickle ``which`` replaced by a payload; the payload's byte range."""
    start, end = pickle_bounds(legacy, 5)[PICKLES.index(which)]
    payload = pickle.dumps(Reduce(os.system, touch(marker)), protocol=2)
    return legacy[:start] + payload + legacy[end:], start, start + len(payload)


@pytest.mark.parametrize("which", PICKLES)
def test_canary_torch_load_runs_a_payload_in_any_of_the_five(tmp_path: Path, legacy: bytes, which: str) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "spliced.pt"
    path.write_bytes(_splice(legacy, which, canary)[0])
    with contextlib.suppress(Exception):  # the payload runs, then torch notices the pickle is not what it wanted
        torch.load(path, weights_only=False)
    assert wait_for([canary]), which


@pytest.mark.parametrize("which", PICKLES)
def test_payload_in_any_of_the_five_is_refused_and_flagged(
    tmp_path: Path, legacy: bytes, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, start, end = _splice(legacy, which, tmp_path / "MARKER")
    path = tmp_path / "spliced.pt"
    path.write_bytes(data)
    for verb in (tw.open, tw.load):
        assert_refused(refusal(verb, path), SYSTEM)
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM)
    assert start <= finding.offset < end  # type: ignore[operator]
    assert_offset(finding, data, start=start)
    if which != "magic":  # the first pickle is "the pickle"; the others are numbered by position
        assert finding.member == f"pickle {PICKLES.index(which) + 1} at byte {start}"
    if which == "sys_info":
        assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_payload_saved_by_torch_in_the_object(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(
        {"w": torch.ones(2), "cfg": {"hook": Reduce(os.system, touch(tmp_path / "MARKER"))}},
        path,
        pickle_protocol=protocol,
        _use_new_zipfile_serialization=False,
    )
    assert_refused(refusal(tw.load, path), SYSTEM)
    data = path.read_bytes()
    start, end = pickle_bounds(data, 4)[3]
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member=f"pickle 4 at byte {start}")
    assert start <= finding.offset < end  # type: ignore[operator]
    assert_no_markers(tmp_path)


def test_a_sixth_pickle_after_the_storage_keys_is_never_read(tmp_path: Path, legacy: bytes) -> None:
    """Bytes after the storage keys are storage data, read by offset, never unpickled by anyone: a pickle placed
    there is not a payload for torch.load; the file still loads (its storages are intact)."""
    _, keys_end = pickle_bounds(legacy, 5)[4]
    payload = pickle.dumps(Reduce(os.system, touch(tmp_path / "MARKER")), protocol=2)
    path = tmp_path / "sixth.pt"
    path.write_bytes(legacy + payload)
    tensors = tw.load(path)
    assert torch.equal(tensors["w"], torch.arange(4.0))
    assert keys_end < len(legacy)
    assert_no_markers(tmp_path)
