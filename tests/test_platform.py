"""Where torchweights runs: reads without ``os.preadv`` (Windows, older macOS Pythons), forced here on Linux, and
``python -m torchweights``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchweights as tw
from _samples import random_bits
from torchweights.cli import main
from torchweights.errors import CorruptCheckpointError
from torchweights.storage import files as _io

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool)


def _state(seed: int) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    state = {}
    for i, dtype in enumerate(DTYPES):
        shape = (rng.randint(1, 40), rng.randint(1, 50))
        state[f"layer{i}.weight"] = random_bits(shape, dtype, seed * 100 + i)
    state["big"] = torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed))  # 4 MiB: several reads
    state["empty"] = torch.empty(0, 3)
    return state


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)  # safetensors stores by dtype and size, not in dict order
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert _bits(got[name]) == _bits(tensor), name


def _files(tmp_path: Path, seed: int) -> tuple[dict[str, torch.Tensor], list[Path]]:
    state = _state(seed)
    paths = [tmp_path / "zip.pt", tmp_path / "legacy.pt", tmp_path / "model.safetensors"]
    torch.save(state, paths[0])
    torch.save(state, paths[1], _use_new_zipfile_serialization=False)
    save_file(state, str(paths[2]))
    return state, paths


def _no_preadv(monkeypatch: pytest.MonkeyPatch, *, pread: bool) -> None:
    """Read as on a platform without ``os.preadv`` (and, with ``pread=False``, without ``os.pread``: Windows)."""

    def forbidden(*args: object) -> int:
        raise AssertionError("os.preadv called on a platform without it")

    monkeypatch.setattr(os, "preadv", forbidden, raising=False)
    monkeypatch.setattr(_io, "_preadv", _io._preadv_fallback)
    monkeypatch.setattr(_io, "_nowait_works", False)
    if not pread:
        monkeypatch.delattr(os, "pread", raising=False)


@pytest.mark.parametrize("pread", [True, False], ids=["pread", "seek-readinto"])
def test_read_exact_without_preadv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pread: bool) -> None:
    data = random.Random(3).randbytes(100_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    _no_preadv(monkeypatch, pread=pread)
    fd = _io.open_fd(str(path))
    try:
        rng = random.Random(4)
        for _ in range(20):
            offset = rng.randrange(0, len(data) - 3000)
            sizes = [rng.randrange(0, 1000) for _ in range(rng.randrange(1, 4))]
            bufs = [memoryview(bytearray(n)) for n in sizes]
            _io.read_exact(fd, bufs if len(bufs) > 1 else bufs[0], offset, str(path), "a test range")
            assert b"".join(bytes(b) for b in bufs) == data[offset : offset + sum(sizes)]
        # a short file is a clean error, as with preadv
        with pytest.raises(CorruptCheckpointError) as info:
            _io.read_exact(fd, [memoryview(bytearray(10)), memoryview(bytearray(10))], len(data) - 15, str(path), "x")
        assert info.value.code == "truncated" and "ended after 15 of the 20 bytes" in info.value.message
    finally:
        os.close(fd)


@pytest.mark.parametrize("pread", [True, False], ids=["pread", "seek-readinto"])
def test_load_without_preadv_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pread: bool) -> None:
    state, paths = _files(tmp_path, seed=1)
    _no_preadv(monkeypatch, pread=pread)
    for path in paths:
        _assert_same(tw.load(path), state)
    model = torch.nn.Linear(300, 200)
    expected = {"weight": torch.randn(200, 300), "bias": torch.randn(200)}
    torch.save(expected, tmp_path / "linear.pt")
    report = tw.load_into(model, tmp_path / "linear.pt")
    assert report.ok
    _assert_same(dict(model.state_dict()), expected)


def test_import_without_preadv_or_pread_chooses_the_fallback(tmp_path: Path) -> None:
    """A Python without ``os.preadv`` and ``os.pread`` (Windows) at import time: the fallback is chosen, nothing
    tries the Linux-only non-blocking read, and loads are bit-identical to ``torch.load``."""
    state, paths = _files(tmp_path, seed=2)
    script = (
        "import os, sys\n"
        "del os.preadv, os.pread\n"
        "import torch\n"
        "import torchweights as tw\n"
        "from torchweights.storage import files\n"
        "assert files._preadv is files._preadv_fallback and not files._nowait_works\n"
        "for path in sys.argv[1:]:\n"
        "    got = tw.load(path)\n"
        "    want = torch.load(path, weights_only=True)\n"
        "    assert list(got) == list(want), path\n"
        "    for name, t in want.items():\n"
        "        a, b = got[name].contiguous().reshape(-1), t.contiguous().reshape(-1)\n"
        "        assert a.dtype == b.dtype and a.view(torch.uint8).equal(b.view(torch.uint8)), (path, name)\n"
        "print('ok', len(sys.argv) - 1)\n"
    )
    torch_paths = [str(p) for p in paths if p.suffix == ".pt"]
    result = subprocess.run(
        [sys.executable, "-c", script, *torch_paths], capture_output=True, text=True, env=ENV, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(torch_paths)}"
    assert state  # the files hold the state the in-process tests compare against


def test_python_dash_m_torchweights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3)}, str(path))
    result = subprocess.run(
        [sys.executable, "-m", "torchweights", "inspect", str(path), "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(result.stdout) == json.loads(capsys.readouterr().out)
    version = subprocess.run(
        [sys.executable, "-m", "torchweights", "--version"], capture_output=True, text=True, env=ENV, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("torchweights "), version.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "torchweights", "inspect", str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert bad.returncode != 0 and "missing.pt" in bad.stderr


def test_big_endian_host_is_refused_at_import() -> None:
    """Byte-order decisions assume a little-endian host; any other host is refused at import, never misread."""
    script = (
        "import sys\n"
        "sys.byteorder = 'big'\n"
        "try:\n"
        "    import torchweights\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported on a big-endian host')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "little-endian machines only" in result.stdout and "big-endian" in result.stdout
    assert "torch.load(path, weights_only=True)" in result.stdout
