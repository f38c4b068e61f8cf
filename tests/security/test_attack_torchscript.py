"""TorchScript archives (``torch.jit.script(m).save``) with a payload spliced into ``data.pkl``, ``constants.pkl``
or a ``code/...debug_pkl`` member (the archive rebuilt with ``zipfile`` so it stays valid). ``torch.jit.load``
reads them with its own restricted unpickler, but every one is an ordinary pickle to anything else that reads
the archive (``pickle.loads`` on a member: the canary).

``tw.load`` refuses a payload in the pickles it reads (``data.pkl``, ``constants.pkl``) and never reads the debug
pickles; scan flags all three, under the member's name, at the opcode.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    assert_clean_scan,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    assert_refused,
    flagged,
    read_members,
    refusal,
    touch,
    wait_for,
    write_zip,
)

SYSTEM = f"{os.system.__module__}.system"


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.tensor([1.0, 2.0])  # a constant: constants.pkl holds a tensor


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.manual_seed(0)
    torch.jit.script(Net()).save(str(path))
    return read_members(path)


def _target(members: list[tuple[str, bytes]], which: str) -> str:
    names = [n for n, _ in members]
    if which == "debug_pkl":
        return next(n for n in names if n.endswith(".debug_pkl"))
    return next(n for n in names if n.endswith(f"/{which}"))


def _payload(marker: Path) -> bytes:
    return pickle.dumps(Reduce(os.system, touch(marker)), protocol=2)


def test_clean_archive_is_read_and_clean(tmp_path: Path, scripted: list[tuple[str, bytes]]) -> None:
    path = write_zip(tmp_path / "net.pt", scripted)
    reference = torch.jit.load(str(path)).state_dict()
    tensors = tw.load(path)
    for name, value in reference.items():
        assert torch.equal(tensors[name], value), name
    # the archive's compiled types are known: no Python package is imported for them, nothing to warn about.
    # TorchScript renames a class it compiles a second time in one process (``___torch_mangle_0.Linear``)
    report = assert_clean_scan(path)
    known = {n for n, verdict in report.globals.items() if verdict == "known"}
    assert {re.sub(r"___torch_mangle_\d+\.", "", n) for n in known} == {
        f"__torch__.{__name__}.Net",
        "__torch__.torch.nn.modules.linear.Linear",
    }
    assert report.format == "torchscript"
    assert any(f.startswith("net/code/") for f in report.code_files)


@pytest.mark.parametrize("which", ["data.pkl", "constants.pkl", "debug_pkl"])
def test_canary_member_payload_runs_under_pickle(tmp_path: Path, scripted: list[tuple[str, bytes]], which: str) -> None:
    canary = tmp_path / "CANARY"
    target = _target(scripted, which)
    path = write_zip(tmp_path / "net.pt", [(n, _payload(canary) if n == target else c) for n, c in scripted])
    code = f"import pickle, zipfile; pickle.loads(zipfile.ZipFile({str(path)!r}).read({target!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert wait_for([canary]), which


@pytest.mark.parametrize("which", ["data.pkl", "constants.pkl", "debug_pkl"])
def test_payload_in_a_torchscript_member(
    tmp_path: Path, scripted: list[tuple[str, bytes]], which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = _target(scripted, which)
    payload = _payload(tmp_path / "MARKER")
    path = write_zip(tmp_path / "net.pt", [(n, payload if n == target else c) for n, c in scripted])
    if which == "debug_pkl":
        tensors = tw.load(path)  # debug pickles are never read: nothing runs
        assert "fc.weight" in tensors
    else:
        for verb in (tw.open, tw.load):
            err = assert_refused(refusal(verb, path), SYSTEM)
            assert target in str(err)
    report = scan(path)
    finding = flagged(report, "dangerous-global", name=SYSTEM, member=target)
    assert_offset(finding, payload)
    if which == "constants.pkl":
        assert_cli_flags(capsys, path, "dangerous-global")
    assert_no_markers(tmp_path)


def test_payload_in_an_extra_file(tmp_path: Path) -> None:
    """``torch.jit.save(m, f, _extra_files={...})``: files attached by the saver, handed back as bytes by
    ``torch.jit.load(f, _extra_files=...)`` to code that may well unpickle them."""
    path = tmp_path / "net.pt"
    payload = _payload(tmp_path / "MARKER")
    torch.jit.save(torch.jit.script(Net()), str(path), _extra_files={"hook.pkl": payload})
    assert "fc.weight" in tw.load(path)
    finding = flagged(scan(path), "dangerous-global", name=SYSTEM, member="net/extra/hook.pkl")
    assert_offset(finding, payload)
    assert_no_markers(tmp_path)
