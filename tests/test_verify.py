"""``tw.verify``: safetensors and sharded consistency, zip CRCs of every member, sha256 manifests."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from torchweights.errors import CheckpointNotFoundError, NotACheckpointError


def _sd() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "a.bias": torch.ones(3)}


def _codes(report: tw.VerifyReport) -> list[str]:
    return [c.code for c in report.problems]


def test_valid_files_pass_every_check(tmp_path: Path) -> None:
    torch.save(_sd(), tmp_path / "m.pt")
    torch.save(_sd(), tmp_path / "l.pt", _use_new_zipfile_serialization=False)
    safetensors_torch.save_file(_sd(), str(tmp_path / "m.safetensors"))
    for name in ("m.pt", "l.pt", "m.safetensors"):
        report = tw.verify(tmp_path / name)
        assert report.ok, str(report)
        assert report.summary.startswith("ok:")
    zip_report = tw.verify(tmp_path / "m.pt")
    assert any(c.name.endswith("member CRC-32") for c in zip_report.checks)
    assert "no checksums" in str(tw.verify(tmp_path / "l.pt"))


def test_flipped_byte_in_a_torch_zip_member_fails_its_crc(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    torch.save(_sd(), path)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("data/0"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    data = info.header_offset + 30 + name_len + extra_len
    raw[data + 5] ^= 0x40
    path.write_bytes(bytes(raw))
    report = tw.verify(path)
    assert _codes(report) == ["bad-crc"]
    (problem,) = report.problems
    assert "data/0" in problem.name and "changed" in problem.detail
    assert tw.open(path).records  # the records themselves still read: only the CRC shows the damage


def test_truncated_safetensors_fails(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    safetensors_torch.save_file(_sd(), str(path))
    path.write_bytes(path.read_bytes()[:-3])
    report = tw.verify(path)
    assert _codes(report) == ["truncated"] and not report.ok


def _sharded(tmp: Path) -> Path:
    folder = tmp / "hf"
    folder.mkdir()
    sd = _sd()
    safetensors_torch.save_file({"a.weight": sd["a.weight"]}, str(folder / "s1.safetensors"))
    safetensors_torch.save_file({"a.bias": sd["a.bias"]}, str(folder / "s2.safetensors"))
    index = {"metadata": {"total_size": 60}, "weight_map": {"a.weight": "s1.safetensors", "a.bias": "s2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_sharded_set_checks_total_size_and_agreement(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    report = tw.verify(folder)
    assert report.ok, str(report)
    assert len(report.files) == 3
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["total_size"] = 61
    index_path.write_text(json.dumps(index))
    assert _codes(tw.verify(folder)) == ["shard-total-size"]
    # a tensor in a shard that the index does not list
    index["metadata"]["total_size"] = 60
    index_path.write_text(json.dumps(index))
    sd = _sd()
    safetensors_torch.save_file({"a.weight": sd["a.weight"], "stray": torch.zeros(2)}, str(folder / "s1.safetensors"))
    assert _codes(tw.verify(index_path)) == ["shard-unindexed"]


def test_sharded_set_with_a_damaged_or_missing_shard(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    shard = folder / "s2.safetensors"
    shard.write_bytes(shard.read_bytes() + b"\0\0")
    report = tw.verify(folder)
    assert "safetensors-trailing-bytes" in _codes(report)
    assert any(c.name.startswith("s2.safetensors") for c in report.problems)
    shard.unlink()
    assert "shard-missing" in _codes(tw.verify(folder))


def test_converted_outputs_verify(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    torch.save({"w": base, "t": base.t(), "tied": base}, tmp_path / "src.pt")
    tw.convert(tmp_path / "src.pt", tmp_path / "out", max_shard_size=100)
    tw.convert(tmp_path / "src.pt", tmp_path / "plain.pt", to="torch")
    assert tw.verify(tmp_path / "out").ok
    assert tw.verify(tmp_path / "plain.pt").ok


def test_manifest(tmp_path: Path) -> None:
    folder = _sharded(tmp_path)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.iterdir())]
    manifest = folder / "SHA256SUMS"
    manifest.write_text("\n".join(lines) + "\n")
    report = tw.verify(folder, manifest=manifest)
    assert report.ok, str(report)
    assert sum(c.name.startswith("sha256") for c in report.checks) == 3
    # one line missing, one line garbled
    manifest.write_text("\n".join([*lines[1:], "not a manifest line"]) + "\n")
    assert sorted(_codes(tw.verify(folder, manifest=manifest))) == ["bad-manifest", "not-in-manifest"]
    # one file changed
    manifest.write_text("\n".join(lines) + "\n")
    (folder / "s2.safetensors").write_bytes((folder / "s2.safetensors").read_bytes()[:-1] + b"\x01")
    assert _codes(tw.verify(folder, manifest=manifest)) == ["sha256-mismatch"]
    # BSD style, as `shasum -a 256 --tag` writes it, in another folder
    other = tmp_path / "SUMS"
    other.write_text(
        "\n".join(f"SHA256 (hf/{p.name}) = {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in folder.iterdir())
    )
    assert tw.verify(folder, manifest=other).ok


def test_nothing_to_verify_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        tw.verify(tmp_path / "missing.pt")
    (tmp_path / "notes.txt").write_text("hello\n" * 20)
    with pytest.raises(NotACheckpointError):
        tw.verify(tmp_path / "notes.txt")
    torch.save(_sd(), tmp_path / "m.pt")
    with pytest.raises(CheckpointNotFoundError):
        tw.verify(tmp_path / "m.pt", manifest=tmp_path / "nope")
