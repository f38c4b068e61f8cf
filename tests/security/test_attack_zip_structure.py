"""Zip archives built so that different readers see different files: duplicate member names (``zipfile`` reads
the last, other readers the first), a local header that disagrees with its central directory entry, encrypted
members, members sharing bytes, ``..`` and absolute names, and compressed members that claim an absurd size (a zip
bomb).

``tw.load`` refuses each with the structural problem's code (``CorruptCheckpointError``, or
``ResourceLimitError [limit-inflate]``) rather than guess; scan reports the same code as a ``suspicious`` finding
(verdict dangerous, exit 1), and still reads every pickle it can, both duplicates included.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import CorruptCheckpointError, ResourceLimitError
from torchweights.limits import Limits
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    entry,
    flagged,
    read_members,
    touch,
    write_zip,
)

SYSTEM = f"{os.system.__module__}.system"


@pytest.fixture
def base(tmp_path: Path) -> list[tuple[str, bytes]]:
    path = tmp_path / "base.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    return read_members(path)


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"w": Reduce(os.system, touch(marker))}, protocol=2)


def _refused(path: Path, code: str, cls: type[Exception] = CorruptCheckpointError) -> None:
    for verb in (tw.open, tw.load):
        with pytest.raises(cls) as info:
            verb(path)
        assert info.value.code == code, info.value  # type: ignore[attr-defined]
        assert "torchweights scan" in str(info.value)


@pytest.mark.parametrize("evil_first", [False, True], ids=["evil-last", "evil-first"])
def test_duplicate_member_names_both_scanned_and_reported(
    tmp_path: Path, base: list[tuple[str, bytes]], evil_first: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = _payload(tmp_path / "MARKER")
    clean = dict(base)["base/data.pkl"]
    first, second = (payload, clean) if evil_first else (clean, payload)
    members = [(n, first if n == "base/data.pkl" else c) for n, c in base] + [("base/data.pkl", second)]
    path = write_zip(tmp_path / "dup.pt", members)
    with zipfile.ZipFile(path) as zf:
        assert zf.read("base/data.pkl") == second  # zipfile: the last one wins
    _refused(path, "zip-duplicate-member")
    report = scan(path)
    flagged(report, "zip-duplicate-member", member="base/data.pkl")
    finding = flagged(report, "dangerous-global", name=SYSTEM, member="base/data.pkl")
    assert_offset(finding, payload)
    assert [s.where for s in report.streams].count("base/data.pkl") >= 2  # both copies were read
    if evil_first:
        assert_cli_flags(capsys, path, "zip-duplicate-member")
    assert_no_markers(tmp_path)


def test_local_header_name_disagrees_with_central_directory(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    """The central directory calls the member 'base/innocent'; its local header (what a streaming reader such as
    ``unzip -`` or a naive scanner walks) says 'base/evil.pkl'."""
    payload = _payload(tmp_path / "MARKER")
    data = bytearray(write_zip(tmp_path / "x.pt", [*base, ("base/innocent", payload)]).read_bytes())
    at = entry(bytes(data), "base/innocent").local
    data[at + 30 : at + 30 + len("base/innocent")] = b"base/evil.pkl"
    path = tmp_path / "mismatch.pt"
    path.write_bytes(data)
    _refused(path, "zip-name-mismatch")
    report = scan(path)
    problem = flagged(report, "zip-name-mismatch", member="base/innocent")
    assert "base/evil.pkl" in problem.message
    flagged(report, "dangerous-global", name=SYSTEM, member="base/innocent")
    assert_no_markers(tmp_path)


def test_local_header_sizes_disagree(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    data = bytearray(write_zip(tmp_path / "x.pt", base).read_bytes())
    at = entry(bytes(data), "base/data.pkl").local
    struct.pack_into("<L", data, at + 22, 7)  # local uncompressed size
    path = tmp_path / "sizes.pt"
    path.write_bytes(data)
    _refused(path, "zip-name-mismatch")
    flagged(scan(path), "zip-name-mismatch", member="base/data.pkl")


def test_encrypted_member(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    data = bytearray(
        write_zip(tmp_path / "x.pt", [*base, ("base/secret.pkl", _payload(tmp_path / "MARKER"))]).read_bytes()
    )
    e = entry(bytes(data), "base/secret.pkl")
    data[e.local + 6] |= 0x1
    data[e.central + 8] |= 0x1
    path = tmp_path / "encrypted.pt"
    path.write_bytes(data)
    _refused(path, "zip-encrypted")
    report = scan(path)
    flagged(report, "zip-encrypted", member="base/secret.pkl")
    assert not report.complete  # what an encrypted member holds cannot be known
    assert_no_markers(tmp_path)


def test_members_sharing_bytes(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    """Two directory entries pointing at one local header: the same bytes read (and inflated) twice, under two
    names."""
    data = bytearray(write_zip(tmp_path / "x.pt", base).read_bytes())
    target = entry(bytes(data), "base/data.pkl").local
    struct.pack_into("<L", data, entry(bytes(data), "base/version").central + 42, target)
    path = tmp_path / "overlap.pt"
    path.write_bytes(data)
    _refused(path, "zip-overlap")
    flagged(scan(path), "zip-overlap", member="base/version")


@pytest.mark.parametrize(
    "name", ["../evil.pkl", "/etc/evil.pkl", "base/../../evil.pkl", "C:/evil.pkl", "base\\..\\evil.pkl"]
)
def test_unsafe_member_names(tmp_path: Path, base: list[tuple[str, bytes]], name: str) -> None:
    payload = _payload(tmp_path / "MARKER")
    path = write_zip(tmp_path / "names.pt", [*base, (name, payload)])
    _refused(path, "zip-unsafe-name")
    report = scan(path)
    flagged(report, "zip-unsafe-name", member=name)
    flagged(report, "dangerous-global", name=SYSTEM, member=name)
    # member names are data, never paths: nothing was written outside (or inside) the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt", "names.pt"]
    assert_no_markers(tmp_path)


def test_member_claiming_an_absurd_inflated_size(tmp_path: Path, base: list[tuple[str, bytes]]) -> None:
    """A deflated member of 60 bytes that claims 4 GiB: more than deflate can produce (1032:1)."""
    members = [*base, ("base/bomb.pkl", _payload(tmp_path / "MARKER") * 10)]
    data = bytearray(write_zip(tmp_path / "x.pt", members, zipfile.ZIP_DEFLATED).read_bytes())
    e = entry(bytes(data), "base/bomb.pkl")
    struct.pack_into("<L", data, e.local + 22, 0xFFFFFFF0)
    struct.pack_into("<L", data, e.central + 24, 0xFFFFFFF0)
    path = tmp_path / "bomb.pt"
    path.write_bytes(data)
    _refused(path, "limit-inflate", ResourceLimitError)
    report = scan(path)
    flagged(report, "limit-inflate", member="base/bomb.pkl")
    assert not report.complete


def test_real_bomb_over_the_inflate_budget(tmp_path: Path) -> None:
    """Honest sizes, 8 MiB of zeros deflated to a few KiB each: within deflate's ratio, but over a budget of 4 MiB
    for the archive; nothing is inflated to find out."""
    members = [("archive/data.pkl", pickle.dumps({}, protocol=2)), ("archive/version", b"3\n")]
    members += [(f"archive/data/z{i}", bytes(4 << 20)) for i in range(2)]
    path = write_zip(tmp_path / "bomb.pt", members, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 64 << 10
    limits = Limits(max_inflated_bytes=4 << 20)
    with pytest.raises(ResourceLimitError) as info:
        tw.open(path, limits=limits)
    assert info.value.code == "limit-inflate"
    report = scan(path, limits=limits)
    assert report.verdict == "dangerous"
    assert "limit-inflate" in {f.code for f in report.findings}
