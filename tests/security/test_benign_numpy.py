"""Benign: NumPy scalars, arrays (Fortran order, big-endian, structured, datetime, strings, object, empty, 0-d)
and dtypes next to the weights, as training scripts save them (metrics, RNG states, dataset statistics).

They come back as real NumPy values equal to what ``torch.load(weights_only=False)`` returns, rebuilt from bytes
(NumPy's own reconstructors are never called), and scan raises no alarm.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torchweights.api as tw
from torchweights.unpickle.stream import unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign


def _values(_: Any) -> dict[str, Any]:
    return {
        "np_f64": np.float64(1.5),
        "np_i32": np.int32(-7),
        "np_bool": np.bool_(True),
        "np_f16": np.float16(0.25),
        "np_u8": np.uint8(255),
        "np_i64": np.int64(-(2**62)),
        "np_c64": np.complex64(1 + 2j),
        "np_str": np.str_("héllo"),
        "np_bytes": np.bytes_(b"ab"),
        "np_dt64": np.datetime64("2024-01-02T03:04"),
        "np_arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "np_obj": np.array([1, "a", None, [2]], dtype=object),
        "np_fortran": np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        "np_big_endian": np.arange(5, dtype=">f8"),
        "np_dtype": np.dtype("int16"),
        "np_dtype_big_endian": np.dtype(">u4"),
        "np_struct": np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        "np_datetime": np.array(["2024-01-02", "2024-03-04"], dtype="datetime64[D]"),
        "np_timedelta": np.array([1, 2], dtype="timedelta64[s]"),
        "np_strings": np.array(["ab", "cde"]),
        "np_unicode": np.array(["é", "ü"]),
        "np_empty": np.zeros((0, 3)),
        "np_0d": np.array(5.0),
        "np_f16_arr": np.arange(4, dtype=np.float16),
        "np_rng_state": np.random.RandomState(0).get_state(),
        "np_generator_state": np.random.default_rng(0).bit_generator.state,
        "py_rng_state": random.Random(0).getstate(),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("numpy"), _values, {"w": torch.arange(4.0)})


SCALARS = ("np_f64", "np_i32", "np_bool", "np_f16", "np_u8", "np_i64", "np_c64", "np_str", "np_bytes", "np_dt64")
ARRAYS = (
    "np_arr",
    "np_obj",
    "np_fortran",
    "np_big_endian",
    "np_struct",
    "np_datetime",
    "np_timedelta",
    "np_strings",
    "np_unicode",
    "np_empty",
    "np_0d",
    "np_f16_arr",
)


def same_array(got: Any, expected: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == expected.dtype and got.dtype.str == expected.dtype.str
    assert got.shape == expected.shape
    assert got.flags.f_contiguous == expected.flags.f_contiguous
    assert got.flags.c_contiguous == expected.flags.c_contiguous
    if expected.dtype.hasobject:
        assert got.tolist() == expected.tolist()
    else:
        assert got.tobytes(order="A") == expected.tobytes(order="A")
    assert got.flags.writeable


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in SCALARS:
        assert type(got[key]) is type(expected[key]) and got[key] == expected[key], key
    for key in ARRAYS:
        same_array(got[key], expected[key])
    for key in ("np_dtype", "np_dtype_big_endian"):
        assert isinstance(got[key], np.dtype) and got[key] == expected[key] and got[key].str == expected[key].str
    name, keys, pos, has_gauss, gauss = got["np_rng_state"]
    assert (name, pos, has_gauss, gauss) == tuple(v for i, v in enumerate(expected["np_rng_state"]) if i != 1)
    same_array(keys, expected["np_rng_state"][1])
    assert got["np_generator_state"] == expected["np_generator_state"]
    assert got["py_rng_state"] == expected["py_rng_state"]


def same_values(got: dict[str, Any], reference: dict[str, Any]) -> None:
    """As torch.load(weights_only=False) reads them: equal values (NumPy itself turns big-endian arrays native on
    unpickling; torchweights keeps the byte order the file has)."""
    for key in (*SCALARS, *ARRAYS, "np_dtype", "np_dtype_big_endian", "np_generator_state", "py_rng_state"):
        want = reference[key]
        if isinstance(want, np.ndarray):
            assert got[key].dtype.newbyteorder("=") == want.dtype.newbyteorder("=") and got[key].shape == want.shape
            assert got[key].tolist() == want.tolist(), key
        else:
            assert got[key] == want, key


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_numpy_values_load_as_saved_and_as_torch_load_reads_them(saved: Benign, fmt: str) -> None:
    extras = load_benign(saved, fmt).extras
    check(extras, saved.values)
    same_values(extras, saved.reference[fmt])


@pytest.mark.parametrize("protocol", list(range(6)))
def test_numpy_values_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_numpy_values_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])


def test_numpy_extras_are_independent_copies(saved: Benign) -> None:
    # arrays are new writable buffers, not views of the file
    first = tw.open(saved.files["zip"]).extras["np_arr"]
    first[0, 0] = 100.0
    assert tw.open(saved.files["zip"]).extras["np_arr"][0, 0] == 0.0


def test_masked_array_is_an_inert_stub(tmp_path: Path) -> None:
    """An ndarray subclass with a reconstructor of its own: kept inert, not an alarm. ``_mareconstruct`` is called
    with arguments, but it only instantiates a class (as NEWOBJ does): known; the subclass is an unknown class."""
    path = tmp_path / "masked.pt"
    torch.save({"w": torch.ones(1), "m": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])}, path)
    assert tw.open(path).extras["m"].cls == "numpy.ma.core._mareconstruct"
    report = assert_clean_scan(path, unknown={"numpy.ma.MaskedArray"})
    assert report.globals["numpy.ma.core._mareconstruct"] == "known"


@pytest.mark.parametrize("kind", ["npy", "npz", "npz-compressed"])
def test_numpy_files_load_bit_identical_and_raise_no_alarm(tmp_path: Path, kind: str) -> None:
    """``.npy`` / ``.npz`` of numeric arrays (any byte order and layout): tw.load gives what torch.from_numpy gives
    for numpy.load's arrays, and scan calls them clean (they hold no pickle)."""
    rng = np.random.default_rng(3)
    arrays = {
        "weight": rng.standard_normal((8, 4)).astype("<f4"),
        "bias_be": rng.standard_normal(4).astype(">f8"),
        "fortran": np.asfortranarray(rng.standard_normal((3, 5)).astype("<f2")),
        "steps": np.arange(10, dtype="<i8"),
        "mask": rng.random(6) > 0.5,
    }
    path = tmp_path / f"a.{kind[:3]}"
    if kind == "npy":
        np.save(path, arrays["weight"])
    else:
        (np.savez_compressed if kind.endswith("compressed") else np.savez)(path, **arrays)
    loaded = tw.load(path)
    if kind == "npy":
        want = {"array": np.load(path)}
    else:
        with np.load(path) as ref:
            want = {k: ref[k] for k in ref.files}
    assert list(loaded) == list(want)
    for name, array in want.items():
        native = array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="), order="K")
        expected = torch.from_numpy(native)
        assert loaded[name].dtype == expected.dtype and loaded[name].stride() == expected.stride()
        assert torch.equal(loaded[name], expected)
    assert_clean_scan(path)
