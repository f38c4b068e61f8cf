"""Fuzzing the writers: random tensors of every dtype and shape, written by ``tw.convert``, read back bit for bit.

A random state dict (every dtype the target format holds; 0-d, empty and 1-3 dimensional shapes; contiguous
tensors, transposes, strided slices, views sharing one storage, and tied entries: the same tensor under two names)
is saved by ``torch.save`` and converted by ``tw.convert`` to safetensors or to a torch zip. Read back:

* by ``tw.load``: every name, bit-identical contents, the same dtypes and shapes (safetensors aliases re-tied);
* by the format's own reader: ``safetensors.torch.load_file`` (every name but the aliases the report lists, whose
  kept tensor is stored once) or ``torch.load(weights_only=True)``.

A dict with a dtype safetensors cannot hold (``complex128``, ``complex32``, the ``fnuz`` float8s) converted to
safetensors is refused with nothing written.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import torchweights as tw
from _samples import random_bits
from torchweights.errors import TorchWeightsError

from ._common import bits, fuzz_settings

_FUZZ = fuzz_settings(30, deadline_factor=5)

#: dtypes safetensors holds, and those only a torch file holds.
SAFETENSORS_DTYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.float8_e8m0fnu, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint64, torch.uint32,
    torch.uint16, torch.uint8, torch.bool, torch.complex64,
]  # fmt: skip
TORCH_ONLY_DTYPES = [torch.complex128, torch.complex32, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz]

shapes = st.one_of(
    st.just(()),  # 0-d
    st.lists(st.integers(1, 3), max_size=2).flatmap(  # empty: a 0 among the sizes
        lambda s: st.integers(0, len(s)).map(lambda i: (*s[:i], 0, *s[i:]))
    ),
    st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
)


@st.composite
def tensors(draw: st.DrawFn, dtypes: list[torch.dtype]) -> torch.Tensor:
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes)
    seed = draw(st.integers(0, 2**16))
    how = draw(st.sampled_from(["contiguous", "contiguous", "transpose", "strided", "offset"]))
    if how == "transpose" and len(shape) >= 2:
        return random_bits((shape[1], shape[0], *shape[2:]), dtype, seed).transpose(0, 1)
    if how == "strided" and shape:
        return random_bits((shape[0] * 2, *shape[1:]), dtype, seed)[::2]
    if how == "offset" and shape and 0 not in shape:  # empty views past the storage end: see the test below
        return random_bits((shape[0] + 1, *shape[1:]), dtype, seed)[1:]
    return random_bits(shape, dtype, seed)


@st.composite
def state_dicts(draw: st.DrawFn, dtypes: list[torch.dtype]) -> dict[str, torch.Tensor]:
    out = {f"t{i}": draw(tensors(dtypes)) for i in range(draw(st.integers(1, 6)))}
    names = sorted(out)
    if draw(st.booleans()):  # tied: one tensor under two names
        out["tied"] = out[draw(st.sampled_from(names))]
    if draw(st.booleans()):  # two views of one storage
        base = random_bits((4, 6), draw(st.sampled_from(dtypes)), draw(st.integers(0, 99)))
        out["view.a"], out["view.b"] = base[1:3], base[:, ::2]
    return out


def _bits_of(sd: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {k: bits(v) for k, v in sd.items()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("writers")


def _source(folder: Path, sd: dict[str, torch.Tensor]) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    path = folder / "source.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(sd, path)
    return path


@_FUZZ
@given(sd=state_dicts(SAFETENSORS_DTYPES))
def test_safetensors_round_trip(workdir: Path, sd: dict[str, torch.Tensor]) -> None:
    source = _source(workdir / "st", sd)
    out = source.parent / "model.safetensors"
    report = tw.convert(source, out)
    assert report.verified
    expected = _bits_of(sd)
    assert _bits_of(tw.load(out)) == expected
    theirs = safetensors.torch.load_file(str(out))
    assert set(theirs) == set(sd) - set(report.aliases), (sorted(theirs), report.aliases)
    assert _bits_of(theirs) == {k: v for k, v in expected.items() if k in theirs}
    for alias, kept in report.aliases.items():
        assert expected[alias] == expected[kept]
    event(f"aliases: {len(report.aliases)}")


@_FUZZ
@given(sd=state_dicts(SAFETENSORS_DTYPES + TORCH_ONLY_DTYPES))
def test_torch_round_trip(workdir: Path, sd: dict[str, torch.Tensor]) -> None:
    source = _source(workdir / "pt", sd)
    out = source.parent / "model.pt"
    assert tw.convert(source, out, to="torch").verified
    expected = _bits_of(sd)
    assert _bits_of(tw.load(out)) == expected
    assert _bits_of(torch.load(out, weights_only=True)) == expected


@_FUZZ
@given(sd=state_dicts(SAFETENSORS_DTYPES), bad=tensors(TORCH_ONLY_DTYPES))
def test_safetensors_refuses_what_it_cannot_hold(workdir: Path, sd: dict[str, torch.Tensor], bad: torch.Tensor) -> None:
    source = _source(workdir / "refused", {**sd, "unholdable": bad})
    out = source.parent / "out"
    with pytest.raises(TorchWeightsError) as info:
        tw.convert(source, out / "model.safetensors")
    assert "unholdable" in str(info.value)
    assert not out.exists() or not list(out.rglob("*")), list(out.rglob("*"))


def test_an_empty_view_past_its_storage_end_loads_as_torch_loads_it(tmp_path: Path) -> None:
    """Found by the round trips above: ``torch.empty(2, 0)[1:]`` is an empty tensor at storage offset 1 of a
    0-byte storage. ``torch.save`` writes it and ``torch.load(weights_only=True)`` reads it (an empty tensor reads
    no bytes), so ``tw.load`` must too, in both torch formats; it refused the file as ``bad-record`` ("starts at
    byte 8 of a 0-byte storage")."""
    state = {"empty": torch.empty(2, 0, dtype=torch.float64)[1:], "rows": torch.empty(5, 0, dtype=torch.int8)[3:]}
    for zip_format in (True, False):
        path = tmp_path / f"empty-{zip_format}.pt"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        theirs = torch.load(path, weights_only=True)
        ours = tw.load(path)
        assert _bits_of(ours) == _bits_of(theirs) == _bits_of(state)
