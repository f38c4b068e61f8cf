"""Decompression bombs in one member: a small deflated ``data.pkl`` (or ``constants.pkl``, a ``.debug_pkl``,
TorchScript source) that inflates about 1000:1, within what deflate can produce (1032:1, the directory check) and
within the whole-archive budget (``Limits.max_inflated_bytes``), but far past what torch ever writes: torch never
compresses its pickles. The per-member rule (``Limits.max_inflate_ratio`` above ``Limits.inflate_ratio_from_bytes``)
refuses it before anything is inflated, in ``tw.open``/``tw.load`` and in ``scan`` alike, with code
``limit-inflate``; a deflated pickle of an ordinary ratio is still read.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights.api as tw
import torchweights.formats.torch_zip as torch_zip
from torchweights.errors import ResourceLimitError
from torchweights.limits import Limits
from torchweights.tools.scan.scanner import scan
from torchweights.tools.scan.tscode import is_code_member

from ._helpers import read_members

BOMB_BYTES = 40 << 20  # inflated; about 40 KiB deflated


def _rezip(path: Path, members: list[tuple[str, bytes]], deflate: set[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members:
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(name, content, compress_type=method, compresslevel=9)
    return path


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    path = tmp_path / "ckpt.pt"
    torch.save({**tensors, "padding": bytes(BOMB_BYTES)}, path)
    return path, tensors


def _inflated_members(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every (member, byte count) ``tw.load`` inflates from now on."""
    calls: list[tuple[str, int]] = []
    original = torch_zip.inflate

    def recording(fh: Any, m: Any, limit: int) -> bytes:
        calls.append((m.name, limit))
        return original(fh, m, limit)

    monkeypatch.setattr(torch_zip, "inflate", recording)
    return calls


def test_deflated_data_pkl_bomb_is_refused_before_inflating(
    tmp_path: Path, weights: tuple[Path, dict[str, torch.Tensor]], monkeypatch: pytest.MonkeyPatch
) -> None:
    saved, tensors = weights
    members = read_members(saved)
    pkl = next(n for n, _ in members if n.endswith("/data.pkl"))
    path = _rezip(tmp_path / "bomb.pt", members, {pkl})
    info = zipfile.ZipFile(path).getinfo(pkl)
    assert info.file_size > BOMB_BYTES and 100 * info.compress_size < info.file_size < 1032 * info.compress_size
    assert path.stat().st_size < 200_000
    assert torch.load(path, weights_only=False)["padding"] == bytes(BOMB_BYTES)  # a real, valid archive

    inflated = _inflated_members(monkeypatch)
    for verb in (tw.open, tw.load):
        with pytest.raises(ResourceLimitError) as info_:
            verb(path)
        err = info_.value
        assert err.code == "limit-inflate"
        assert pkl in err.message and "max_inflate_ratio" in err.message and "Nothing was inflated" in err.message
    assert not [call for call in inflated if call[0] == pkl and call[1] > 1 << 20]

    report = scan(path)
    assert report.verdict == "dangerous"
    finding = next(f for f in report.findings if f.code == "limit-inflate" and f.member == pkl)
    assert finding.severity == "suspicious"
    assert report.load_error is not None and report.load_error.code == "limit-inflate"

    # a user who trusts the file can raise the ratio; the weights are then read
    loaded = tw.load(path, limits=Limits(max_inflate_ratio=2000))
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value)


def test_deflated_pickle_of_ordinary_ratio_is_read(tmp_path: Path) -> None:
    """A re-zipped checkpoint (every member deflated, as a zip tool would) is not a bomb: read as usual."""
    tensors = {f"layer{i}.weight": torch.randn(64, 64) for i in range(8)}
    saved = tmp_path / "ckpt.pt"
    torch.save({**tensors, "meta": {"names": [f"n{i}" for i in range(20_000)]}}, saved)
    members = read_members(saved)
    path = _rezip(tmp_path / "rezipped.pt", members, {n for n, _ in members})
    loaded = tw.load(path)
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value)
    report = scan(path)
    assert not [f for f in report.findings if f.code == "limit-inflate"]


def test_small_members_compress_freely(tmp_path: Path) -> None:
    """Under ``inflate_ratio_from_bytes`` any ratio is allowed: a pickle of 8 MiB of zeros deflated 1000:1."""
    saved = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(3), "blob": bytes(8 << 20)}, saved)
    members = read_members(saved)
    path = _rezip(tmp_path / "small.pt", members, {n for n, _ in members if n.endswith("data.pkl")})
    assert tw.load(path)["w"].tolist() == [1.0, 1.0, 1.0]
    assert not [f for f in scan(path).findings if f.code == "limit-inflate"]


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes]]:
    path = tmp_path_factory.mktemp("ts-bomb") / "net.pt"
    torch.jit.script(_Net()).save(str(path))
    return read_members(path)


@pytest.mark.parametrize("which", ["constants.pkl", "debug_pkl", "code"])
def test_bomb_in_a_torchscript_member(tmp_path: Path, scripted: list[tuple[str, bytes]], which: str) -> None:
    """``constants.pkl`` (read by loading) and the debug pickles and source (read by scan): refused by both readers
    where they read it."""
    if which == "constants.pkl":
        target = next(n for n, _ in scripted if n.endswith("/constants.pkl"))
        content = pickle.dumps((bytes(BOMB_BYTES),), protocol=2)
    elif which == "debug_pkl":
        target = next(n for n, _ in scripted if n.endswith(".debug_pkl"))
        content = pickle.dumps((0, bytes(BOMB_BYTES)), protocol=2)
    else:
        target = next(n for n, _ in scripted if is_code_member(n))
        content = dict(scripted)[target] + b"\n" * BOMB_BYTES
    members = [(n, content if n == target else c) for n, c in scripted]
    path = _rezip(tmp_path / "net.pt", members, {target})
    report = scan(path)
    finding = next(f for f in report.findings if f.code == "limit-inflate")
    assert finding.severity == "suspicious" and target in (finding.member or "")
    assert report.verdict == "dangerous"
    if which == "constants.pkl":
        with pytest.raises(ResourceLimitError) as info:
            tw.load(path)
        assert info.value.code == "limit-inflate" and target in info.value.message
