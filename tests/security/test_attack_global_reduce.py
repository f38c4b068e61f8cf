"""GLOBAL + REDUCE: the classic payloads, ``fn(*args)`` for every kind of function that runs code, touches files,
processes or the network, or loads another pickle.

Each payload is checked as a raw pickle at every protocol, and inside real ``torch.save`` files (zip and legacy,
protocols 2 and 4): ``tw.load`` refuses it with ``UnsafeCheckpointError [unsafe-global]`` naming the global, scan
flags it (``dangerous-global`` at the opcode that names it; the CLI exits 1), and the marker file it would create
never appears. A canary per payload proves, with plain ``pickle.loads``, that it really creates its marker.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import importlib
import io
import logging.config
import operator
import os
import pickle
import runpy
import shutil
import socket
import subprocess
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchweights.api as tw
from torchweights.errors import NotACheckpointError
from torchweights.tools.scan.report import Finding
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle

from ._helpers import (
    Reduce,
    as_read,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    canary_in_process,
    canary_subprocess,
    flagged,
    opcodes,
    opener,
    pickle_bounds,
    qualname,
    refusal,
    touch,
    u,
    wait_for,
)


@dataclass(frozen=True)
class Payload:
    """``make(folder, marker)`` builds the object (writing any file it needs into ``folder``); ``names`` are the
    globals the refusal must name; ``canary``: ``"subprocess"``, ``"process"`` (needs torch, or an environment
    variable), or None where running it would leave the temporary folder (the network, a browser)."""

    make: Callable[[Path, Path], Any]
    names: tuple[str, ...]
    canary: str | None = "subprocess"


def _script(folder: Path, marker: Path) -> str:
    script = folder / f"aux-{marker.name}-script.py"
    script.write_text(opener(marker) + "\n")
    return str(script)


def _module(folder: Path, marker: Path) -> str:
    name = f"twsec_payload_{marker.name.replace('-', '_').lower()}"
    (folder / f"{name}.py").write_text(opener(marker) + "\n")
    return name


def _source(folder: Path, marker: Path) -> str:
    source = folder / f"aux-{marker.name}-source"
    source.write_text("copied")
    return str(source)


def _inner_torch_file(folder: Path, marker: Path) -> str:
    inner = folder / f"aux-{marker.name}-inner.pt"
    torch.save({"payload": Reduce(os.system, touch(marker))}, inner)
    return str(inner)


def _inner_torch_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"payload": Reduce(os.system, touch(marker))}, buf)
    return buf.getvalue()


def _object_npy(folder: Path, marker: Path) -> str:
    npy = folder / f"aux-{marker.name}-array.npy"
    np.save(npy, np.array([Reduce(os.system, touch(marker))], dtype=object), allow_pickle=True)
    return str(npy)


def _getattr_call(obj: Any, attr: str, *args: Any) -> Reduce:
    return Reduce(Reduce(builtins.getattr, obj, attr), *args)


PAYLOADS: dict[str, Payload] = {
    "os.system": Payload(lambda f, m: Reduce(os.system, touch(m)), (qualname(os.system),)),
    "subprocess.Popen": Payload(lambda f, m: Reduce(subprocess.Popen, ["touch", str(m)]), ("subprocess.Popen",)),
    "builtins.eval": Payload(lambda f, m: Reduce(builtins.eval, opener(m)), ("builtins.eval",)),
    "builtins.exec": Payload(lambda f, m: Reduce(builtins.exec, opener(m)), ("builtins.exec",)),
    "builtins.compile": Payload(
        lambda f, m: Reduce(builtins.exec, Reduce(builtins.compile, opener(m), "<x>", "exec")),
        ("builtins.exec", "builtins.compile"),
    ),
    "builtins.__import__": Payload(
        lambda f, m: _getattr_call(Reduce(builtins.__import__, "os"), "system", touch(m)), ("builtins.__import__",)
    ),
    "runpy.run_path": Payload(lambda f, m: Reduce(runpy.run_path, _script(f, m)), ("runpy.run_path",)),
    "importlib.import_module": Payload(
        lambda f, m: Reduce(importlib.import_module, _module(f, m)), ("importlib.import_module",)
    ),
    "shutil.copyfile": Payload(lambda f, m: Reduce(shutil.copyfile, _source(f, m), str(m)), ("shutil.copyfile",)),
    "socket.create_connection": Payload(
        lambda f, m: Reduce(socket.create_connection, ("127.0.0.1", 9)), ("socket.create_connection",), None
    ),
    "webbrowser.open": Payload(lambda f, m: Reduce(webbrowser.open, m.as_uri()), ("webbrowser.open",), None),
    "ctypes.CDLL": Payload(
        lambda f, m: _getattr_call(Reduce(ctypes.CDLL, None), "system", touch(m).encode()), ("ctypes.CDLL",)
    ),
    "pickle.loads": Payload(
        lambda f, m: Reduce(pickle.loads, pickle.dumps(Reduce(os.system, touch(m)))), (qualname(pickle.loads),)
    ),
    "torch.load": Payload(
        lambda f, m: Reduce(torch.load, _inner_torch_file(f, m)), ("torch.serialization.load",), "process"
    ),
    "torch.storage._load_from_bytes": Payload(
        lambda f, m: Reduce(torch.storage._load_from_bytes, _inner_torch_bytes(m)),
        ("torch.storage._load_from_bytes",),
        "process",
    ),
    "numpy.load": Payload(lambda f, m: Reduce(np.load, _object_npy(f, m), None, True), (qualname(np.load),)),
    "logging.config.dictConfig": Payload(
        lambda f, m: Reduce(
            logging.config.dictConfig,
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"h": {"()": "os.system", "command": touch(m)}},
            },
        ),
        ("logging.config.dictConfig",),
    ),
    "functools.partial": Payload(
        # functools.partial only makes an object (known); the refusal names what calling it runs
        lambda f, m: Reduce(functools.partial(os.system, touch(m))),
        (qualname(os.system),),
    ),
    "operator.methodcaller": Payload(
        lambda f, m: Reduce(operator.methodcaller("__call__", touch(m)), os.system), ("operator.methodcaller",)
    ),
    "reference-only": Payload(lambda f, m: {"never called": os.system}, (qualname(os.system),), None),
}
CANARIES = [name for name, p in PAYLOADS.items() if p.canary]


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
@pytest.mark.parametrize("name", CANARIES)
def test_canary_payload_really_runs_code_under_pickle(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without this, 'the marker was never created' would prove nothing."""
    payload = PAYLOADS[name]
    canary = tmp_path / "CANARY"
    data = pickle.dumps(payload.make(tmp_path, canary), protocol=2)
    if payload.canary == "subprocess":
        canary_subprocess([data], tmp_path)
    else:
        # torch.load now defaults to weights_only=True; the payload targets the many readers that do not
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        canary_in_process(data)
    assert wait_for([canary]), f"payload {name} does not run code under pickle.loads"


def _check_scan(path: Path, names: tuple[str, ...], data_of: Callable[[Finding], tuple[bytes, int]]) -> Finding:
    """Scan flags every name at an opcode naming it; returns the first name's finding."""
    report = scan(path)
    found = []
    for name in names:
        finding = flagged(report, "dangerous-global", name=name)
        data, start = data_of(finding)
        assert_offset(finding, data, start=start)
        assert name in finding.message and "Do not load" in finding.message
        found.append(finding)
    return found[0]


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_raw_pickle_payload_is_refused_and_flagged(tmp_path: Path, name: str) -> None:
    payload = PAYLOADS[name]
    obj = payload.make(tmp_path, tmp_path / "MARKER")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps({"w": [1.0, 2.0], "payload": obj}, protocol=protocol)
        names = tuple(as_read(n, protocol) for n in payload.names)
        assert_refused(refusal(unpickle, data), *names)
        path = tmp_path / f"payload-{protocol}.pkl"
        path.write_bytes(data)
        try:
            tw.open(path)
        except NotACheckpointError as exc:  # a protocol 0/1 pickle looks like text to detect(): nothing unpickled
            assert protocol < 2 and exc.code in ("text-file", "unknown-format"), exc
        except Exception as exc:
            assert_refused(exc, *names)
        else:
            raise AssertionError("tw.open accepted a payload")
        _check_scan(path, names, lambda f, data=data: (data, 0))  # type: ignore[misc]
        assert_no_markers(tmp_path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_torch_save_payload_is_refused_and_flagged(
    tmp_path: Path, name: str, protocol: int, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = PAYLOADS[name]
    path = tmp_path / "model.pt"
    checkpoint = {"state_dict": {"w": torch.ones(3)}, "payload": payload.make(tmp_path, tmp_path / "MARKER")}
    torch.save(checkpoint, path, pickle_protocol=protocol, _use_new_zipfile_serialization=fmt == "zip")
    names = tuple(as_read(n, protocol) for n in payload.names)
    for verb in (tw.open, tw.load):
        assert_refused(refusal(verb, path), *names)
    raw = path.read_bytes()
    if fmt == "zip":
        _check_scan(path, names, lambda f: (_member(path, f), 0))
        if protocol == 2:
            assert_cli_flags(capsys, path, "dangerous-global")
    else:
        main_start, main_end = pickle_bounds(raw, 4)[3]  # magic, protocol, sys_info, then the object
        finding = _check_scan(path, names, lambda f: (raw, main_start))
        assert finding.offset is not None and main_start <= finding.offset < main_end
    assert_no_markers(tmp_path)


def _member(path: Path, finding: Finding) -> bytes:
    import zipfile

    assert finding.member is not None
    with zipfile.ZipFile(path) as zf:
        return zf.read(finding.member)


def test_refusal_names_every_dangerous_global_once(tmp_path: Path) -> None:
    data = pickle.dumps(
        [Reduce(os.system, "x"), Reduce(os.system, "y"), Reduce(builtins.eval, "1"), subprocess.call], protocol=4
    )
    err = assert_refused(refusal(unpickle, data), qualname(os.system), "builtins.eval", "subprocess.call")
    message = str(err)
    assert message.count(f"'{qualname(os.system)}'") == 1 and "3 globals" in message
    path = tmp_path / "many.pkl"
    path.write_bytes(data)
    report = scan(path)
    system = [f for f in report.findings if f.name == qualname(os.system)]
    # each place it is named is one finding (pickle memoizes the global: named once, referenced twice)
    assert len(system) == 1 and system[0].offset == min(o for o, op in opcodes(data).items() if op == "STACK_GLOBAL")


def test_nested_torch_load_names_the_loader_not_the_inner_payload(tmp_path: Path) -> None:
    """``torch.load('inner.pt')`` inside a checkpoint: the outer file is refused for the call itself; the inner
    file's payload is never read (scan does not follow paths)."""
    inner = Path(_inner_torch_file(tmp_path, tmp_path / "MARKER"))
    outer = tmp_path / "outer.pt"
    torch.save({"w": torch.ones(1), "nested": Reduce(torch.load, str(inner))}, outer)
    assert_refused(refusal(tw.open, outer), "torch.serialization.load")
    report = scan(outer)
    flagged(report, "dangerous-global", name="torch.serialization.load")
    assert qualname(os.system) not in report.globals
    assert_no_markers(tmp_path)


def test_loader_recursion_through_bytes_also_reports_the_inner_payload(tmp_path: Path) -> None:
    """``pickle.loads(b'...')`` and ``torch.storage._load_from_bytes(b'...')``: the bytes are in the file, so scan
    reads them too and names the payload inside (latent: loading never unpickles them)."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "loads.pt"
    torch.save(
        {
            "w": torch.ones(1),
            "a": PAYLOADS["pickle.loads"].make(tmp_path, marker),
            "b": PAYLOADS["torch.storage._load_from_bytes"].make(tmp_path, marker),
        },
        path,
    )
    assert_refused(refusal(tw.load, path), as_read(qualname(pickle.loads), 2), "torch.storage._load_from_bytes")
    report = scan(path)
    latent = flagged(
        report, "latent-dangerous-global", name=qualname(os.system), member_contains="bytes value at 'a.args.0'"
    )
    assert latent.severity == "dangerous"
    flagged(report, "latent-dangerous-global", name=qualname(os.system), member_contains="bytes value at 'b.args.0'")
    assert_no_markers(tmp_path)


def test_dangerous_then_garbage_is_refused_as_unsafe(tmp_path: Path) -> None:
    """A payload followed by bytes that are not pickle: the refusal for safety wins over 'corrupt', in loading and
    in scan (which also says it could not read the stream to its end)."""
    data = b"\x80\x02cos\nsystem\n" + u(touch(tmp_path / "MARKER")) + b"\x85R\xff"
    err = assert_refused(refusal(unpickle, data), "os.system")
    assert "malformed" in str(err)
    path = tmp_path / "garbage.pkl"
    path.write_bytes(data)
    report = scan(path)
    assert_offset(flagged(report, "dangerous-global", name="os.system"), data)
    assert "pickle-unreadable" in {f.code for f in report.findings}
    assert_no_markers(tmp_path)
