"""Pickles hidden in zip members that ``torch.load`` does not read but other tools might (a loader that picks a
member by name, ``zipfile`` plus ``pickle.loads``, a second archive root): whatever the member is called, a
storage (``archive/data/0``), ``extra.bin``, a name without extension, a member outside the root, a deflated
member, an archive inside a member.

Loading reads only the checkpoint's own pickle, so it works and runs nothing; scan reads every member that starts
like a pickle and flags the payload under its member name, at its opcode. The one exception is a member that the
checkpoint itself reads as a float tensor's bytes: every reader takes those as numbers, so they are data, never
opened by scan (a uint8 tensor's bytes are scanned as a latent pickle: tests/security/test_attack_latent.py).
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
from torchweights.limits import Limits
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    canary_subprocess,
    flagged,
    read_members,
    refusal,
    touch,
    wait_for,
    write_zip,
)

SYSTEM = f"{os.system.__module__}.system"


def _payload(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(Reduce(os.system, touch(marker)), protocol=protocol)


def test_canary_hidden_payload_runs_code_under_pickle(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    canary_subprocess([_payload(canary)], tmp_path)
    assert wait_for([canary])


@pytest.fixture
def base(tmp_path: Path) -> list[tuple[str, bytes]]:
    path = tmp_path / "base.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    return read_members(path)


PLACES = {
    "storage": "base/data/0",  # replaces the tensor's own bytes
    "extra-bin": "base/extra.bin",
    "no-extension": "base/payload",
    "outside-root": "elsewhere/x",
    "second-root-data-pkl": "other/data.pkl",
    "deep-folder": "base/.data/a/b/c/d/e",
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_hidden_pickle_is_flagged_whatever_its_name(
    tmp_path: Path, base: list[tuple[str, bytes]], place: str, compression: int, capsys: pytest.CaptureFixture[str]
) -> None:
    name = PLACES[place]
    payload = _payload(tmp_path / "MARKER")
    members = [(n, payload if n == name else c) for n, c in base]
    if name not in dict(base):
        members.append((name, payload))
    path = write_zip(tmp_path / "hidden.pt", members, compression)
    tensors = tw.load(path)  # only the checkpoint's own pickle is read: nothing runs
    assert list(tensors) == ["w"]
    if place != "storage":
        assert torch.equal(tensors["w"], torch.arange(4.0))
    if place == "storage":  # a float tensor's bytes: numbers to every reader, never unpickled, never opened
        report = scan(path)
        assert report.verdict == "clean" and report.streams[0].where == "base/data.pkl" and len(report.streams) == 1
        assert_no_markers(tmp_path)
        return
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member=name)
    assert_offset(finding, payload)
    if place == "extra-bin" and compression == zipfile.ZIP_STORED:
        assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


def test_first_root_is_the_checkpoint(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    """Two roots: the first one's data.pkl is the checkpoint (as torch.load reads it), so a payload there is
    refused; scan flags it either way."""
    payload = _payload(tmp_path / "MARKER")
    path = write_zip(tmp_path / "roots.pt", [("aaa/data.pkl", payload), ("aaa/version", b"3\n"), *base])
    assert_refused(refusal(tw.load, path), SYSTEM)
    flagged(scan(path), "dangerous-global", name=SYSTEM, member="aaa/data.pkl")
    assert_no_markers(tmp_path)


def test_payload_in_an_archive_inside_a_member(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    inner = io.BytesIO()
    torch.save({"w": torch.ones(1), "x": Reduce(os.system, touch(tmp_path / "MARKER"))}, inner)
    path = write_zip(tmp_path / "nested.pt", [*base, ("base/extra/inner.pt", inner.getvalue())])
    assert list(tw.load(path)) == ["w"]
    finding = flagged(scan(path), "latent-dangerous-global", name=SYSTEM, member_contains="base/extra/inner.pt")
    assert finding.severity == "dangerous" and "data.pkl" in (finding.member or "")
    assert_no_markers(tmp_path)


@pytest.mark.parametrize("protocol", [0, 1, 4, 5])
def test_hidden_pickle_of_any_protocol(tmp_path: Path, base: list[tuple[str, bytes]], protocol: int) -> None:
    payload = _payload(tmp_path / "MARKER", protocol)
    path = write_zip(tmp_path / "hidden.pt", [*base, ("base/notes", payload)])
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member="base/notes")
    assert_offset(finding, payload)
    assert_no_markers(tmp_path)


def test_storage_bytes_that_merely_look_like_a_pickle_start_are_not_an_alarm(tmp_path: Path) -> None:
    """Tensor data whose first byte is a pickle opcode (here 'K', 'c', '(' and ']'): not a payload."""
    for first in b"Kc(]":
        t = torch.zeros(64, dtype=torch.uint8)
        t[0] = first
        t[1:8] = torch.tensor(list(b"\n\nxyz\n\n"), dtype=torch.uint8)
        path = tmp_path / f"look-{first}.pt"
        torch.save({"w": t.view(torch.float32)}, path)
        report = scan(path)
        assert report.verdict == "clean", [(f.code, f.member) for f in report.findings]


def test_tensor_bytes_over_the_pickle_limit_that_look_like_a_pickle_start(tmp_path: Path) -> None:
    """A storage larger than the pickle limit whose first byte is an opcode: neither read whole nor reported as a
    pickle scan could not read (with the default limit, any storage over 1 GiB of a large model)."""
    t = torch.zeros(4096, dtype=torch.uint8)
    t[0] = ord("K")
    path = tmp_path / "big.pt"
    torch.save({"w": t.view(torch.float32)}, path)
    report = scan(path, limits=Limits(max_pickle_bytes=1024))
    assert report.verdict == "clean", [(f.code, f.member) for f in report.findings]
