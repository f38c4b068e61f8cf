"""Latent payloads: a pickle (or a whole torch.save archive) stored as a value inside a checkpoint: a bytes value
anywhere in the tree (in a dict, a Namespace, an unknown class's state, a NumPy object array, a deque), a uint8 or
int8 tensor. Loading never unpickles a value, so ``tw.load`` works and runs nothing; code that later calls
``pickle.loads`` on the value would run it (the canary). Scan reads such values and flags
``latent-dangerous-global`` (severity dangerous: the verdict is dangerous, exit 1), saying where the value is.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    canary_in_process,
    flagged,
    touch,
    wait_for,
)

SYSTEM = f"{os.system.__module__}.system"


class Holder:
    """A project class (unknown to torchweights: an inert stub) holding the blob as an attribute."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


def _blob(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(Reduce(os.system, touch(marker)), protocol=protocol)


def _archive(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1), "x": Reduce(os.system, touch(marker))}, buf)
    return buf.getvalue()


def test_canary_the_value_runs_code_when_unpickled(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    canary_in_process(_blob(canary))
    assert wait_for([canary])


# name: (the value saved under "x", from the blob; where scan says it is)
PLACES: dict[str, tuple[Any, str]] = {
    "bytes": (lambda b: b, "bytes value at 'x'"),
    "bytearray": (lambda b: bytearray(b), "bytes value at 'x'"),
    "nested-dict": (lambda b: {"a": [{"b": (b,)}]}, "bytes value at 'x.a.0.b.0'"),
    "namespace": (lambda b: argparse.Namespace(blob=b), "bytes value at 'x.blob'"),
    "unknown-class-state": (lambda b: Holder(b), "bytes value at 'x.state.blob'"),
    "ordered-dict": (lambda b: collections.OrderedDict(blob=b), "bytes value at 'x.blob'"),
    "set": (lambda b: {b}, "bytes value at 'x.0'"),
    "numpy-object-array": (lambda b: np.array([0, b], dtype=object), "bytes value at 'x.1'"),
    "deque": (lambda b: collections.deque([b]), "bytes value at 'x.0'"),
}


@pytest.mark.parametrize("place", list(PLACES))
def test_latent_pickle_in_a_value(tmp_path: Path, place: str, capsys: pytest.CaptureFixture[str]) -> None:
    make, where = PLACES[place]
    blob = _blob(tmp_path / "MARKER")
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.arange(3.0), "x": make(blob)}, path)
    tensors = tw.load(path)
    assert torch.equal(tensors["w"], torch.arange(3.0))  # loads, and nothing ran
    report = scan(path)
    finding = flagged(report, "latent-dangerous-global", name=SYSTEM, member_contains=where)
    assert finding.severity == "dangerous" and "Do not unpickle that value" in finding.message
    assert finding.offset == 2  # the GLOBAL right after PROTO, in the value's own bytes
    info = [f for f in report.findings if f.code == "latent-pickle"]
    assert info and info[0].severity == "info"
    assert any(s.latent for s in report.streams)
    if place == "bytes":
        assert_cli_flags(capsys, path, "latent-dangerous-global")
    assert_no_markers(tmp_path)


def test_latent_value_is_kept_as_inert_bytes(tmp_path: Path) -> None:
    blob = _blob(tmp_path / "MARKER")
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "x": blob}, path)
    assert tw.open(path).extras["x"] == blob


@pytest.mark.parametrize("protocol", [0, 1, 4, 5])
def test_latent_pickle_of_any_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "x": _blob(tmp_path / "MARKER", protocol)}, path)
    flagged(scan(path), "latent-dangerous-global", member_contains="bytes value at 'x'")
    assert_no_markers(tmp_path)


def test_latent_pickle_two_levels_deep(tmp_path: Path) -> None:
    outer = pickle.dumps({"inner": _blob(tmp_path / "MARKER")}, protocol=4)
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "x": outer}, path)
    finding = flagged(scan(path), "latent-dangerous-global", name=SYSTEM, member_contains="bytes value at 'inner'")
    assert "bytes value at 'x'" in (finding.member or "")
    assert_no_markers(tmp_path)


def test_latent_torch_archive_in_a_value(tmp_path: Path) -> None:
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "x": _archive(tmp_path / "MARKER")}, path)
    report = scan(path)
    finding = flagged(report, "latent-dangerous-global", name=SYSTEM, member_contains="data.pkl")
    assert "bytes value at 'x'" in (finding.member or "")
    assert "latent-zip" in {f.code for f in report.findings}
    assert_no_markers(tmp_path)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_latent_pickle_in_a_byte_tensor(tmp_path: Path, dtype: torch.dtype, fmt: str) -> None:
    blob = _blob(tmp_path / "MARKER")
    tensor = torch.frombuffer(bytearray(blob), dtype=torch.uint8).view(dtype)
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(2), "blob": tensor}, path, _use_new_zipfile_serialization=fmt == "zip")
    tensors = tw.load(path)
    assert bytes(tensors["blob"].view(torch.uint8).numpy()) == blob
    report = scan(path)
    finding = flagged(report, "latent-dangerous-global", name=SYSTEM, member_contains="tensor 'blob'")
    assert finding.offset == 2
    assert_no_markers(tmp_path)


def test_latent_archive_in_a_byte_tensor(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "MARKER")
    path = tmp_path / "latent.pt"
    torch.save({"blob": torch.frombuffer(bytearray(archive), dtype=torch.uint8)}, path)
    assert tw.load(path)["blob"].numel() == len(archive)
    flagged(scan(path), "latent-dangerous-global", name=SYSTEM, member_contains="tensor 'blob'")
    assert_no_markers(tmp_path)


def test_bytes_that_are_not_pickles_are_not_an_alarm(tmp_path: Path) -> None:
    path = tmp_path / "bytes.pt"
    values = {"a": b"\x00\x01\xff", "b": b"hello world", "c": b"K\x05", "d": b"(cfoo", "e": b"\x80\x02K\x01."}
    torch.save({"w": torch.ones(1), **values}, path)
    report = scan(path)
    assert report.verdict == "clean", [(f.code, f.member) for f in report.findings]


def _view_checkpoint(blob: bytes, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``blob`` written into the middle of a bigger byte storage, saved as the view that covers it."""
    storage = torch.zeros(1000, dtype=torch.uint8)
    storage[100 : 100 + len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return {"w": torch.randn(3), "blob": storage[100 : 100 + len(blob)].view(dtype)}


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain-pickle"])
def test_latent_pickle_at_a_byte_tensor_storage_offset(tmp_path: Path, dtype: torch.dtype, fmt: str) -> None:
    """A view into a bigger storage starts at its storage offset: probed there as well as at the storage start."""
    blob = _blob(tmp_path / "MARKER")
    checkpoint = _view_checkpoint(blob, dtype)
    assert checkpoint["blob"].storage_offset() == 100
    path = tmp_path / "latent.pt"
    if fmt == "plain-pickle":
        path.write_bytes(pickle.dumps(checkpoint, protocol=4))
    else:
        torch.save(checkpoint, path, _use_new_zipfile_serialization=fmt == "zip")
    tensors = tw.load(path)
    assert bytes(tensors["blob"].view(torch.uint8).numpy()) == blob
    report = scan(path)
    finding = flagged(report, "latent-dangerous-global", name=SYSTEM, member_contains="at byte 100 of its storage")
    assert finding.offset == 2
    assert_no_markers(tmp_path)
