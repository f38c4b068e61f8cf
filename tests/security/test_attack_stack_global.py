"""STACK_GLOBAL (protocol 4+): the module and name are strings on the stack, so they can be written anywhere
before the opcode: pushed long before, stored in the memo (PUT/BINPUT/LONG_BINPUT/MEMOIZE) and fetched back
(GET/BINGET/LONG_BINGET), split across protocol 4/5 frames. Whatever route the strings take, the global is named
at the STACK_GLOBAL opcode, refused by ``tw.load`` and flagged by scan there.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
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
    read_members,
    refusal,
    torch_zip_members,
    touch,
    u,
    wait_for,
    write_zip,
)

SYSTEM = os.system.__module__  # posix


def _frame(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


def _call(cmd: str) -> bytes:
    return u(cmd) + b"\x85R."


# name: (builder of the pickle from the shell command, the global refused)
CASES: dict[str, tuple[Callable[[str], bytes], str]] = {
    "plain": (lambda c: b"\x80\x04" + u(SYSTEM) + u("system") + b"\x93" + _call(c), f"{SYSTEM}.system"),
    "binput-binget": (
        lambda c: b"\x80\x04" + u(SYSTEM) + b"q\x05" + u("system") + b"q\x06" + b"00" + b"h\x05h\x06\x93" + _call(c),
        f"{SYSTEM}.system",
    ),
    "long-binput-binget": (
        lambda c: b"\x80\x04" + u("subprocess") + b"r\x00\x01\x00\x00" + u("getoutput") + b"r\x01\x01\x00\x00"
        b"00j\x00\x01\x00\x00j\x01\x01\x00\x00\x93" + _call(c),
        "subprocess.getoutput",
    ),
    "memoize": (
        # both strings memoized (slots 0, 1) and popped; the command too (slot 2); all fetched back at the end
        lambda c: b"\x80\x04" + u(SYSTEM) + b"\x94" + u("system") + b"\x94" + b"00" + u(c) + b"\x940"
        b"h\x00h\x01\x93h\x02\x85R.",
        f"{SYSTEM}.system",
    ),
    "text-put-get": (
        lambda c: b"\x80\x04" + u("os") + b"p7\n0" + u("system") + b"p8\n0g7\ng8\n\x93" + _call(c),
        "os.system",
    ),
    "names-written-long-before": (
        # the strings sit in a big harmless list first, and are fetched from the memo after it
        lambda c: b"\x80\x04](" + u("builtins") + b"\x94" + u("eval") + b"\x94" + b"K\x01" * 300 + b"e0"
        b"h\x00h\x01\x93" + u(f"__import__('os').system({c!r})") + b"\x85R.",
        "builtins.eval",
    ),
    "framed": (
        lambda c: b"\x80\x04" + _frame(u(SYSTEM) + u("system") + b"\x93" + _call(c)),
        f"{SYSTEM}.system",
    ),
    "split-across-frames": (
        lambda c: b"\x80\x05" + _frame(u(SYSTEM) + b"\x94") + _frame(u("system") + b"\x94\x93") + _frame(_call(c)),
        f"{SYSTEM}.system",
    ),
    "protocol-5-dotted-name": (
        lambda c: b"\x80\x05" + _frame(u("os") + u("path.os.system") + b"\x93" + _call(c)),
        "os.path.os.system",
    ),
}


def test_canaries_run_code_under_pickle(tmp_path: Path) -> None:
    canaries = {name: tmp_path / f"CANARY-{name}" for name in CASES}
    canary_subprocess([make(touch(canaries[name])) for name, (make, _) in CASES.items()], tmp_path)
    assert wait_for(canaries.values()) == list(canaries.values())


@pytest.mark.parametrize("case", list(CASES))
def test_stack_global_is_refused_and_flagged_at_its_opcode(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, name = CASES[case]
    data = make(touch(tmp_path / "MARKER"))
    assert_refused(refusal(unpickle, data), name)
    raw = tmp_path / "payload.pkl"
    raw.write_bytes(data)
    assert_refused(refusal(tw.load, raw), name)
    zipped = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    assert_refused(refusal(tw.load, zipped), name)
    for path, member in ((raw, "the pickle"), (zipped, "archive/data.pkl")):
        finding = flagged(scan(path), "dangerous-global", name=name, member=member)
        assert_offset(finding, data, frozenset({"STACK_GLOBAL"}))
    if case == "memoize":
        assert_cli_flags(capsys, zipped, "dangerous-global")
    assert_no_markers(tmp_path)


@pytest.mark.parametrize("protocol", [4, 5])
def test_torch_save_protocol_4_and_5_payloads(tmp_path: Path, protocol: int) -> None:
    """What a real pickler writes at protocols 4 and 5: FRAMEs, MEMOIZE, STACK_GLOBAL, the global memoized and
    fetched back for its second use."""
    path = tmp_path / "model.pt"
    marker = tmp_path / "MARKER"
    torch.save(
        {"w": torch.ones(2), "a": Reduce(os.system, touch(marker)), "b": [Reduce(os.system, touch(marker))]},
        path,
        pickle_protocol=protocol,
    )
    ((_, data),) = [(n, c) for n, c in read_members(path) if n.endswith("/data.pkl")]
    assert b"\x95" in data and b"\x93" in data and b"\x94" in data
    assert_refused(refusal(tw.load, path), f"{SYSTEM}.system")
    report = scan(path)
    finding = flagged(report, "dangerous-global", name=f"{SYSTEM}.system", member="model/data.pkl")
    assert_offset(finding, data, frozenset({"STACK_GLOBAL"}))
    assert report.streams[0].protocol == protocol
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": Reduce(os.system, touch(marker))}, protocol=protocol))
    flagged(scan(raw), "dangerous-global", name=f"{SYSTEM}.system", member="the pickle")
    assert_no_markers(tmp_path)


def test_stack_global_with_non_string_names_is_unreadable_not_clean(tmp_path: Path) -> None:
    """Names that are not strings (a number, a stub) cannot name a global: pickle refuses them too. Scan must not
    call such a file clean."""
    for data in (b"\x80\x04K\x01K\x02\x93.", b"\x80\x04cmy\nThing\n)R" + u("x") + b"\x93."):
        path = tmp_path / "odd.pkl"
        path.write_bytes(data)
        report = scan(path)
        assert report.verdict == "unreadable" and not report.complete
        assert "pickle-unreadable" in {f.code for f in report.findings}
