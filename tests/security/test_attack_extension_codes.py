"""EXT1 / EXT2 / EXT4: a global named by a number from the loading process's ``copyreg`` extension registry
instead of by its name. ``pickle.load`` resolves the number in whatever process loads the file, so the same bytes
are harmless in one process and run ``os.system`` in another that registered the code.

Registered here (each test registers and removes its code): refused and flagged under the name it resolves to,
at the EXT opcode. Not registered (what a reader normally sees): nothing can be resolved, so loading refuses the
stream as corrupt, and scan calls it dangerous: any process where a library registered the code would run
whatever it names, and torch.save never writes extension codes (a file using one was crafted).
"""

from __future__ import annotations

import contextlib
import copyreg
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import CorruptCheckpointError
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    canary_in_process,
    flagged,
    read_members,
    refusal,
    torch_zip_members,
    touch,
    wait_for,
    write_zip,
)

SYSTEM = (os.system.__module__, "system")
# opcode: an extension code it encodes (unused by the stdlib and by the rest of the test suite)
CODES = {"EXT1": 0xE7, "EXT2": 0x7FE7, "EXT4": 0x7FFFE7}
OPS = {"EXT1": b"\x82", "EXT2": b"\x83", "EXT4": b"\x84"}


@contextlib.contextmanager
def registered(code: int, key: tuple[str, str] = SYSTEM) -> Iterator[None]:
    copyreg.add_extension(key[0], key[1], code)
    try:
        yield
    finally:
        copyreg.remove_extension(key[0], key[1], code)


def _payload(marker: Path, op: str) -> bytes:
    with registered(CODES[op]):
        data = pickle.dumps({"w": [1.0], "payload": Reduce(os.system, touch(marker))}, protocol=2)
    assert OPS[op] in data and b"system" not in data  # the global is a number only
    return data


@pytest.mark.parametrize("op", list(CODES))
def test_canary_extension_code_runs_code_where_registered(tmp_path: Path, op: str) -> None:
    canary = tmp_path / "CANARY"
    data = _payload(canary, op)
    with pytest.raises(ValueError, match="unregistered extension code"):
        pickle.loads(data)  # harmless where nobody registered the code...
    with registered(CODES[op]):
        canary_in_process(data)  # ...and runs where somebody did
    assert wait_for([canary])


@pytest.mark.parametrize("op", list(CODES))
def test_registered_extension_code_is_refused_and_flagged(
    tmp_path: Path, op: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _payload(tmp_path / "MARKER", op)
    name = ".".join(SYSTEM)
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    with registered(CODES[op]):
        assert_refused(refusal(unpickle, data), name)
        assert_refused(refusal(tw.load, path), name)
        report = scan(path)
        if op == "EXT2":
            assert_cli_flags(capsys, path, "dangerous-global")
    finding = flagged(report, "dangerous-global", name=name, member="archive/data.pkl")
    assert_offset(finding, data, frozenset({op}))
    assert "extension code" in finding.message
    assert_no_markers(tmp_path)


def test_torch_save_with_a_registered_extension(tmp_path: Path) -> None:
    path = tmp_path / "ext.pt"
    with registered(CODES["EXT2"]):
        torch.save({"w": torch.ones(1), "payload": Reduce(os.system, touch(tmp_path / "MARKER"))}, path)
        assert_refused(refusal(tw.open, path), ".".join(SYSTEM))
        flagged(scan(path), "dangerous-global", name=".".join(SYSTEM), member="ext/data.pkl")
    assert b"\x83" in dict(read_members(path))["ext/data.pkl"]
    assert_no_markers(tmp_path)


@pytest.mark.parametrize("op", list(CODES))
def test_unregistered_extension_code_is_refused_and_never_clean(
    tmp_path: Path, op: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _payload(tmp_path / "MARKER", op)
    with pytest.raises(CorruptCheckpointError) as info:
        unpickle(data)
    assert info.value.code == "bad-pickle" and str(CODES[op]) in str(info.value)
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    with pytest.raises(CorruptCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "bad-pickle"
    report = scan(path)
    assert report.verdict != "clean" and not report.complete
    (ext,) = [f for f in report.findings if f.name == f"copyreg extension code {CODES[op]}"]
    assert ext.member == "archive/data.pkl"
    assert_offset(ext, data, frozenset({op}))
    assert_no_markers(tmp_path)


def test_unregistered_extension_code_is_an_alarm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the code resolves to elsewhere, scan cannot vouch for it: dangerous, exit 1."""
    data = _payload(tmp_path / "MARKER", "EXT2")
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    finding = flagged(scan(path), "dangerous-global", name=f"copyreg extension code {CODES['EXT2']}")
    assert_offset(finding, data, frozenset({"EXT2"}))
    assert "registered" in finding.message
    assert_cli_flags(capsys, path, "dangerous-global")
