"""Detection and reading never disagree about a hostile archive (issue 12 §1).

For every crafted zip and tar below, either :func:`detect` refuses it and ``tw.open`` refuses it with the very same
error, or :func:`detect` names a format and ``tw.open`` reads the file as that format or refuses it for a problem
of the structure detection read (the readers' own parse: :func:`read_directory`, :func:`walk`). Detection never
classifies from a member list the reader does not see.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchweights as tw
from torchweights.detect.content import detect
from torchweights.errors import CorruptCheckpointError, NotACheckpointError, ResourceLimitError, TorchWeightsError
from torchweights.formats._zip import check, read_directory


def _torch_zip(tmp_path: Path) -> bytes:
    path = tmp_path / "clean.pt"
    torch.save({"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.zeros(2)}, path)
    return path.read_bytes()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _agree(path: Path) -> tuple[str | None, TorchWeightsError | None]:
    """Detect and open ``path``; fail unless they agree. Returns (format detected, error of tw.open)."""
    try:
        fmt = detect(path)
    except TorchWeightsError as detected:
        with pytest.raises(TorchWeightsError) as info:
            tw.open(path)
        assert type(info.value) is type(detected) and info.value.code == detected.code, (detected, info.value)
        assert info.value.message == detected.message
        return None, info.value
    try:
        ckpt = tw.open(path)
    except TorchWeightsError as exc:
        return fmt, exc
    assert ckpt.format == fmt
    return fmt, None


def _zip_codes(path: Path) -> set[str]:
    with open(path, "rb") as fh:
        return {p.code for p in read_directory(fh, str(path), path.stat().st_size).problems}


# ------------------------------------------------------------------------------------------------------------ zip


def test_clean_torch_zip_is_detected_and_read(tmp_path: Path) -> None:
    assert _agree(_write(tmp_path, "m.pt", _torch_zip(tmp_path))) == ("torch-zip", None)


def test_leading_data_before_a_torch_zip(tmp_path: Path) -> None:
    """Regression: bytes that start like a zip placed before a torch archive. detect read the central directory at
    the offset the end record gives, found no entry there and called the file "a zip of no members"; the zip reader
    finds the directory of the shifted archive and refuses the polyglot shape. Now both see the shifted archive."""
    junk = b"PK\x03\x04" + bytes(range(200))
    path = _write(tmp_path, "lead.pt", junk + _torch_zip(tmp_path))
    fmt, error = _agree(path)
    assert fmt == "torch-zip"
    assert error is not None and error.code == "zip-leading-data"
    assert "zip-leading-data" in _zip_codes(path)


def test_other_zip_before_a_torch_zip(tmp_path: Path) -> None:
    """Two archives back to back: the end record is the second one's, and so is the member list both read."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("README.txt", b"hello")
    path = _write(tmp_path, "two.pt", buffer.getvalue() + _torch_zip(tmp_path))
    fmt, error = _agree(path)
    assert fmt == "torch-zip" and error is not None and error.code == "zip-leading-data"


def test_trailing_data_after_a_torch_zip(tmp_path: Path) -> None:
    path = _write(tmp_path, "trail.pt", _torch_zip(tmp_path) + b"#!/bin/sh\necho hi\n")
    fmt, error = _agree(path)
    assert fmt == "torch-zip" and error is not None and error.code == "zip-trailing-data"


def test_central_directory_lies_about_a_name(tmp_path: Path) -> None:
    """The central directory names a member differently from its local header: zip readers that trust one or the
    other see different files; detection lists the central names, as the reader does, and the reader refuses."""
    data = bytearray(_torch_zip(tmp_path))
    directory = data.rfind(b"PK\x01\x02", 0, data.rfind(b"PK\x05\x06"))
    name_len = struct.unpack_from("<H", data, directory + 28)[0]
    name_at = directory + 46
    name = bytes(data[name_at : name_at + name_len])
    data[name_at + name_len - 1] ^= 0x01  # the last member (the version record), renamed in the directory only
    path = _write(tmp_path, "lie.pt", bytes(data))
    fmt, error = _agree(path)
    assert fmt == "torch-zip" and error is not None and error.code == "zip-name-mismatch", (name, error)


def test_central_directory_claims_more_entries_than_it_holds(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("README.txt", b"hello")
    data = bytearray(buffer.getvalue())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 5, 5)  # 5 entries claimed, 1 present
    path = _write(tmp_path, "count.zip", bytes(data))
    fmt, error = _agree(path)
    assert fmt is None and isinstance(error, CorruptCheckpointError) and error.code == "bad-zip"
    assert "central directory entry 1 of 5" in error.message


def test_duplicated_member(tmp_path: Path) -> None:
    clean = _write(tmp_path, "clean.pt", _torch_zip(tmp_path))
    path = tmp_path / "dup.pt"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as z:
        for info in source.infolist():
            z.writestr(info, source.read(info))
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("clean/data.pkl", b"\x80\x02}q\x00.")
    fmt, error = _agree(path)
    assert fmt == "torch-zip" and error is not None and error.code == "zip-duplicate-member"


def test_truncated_zip_refused_by_both(tmp_path: Path) -> None:
    data = _torch_zip(tmp_path)
    fmt, error = _agree(_write(tmp_path, "half.pt", data[: len(data) // 2]))
    assert fmt is None and isinstance(error, CorruptCheckpointError) and error.code == "truncated"


def test_directory_past_the_end_refused_by_both(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("a/data.pkl", b"\x80\x02}q\x00.")
    data = bytearray(buffer.getvalue())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, eocd + 16, len(data))  # the directory "starts" at the end of the file
    fmt, error = _agree(_write(tmp_path, "past.pt", bytes(data)))
    assert fmt is None and error is not None and error.code == "truncated"


def test_too_many_entries_is_a_limit(tmp_path: Path) -> None:
    data = bytearray(_torch_zip(tmp_path))
    record = data.rfind(b"PK\x06\x06")  # torch writes the zip64 records even for small archives
    struct.pack_into("<QQ", data, record + 24, 2_000_000, 2_000_000)
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 0xFFFF, 0xFFFF)
    fmt, error = _agree(_write(tmp_path, "many.pt", bytes(data)))
    assert fmt is None and isinstance(error, ResourceLimitError) and error.code == "limit-zip-entries"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_directory_same_members_for_both(tmp_path: Path, data: st.DataObject) -> None:
    """Bytes of the end records and the central directory changed at random: the member list detection classifies
    is exactly the one the reader reads, and a zip detection refuses as damaged the reader refuses too."""
    clean = bytearray(_torch_zip(tmp_path))
    start = clean.rfind(b"PK\x01\x02", 0, clean.find(b"PK\x01\x02") + 1)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(start, len(clean) - 1))
        clean[at] = data.draw(st.integers(0, 255))
    path = _write(tmp_path, "fuzzed.pt", bytes(clean))
    with open(path, "rb") as fh:
        names_only = read_directory(fh, str(path), len(clean), local_headers=False)
        full = read_directory(fh, str(path), len(clean))
    assert names_only.names() == full.names()
    assert {(p.code, p.message) for p in names_only.problems} <= {(p.code, p.message) for p in full.problems}
    try:
        detect(path)
    except NotACheckpointError:
        pass
    except TorchWeightsError:
        with pytest.raises(TorchWeightsError):
            check(full)  # refused as damaged by detection: the reader's check refuses it too
    _agree(path)


# ------------------------------------------------------------------------------------------------------------ tar


def _torch_tar(path: Path, names: tuple[str, ...] = ("sys_info", "pickle", "tensors", "storages")) -> bytes:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            payload = b"\x80\x02K\x00."
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path.read_bytes()


def test_torch_tar_with_a_bad_checksum(tmp_path: Path) -> None:
    """Regression: a damaged header in a torch tar. detect parsed the headers without their checksum and said
    legacy-tar, while the reader's walk refused the header; now detection walks the archive with the reader's
    walk and refuses it with the reader's error."""
    data = bytearray(_torch_tar(tmp_path / "t.tar"))
    second = 1024  # the second header: sys_info's data takes one block
    assert data[second : second + 6] == b"pickle"
    data[second + 100] ^= 0x01  # the mode field: the stored checksum no longer matches
    path = _write(tmp_path, "bad.pt", bytes(data))
    fmt, error = _agree(path)
    assert fmt is None and isinstance(error, CorruptCheckpointError) and error.code == "tar-bad-header"
    assert "byte 1024" in error.message


def test_torch_tar_damaged_after_the_first_members(tmp_path: Path) -> None:
    """A header past the few detection classifies from: the reader's whole walk refuses it in detection already."""
    data = bytearray(_torch_tar(tmp_path / "t.tar", ("sys_info", "pickle", "tensors", "storages", "x", "y")))
    data[5 * 1024 + 100] ^= 0x01  # the header of "y"
    fmt, error = _agree(_write(tmp_path, "late.pt", bytes(data)))
    assert fmt is None and error is not None and error.code == "tar-bad-header"


def test_torch_tar_member_past_the_end(tmp_path: Path) -> None:
    data = _torch_tar(tmp_path / "t.tar")
    fmt, error = _agree(_write(tmp_path, "cut.pt", data[: 3 * 1024 + 512 + 2]))  # storages' data cut short
    assert fmt is None and error is not None and error.code == "truncated"


def test_torch_tar_with_a_duplicated_member(tmp_path: Path) -> None:
    path = tmp_path / "dup.pt"
    _torch_tar(path, ("sys_info", "pickle", "pickle", "tensors", "storages"))
    fmt, error = _agree(path)
    assert fmt == "legacy-tar" and error is not None and error.code == "tar-duplicate-member"


def test_other_tar_with_a_bad_checksum_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("model/config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    fmt, error = _agree(path)
    assert fmt is None and isinstance(error, NotACheckpointError) and error.code == "tar"
    assert "model/config.json" in error.message
