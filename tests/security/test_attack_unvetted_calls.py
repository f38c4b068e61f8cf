"""Calls nobody vetted: the allow-list rule for calls.

A deny list of dangerous names can never be complete: the standard library alone has many functions and classes
that write files or run code when called (``codecs.open``, ``gzip.open``, ``logging.FileHandler``...), and every
installed package adds more. So scan judges a call by what it is: a global that the pickle *calls as a function
with arguments* (REDUCE, INST, OBJ; or the base of ``copyreg._reconstructor``, whose ``__init__`` gets the state)
and that is neither in torchweights' reconstructor table nor one of torch's own classes is a ``dangerous-call``,
whatever its name, located at the calling opcode, with its arguments. Class instantiation (NEWOBJ,
``copyreg.__newobj__``, ``copyreg._reconstructor`` of ``object``) and BUILD are not such calls.

Loading never calls anything, so ``tw.load`` reads these files (the calls become inert stubs) and nothing runs; the
canaries prove that ``pickle.loads`` of the same bytes does run them. A name the user trusts is allowed by name
(``allow_globals``); a name that runs code by itself stays dangerous even then.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.cli import main as cli_main
from torchweights.errors import RuleError, UnsafeCheckpointError
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.policy import classify_global
from torchweights.unpickle.values import Stub

from ._helpers import (
    Reduce,
    assert_cli_flags,
    assert_no_markers,
    assert_offset,
    canary_in_process,
    cli_scan,
    flagged,
    read_members,
    torch_zip_members,
    u,
    wait_for,
    write_zip,
)

_MODES: dict[object, tuple[str, ...]] = {codecs.open: ("w",), gzip.open: ("wb",)}


def _reduce(fn: Callable[..., object]) -> Callable[[Path], bytes]:
    return lambda marker: pickle.dumps({"w": [1.0], "x": Reduce(fn, str(marker), *_MODES.get(fn, ()))}, protocol=2)


def _inst(marker: Path) -> bytes:
    # protocol 0: INST pops its arguments from the mark and calls the class (or function) with them
    return b"(V" + str(marker).encode() + b"\nVw\nicodecs\nopen\n."


def _obj(marker: Path) -> bytes:
    # protocol 1: OBJ calls its first item with the others
    return b"(ccodecs\nopen\n" + u(str(marker)) + u("w") + b"o."


def _reconstructor(marker: Path) -> bytes:
    # copyreg._reconstructor(cls, base, state): base.__new__(cls, state), then base.__init__(obj, state)
    return (
        b"ccopyreg\n_reconstructor\n(clogging\nFileHandler\nclogging\nFileHandler\nV" + str(marker).encode() + b"\ntR."
    )


# case: (payload builder, the name called, the opcode that calls it)
CASES: dict[str, tuple[Callable[[Path], bytes], str, frozenset[str]]] = {
    "codecs.open": (_reduce(codecs.open), "codecs.open", frozenset({"REDUCE"})),
    "gzip.open": (_reduce(gzip.open), "gzip.open", frozenset({"REDUCE"})),
    "logging.FileHandler": (_reduce(logging.FileHandler), "logging.FileHandler", frozenset({"REDUCE"})),
    "inst": (_inst, "codecs.open", frozenset({"INST"})),
    "obj": (_obj, "codecs.open", frozenset({"OBJ"})),
    "reconstructor-base": (_reconstructor, "logging.FileHandler", frozenset({"REDUCE"})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_canary_the_call_runs_under_pickle(tmp_path: Path, case: str) -> None:
    make, name, _ = CASES[case]
    canary = tmp_path / "CANARY"
    canary_in_process(make(canary))
    assert wait_for([canary])
    assert classify_global(name) == "unknown"  # no deny list names it


@pytest.mark.parametrize("case", list(CASES))
def test_unvetted_call_is_flagged_and_loads_inert(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, name, ops = CASES[case]
    data = make(tmp_path / "MARKER")
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    ckpt = tw.open(path)  # loading never calls: the call is an inert stub
    assert name in ckpt.globals
    report = scan(path)
    finding = flagged(report, "dangerous-call", name=name, member="archive/data.pkl")
    assert_offset(finding, data, ops)
    assert "pickle.load" in finding.message and "tw.load does not run it" in finding.message
    assert "argument" in finding.message and "MARKER" in finding.message  # what it is called with
    assert report.loads and not report.load_refuses
    if case == "codecs.open":
        assert_cli_flags(capsys, path, "dangerous-call")
    assert_no_markers(tmp_path)


def test_torch_save_of_an_unvetted_call(tmp_path: Path) -> None:
    path = tmp_path / "saved.pt"
    torch.save({"w": torch.ones(2), "log": Reduce(logging.FileHandler, str(tmp_path / "MARKER"))}, path)
    stub = tw.open(path).extras["log"]
    assert isinstance(stub, Stub) and stub.cls == "logging.FileHandler"
    assert torch.equal(tw.load(path)["w"], torch.ones(2))
    flagged(scan(path), "dangerous-call", name="logging.FileHandler", member="saved/data.pkl")
    assert_no_markers(tmp_path)


def test_latent_unvetted_call(tmp_path: Path) -> None:
    blob = pickle.dumps(Reduce(codecs.open, str(tmp_path / "MARKER"), "w"), protocol=0)  # no PROTO opcode
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "blob": blob, "t": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, path)
    report = scan(path)
    members = {f.member for f in report.findings if f.code == "latent-dangerous-call" and f.name == "codecs.open"}
    assert any("bytes value at 'blob'" in (m or "") for m in members)
    assert any("tensor 't'" in (m or "") for m in members)
    finding = flagged(report, "latent-dangerous-call", name="codecs.open")
    assert "Do not unpickle that value" in finding.message
    assert_no_markers(tmp_path)


def test_calling_what_a_call_returned(tmp_path: Path) -> None:
    # my_project.factory() (no arguments: not flagged by itself), then its result called with an argument
    data = b"\x80\x02cmy_project\nfactory\n)R" + u("rm -rf /") + b"\x85R."
    path = write_zip(tmp_path / "model.pt", torch_zip_members(data))
    finding = flagged(scan(path), "dangerous-call", name="my_project.factory(...)")
    assert_offset(finding, data, frozenset({"REDUCE"}))
    assert "'rm -rf /'" in finding.message


class Plain:
    """A project class pickled the ordinary way: NEWOBJ (or copyreg._reconstructor) and BUILD."""

    def __init__(self) -> None:
        self.lr = 0.1


@pytest.mark.parametrize("protocol", list(range(pickle.HIGHEST_PROTOCOL + 1)))
def test_class_instantiation_is_not_a_call(tmp_path: Path, protocol: int) -> None:
    name = f"{Plain.__module__}.Plain"
    path = write_zip(tmp_path / "model.pt", torch_zip_members(pickle.dumps({"cfg": Plain()}, protocol=protocol)))
    report = scan(path)
    assert report.verdict == "clean", [(f.code, f.name) for f in report.findings]
    assert [f.name for f in report.findings if f.severity == "warning"] == [name]


def test_call_without_arguments_is_only_an_unknown_name(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "model.pt", torch_zip_members(b"\x80\x02cmy_project\nmake_default\n)R."))
    report = scan(path)
    assert report.verdict == "clean"
    assert [(f.code, f.name) for f in report.findings if f.severity != "info"] == [
        ("unknown-global", "my_project.make_default")
    ]


def test_a_trusted_name_is_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "saved.pt"
    torch.save({"w": torch.ones(1), "log": Reduce(logging.FileHandler, str(tmp_path / "MARKER"))}, path)
    report = scan(path, allow_globals=["logging.FileHandler"])
    assert report.verdict == "clean" and report.globals["logging.FileHandler"] == "allowed"
    code, out = cli_scan(capsys, path)
    assert code == 1 and "--allow-global logging.FileHandler" in " ".join(out.split())  # however wrapped
    capsys.readouterr()
    assert cli_main(["scan", "--allow-global", "logging.FileHandler", str(path)]) == 0
    # the closing line says tw.load would call it, not "nothing in it runs code"
    closing = " ".join(capsys.readouterr().out.split())  # the closing sentence, however wrapped
    assert "except the globals you allowed (logging.FileHandler)" in closing, closing
    assert_no_markers(tmp_path)


def test_allowing_a_dangerous_name_does_not_silence_it(tmp_path: Path) -> None:
    """Allowing a name that runs code by itself is refused by every verb (it was honoured by tw.load and tw.open,
    which then ran the payload, while scan still called the file dangerous); without the option scan flags it."""
    from torchweights.rebuild.load import load_model
    from torchweights.unpickle.stream import unpickle

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Reduce(os.system, f"touch {tmp_path / 'MARKER'}")}, path)
    system = f"{os.system.__module__}.system"
    for verb in (scan, tw.load, tw.open, load_model, lambda p, **kw: tw.load_into(torch.nn.Linear(1, 1), p, **kw)):
        for allowed in ([system], ["builtins.exec", "torch.nn.modules.linear.Linear"], ["subprocess.Popen"]):
            with pytest.raises(RuleError) as info:
                verb(path, allow_globals=allowed)
            assert info.value.code == "dangerous-allowed" and repr(allowed[0]) in str(info.value)
    flagged(scan(path), "dangerous-global", name=system)
    with pytest.raises(UnsafeCheckpointError) as refused:
        tw.load(path)
    assert "allow_globals" not in str(refused.value)  # no advice to allow what is never allowed
    # the machine itself never imports an allowed dangerous name, even if a caller skipped the option check
    data = pickle.dumps(Reduce(os.system, f"touch {tmp_path / 'MARKER'}"), protocol=2)
    with pytest.raises(UnsafeCheckpointError):
        unpickle(data, allow_globals=frozenset([system]))
    assert_no_markers(tmp_path)


def test_unvetted_call_in_a_member_tw_load_never_reads(tmp_path: Path) -> None:
    """The rule does not depend on member names: a payload in a member tw.load never reads is still found."""
    path = tmp_path / "base.pt"
    torch.save({"w": torch.arange(3.0)}, path)
    payload = CASES["codecs.open"][0](tmp_path / "MARKER")
    write_zip(path, [*read_members(path), ("base/extra.pkl", payload)])
    assert torch.equal(tw.load(path)["w"], torch.arange(3.0))
    flagged(scan(path), "dangerous-call", name="codecs.open", member="base/extra.pkl")
    assert_no_markers(tmp_path)
