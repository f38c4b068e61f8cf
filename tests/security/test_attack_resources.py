"""Resource attacks: small files that ask for unbounded time, memory or stack. Billion laughs (one list referenced
ten times per level through the memo, thirty levels: 10**30 paths to name), deep nesting, storages and views
declaring terabytes, zips of thousands of members or claiming millions, length fields claiming exabytes, and
value classes fed huge numbers.

Every one must end quickly with a result or a ``TorchWeightsError`` (no timing assertion: a hang would show as a
hung test run), and scan must return a report for each, never raise.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import random
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights.api as tw
from torchweights.errors import ResourceLimitError, TorchWeightsError
from torchweights.tools.scan.report import ScanReport
from torchweights.tools.scan.scanner import scan
from torchweights.unpickle.stream import unpickle
from torchweights.unpickle.values import Stub

from ._helpers import torch_zip_members, write_zip

FOUR_FLOATS = bytes(16)


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _View:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})."""

    def __init__(self, storage: _Storage, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> None:
        self.args: tuple[Any, ...] = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _pickle(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _exercise(path: Path, **kwargs: Any) -> tuple[Any, ScanReport]:
    """tw.load's outcome (its result or its TorchWeightsError) and scan's report; anything else fails the test."""
    try:
        outcome: Any = tw.load(path, **kwargs)
    except TorchWeightsError as exc:
        outcome = exc
    report = scan(path)
    assert report.verdict in ("clean", "dangerous", "unreadable")
    return outcome, report


def _laughs(levels: int = 30, width: int = 10, leaf: bytes = b"]") -> bytes:
    """Level k is a list of ``width`` references (BINGET) to level k-1, memoized as slot 0 each time."""
    level = b"(" + b"h\x00" * width + b"lq\x00"
    return b"\x80\x02" + leaf + b"q\x00" + level * levels + b"."


def test_billion_laughs_of_plain_lists(tmp_path: Path) -> None:
    data = _laughs()
    assert len(data) < 1000
    path = write_zip(tmp_path / "laughs.pt", torch_zip_members(data))
    outcome, report = _exercise(path)
    assert outcome == {} or isinstance(outcome, TorchWeightsError)  # no tensor, whatever the expansion
    assert report.verdict != "dangerous"


def test_billion_laughs_around_a_tensor(tmp_path: Path) -> None:
    """Naming every path to the one tensor would take 10**30 names."""
    x: Any = _View(_Storage("0", 4), (4,), (1,))
    for _ in range(30):
        x = [x] * 10
    path = write_zip(tmp_path / "laughs.pt", torch_zip_members(_pickle({"w": x}), {"0": FOUR_FLOATS}))
    assert path.stat().st_size < 4096
    outcome, report = _exercise(path)
    assert isinstance(outcome, ResourceLimitError) and outcome.code == "limit-expansion"
    assert report.verdict == "unreadable" and report.load_error is not None


def test_billion_laughs_in_a_raw_pickle(tmp_path: Path) -> None:
    path = tmp_path / "laughs.pkl"
    path.write_bytes(_laughs(leaf=b"}"))
    _, report = _exercise(path)
    assert report.verdict == "clean"  # plain data: tw.load reads it (no tensors, nothing expanded), no alarm
    assert tw.load(path) == {}


def test_deeply_nested_lists(tmp_path: Path) -> None:
    depth = 5_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    path = write_zip(tmp_path / "deep.pt", torch_zip_members(data))
    _exercise(path)


def test_deeply_nested_dicts_around_a_tensor(tmp_path: Path) -> None:
    x: Any = {"w": _View(_Storage("0", 4), (4,), (1,))}
    for _ in range(600):
        x = {"k": x}
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # the pickler itself recurses
    try:
        data = _pickle(x)
    finally:
        sys.setrecursionlimit(limit)
    path = write_zip(tmp_path / "deep.pt", torch_zip_members(data, {"0": FOUR_FLOATS}))
    outcome, _ = _exercise(path)
    assert isinstance(outcome, ResourceLimitError) and outcome.code == "limit-depth"


@pytest.mark.parametrize("opcode", [b"(", b"]", b"}", b")"])
def test_twenty_thousand_unclosed_marks_or_containers(tmp_path: Path, opcode: bytes) -> None:
    path = write_zip(tmp_path / "marks.pt", torch_zip_members(b"\x80\x02" + opcode * 20_000 + b"."))
    outcome, report = _exercise(path)
    assert isinstance(outcome, TorchWeightsError) or outcome == {}


def test_storage_declaring_a_terabyte(tmp_path: Path) -> None:
    obj = {"w": _View(_Storage("0", 1 << 38), (1 << 38,), (1,))}
    path = write_zip(tmp_path / "huge.pt", torch_zip_members(_pickle(obj), {"0": FOUR_FLOATS}))
    outcome, report = _exercise(path)
    assert isinstance(outcome, TorchWeightsError) and outcome.code == "storage-size"
    assert report.verdict == "unreadable"


@pytest.mark.parametrize(
    "size,stride", [((1 << 31, 1 << 31), (1, 1)), ((1 << 62,), (0,)), ((4, 1 << 40), (1 << 40, 1))]
)
def test_view_far_beyond_its_storage(tmp_path: Path, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
    obj = {"w": _View(_Storage("0", 4), size, stride)}
    path = write_zip(tmp_path / "view.pt", torch_zip_members(_pickle(obj), {"0": FOUR_FLOATS}))
    outcome, _ = _exercise(path)
    assert isinstance(outcome, TorchWeightsError)


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x8d", b"\x96", b"B", b"X", b"\x8b"])
def test_length_fields_claiming_exabytes(tmp_path: Path, opcode: bytes) -> None:
    wide = opcode in (b"\x8e", b"\x8d", b"\x96")
    length = struct.pack("<Q", 1 << 62) if wide else struct.pack("<I", 0x7FFFFFF0)
    data = b"\x80\x04" + opcode + length + b"xyz."
    assert_bounded_pickle(tmp_path, data)


def test_frames_claiming_exabytes(tmp_path: Path) -> None:
    assert_bounded_pickle(tmp_path, b"\x80\x04" + (b"\x95" + struct.pack("<Q", 1 << 62)) * 1000 + b"N.")


def assert_bounded_pickle(tmp_path: Path, data: bytes) -> None:
    with contextlib.suppress(TorchWeightsError):
        unpickle(data)
    path = write_zip(tmp_path / "lengths.pt", torch_zip_members(data))
    _exercise(path)


def test_many_member_zip(tmp_path: Path) -> None:
    members = torch_zip_members(_pickle({"w": _View(_Storage("0", 4), (4,), (1,))}), {"0": FOUR_FLOATS})
    members += [(f"archive/extra/{i}", b"") for i in range(2000)]
    path = write_zip(tmp_path / "many.pt", members)
    outcome, report = _exercise(path)
    assert not isinstance(outcome, TorchWeightsError) and list(outcome) == ["w"]
    assert report.verdict == "clean"


def test_zip_claiming_millions_of_members(tmp_path: Path) -> None:
    data = bytearray(write_zip(tmp_path / "x.pt", torch_zip_members(b"\x80\x02}.")).read_bytes())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 0xFFFE, 0xFFFE)  # entries on this disk, in total
    path = tmp_path / "claims.pt"
    path.write_bytes(data)
    outcome, report = _exercise(path)
    assert isinstance(outcome, TorchWeightsError)
    assert report.verdict != "clean"


def _long4(nbytes: int) -> bytes:
    value = random.Random(nbytes).getrandbits(8 * nbytes) | 1
    raw = value.to_bytes(nbytes + 1, "little", signed=True)
    return b"\x8b" + struct.pack("<i", len(raw)) + raw


@pytest.mark.parametrize("cls", ["fractions\nFraction", "decimal\nDecimal"])
def test_value_classes_fed_huge_integers(cls: str) -> None:
    args = _long4(20_000) + (_long4(20_000) + b"\x86" if cls.startswith("fractions") else b"\x85")
    data = b"\x80\x02c" + cls.encode() + b"\n" + args + b"R."
    try:
        value = unpickle(data).value
    except TorchWeightsError:
        return  # refused: bounded
    assert isinstance(value, Stub), f"computed a {type(value).__name__} from {len(data)} bytes of operands"


def test_huge_integer_strings_are_refused_quickly() -> None:
    """Python itself caps int() of decimal text (4300 digits); LONG text opcodes go through it."""
    data = b"\x80\x02L" + b"7" * 1_000_000 + b"L\n."
    with pytest.raises(TorchWeightsError):
        unpickle(data)


def test_scan_returns_a_report_for_garbage(tmp_path: Path) -> None:
    rng = random.Random(0)
    for i, head in enumerate([b"\x80\x04", b"PK\x03\x04", b"(", b"c", b"\x93NUMPY", b""]):
        path = tmp_path / f"garbage{i}.bin"
        path.write_bytes(head + rng.randbytes(4096))
        report = scan(path)
        assert (report.verdict in ("unreadable", "dangerous") and not report.complete) or report.load_error
