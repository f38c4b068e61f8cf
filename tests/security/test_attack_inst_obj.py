"""INST and OBJ (protocols 0 and 1: instantiate-and-call in one opcode) and protocol 0 text pickles that start a
file (``cos\\nsystem\\n...``), including Python 2 module names that readers map to Python 3 ones
(``__builtin__`` -> ``builtins``, ``commands`` -> ``subprocess``).

A text pickle file is refused before any unpickling (``detect`` calls it a text file); inside a torch zip it is
refused as an unsafe global. Scan reads it either way and flags the global at the opcode naming it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

import torchweights.api as tw
from torchweights.errors import NotACheckpointError, UnsafeCheckpointError
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    canary_subprocess,
    flagged,
    opener,
    refusal,
    torch_zip_members,
    touch,
    wait_for,
    write_zip,
)


def _s(text: str) -> bytes:
    return f"S{text!r}\n".encode()


# name: (the pickle, from the marker path; the global refused; the opcode that names it)
CASES: dict[str, tuple[Callable[[Path], bytes], str, str]] = {
    "inst": (lambda m: b"(" + _s(touch(m)) + b"ios\nsystem\n.", "os.system", "INST"),
    "inst-binary-args": (
        lambda m: b"(X" + len(touch(m)).to_bytes(4, "little") + touch(m).encode() + b"iposix\nsystem\n.",
        "posix.system",
        "INST",
    ),
    "obj": (lambda m: b"(cos\nsystem\n" + _s(touch(m)) + b"o.", "os.system", "GLOBAL"),
    "obj-class-from-memo": (
        lambda m: b"cos\nsystem\np0\n0(g0\n" + _s(touch(m)) + b"o.",
        "os.system",
        "GLOBAL",
    ),
    "text-global-reduce": (lambda m: b"cos\nsystem\n(" + _s(touch(m)) + b"tR.", "os.system", "GLOBAL"),
    "py2-builtin-eval": (
        lambda m: b"c__builtin__\neval\n(" + _s(opener(m)) + b"tR.",
        "builtins.eval",
        "GLOBAL",
    ),
    "py2-commands": (lambda m: b"ccommands\ngetoutput\n(" + _s(touch(m)) + b"tR.", "subprocess.getoutput", "GLOBAL"),
    "subprocess-list-args": (
        lambda m: b"csubprocess\ncheck_output\n((lp0\nS'touch'\naS" + repr(str(m)).encode() + b"\natR.",
        "subprocess.check_output",
        "GLOBAL",
    ),
    "pickler-protocol-0": (
        lambda m: pickle.dumps(Reduce(os.system, touch(m)), protocol=0),
        f"{os.system.__module__}.system",
        "GLOBAL",
    ),
    "pickler-protocol-1": (
        lambda m: pickle.dumps({"cfg": Reduce(os.system, touch(m))}, protocol=1),
        f"{os.system.__module__}.system",
        "GLOBAL",
    ),
}


def test_canaries_run_code_under_pickle(tmp_path: Path) -> None:
    canaries = {name: tmp_path / f"CANARY-{name}" for name in CASES}
    canary_subprocess([make(canaries[name]) for name, (make, _, _) in CASES.items()], tmp_path)
    assert wait_for(canaries.values()) == list(canaries.values())


@pytest.mark.parametrize("case", list(CASES))
def test_protocol_0_and_1_payload_is_refused_and_flagged(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, name, op = CASES[case]
    data = make(tmp_path / "MARKER")
    assert data[:1] != b"\x80"  # no PROTO opcode: nothing says it is a pickle
    assert_refused(refusal(unpickle, data), name)
    raw = tmp_path / "payload.pkl"
    raw.write_bytes(data)
    with pytest.raises((NotACheckpointError, UnsafeCheckpointError)) as info:
        tw.load(raw)
    if isinstance(info.value, NotACheckpointError):
        assert info.value.code in ("text-file", "unknown-format")  # refused before anything was unpickled
    else:
        assert_refused(info.value, name)
    zipped = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    assert_refused(refusal(tw.load, zipped), name)
    for path, member in ((raw, "the pickle"), (zipped, "archive/data.pkl")):
        report = scan(path)
        finding = flagged(report, "dangerous-global", name=name, member=member)
        assert_offset(finding, data, frozenset({op}))
        assert report.streams[0].protocol == 0  # no PROTO opcode
    if case == "inst":
        assert_cli_flags(capsys, raw, "dangerous-global")
    assert_no_markers(tmp_path)


def test_text_pickle_behind_an_innocent_name(tmp_path: Path) -> None:
    """A protocol 0 payload in a zip member without a pickle name or header: found by its first opcode."""
    data = CASES["text-global-reduce"][0](tmp_path / "MARKER")
    path = write_zip(tmp_path / "model.pt", [*torch_zip_members(b"\x80\x02}."), ("archive/extra/readme", data)])
    finding = flagged(scan(path), "dangerous-global", name="os.system", member="archive/extra/readme")
    assert_offset(finding, data, frozenset({"GLOBAL"}))
    assert_no_markers(tmp_path)


def _binary_call(cmd: str) -> bytes:
    return b"\x8c\x05posix\x8c\x06system\x93" + b"\x8c" + bytes([len(cmd)]) + cmd.encode() + b"\x85R."


# Binary opcodes without (or with a protocol 0/1) PROTO header: pickle.load needs no PROTO, so a file starting
# with any opcode runs (torch.load(weights_only=False) falls back to its legacy pickle path for such a file).
HEADERLESS: dict[str, Callable[[str], bytes]] = {
    "no-proto-binary": _binary_call,
    "proto-1-header": lambda c: b"\x80\x01" + _binary_call(c),
    "frame-first": lambda c: b"\x95" + len(_binary_call(c)).to_bytes(8, "little") + _binary_call(c),
    "memo-first": lambda c: b"N\x94" + _binary_call(c),
}


def test_canaries_headerless_binary_pickles_run(tmp_path: Path) -> None:
    canaries = {name: tmp_path / f"CANARY-{name}" for name in HEADERLESS}
    canary_subprocess([make(touch(canaries[name])) for name, make in HEADERLESS.items()], tmp_path)
    assert wait_for(canaries.values()) == list(canaries.values())


@pytest.mark.parametrize("case", list(HEADERLESS))
def test_headerless_binary_pickle_file_is_flagged(tmp_path: Path, case: str) -> None:
    data = HEADERLESS[case](touch(tmp_path / "MARKER"))
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with pytest.raises((NotACheckpointError, UnsafeCheckpointError)):
        tw.load(path)
    finding = flagged(scan(path), "dangerous-global", name="posix.system", member="the pickle")
    assert_offset(finding, data, frozenset({"STACK_GLOBAL"}))
    assert_no_markers(tmp_path)
