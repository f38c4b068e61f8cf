"""Fuzzing ``tw.convert``, ``tw.diff`` and ``tw.verify`` on damaged checkpoints.

A random state dict (random dtypes, shapes and bit patterns, ``_samples.random_bits``) is saved as a torch zip,
safetensors or a legacy torch file, then damaged: 1-8 bytes flipped inside one tensor's stored bytes (found through
the records of ``tw.open``), or byte-level damage anywhere (``_samples.damaged``: truncation, flips, an overwritten
or deleted slice). For every damaged file:

* every call succeeds or raises a :class:`~torchweights.errors.TorchWeightsError`;
* ``convert`` never launders damage: when it raises, its destination folder is empty (no output, no temporary
  file); when it succeeds, ``tw.load`` of the source succeeds too, the report says verified, and the output loads
  bit for bit as the source does. A flipped tensor byte of a torch zip (CRC-32) is always refused;
* ``diff`` of a file with itself is identical (or refused as ``tw.load`` would refuse it); ``diff`` against the
  undamaged original is never identical when tensor bytes were flipped;
* ``verify`` catches every flipped tensor byte of a torch zip, and with a ``SHA256SUMS`` manifest of the original
  catches any damage at all, in every format.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchweights as tw
from _samples import damaged, random_bits
from torchweights.errors import TorchWeightsError

from ._common import bits, fuzz_settings

_FUZZ = fuzz_settings(25, deadline_factor=5)

_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.int8,
]
_FORMATS = ["zip", "safetensors", "legacy"]


@dataclass(frozen=True)
class Original:
    fmt: str
    name: str
    data: bytes
    regions: tuple[tuple[int, int], ...]  # (offset, nbytes) of every non-empty storage in the file

    def __repr__(self) -> str:
        return f"<{self.fmt} checkpoint, {len(self.data)} bytes>"


def _state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(int(torch.randint(1, 5, (1,), generator=gen))):
        shape = tuple(
            int(d) for d in torch.randint(1, 5, (int(torch.randint(0, 3, (1,), generator=gen)),), generator=gen)
        )
        dtype = _DTYPES[int(torch.randint(0, len(_DTYPES), (1,), generator=gen))]
        out[f"layer{i}.weight"] = random_bits(shape, dtype, seed * 31 + i)
    return out


def _save(fmt: str, state: dict[str, torch.Tensor], folder: Path) -> Original:
    name = {"zip": "ckpt.pt", "safetensors": "ckpt.safetensors", "legacy": "ckpt.pt"}[fmt]
    path = folder / name
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    regions = {
        (r.storage.offset, r.storage.nbytes)
        for r in tw.open(path).records.values()
        if r.storage is not None and r.storage.nbytes and r.storage.compression == 0
    }
    return Original(fmt, name, path.read_bytes(), tuple(sorted(regions)))


_ORIGINALS: dict[tuple[str, int], Original] = {}


@st.composite
def damaged_checkpoints(draw: st.DrawFn, folder: Path) -> tuple[Original, bytes, bool]:
    """``(original, damaged bytes, whether tensor bytes were flipped)``."""
    fmt = draw(st.sampled_from(_FORMATS))
    seed = draw(st.integers(0, 10_000))
    if (fmt, seed) not in _ORIGINALS:  # saved once: a legacy file's layout differs from one save to the next
        _ORIGINALS[(fmt, seed)] = _save(fmt, _state(seed), folder)
    original = _ORIGINALS[(fmt, seed)]
    data = original.data
    if original.regions and draw(st.booleans()):
        offset, nbytes = draw(st.sampled_from(original.regions))
        out = bytearray(data)
        for pos in draw(st.sets(st.integers(offset, offset + nbytes - 1), min_size=1, max_size=8)):
            out[pos] ^= draw(st.integers(1, 255))
        return original, bytes(out), True
    return original, draw(damaged(data)), False


def _try(call: Any) -> tuple[Any, TorchWeightsError | None]:
    try:
        return call(), None
    except TorchWeightsError as e:
        assert e.code and str(e).startswith(f"[{e.code}] "), repr(e)
        return None, e


def _bits(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {k: bits(v) for k, v in sd.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tools")


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


@_FUZZ
@given(data=st.data())
def test_convert_diff_verify_on_damaged_files(workdir: Path, data: st.DataObject) -> None:
    scratch = _fresh(workdir / "scratch")
    original, bad, flipped = data.draw(damaged_checkpoints(scratch), label="checkpoint")
    base = _fresh(workdir / "case")
    good_path = base / "original" / original.name
    good_path.parent.mkdir()
    good_path.write_bytes(original.data)
    path = base / original.name
    path.write_bytes(bad)
    changed = bad != original.data
    label = f"{original.fmt} {'tensor-flip' if flipped else 'damage'}"

    loaded, load_error = _try(lambda: tw.load(path))

    # verify: CRCs catch any flipped tensor byte of a zip; a manifest catches any change at all
    report, verify_error = _try(lambda: tw.verify(path))
    if flipped and original.fmt == "zip":
        assert report is not None and not report.ok, f"verify missed a flipped tensor byte ({label})"
    manifest = base / "SHA256SUMS"
    manifest.write_text(f"{hashlib.sha256(original.data).hexdigest()}  {original.name}\n")
    checked, _ = _try(lambda: tw.verify(path, manifest=manifest))
    if checked is not None and changed:
        assert not checked.ok, f"verify with a manifest passed a changed file ({label})"
    if checked is not None and not changed:
        assert checked.ok, [c.detail for c in checked.problems]

    # convert: nothing written over damaged bytes; what is written is what tw.load reads
    out = _fresh(base / "out")
    to = data.draw(st.sampled_from(["safetensors", "torch"]), label="to")
    written = out / ("model.safetensors" if to == "safetensors" else "model.pt")
    converted, convert_error = _try(lambda: tw.convert(path, written, to=to))
    if convert_error is not None:
        assert not list(out.rglob("*")), f"convert raised {convert_error.code} and left {list(out.rglob('*'))}"
        if flipped and original.fmt == "zip":
            assert convert_error.code == "bad-crc", convert_error
    else:
        assert converted.verified
        assert load_error is None, f"convert wrote a file tw.load refuses ({label}): {load_error}"
        assert not (flipped and original.fmt == "zip"), "convert laundered a flipped tensor byte of a torch zip"
        assert _bits(tw.load(written)) == _bits(loaded)

    # diff: a file with itself is identical; flipped tensor bytes always differ from the original
    itself, self_error = _try(lambda: tw.diff(path, path))
    assert itself is None or itself.identical, [t for t in itself.tensors if t.status != "identical"]
    if load_error is None:
        assert self_error is None, f"diff refuses a file tw.load reads ({label}): {self_error}"
    against, diff_error = _try(lambda: tw.diff(path, good_path))
    if flipped:
        assert against is None or not against.identical, f"diff calls a flipped tensor identical ({label})"
        if original.fmt == "zip":
            assert diff_error is not None and diff_error.code == "bad-crc", diff_error
    error = load_error or verify_error
    event(
        f"{label}: {'loaded' if error is None else error.code}; convert {convert_error.code if convert_error else 'ok'}"
    )


def test_undamaged_files_pass_every_tool(workdir: Path) -> None:
    """The starting point of the fuzzing: undamaged files of every format verify, convert and diff cleanly."""
    for fmt in _FORMATS:
        folder = _fresh(workdir / f"clean-{fmt}")
        original = _save(fmt, _state(7), folder)
        path = folder / original.name
        assert original.regions and tw.verify(path).ok
        report = tw.convert(path, folder / "out")
        assert report.verified
        assert _bits(tw.load(folder / "out" / "model.safetensors")) == _bits(tw.load(path))
        assert tw.diff(path, folder / "out" / "model.safetensors").identical
