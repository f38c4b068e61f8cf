"""Archives missing a member they need: a torch zip without ``data.pkl`` or without its ``version`` record (torch's
writer writes it last: an archive without it was cut short or assembled by another tool), a storage ``data/N`` the
pickle refers to, a TorchScript archive without ``data.pkl``. Each is a ``CorruptCheckpointError`` naming the member,
raised by ``tw.open`` before any tensor exists (never a partial result), and scan calls the file unreadable. Members
torch itself treats as optional (``byteorder``: little-endian when absent, as before torch 2.1;
``.data/serialization_id``; ``.format_version``) may be missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import CorruptCheckpointError
from torchweights.tools.scan.scanner import scan

from ._helpers import read_members, write_zip


@pytest.fixture
def saved(tmp_path: Path) -> tuple[list[tuple[str, bytes]], dict[str, torch.Tensor]]:
    # (values whose bytes start with zeros: scan's verdict here is about structure, not about tensor bytes)
    tensors = {
        "encoder.weight": torch.arange(20.0).reshape(5, 4) / 7,
        "encoder.bias": torch.zeros(5),
        "head": torch.arange(6),
    }
    path = tmp_path / "ckpt.pt"
    torch.save(tensors, path)
    return read_members(path), tensors


def _without(tmp_path: Path, members: list[tuple[str, bytes]], suffix: str) -> tuple[Path, str]:
    (dropped,) = [n for n, _ in members if n.endswith(suffix)]
    return write_zip(tmp_path / "damaged.pt", [(n, c) for n, c in members if n != dropped]), dropped


def _torch_refuses(path: Path) -> None:
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("suffix", "code"),
    [("/data.pkl", "missing-member"), ("/version", "missing-member"), ("/data/1", "missing-storage")],
)
def test_missing_required_member(
    tmp_path: Path, saved: tuple[list[tuple[str, bytes]], dict[str, torch.Tensor]], suffix: str, code: str
) -> None:
    members, _ = saved
    path, dropped = _without(tmp_path, members, suffix)
    _torch_refuses(path)
    for verb in (tw.open, tw.load):
        with pytest.raises(CorruptCheckpointError) as info:
            verb(path)
        assert info.value.code == code
        assert f"'{dropped}'" in info.value.message, info.value.message
        assert "re-download" in info.value.message
    report = scan(path)
    assert report.verdict == "unreadable"
    assert report.load_error is not None and report.load_error.code == code


@pytest.mark.parametrize("suffix", ["/byteorder", "/.data/serialization_id", "/.format_version"])
def test_optional_member_may_be_missing(
    tmp_path: Path, saved: tuple[list[tuple[str, bytes]], dict[str, torch.Tensor]], suffix: str
) -> None:
    members, tensors = saved
    path, _ = _without(tmp_path, members, suffix)
    reference = torch.load(path, weights_only=True)
    loaded = tw.load(path)
    assert list(loaded) == list(reference)
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value)
    assert scan(path).load_error is None


@pytest.mark.parametrize("record", [b"", b"three\n", b"3.0"])
def test_version_record_that_is_not_a_number(
    tmp_path: Path, saved: tuple[list[tuple[str, bytes]], dict[str, torch.Tensor]], record: bytes
) -> None:
    members, _ = saved
    path = write_zip(tmp_path / "bad.pt", [(n, record if n.endswith("/version") else c) for n, c in members])
    with pytest.raises(CorruptCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "bad-record"
    report = scan(path)
    assert report.verdict == "unreadable" and report.load_error is not None
    assert report.load_error.code == "bad-record"


def test_only_the_pickle_is_missing_with_storages_present(tmp_path: Path) -> None:
    """Storages and records but no pickle: a damaged torch archive (not "not a checkpoint")."""
    members = [("ckpt/data/0", bytes(16)), ("ckpt/data/1", bytes(8)), ("ckpt/version", b"3\n")]
    path = write_zip(tmp_path / "nopickle.pt", members)
    with pytest.raises(CorruptCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "missing-member" and "'ckpt/data.pkl'" in info.value.message


def test_torchscript_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.jit.script(torch.nn.Linear(3, 2)).save(str(path))
    members = read_members(path)
    damaged = write_zip(tmp_path / "damaged.pt", [(n, c) for n, c in members if not n.endswith("/data.pkl")])
    with pytest.raises(CorruptCheckpointError) as info:
        tw.load(damaged)
    assert info.value.code == "missing-member" and "data.pkl" in info.value.message
    assert scan(damaged).verdict == "unreadable"


def test_a_zip_that_merely_has_a_version_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    """One torch-looking name is not enough to call a zip a damaged checkpoint."""
    from torchweights.errors import NotACheckpointError

    path = write_zip(tmp_path / "docs.zip", [("docs/version", b"1.2\n"), ("docs/readme.txt", b"hello")])
    with pytest.raises(NotACheckpointError) as info:
        tw.load(path)
    assert info.value.code == "zip-not-checkpoint"
