"""The scanner itself: report, verdicts, offsets, exit codes, JSON, and what it walks. Attack families and benign
files are in tests/security/."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from torchweights.cli import main
from torchweights.tools.scan.report import ScanReport
from torchweights.tools.scan.scanner import scan


class _Reduce:
    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _payload(marker: Path) -> _Reduce:
    return _Reduce(os.system, f"touch {marker}")


@pytest.fixture
def clean_pt(tmp_path: Path) -> Path:
    path = tmp_path / "clean.pt"
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}, path)
    return path


@pytest.fixture
def evil_pt(tmp_path: Path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _payload(tmp_path / "marker")}, path)
    return path


def _codes(report: ScanReport) -> set[str]:
    return {f.code for f in report.findings}


def test_clean_torch_zip(clean_pt: Path) -> None:
    report = scan(clean_pt)
    assert report.verdict == "clean" and report.exit_code == 0
    assert report.format == "torch-zip" and report.complete and report.load_error is None
    assert not [f for f in report.findings if f.severity != "info"]
    assert report.globals["torch._utils._rebuild_tensor_v2"] == "safe"
    assert [s.where for s in report.streams] == ["clean/data.pkl"]


def test_dangerous_global_is_located_at_its_opcode(evil_pt: Path, tmp_path: Path) -> None:
    report = scan(evil_pt)
    assert report.verdict == "dangerous" and report.exit_code == 1
    (finding,) = [f for f in report.findings if f.severity == "dangerous"]
    assert finding.code == "dangerous-global"
    assert finding.member == "evil/data.pkl"
    assert finding.name == f"{os.system.__module__}.system"
    data = zipfile.ZipFile(evil_pt).read("evil/data.pkl")
    offsets = [pos for op, arg, pos in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")]
    assert finding.offset in offsets
    assert not (tmp_path / "marker").exists()


class TrainConfig:
    """A project class: unknown to torchweights, stubbed when loading."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_unknown_class_is_a_warning_not_an_alarm(tmp_path: Path) -> None:
    path = tmp_path / "cfg.pt"
    torch.save({"w": torch.ones(1), "cfg": TrainConfig()}, path)
    report = scan(path)
    assert report.verdict == "clean", report.findings
    (unknown,) = [f for f in report.findings if f.code == "unknown-global"]
    assert unknown.severity == "warning" and unknown.name == f"{TrainConfig.__module__}.TrainConfig"
    assert report.exit_code == 0


def test_legacy_stream_every_pickle_is_read(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    report = scan(path)
    assert report.verdict == "clean" and report.format == "torch-legacy"
    # exactly the five pickles tw.load reads: magic, protocol, sys_info, main, storage keys (then storage bytes)
    assert len([s for s in report.streams if not s.latent]) == 5


def test_payload_in_a_legacy_sys_info_pickle(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    # replace the second pickle (the protocol version) by a payload of the same role
    first_end = raw.index(b".") + 1
    second_end = raw.index(b".", first_end) + 1
    evil = pickle.dumps(_payload(tmp_path / "marker"), protocol=2)
    path.write_bytes(raw[:first_end] + evil + raw[second_end:])
    report = scan(path)
    assert report.verdict == "dangerous"
    (finding,) = [f for f in report.findings if f.severity == "dangerous"]
    assert finding.offset is not None and first_end <= finding.offset < first_end + len(evil)
    assert not (tmp_path / "marker").exists()


def test_protocol_0_text_pickle_file(tmp_path: Path) -> None:
    path = tmp_path / "text.pkl"
    path.write_bytes(pickle.dumps(_payload(tmp_path / "marker"), protocol=0))
    report = scan(path)
    assert report.verdict == "dangerous"
    assert "dangerous-global" in _codes(report)
    assert not (tmp_path / "marker").exists()


def test_unreadable_is_never_clean(tmp_path: Path, clean_pt: Path) -> None:
    lfs = tmp_path / "pointer.bin"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1234\n")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(clean_pt.read_bytes()[:-30])
    for path in (lfs, cut):
        report = scan(path)
        assert report.verdict == "unreadable" and report.exit_code == 2, path
        assert report.load_error is not None


def test_pickle_cut_short_is_incomplete(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": list(range(100))}, protocol=4)[:-20])
    report = scan(path)
    assert report.verdict == "unreadable" and not report.complete
    assert "pickle-unreadable" in _codes(report)


def test_latent_pickle_in_a_bytes_value_and_a_uint8_tensor(tmp_path: Path) -> None:
    blob = pickle.dumps(_payload(tmp_path / "marker"))
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "blob": blob, "t": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}, path)
    report = scan(path)
    latent = [f for f in report.findings if f.code == "latent-dangerous-global"]
    assert {("blob" in (f.member or "")) for f in latent} == {True, False}  # one in the value, one in the tensor
    assert report.verdict == "dangerous"
    import torchweights as tw

    loaded = tw.load(path)  # loading does not unpickle the blob: nothing runs, nothing is refused
    assert torch.equal(loaded["t"], torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    assert not (tmp_path / "marker").exists()


def test_pickle_followed_by_a_zip_is_a_polyglot(tmp_path: Path, evil_pt: Path) -> None:
    path = tmp_path / "poly.pt"
    path.write_bytes(pickle.dumps({"epoch": 3}, protocol=2) + evil_pt.read_bytes())
    report = scan(path)
    assert {"polyglot", "dangerous-global"} <= _codes(report)
    assert report.verdict == "dangerous"


def test_sharded_set_scans_every_shard(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    torch.save({"a": torch.ones(2)}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.ones(2), "x": _payload(tmp_path / "marker")}, folder / "pytorch_model-00002-of-00002.bin")
    index = {
        "metadata": {},
        "weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"},
    }
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    report = scan(folder)
    dangerous = [f for f in report.findings if f.severity == "dangerous"]
    assert dangerous and dangerous[0].file.endswith("00002-of-00002.bin")


def test_cli_exit_codes_and_json(
    clean_pt: Path, evil_pt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(clean_pt)]) == 0
    assert "CLEAN" in capsys.readouterr().out
    assert main(["scan", str(clean_pt), str(evil_pt)]) == 1
    out = capsys.readouterr().out
    assert "DANGEROUS" in out and f"{os.system.__module__}.system" in out
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["scan", str(clean_pt), str(empty)]) == 2
    capsys.readouterr()
    assert main(["scan", "--json", str(evil_pt)]) == 1
    doc = json.loads(capsys.readouterr().out)
    (entry,) = doc["reports"]
    assert entry["verdict"] == "dangerous" and entry["loads"] is False
    assert entry["load_refuses"] == [f"{os.system.__module__}.system"]
    assert entry["findings"][0]["member"] == "evil/data.pkl" and isinstance(entry["findings"][0]["offset"], int)


def test_scan_never_imports_torch(evil_pt: Path) -> None:
    code = (
        "import sys; from torchweights.cli import main; rc = main(['scan', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(evil_pt)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr


def test_load_refusal_makes_it_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "nodata.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    report = scan(path)
    assert report.verdict == "unreadable" and "load-refused" in _codes(report)


def test_a_missing_path_is_a_plain_not_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No file: one ``not-found`` error saying so (not "tw.load would refuse this file"), exit 2."""
    (tmp_path / "model.pt").write_bytes(b"")
    missing = tmp_path / "modle.pt"
    report = scan(missing)
    assert report.verdict == "unreadable" and report.exit_code == 2
    assert [(f.severity, f.code) for f in report.findings] == [("error", "not-found")]
    assert "No file or folder at" in report.findings[0].message and "model.pt" in report.findings[0].message
    assert main(["scan", str(missing)]) == 2
    out = capsys.readouterr().out
    assert "not-found" in out and "load-refused" not in out and "would refuse" not in out
    assert "There is no such file or folder" in out
