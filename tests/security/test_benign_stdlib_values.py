"""Benign: the other standard-library values training scripts keep next to the weights: ``Counter``, ``deque``,
dates and times (with time zones), ``Decimal``, ``Fraction``, complex numbers, slices, ranges, sets and frozensets,
bytes and bytearrays, big integers, NaN and infinities.

They come back as the same values (same types) that ``torch.load(weights_only=False)`` returns, and scan raises
no alarm.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import math
from typing import Any

import pytest
import torch

from torchweights.unpickle.stream import unpickle

from ._helpers import FORMATS, Benign, assert_clean_scan, load_benign, save_benign

SAME = (
    "when",
    "when_naive",
    "when_offset",
    "day",
    "clock",
    "delta",
    "decimal",
    "fraction",
    "complex",
    "slice",
    "range",
    "set",
    "frozenset",
    "bytes",
    "bytearray",
    "big_int",
    "negative_big_int",
    "inf",
    "unicode",
)


def _values(_: Any) -> dict[str, Any]:
    return {
        "counter": collections.Counter("abracadabra"),
        "deque": collections.deque([1, 2, 3], maxlen=5),
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc),
        "when_naive": datetime.datetime(2001, 2, 3),
        "when_offset": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-5), "EST")),
        "day": datetime.date(2024, 1, 1),
        "clock": datetime.time(12, 30, 5),
        "delta": datetime.timedelta(hours=3, microseconds=5),
        "decimal": decimal.Decimal("1.10"),
        "fraction": fractions.Fraction(1, 3),
        "complex": 3 - 4j,
        "slice": slice(1, 10, 2),
        "range": range(0, 10, 3),
        "set": {1, 2, (3, "x")},
        "frozenset": frozenset({"a", "b"}),
        "bytes": b"\x00\x01\xff",
        "bytearray": bytearray(b"xy"),
        "big_int": 2**100 + 1,
        "negative_big_int": -(2**70),
        "nan": float("nan"),
        "inf": float("-inf"),
        "unicode": "naïve ☃ \U0001f600",
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Benign:
    return save_benign(tmp_path_factory.mktemp("stdlib"), _values, {"w": torch.arange(3.0)})


def check(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert type(got["counter"]) is collections.Counter and got["counter"] == expected["counter"]
    assert type(got["deque"]) is collections.deque and got["deque"] == expected["deque"] and got["deque"].maxlen == 5
    for key in SAME:
        assert type(got[key]) is type(expected[key]) and got[key] == expected[key], key
    assert got["when"].tzinfo is datetime.timezone.utc
    assert got["when_offset"].tzinfo == expected["when_offset"].tzinfo
    assert got["when_offset"].tzname() == "EST"
    assert str(got["decimal"]) == "1.10"
    assert math.isnan(got["nan"])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stdlib_values_load_as_torch_load_reads_them(saved: Benign, fmt: str) -> None:
    check(load_benign(saved, fmt).extras, saved.reference[fmt])


@pytest.mark.parametrize("protocol", list(range(6)))
def test_stdlib_values_from_raw_pickles(saved: Benign, protocol: int) -> None:
    check(unpickle(saved.raw[protocol]).value, saved.values)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stdlib_values_raise_no_alarm(saved: Benign, fmt: str) -> None:
    assert_clean_scan(saved.files[fmt])
