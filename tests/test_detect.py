"""Format detection from content: every format id, every diagnosis, and the lies file names tell."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchweights.detect.archive as archive_module
import torchweights.detect.sample as sample_module
from torchweights.detect.content import FORMATS, detect
from torchweights.errors import (
    CheckpointNotFoundError,
    CheckpointReadError,
    CorruptCheckpointError,
    NotACheckpointError,
    TorchWeightsError,
)

LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _state() -> dict[str, torch.Tensor]:
    return {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bias": torch.zeros(2)}


def _torch_save(tmp_path: Path, stem: str, name: str | None = None, **kwargs: object) -> Path:
    """torch.save to ``<stem>.pt`` (so the zip root is ``stem``), then rename to ``name``."""
    saved = tmp_path / f"{stem}.pt"
    torch.save(_state(), saved, **kwargs)  # type: ignore[arg-type]
    if name is None:
        return saved
    target = tmp_path / name
    saved.rename(target)
    return target


def _raises(path: Path | str, cls: type[TorchWeightsError], code: str, *fragments: str) -> TorchWeightsError:
    with pytest.raises(cls) as info:
        detect(str(path))
    err = info.value
    assert err.code == code, str(err)
    assert str(path) in err.message
    for fragment in fragments:
        assert fragment in err.message, f"{fragment!r} not in {err.message!r}"
    return err


# ------------------------------------------------------------------------------------------------ recognised formats


@pytest.mark.parametrize("stem", ["archive", "my_model", "pytorch_model", "weights.v2"])
def test_torch_zip_any_root_name(tmp_path: Path, stem: str) -> None:
    path = _torch_save(tmp_path, stem)
    root = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    assert root == stem.replace(".", "_") or root == stem
    assert detect(str(path)) == "torch-zip"


def test_torch_zip_accepts_pathlike(tmp_path: Path) -> None:
    assert detect(_torch_save(tmp_path, "archive")) == "torch-zip"  # type: ignore[arg-type]


def test_torch_zip_named_safetensors_is_still_torch_zip(tmp_path: Path) -> None:
    assert detect(str(_torch_save(tmp_path, "model", "model.safetensors"))) == "torch-zip"


def test_torch_zip_without_extension(tmp_path: Path) -> None:
    assert detect(str(_torch_save(tmp_path, "model", "checkpoint"))) == "torch-zip"


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_torch_legacy(tmp_path: Path, protocol: int) -> None:
    path = _torch_save(tmp_path, "old", "old.bin", _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    assert detect(str(path)) == "torch-legacy"


def test_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(path))
    assert detect(str(path)) == "torchscript"


def test_torchscript_layout_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("m/constants.pkl", b"\x80\x02).")
    assert detect(str(path)) == "torchscript"


def test_torch_package(tmp_path: Path) -> None:
    path = tmp_path / "pkg.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/res/model.pkl", b"\x80\x02}q\x00.")
        z.writestr("pkg/.data/extern_modules", b"torch\n")
        z.writestr("pkg/.data/version", b"6\n")
    assert detect(str(path)) == "torch-package"


def test_zip64_archive(tmp_path: Path) -> None:
    path = tmp_path / "z64.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("root/data.pkl", b"\x80\x02}q\x00.")
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack_from("<HLL", data, eocd + 10)
    zip64 = struct.pack("<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4s4HLLH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(bytes(data[:eocd]) + zip64 + locator + end)
    assert detect(str(path)) == "torch-zip"


def test_legacy_tar(tmp_path: Path) -> None:
    path = tmp_path / "ancient.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("sys_info", "pickle", "tensors", "storages"):
            payload = b"\x80\x02." * 700
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    assert detect(str(path)) == "legacy-tar"


def test_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path))
    assert detect(str(path)) == "safetensors"


def test_safetensors_named_pt_is_still_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    save_file(_state(), str(path))
    assert detect(str(path)) == "safetensors"


def test_safetensors_with_leading_spaces(tmp_path: Path) -> None:
    header = b"   {}"
    path = tmp_path / "spaced"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert detect(str(path)) == "safetensors"


def test_plain_pickle(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert detect(str(path)) == "pickle"


def test_sharded_index_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(
        json.dumps({"metadata": {"total_size": 1}, "weight_map": {"a": "model-00001-of-00001.safetensors"}})
    )
    assert detect(str(path)) == "sharded"


def test_sharded_index_with_odd_name(tmp_path: Path) -> None:
    path = tmp_path / "whatever.txt"
    path.write_text(json.dumps({"weight_map": {}}))
    assert detect(str(path)) == "sharded"


def test_broken_index_still_goes_to_sharded_reader(tmp_path: Path) -> None:
    path = tmp_path / "model.index.json"
    path.write_text('{"weight_map": {"a": "x.safetensors",')
    assert detect(str(path)) == "sharded"


def test_directory_with_one_index(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    (tmp_path / "config.json").write_text("{}")
    assert detect(str(tmp_path)) == "sharded"


def test_directory_with_several_indexes(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {}}))
    assert detect(str(tmp_path)) == "sharded"


def test_directory_with_dcp_metadata(tmp_path: Path) -> None:
    (tmp_path / ".metadata").write_bytes(b"\x80\x04.")
    (tmp_path / "__0_0.distcp").write_bytes(b"x")
    assert detect(str(tmp_path)) == "dcp"


def test_formats_table_lists_every_id() -> None:
    assert set(FORMATS) == {
        "torch-zip",
        "torchscript",
        "torch-package",
        "torch-legacy",
        "legacy-tar",
        "safetensors",
        "sharded",
        "dcp",
        "pickle",
        "npy",
        "npz",
    }


# ---------------------------------------------------------------------------------------------------- diagnoses


def test_directory_without_index_lists_candidates(tmp_path: Path) -> None:
    save_file(_state(), str(tmp_path / "model.safetensors"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "README.md").write_text("hi")
    err = _raises(tmp_path, NotACheckpointError, "directory", "model.safetensors", "pytorch_model.bin", "pass one")
    assert "README.md" not in err.message


def test_empty_directory(tmp_path: Path) -> None:
    _raises(tmp_path, NotACheckpointError, "directory", "no checkpoint-looking files", "checkpoint file itself")


def test_missing_path_suggests_sibling(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    err = _raises(tmp_path / "pytorch_modle.bin", CheckpointNotFoundError, "not-found", "Did you mean", "check")
    assert str(tmp_path / "pytorch_model.bin") in err.message
    assert isinstance(err, FileNotFoundError)


def test_missing_relative_path_suggests_plain_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    err = _raises("model.safetensor", CheckpointNotFoundError, "not-found", "Did you mean 'model.safetensors'?")
    assert str(tmp_path) in err.message  # says where relative paths start


def test_missing_path_without_sibling(tmp_path: Path) -> None:
    err = _raises(tmp_path / "zzz.qqq", CheckpointNotFoundError, "not-found", "check the path")
    assert "Did you mean" not in err.message


def test_missing_folder(tmp_path: Path) -> None:
    _raises(tmp_path / "nope" / "model.pt", CheckpointNotFoundError, "not-found", "does not exist")


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "model.safetensors"
    link.symlink_to(tmp_path / "blobs" / "abc123")
    _raises(link, CheckpointNotFoundError, "not-found", "symbolic link", "re-download")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if root:
        # root reads every file: drop to an unprivileged effective user for the call (root's saved user id gets it
        # back), from inside the test's folder (made searchable by others, so only the file's mode stands in the
        # way). One call first as root, so nothing is imported from a folder the other user cannot read.
        with pytest.raises(TorchWeightsError):
            detect(str(path))
        tmp_path.chmod(0o711)
        monkeypatch.chdir(tmp_path)
        path = Path(path.name)
    path.chmod(0)
    try:
        if root:
            os.seteuid(65534)
        try:
            err = _raises(path, CheckpointReadError, "read-failed", "permission denied", "chmod")
        finally:
            if root:
                os.seteuid(0)
        assert isinstance(err, OSError)
    finally:
        path.chmod(0o600)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.touch()
    _raises(path, NotACheckpointError, "empty-file", "0 bytes", "re-download")


def test_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    oid = "4d7a2146b1c1c0f1c8ec1e7e4b9a6d5c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e"
    path.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 1234567890\n")
    size = path.stat().st_size
    _raises(
        path,
        NotACheckpointError,
        "lfs-pointer",
        f"{size}-byte Git LFS pointer",
        f"sha256:{oid}",
        "1.2 GB",
        "git lfs pull",
        "git lfs install",
    )


def test_html_page_with_title(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    path.write_text(
        "\ufeff\n  <!DOCTYPE html>\n<html><head><meta charset='utf-8'>\n<title>Sign in &amp; continue</title>"
        "</head><body>please log in</body></html>",
        encoding="utf-8",
    )
    _raises(path, NotACheckpointError, "html-page", "HTML web page", '"Sign in & continue"', "raw file URL", "login")


@pytest.mark.parametrize("start", ["<html lang='en'>", "<HEAD>", "<?xml version='1.0'?>\n<html>"])
def test_html_variants(tmp_path: Path, start: str) -> None:
    path = tmp_path / "model.pt"
    path.write_text(start + "<body>x</body></html>")
    _raises(path, NotACheckpointError, "html-page")


def test_json_error_document(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_text(json.dumps({"error": "Access to model meta-llama/X is restricted. You must be authenticated."}))
    _raises(path, NotACheckpointError, "json-document", "Access to model meta-llama/X is restricted", "check the URL")


def test_json_config_document(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    _raises(path, NotACheckpointError, "json-document", "model config", "*.index.json (not config.json)")


def test_truncated_torch_zip(tmp_path: Path) -> None:
    full = _torch_save(tmp_path, "archive", "full.pt")
    data = full.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    _raises(
        path, CorruptCheckpointError, "truncated", "without a readable central directory", "incomplete", "re-download"
    )


def test_truncated_safetensors(tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    save_file(_state(), str(full))
    data = full.read_bytes()
    n = int.from_bytes(data[:8], "little")
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: 8 + n // 2])
    _raises(
        path,
        CorruptCheckpointError,
        "truncated",
        "truncated safetensors",
        f"header says {n} bytes",
        f"only {8 + n // 2} bytes",
        "re-download",
    )


def test_npz(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    with path.open("wb") as f:
        np.savez(f, a=np.zeros(3), b=np.ones(2))
    assert detect(path) == "npz"  # from content: whatever the name says


def test_compressed_npz(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    with path.open("wb") as f:
        np.savez_compressed(f, a=np.zeros(3))
    assert detect(path) == "npz"


def test_other_zip_lists_members(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        for name in ("README.txt", "weights/layer0.bin", "weights/layer1.bin"):
            z.writestr(name, b"x")
    _raises(path, NotACheckpointError, "zip-not-checkpoint", "README.txt", "weights/layer0.bin", "extract")


def test_rezipped_checkpoint_hint(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("outer/archive/data.pkl", b"\x80\x02.")
    _raises(path, NotACheckpointError, "zip-not-checkpoint", "outer/archive/data.pkl", "<root>/data.pkl")


def test_gzip_checkpoint(tmp_path: Path) -> None:
    raw = _torch_save(tmp_path, "archive", "raw.pt").read_bytes()
    path = tmp_path / "model.pt"
    path.write_bytes(gzip.compress(raw))
    _raises(path, NotACheckpointError, "gzip", "gzip-compressed", "gunzip -c")


def test_gzip_tarball(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model/pytorch_model.bin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    _raises(path, NotACheckpointError, "gzip", "tar archive", "tar xzf")


def test_plain_tar(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with tarfile.open(path, "w") as tar:
        for name in ("model/config.json", "model/pytorch_model.bin"):
            info = tarfile.TarInfo(name)
            info.size = 600
            tar.addfile(info, io.BytesIO(b"x" * 600))
    _raises(path, NotACheckpointError, "tar", "model/config.json", "model/pytorch_model.bin", "tar xf")


def test_tar_with_absurd_member_size(tmp_path: Path) -> None:
    header = bytearray(tarfile.TarInfo("model/a.bin").tobuf(format=tarfile.USTAR_FORMAT))
    header[124:136] = b"\x80" + (2**87).to_bytes(11, "big")  # GNU base-256 size far beyond the file
    path = tmp_path / "weird.tar"
    path.write_bytes(bytes(header) + b"\0" * 1024)
    _raises(path, NotACheckpointError, "tar", "model/a.bin")


def test_npy(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    with path.open("wb") as f:
        np.save(f, np.zeros((2, 2)))
    assert detect(path) == "npy"  # from content: whatever the name says


def test_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    _raises(path, NotACheckpointError, "gguf", "llama.cpp", "gguf")


@pytest.mark.parametrize("offset", [0, 512])
def test_hdf5(tmp_path: Path, offset: int) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\0" * offset + b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    _raises(path, NotACheckpointError, "hdf5", "Keras", "h5py")


def test_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x052.1.0:\x10\n\x05graph" + b"\x00" * 32)
    _raises(path, NotACheckpointError, "onnx", "ONNX model", "onnxruntime", "numpy_helper")


def test_onnx_sniff_is_conservative(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"\x08\xff\xff\x93\x00\x01binary junk")
    _raises(path, NotACheckpointError, "unknown-format")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_text("\n\nimport torch\nmodel = torch.nn.Linear(2, 3)\n")
    _raises(path, NotACheckpointError, "text-file", '"import torch"', "weights file")


@pytest.mark.parametrize("protocol", [0, 1])
def test_long_text_protocol_pickle_of_plain_data(tmp_path: Path, protocol: int) -> None:
    """A protocol 0/1 pickle longer than the sample, naming no global (numbers and strings): a pickle, not text.
    The sample ends inside a float's text argument; tw.open reads the data."""
    import pickle
    import random

    import torchweights as tw

    rng = random.Random(protocol)
    data = {f"layer{i}.weight": [rng.random() for _ in range(500)] for i in range(20)}
    path = tmp_path / "hparams.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert path.stat().st_size > 65_536  # far past the sample detect reads
    assert detect(str(path)) == "pickle"
    assert tw.open(path).extras[""] == data


def test_long_text_that_starts_like_a_pickle_is_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("(draft) notes on the model\n" + "the head was retrained with lr 0.1\n" * 500)
    _raises(path, NotACheckpointError, "text-file")


def test_unknown_binary(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(bytes(range(250, 256)) + bytes(range(40)))
    _raises(path, NotACheckpointError, "unknown-format", "fa fb fc fd fe ff 00 01", "46 B")


def test_errors_are_builtin_exceptions(tmp_path: Path) -> None:
    path = tmp_path / "e"
    path.touch()
    with pytest.raises(ValueError):
        detect(str(path))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_our_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz"
    path.write_bytes(data)
    try:
        assert detect(str(path)) in FORMATS
    except TorchWeightsError as err:
        assert err.path == str(path) and err.code


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x1f\x8b", b"\x08\x07"]), st.binary(max_size=600))
def test_magic_prefixed_junk_only_raises_our_errors(tmp_path: Path, magic: bytes, data: bytes) -> None:
    path = tmp_path / "fuzz"
    path.write_bytes(magic + data)
    try:
        assert detect(str(path)) in FORMATS
    except TorchWeightsError as err:
        assert err.code


# ------------------------------------------------------------------------------------------------------- helpers


def test_detect_reads_small_slices_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.zeros(30_000) for i in range(10)}, big)  # ~1.2 MB
    reads: list[int] = []

    class Spy:
        def __init__(self, handle: io.BufferedReader) -> None:
            self.handle = handle

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def seek(self, offset: int, whence: int = 0) -> int:
            return self.handle.seek(offset, whence)

        def read(self, size: int = -1) -> bytes:
            assert size >= 0, "detect must never read a whole file"
            reads.append(size)
            return self.handle.read(size)

    def spy_open(file: str, mode: str = "r") -> Spy:
        assert mode == "rb"
        return Spy(open(file, mode))

    for module in (sample_module, archive_module):  # every open of detection: the head, the zip directory
        monkeypatch.setattr(module, "open", spy_open, raising=False)
    assert detect(str(big)) == "torch-zip"
    assert reads and max(reads) <= 70_000
    assert sum(reads) < 80_000


def test_read_error_is_read_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04")

    def failing_open(file: str, mode: str = "r") -> io.BufferedReader:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sample_module, "open", failing_open, raising=False)
    err = _raises(path, CheckpointReadError, "read-failed", "Input/output error", "retry")
    assert isinstance(err, OSError)


def test_permission_error_is_read_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"PK\x03\x04")

    def denied(file: str, mode: str = "r") -> io.BufferedReader:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sample_module, "open", denied, raising=False)
    _raises(path, CheckpointReadError, "read-failed", "permission denied", "chmod")


def test_detect_does_not_import_torch_or_numpy(tmp_path: Path) -> None:
    paths = [
        _torch_save(tmp_path, "archive", "a.pt"),
        _torch_save(tmp_path, "o", "o.pt", _use_new_zipfile_serialization=False),
    ]
    save_file(_state(), str(tmp_path / "s.safetensors"))
    paths.append(tmp_path / "s.safetensors")
    script = (
        "import sys\n"
        "from torchweights.detect.content import detect\n"
        f"print([detect(p) for p in {[str(p) for p in paths]!r}])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "['torch-zip', 'torch-legacy', 'safetensors']" in result.stdout


def test_copy_of_torch_zip_keeps_detecting(tmp_path: Path) -> None:
    src = _torch_save(tmp_path, "archive")
    copy = tmp_path / "copy"
    shutil.copy(src, copy)
    assert detect(str(copy)) == "torch-zip"
