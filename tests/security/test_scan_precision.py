"""Precision: scan never calls ordinary weights dangerous or unreadable, and never disagrees with ``tw.load``.

Tensor bytes are data. Scan probes for a serialised blob only where one can live (bytes values, NumPy object
arrays, uint8/int8 tensors) and reports one only when the bytes really are a pickle: a PROTO opcode first and a
parse that reaches STOP, or a parse that reaches a call of something dangerous (what ``pickle.loads`` would run
before failing). Storages of every other dtype are never read. A legacy stream is exactly its five pickles, and the
closing line says what ``tw.load`` really does with the file.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import re
import struct
import textwrap
from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import TorchWeightsError, UnsafeCheckpointError
from torchweights.tools.scan.report import ScanReport
from torchweights.tools.scan.scanner import scan

from ._helpers import (
    Reduce,
    _describe,
    assert_no_markers,
    cli_scan,
    flagged,
    pickle_bounds,
    random_byte_checkpoint,
    random_checkpoint,
    touch,
)

SYSTEM = f"{os.system.__module__}.system"
scan_module = importlib.import_module("torchweights.tools.scan.archives")  # the zip walk, which inflates members


def assert_quiet_clean(report: ScanReport) -> None:
    """Clean, complete, readable by tw.load, and nothing above "info"."""
    assert report.verdict == "clean" and report.complete and report.loads, _describe(report)
    assert not [f for f in report.findings if f.severity != "info"], _describe(report)


def test_issue_repro_ext1_byte_in_a_float_tensor(tmp_path: Path) -> None:
    t = torch.full((4096,), 0.5)
    t.view(torch.uint8)[0] = 0x82  # EXT1: "copyreg extension code 0" to a scanner that unpickles tensor bytes
    path = tmp_path / "w.pt"
    torch.save({"w": t}, path)
    report = scan(path)
    assert_quiet_clean(report)
    assert not report.findings and [s.where for s in report.streams] == ["w/data.pkl"]
    assert torch.equal(tw.load(path)["w"], t)


def test_random_weight_checkpoints_are_clean(tmp_path: Path) -> None:
    """1,000 checkpoints of random bits in every dtype torch saves, half of them starting with bytes that look like
    a pickle or a zip, a fifth with Adam states, a quarter as legacy streams: all clean, with no finding at all."""
    flagged_files = []
    heads = 0
    for seed in range(1000):
        checkpoint, kwargs = random_checkpoint(seed)
        path = tmp_path / f"{seed}.pt"
        torch.save(checkpoint, path, **kwargs)
        heads += any(
            bytes(t.reshape(-1).view(torch.uint8)[:2].tolist()) in (b"\x80\x02", b"PK")
            for t in checkpoint["state_dict"].values()
            if t.numel() and t.dtype != torch.bool
        )
        report = scan(path)
        if report.verdict != "clean" or report.findings:
            flagged_files.append((seed, _describe(report)))
        path.unlink()
    assert not flagged_files, flagged_files[:3]
    assert heads > 50  # the generator does plant pickle- and zip-looking heads


def _legacy_trap(path: Path) -> tuple[bytes, int]:
    """A legacy stream whose storage section starts like a pickle: the first storage has 640 elements, so its
    8-byte little-endian count is 80 02 00 ..., PROTO 2 to a reader that looks for a sixth pickle (both have 640,
    whichever comes first); the second
    storage's data starts with PROTO 2 too."""
    second = torch.zeros(640)
    second.view(torch.uint8)[:2] = torch.tensor([0x80, 0x02], dtype=torch.uint8)
    torch.save({"a": torch.ones(640), "b": second}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    keys_end = pickle_bounds(data, 5)[-1][1]
    return data, keys_end


def test_legacy_stream_is_exactly_five_pickles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "legacy.pt"
    data, keys_end = _legacy_trap(path)
    assert data[keys_end : keys_end + 2] == b"\x80\x02"  # the trap is there
    assert struct.unpack_from("<q", data, keys_end)[0] == 640
    report = scan(path)
    assert_quiet_clean(report)
    assert report.format == "torch-legacy"
    bounds = pickle_bounds(data, 5)
    assert [(s.start, s.end) for s in report.streams if not s.latent] == bounds
    assert tw.load(path)["a"].numel() == 640
    code, out = cli_scan(capsys, path)
    assert code == 0 and "5 pickle streams read" in out and "tw.load reads it as data" in out


def test_legacy_payload_in_a_storage_is_data(tmp_path: Path) -> None:
    """A float storage of a legacy stream holding a real pickle: torch reads it as numbers, and so does scan."""
    blob = pickle.dumps(Reduce(os.system, touch(tmp_path / "MARKER")), protocol=2)
    blob += b"\x00" * (-len(blob) % 4)
    t = torch.frombuffer(bytearray(blob), dtype=torch.float32)
    path = tmp_path / "legacy.pt"
    torch.save({"w": t}, path, _use_new_zipfile_serialization=False)
    assert_quiet_clean(scan(path))
    assert_no_markers(tmp_path)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("head", [b"\x80\x02\x82\x07", b"\x80\x03\x83\x01\x00", b"\x80\x02\x84\x05\x00\x00\x00"])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_extension_codes_in_byte_tensors_are_never_an_alarm(
    tmp_path: Path, dtype: torch.dtype, head: bytes, fmt: str
) -> None:
    """An unregistered extension code makes pickle.loads raise before anything runs: not a finding."""
    raw = bytearray(head + bytes(range(60)))
    path = tmp_path / "ext.pt"
    tensor = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
    torch.save({"t": tensor}, path, _use_new_zipfile_serialization=fmt == "zip")
    assert_quiet_clean(scan(path))


@pytest.mark.parametrize(
    "value",
    [
        b"\x80\x02\xff\xfe garbage",  # PROTO, then not a pickle
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00",  # PROTO and FRAME, cut short
        b"cos\nsystem\n",  # names a dangerous global but calls nothing, and never ends
        b"PK\x03\x04 not a zip at all",
        bytearray(b"\x80\x02K\x01K\x02"),  # no STOP
    ],
)
def test_bytes_values_that_fail_to_parse_are_data(tmp_path: Path, value: bytes) -> None:
    path = tmp_path / "values.pt"
    torch.save({"w": torch.ones(2), "blob": value, "t": torch.frombuffer(bytearray(value), dtype=torch.uint8)}, path)
    assert_quiet_clean(scan(path))


@pytest.mark.parametrize("protocol", [0, 2])
def test_real_payload_after_the_probe_window_in_a_byte_tensor_is_flagged(tmp_path: Path, protocol: int) -> None:
    """A pickle in a large uint8 tensor whose call comes after the first 64 KiB: read whole, flagged."""
    padding = [f"{i:08}" for i in range(8000)]  # short strings: protocol 0 text arguments are lines
    blob = pickle.dumps([padding, Reduce(os.system, touch(tmp_path / "MARKER"))], protocol=protocol)
    assert blob.index(b"system") > 65536
    for fmt in ("zip", "legacy"):
        path = tmp_path / f"big-{fmt}.pt"
        tensor = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        torch.save({"t": tensor}, path, _use_new_zipfile_serialization=fmt == "zip")
        report = scan(path)
        finding = flagged(report, "latent-dangerous-global", name=SYSTEM, member_contains="tensor 't'")
        assert "Do not unpickle that value" in finding.message
        assert report.loads and not report.load_refuses
    assert_no_markers(tmp_path)


def test_non_byte_storages_are_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point 6: scan opens no member that holds a storage of a dtype other than uint8/int8, whatever its bytes."""
    weights = {f"w{i}": torch.randn(1000, dtype=dtype) for i, dtype in enumerate([torch.float32, torch.bfloat16])}
    for t in weights.values():
        t.view(torch.uint8)[:2] = torch.tensor([0x80, 0x02], dtype=torch.uint8)
    weights["ints"] = torch.arange(10)
    weights["bytes"] = torch.frombuffer(bytearray(b"\x80\x02N."), dtype=torch.uint8)
    path = tmp_path / "w.pt"
    torch.save(weights, path)
    opened: list[str] = []
    real = scan_module.inflate

    def spy(fh: io.BufferedIOBase, member: scan_module.ZipMember, limit: int) -> bytes:
        opened.append(member.name)
        return real(fh, member, limit)

    monkeypatch.setattr(scan_module, "inflate", spy)
    report = scan(path)
    assert report.verdict == "clean"
    storages = {t.untyped_storage().data_ptr(): k for k, t in weights.items()}
    assert len(storages) == 4
    data_members = {name for name in opened if "/data/" in name}
    assert len(data_members) == 1  # the uint8 tensor's storage, and none of the others
    assert [s for s in report.streams if s.latent]  # b"\x80\x02N." is a real (harmless) pickle: read, latent


def test_a_real_looking_training_checkpoint_is_clean_without_a_warning(tmp_path: Path) -> None:
    """Lightning-like hparams (nested dicts, argparse.Namespace), NumPy values, optimizer and scheduler states, a
    whole pickled torch.nn model, datetime and pathlib values: clean, and not one warning."""
    import argparse
    import datetime
    import pathlib

    import numpy as np

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    model(torch.randn(2, 3, 8, 8))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": model.state_dict(),
        "model": model,
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hyper_parameters": {"lr": 0.1, "layers": [3, 4], "args": argparse.Namespace(batch=8, name="run")},
        "metrics": {"loss": np.float32(0.25), "history": np.arange(5.0)},
        "rng": {"numpy": np.random.RandomState(0).get_state(), "torch": torch.get_rng_state()},
        "saved_at": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
        "data_dir": pathlib.PurePosixPath("/data/train"),
    }
    for fmt in ("zip", "legacy"):
        path = tmp_path / f"train-{fmt}.ckpt"
        torch.save(checkpoint, path, _use_new_zipfile_serialization=fmt == "zip")
        report = scan(path)
        assert_quiet_clean(report)
        assert not report.findings, _describe(report)


# ------------------------------------------------------------------------------------------ the closing line


def _closing(out: str) -> str:
    """The closing sentence(s), after the counts line that ends with the time taken (``0.012 s``), however wrapped."""
    return re.split(r"\d\.\d{3} s ", " ".join(out.split()))[-1]


def test_closing_line_of_a_file_tw_load_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Reduce(os.system, touch(tmp_path / "MARKER"))}, path)
    report = scan(path)
    assert report.load_refuses == [SYSTEM] and not report.loads
    with pytest.raises(UnsafeCheckpointError):
        tw.load(path)
    code, out = cli_scan(capsys, path)
    assert code == 1 and f"tw.load refuses it ({SYSTEM})" in _closing(out)
    assert_no_markers(tmp_path)


def test_closing_line_of_a_latent_payload_follows_tw_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = pickle.dumps(Reduce(os.system, touch(tmp_path / "MARKER")))
    path = tmp_path / "latent.pt"
    torch.save({"w": torch.ones(1), "blob": blob}, path)
    assert tw.load(path)  # tw.load reads it...
    report = scan(path)
    assert report.verdict == "dangerous" and report.loads and not report.load_refuses
    code, out = cli_scan(capsys, path)
    closing = _closing(out)
    assert code == 1 and "refuses" not in closing  # ...so scan never says it refuses it
    assert "tw.load reads it as data" in closing and "Never unpickle the embedded values" in closing
    assert_no_markers(tmp_path)


def test_closing_line_of_an_unvetted_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "call.pt"
    torch.save({"w": torch.ones(1), "x": Reduce(textwrap.dedent, "  x")}, path)  # harmless, but nobody vetted it
    assert tw.load(path)["w"].numel() == 1
    report = scan(path)
    assert report.verdict == "dangerous" and report.loads
    code, out = cli_scan(capsys, path)
    assert code == 1 and "tw.load reads it as data" in _closing(out) and "refuses" not in _closing(out)


def test_closing_line_of_a_file_tw_load_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(3)}, path)
    path.write_bytes(path.read_bytes()[:-30])
    report = scan(path)
    assert report.verdict == "unreadable" and report.load_error is not None and not report.loads
    with pytest.raises(TorchWeightsError):
        tw.load(path)
    code, out = cli_scan(capsys, path)
    assert code == 2 and f"tw.load cannot read it [{report.load_error.code}]" in _closing(out)


def test_random_byte_weights_starting_with_proto_are_clean(tmp_path: Path) -> None:
    """1,000 state dicts of uint8/int8 weights whose bytes start with PROTO (``0x80`` is the zero point of uint8
    quantized weights), half followed by GLOBAL: every tensor is parsed as a pickle, and random bytes that happen
    to reach STOP name "globals" no pickle.load could resolve, or none at all: data, no finding."""
    flagged_files = []
    globals_planted = 0
    for seed in range(1000):
        checkpoint, kwargs = random_byte_checkpoint(seed)
        path = tmp_path / f"{seed}.pt"
        torch.save(checkpoint, path, **kwargs)
        globals_planted += sum(
            bytes(t.view(torch.uint8)[:3].tolist()).startswith(b"\x80") and t.view(torch.uint8)[2] == ord("c")
            for t in checkpoint.values()
        )
        report = scan(path)
        if report.verdict != "clean" or report.findings:
            flagged_files.append((seed, _describe(report)))
        path.unlink()
    assert not flagged_files, flagged_files[:3]
    assert globals_planted > 1000


def _byte_tensor_file(tmp_path: Path, blob: bytes) -> Path:
    raw = bytearray(blob + bytes(64))
    path = tmp_path / "q.pt"
    torch.save({"q": torch.frombuffer(raw, dtype=torch.uint8)}, path)
    return path


def test_a_probe_naming_an_unresolvable_global_is_data(tmp_path: Path) -> None:
    report = scan(_byte_tensor_file(tmp_path, b"\x80\x02c\xe0\x85B \xbf\nsys tem\x9c\n."))
    assert_quiet_clean(report)
    assert not report.findings


def test_a_probe_of_plain_values_is_data(tmp_path: Path) -> None:
    """``pickle.loads`` of it returns bytes and runs nothing (random bytes parse as such pickles)."""
    report = scan(_byte_tensor_file(tmp_path, b"\x80\x05C\x03J\xed+."))
    assert_quiet_clean(report)
    assert not report.findings


def test_a_probe_naming_a_resolvable_global_is_still_reported(tmp_path: Path) -> None:
    report = scan(_byte_tensor_file(tmp_path, b"\x80\x02cthird_party.tools\nRunner\n)\x81."))
    assert report.verdict == "clean"
    assert [f.code for f in report.findings] == ["latent-unknown-global", "latent-pickle"]
