"""Legacy tar files (what ``torch.save`` wrote before 0.4; ``tests/fixtures/make_legacy_tar.py`` writes them):
members ``sys_info``, ``pickle``, ``tensors`` and ``storages``, the last two a count pickle, then one record pickle
plus raw metadata or data per tensor / storage (and a views pickle at the end). ``torch.load(weights_only=False)``
unpickles every one of them, so a payload in any runs.

``tw.load`` refuses the payload, naming the member and the record; scan (which reads the tar through the same
reader) flags it there, at its opcode in the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    flagged,
    pickle_end,
    refusal,
    touch,
    wait_for,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _generator() -> ModuleType:
    if "make_legacy_tar" in sys.modules:
        return sys.modules["make_legacy_tar"]
    spec = importlib.util.spec_from_file_location("make_legacy_tar", FIXTURES / "make_legacy_tar.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_legacy_tar"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _first_end(data: bytes) -> int:
    """Where the first pickle of a member ends (what follows it is raw data or another pickle)."""
    return pickle_end(data)


def _payload(marker: Path) -> bytes:
    return gen.dumps(gen.Call("os", "system", (touch(marker),)))


def _with_payload(where: str, marker: Path) -> tuple[bytes, str, int]:
    """A tar file with the payload at ``where``; the member it is in and its offset in that member's data."""
    spec, _ = gen.example(empty=False)
    payload = _payload(marker)
    members = dict(spec.members())
    if where == "pickle":
        spec.obj = {"extra": gen.Call("os", "system", (touch(marker),)), **spec.obj}  # first: before any class
        members = dict(spec.members())
        return gen.tar_bytes(members.items()), "pickle", 0
    member, part = where.split(":")
    content = members[member]
    if part in ("count", "whole"):
        end = _first_end(content)
        members[member] = payload + content[end:]
        at = 0
    elif part == "record0":
        first = _first_end(content)
        record_end = first + _first_end(content[first:])
        members[member] = content[:first] + payload + content[record_end:]
        at = first
    else:  # views: the last pickle of storages
        views = gen.dumps([(v.key, v.root, v.offset, v.numel) for v in spec.views])
        assert content.endswith(views)
        members[member] = content[: -len(views)] + payload
        at = len(content) - len(views)
    return gen.tar_bytes(members.items()), member, at


PLACES = [
    "pickle",
    "sys_info:whole",
    "tensors:count",
    "tensors:record0",
    "storages:count",
    "storages:record0",
    "storages:views",
]


@pytest.mark.parametrize("where", ["pickle", "tensors:record0", "storages:record0"])
def test_canary_torch_load_runs_a_payload_in_the_tar(tmp_path: Path, where: str) -> None:
    canary = tmp_path / "CANARY"
    path = tmp_path / "old.pt"
    path.write_bytes(_with_payload(where, canary)[0])
    with contextlib.suppress(Exception):  # a record that is not a record: torch fails after the payload ran
        torch.load(path, weights_only=False)
    assert wait_for([canary]), where


@pytest.mark.parametrize("where", PLACES)
def test_payload_in_a_tar_member_is_refused_and_flagged(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, member, at = _with_payload(where, tmp_path / "MARKER")
    path = tmp_path / "old.pt"
    path.write_bytes(data)
    for verb in (tw.open, tw.load):
        err = assert_refused(refusal(verb, path), "os.system")
        assert f"member '{member}'" in str(err)
    report = scan(path)
    finding = flagged(report, "dangerous-global", name="os.system", member_contains=f"member '{member}'")
    start = gen.member_offsets(data)[member][0] + at
    assert_offset(finding, data, start=start)
    if where == "tensors:count":
        assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


def test_clean_tar_fixture_is_clean(tmp_path: Path) -> None:
    report = scan(FIXTURES / "legacy_tar.pt")
    assert report.verdict == "clean" and report.format == "legacy-tar"
    assert {f.name for f in report.findings if f.severity == "warning"} == {"__main__.Net"}
    assert report.globals["torch.nn.modules.linear.Linear"] == "known"  # torch's own class: no warning
