"""Fuzzing the pickle machine through ``tw.open`` / ``tw.load`` / ``tw.scan`` on pickles written to disk.

Two kinds of input:

* random opcode streams: any opcode of any protocol, each with an argument of the right encoding (fixed-width
  integers biased to edge values and small memo indexes, newline-terminated decimals, quoted strings and
  ``module\\nname`` pairs, length-prefixed bytes and strings whose length may lie), names drawn from safe
  reconstructors, torch's classes, dangerous callables and a tripwire (``fuzz._common.trip``), usually between a
  ``PROTO`` and a ``STOP``;
* real pickles mutated: ``pickle.dumps`` of nested containers, NumPy arrays, ``argparse.Namespace``,
  ``OrderedDict``, dates, big integers and recursive lists in every protocol, and the ``data.pkl`` of
  ``torch.save`` of a state dict and of a whole model (rewritten into the zip with a valid CRC so the damage
  reaches the machine), damaged at the byte level or with a random opcode stream spliced in.

For every input, within the CPU and memory bounds of ``_samples.bounded``: ``tw.open`` and ``tw.load`` succeed or
raise a :class:`~torchweights.errors.TorchWeightsError`; ``tw.scan`` never raises; scan is never ``clean`` where
open or load refuses the file (an unsafe refusal is ``dangerous``); nothing a pickle names is ever called (the
tripwire's call list stays empty).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import pickle
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import torchweights as tw
from _samples import bounded, damaged, damaged_pickle, pkl_name, rezip
from torchweights.errors import TorchWeightsError, UnsafeCheckpointError

from . import _common
from ._common import coverage_settings, fuzz_settings

_NOISE = fuzz_settings(20, deadline_factor=3)
_FUZZ = fuzz_settings(40, deadline_factor=3)
_MUTATED = fuzz_settings(40, deadline_factor=3)

# --------------------------------------------------------------------------------------------------------------
# Random opcode streams
# --------------------------------------------------------------------------------------------------------------

_OPS = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
_CODES = sorted(_OPS)
_STOP = pickle.STOP[0]

#: ``module name`` pairs for GLOBAL / INST / STACK_GLOBAL: reconstructors the loader rebuilds, torch classes it
#: knows, callables it must refuse, an unknown class, and the tripwire (importable under pytest, never called).
_GLOBALS = [
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "getattr"),
    ("builtins", "eval"),
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "Popen"),
    ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "Size"),
    ("torch", "load"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("argparse", "Namespace"),
    ("datetime", "date"),
    ("my_project.models", "Net"),
    ("fuzz._common", "trip"),
    ("fuzz._common", "Trap"),
]
_TEXTS = [m for pair in _GLOBALS for m in pair] + ["", "storage", "cpu", "weight", "0", "\u00e9", "a.b"]
# Integer arguments: edge values, and small ones (memo indexes and lengths that hit what the stream made).
_EDGES = [0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1]


def _fixed(draw: st.DrawFn, width: int) -> bytes:
    top = (1 << (8 * width)) - 1
    value = draw(st.sampled_from([v for v in _EDGES if v <= top] + [top]) | st.integers(0, min(top, 8)))
    return value.to_bytes(width, "little")


def _line(draw: st.DrawFn, op: pickletools.OpcodeInfo) -> bytes:
    """The newline-terminated argument of a protocol-0 opcode."""
    name = op.name
    if name in ("GLOBAL", "INST"):
        module, qualname = draw(st.sampled_from(_GLOBALS))
        return f"{module}\n{qualname}\n".encode()
    if name in ("INT", "LONG", "GET", "PUT"):
        choices = ["0", "1", "01", "00", "-1", "3", "99999999999999999999", "1L", "", "x", "1e5"]
        return draw(st.sampled_from(choices)).encode() + b"\n"
    if name == "FLOAT":
        return draw(st.sampled_from(["0.5", "nan", "-inf", "1e400", "", "x"])).encode() + b"\n"
    if name == "STRING":
        return draw(st.sampled_from(["'abc'", '"x"', "'unterminated", "''", "'\\x80'", "abc"])).encode() + b"\n"
    text = draw(st.sampled_from(_TEXTS) | st.text(max_size=12))
    return text.encode("raw_unicode_escape").replace(b"\n", b"") + b"\n"


def _counted(draw: st.DrawFn, width: int, signed: bool) -> bytes:
    """A length-prefixed argument: usually a true length, sometimes one that lies (past the end, huge)."""
    body = draw(st.sampled_from([t.encode() for t in _TEXTS]) | st.binary(max_size=24))
    limit = 1 << (8 * width - (1 if signed else 0))
    body = body[: limit - 1]
    length = len(body)
    if draw(st.integers(0, 9)) == 0:  # a lying length
        length = min(draw(st.sampled_from([length + 1, length + 1000, limit - 1, 0])), limit - 1)
    fmt = {1: "<B", 4: "<i" if signed else "<I", 8: "<Q"}[width]
    return struct.pack(fmt, length) + body


@st.composite
def opcode_streams(draw: st.DrawFn, min_ops: int = 0, max_ops: int = 40) -> bytes:
    """A stream of random opcodes, each with an argument of its encoding (see the module docstring)."""
    out = bytearray()
    if draw(st.integers(0, 9)):  # files without PROTO are not taken for pickles; the machine starts there
        out += bytes([pickle.PROTO[0], draw(st.sampled_from([2, 2, 4, 5, 0, 1, 3, 6, 255]))])
    for _ in range(draw(st.integers(min_ops, max_ops))):
        code = draw(st.sampled_from(_CODES))
        op = _OPS[code]
        out.append(code)
        arg = op.arg
        if arg is None:
            continue
        n = arg.n
        if n >= 0:
            out += _fixed(draw, n)
        elif n == pickletools.UP_TO_NEWLINE:
            out += _line(draw, op)
        elif n == pickletools.TAKEN_FROM_ARGUMENT1:
            out += _counted(draw, 1, signed=False)
        elif n == pickletools.TAKEN_FROM_ARGUMENT4:
            out += _counted(draw, 4, signed=True)
        elif n == pickletools.TAKEN_FROM_ARGUMENT4U:
            out += _counted(draw, 4, signed=False)
        else:
            out += _counted(draw, 8, signed=False)
    if draw(st.integers(0, 4)):
        out.append(_STOP)
    return bytes(out)


def _global(module: str, name: str, stacked: bool) -> bytes:
    if stacked:  # STACK_GLOBAL of two strings
        return b"".join(b"\x8c" + bytes([len(t)]) + t for t in (module.encode(), name.encode())) + b"\x93"
    return b"c" + f"{module}\n{name}\n".encode()


def _string(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


_ATOMS = [
    b"N",
    b"\x88",
    b"\x89",
    b"K\x00",
    b"K\x07",
    b"M\xff\xff",
    b"J\xff\xff\xff\xff",
    b"\x8a\x09" + b"\x00" * 8 + b"\x01",
    b"G" + struct.pack(">d", 0.5),
    b"G" + struct.pack(">d", float("nan")),
    _string("a"),
    _string("weight"),
    b"\x8c\x03cpu",
    b"C\x03abc",
    b"B\x02\x00\x00\x00\x80\x02",
    b"\x8e\x01" + b"\x00" * 7 + b"x",
    b"\x96\x01" + b"\x00" * 7 + b"y",
    b"}",
    b"]",
    b")",
    b"\x8f",
    b"(\x91",
]
_RARE = [b"h\x00", b"h\x01", b"j\x05\x00\x00\x00", b"\x82\x01", b"\x83\xff\xff", b"\x84\x00\x00\x00\x80"]  # GET, EXT
_VIEWS = [
    ([b"K\x03", b"K\x04"], [b"K\x04", b"K\x01"]),
    ([b"K\x04", b"K\x03"], [b"K\x01", b"K\x04"]),
    ([b"K\x03"], [b"K\x01"]),
    ([], []),
    ([b"K\x00", b"K\x05"], [b"K\x05", b"K\x01"]),
]
_STORAGES = ["FloatStorage", "LongStorage", "HalfStorage", "ByteStorage", "BoolStorage", "DoubleStorage"]


@st.composite
def _storage_ref(draw: st.DrawFn) -> bytes:
    """``BINPERSID(('storage', torch.<X>Storage, key, 'cpu', count))``: keys of the sample zip's storages (0-8)
    and others, element counts from empty to huge."""
    if draw(st.booleans()):  # the sample's storage 0: 12 floats
        return (
            b"("
            + _string("storage")
            + _global("torch", "FloatStorage", False)
            + _string("0")
            + b"X\x03\x00\x00\x00cpuK\x0ctQ"
        )
    key = draw(st.sampled_from(["0", "1", "8", "99", "../0", ""]))
    cls = _global("torch", draw(st.sampled_from(_STORAGES)), stacked=False)
    count = draw(st.sampled_from([b"K\x00", b"K\x03", b"K\x0c", b"J\xff\xff\xff\x7f", b"\x8a\x08" + b"\xff" * 8]))
    return b"(" + _string("storage") + cls + _string(key) + _string("cpu") + count + b"tQ"


@st.composite
def _tuple_of(draw: st.DrawFn, items: list[bytes]) -> bytes:
    if len(items) <= 3 and draw(st.booleans()):
        return b"".join(items) + [b")", b"\x85", b"\x86", b"\x87"][len(items)]
    return b"(" + b"".join(items) + b"t"


@st.composite
def _value(draw: st.DrawFn, depth: int = 0, kind: str | None = None) -> bytes:
    """The opcodes of one value: atoms, containers, calls, objects, memo, persistent ids, tensors."""
    deep = ["tuple", "list", "dict", "call", "object", "memo", "persid", "tensor", "tensor"] if depth < 4 else []
    kind = kind or draw(st.sampled_from(["atom"] * 8 + ["rare"] + deep * 2))
    if kind == "state-dict":  # {name: tensor or anything}: what a checkpoint's pickle mostly is
        items = draw(
            st.lists(st.sampled_from(["tensor", "tensor", None]).flatmap(lambda k: _value(depth + 1, k)), max_size=3)
        )
        keys = [_string(f"k{i}") for i in range(len(items))]
        return b"}(" + b"".join(k + v for k, v in zip(keys, items)) + b"u"
    if kind == "atom":
        return draw(st.sampled_from(_ATOMS))
    children = st.lists(_value(depth + 1), max_size=4)
    if kind == "tuple":
        return draw(_tuple_of(draw(children)))
    if kind == "list":
        items = draw(children)
        return b"]" + (b"(" + b"".join(items) + b"e" if len(items) != 1 else items[0] + b"a")
    if kind == "dict":
        pairs = draw(st.lists(st.tuples(st.sampled_from(_ATOMS[:14]), _value(depth + 1)), max_size=3))
        body = b"".join(k + v for k, v in pairs)
        return b"}" + (b"(" + body + b"u" if len(pairs) != 1 else body + b"s")
    if kind in ("call", "object"):
        head = _global(*draw(st.sampled_from(_GLOBALS)), stacked=draw(st.booleans()))
        args = draw(_tuple_of(draw(children)))
        if kind == "call":
            return head + args + b"R"
        return head + args + b"\x81" + (draw(_value(depth + 1)) + b"b" if draw(st.booleans()) else b"")
    if kind == "memo":
        return draw(_value(depth + 1)) + draw(st.sampled_from([b"\x94", b"q\x00", b"q\x01", b"r\x00\x00\x00\x00"]))
    if kind == "persid":  # a torch zip storage reference, or anything else as an id
        return draw(_storage_ref()) if draw(st.booleans()) else draw(_value(depth + 1)) + b"Q"
    if kind == "tensor":  # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
        storage = draw(_storage_ref()) if draw(st.integers(0, 3)) else draw(_value(depth + 1))
        if draw(st.booleans()):  # a view that fits the sample's storages (12 or 3 elements)
            size, stride = draw(st.sampled_from(_VIEWS))
            size, stride = draw(_tuple_of(size)), draw(_tuple_of(stride))
        else:
            dims = draw(st.lists(st.sampled_from([b"K\x00", b"K\x01", b"K\x03", b"J\xff\xff\xff\xff"]), max_size=3))
            size = draw(_tuple_of(dims))
            stride = draw(_tuple_of(draw(st.permutations(dims))))
        offset = draw(st.sampled_from([b"K\x00", b"K\x00", b"K\x02", b"J\xff\xff\xff\x7f"]))
        hooks = _global("collections", "OrderedDict", stacked=False) + b")R"
        head = _global("torch._utils", "_rebuild_tensor_v2", stacked=draw(st.booleans()))
        return head + b"(" + storage + offset + size + stride + b"\x89" + hooks + b"tR"
    return draw(st.sampled_from(_RARE))  # memo lookups (valid or not), extension codes


@st.composite
def well_formed_pickles(draw: st.DrawFn) -> bytes:
    """A stack-consistent pickle (PROTO 2, 4 or 5, one value, STOP) built by :func:`_value`, sometimes damaged
    by a random opcode stream spliced in."""
    body = draw(_value(kind=draw(st.sampled_from([None, None, "state-dict"]))))
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(opcode_streams(max_ops=4).map(lambda s: s[2:] if s[:1] == b"\x80" else s)) + body[at:]
    return b"\x80" + bytes([draw(st.sampled_from([2, 4, 5]))]) + body + b"."


# --------------------------------------------------------------------------------------------------------------
# Real pickles
# --------------------------------------------------------------------------------------------------------------


def _plain_objects() -> dict[str, Any]:
    recursive: list[Any] = [1, 2]
    recursive.append(recursive)
    shared = {"k": [1.5, None]}
    return {
        "nested": {"a": [1, (2, 3.5), {"b": {"c": [None, True, b"\x00\xff", "t\u00e9xt"]}}], "s": {1, 2}},
        "numpy": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.int64(7), "d": np.dtype("<f2")},
        "namespace": argparse.Namespace(lr=0.1, layers=[4, 8], name="run", nested=argparse.Namespace(x=1)),
        "ordered": collections.OrderedDict(b=2, a=1, when=datetime.date(2024, 1, 2), big=2**70, neg=-(2**65)),
        "shared": {"x": shared, "y": shared, "frozen": frozenset({"a"}), "r": recursive},
    }


def _torch_pickles(folder: Path) -> dict[str, bytes]:
    """``torch.save`` outputs (zip archives) of a state dict, a training checkpoint and a whole model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    saved = {
        "state-dict": model.state_dict(),
        "training": {"model": model.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=0.1), "step": 2**40},
        "model": model,
    }
    out = {}
    for name, obj in saved.items():
        path = folder / f"{name}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(obj, path)
        out[name] = path.read_bytes()
    return out


class _Corpus(dict[str, bytes]):
    """Pickles by name; the repr leaves the bytes out (Hypothesis prints the fixtures of a failing example)."""

    def __repr__(self) -> str:
        return f"<corpus: {', '.join(self)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> _Corpus:
    """Real pickles by name: ``<object>-p<protocol>.pkl`` plain pickles and ``<name>.pt`` torch zips."""
    out = _Corpus(
        (f"{name}-p{protocol}.pkl", pickle.dumps(obj, protocol=protocol))
        for name, obj in _plain_objects().items()
        for protocol in (0, 2, 4, 5)
    )
    out.update({f"{name}.pt": data for name, data in _torch_pickles(tmp_path_factory.mktemp("torch")).items()})
    folder = tmp_path_factory.mktemp("corpus-check")
    for name, data in out.items():  # the undamaged corpus loads and scans clean: damage is what the tests add
        (folder / name).write_bytes(data)
        tw.load(tw.open(folder / name))
        assert tw.scan(folder / name).verdict == "clean", name
    return out


# --------------------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------------------


def _check(path: Path, label: str) -> None:
    size = path.stat().st_size
    ckpt, open_error = bounded(lambda: tw.open(path), size, f"tw.open ({label})")
    load_error = None
    if ckpt is not None:
        tensors, load_error = bounded(lambda: tw.load(ckpt), size, f"tw.load ({label})")
        if tensors:
            event(f"{label}: tensors loaded")
    report, _ = bounded(lambda: tw.scan(path), size, f"tw.scan ({label})", catch=False)
    assert report is not None and report.verdict in ("clean", "dangerous", "unreadable")
    assert not _common.CALLS, f"a pickle's global was called ({label}): {_common.CALLS}"
    error = open_error or load_error
    if error is not None:
        assert isinstance(error, TorchWeightsError)
        assert report.verdict != "clean", f"scan says clean, tw.{'open' if open_error else 'load'} refuses: {error}"
        if isinstance(error, UnsafeCheckpointError):
            assert report.verdict == "dangerous", f"tw refuses as unsafe, scan says {report.verdict}: {error}"
    event(f"{label}: {type(error).__name__} [{error.code}]" if error else f"{label}: loaded")
    event(f"scan {report.verdict}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm")


@_NOISE
@given(stream=opcode_streams())
def test_random_opcode_streams(workdir: Path, stream: bytes) -> None:
    path = workdir / "stream.pkl"
    path.write_bytes(stream)
    _check(path, "stream")


@_FUZZ
@given(stream=well_formed_pickles())
def test_well_formed_pickles(workdir: Path, stream: bytes) -> None:
    path = workdir / "value.pkl"
    path.write_bytes(stream)
    _check(path, "value")


@_FUZZ
@given(stream=well_formed_pickles())
def test_well_formed_pickles_as_a_torch_zip(corpus: _Corpus, workdir: Path, stream: bytes) -> None:
    """A generated pickle as the ``data.pkl`` of a torch zip (CRC valid) whose storages ``0``-``8`` exist:
    storage references and tensor rebuilds of every shape, stride and offset reach the storage checks."""
    archive = corpus["state-dict.pt"]
    path = workdir / "value.pt"
    path.write_bytes(rezip(archive, {pkl_name(archive): stream}))
    _check(path, "zip-value")


@_MUTATED
@given(data=st.data())
def test_mutated_real_pickles(corpus: _Corpus, workdir: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(corpus)), label="pickle")
    raw = corpus[name]
    if name.endswith(".pt"):  # mutate the data.pkl of the zip, CRC fixed
        member = pkl_name(raw)
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            pkl = zf.read(member)
    else:
        pkl = raw
    how = data.draw(st.sampled_from(["damage", "pickle-damage", "splice", "truncate-and-stream"]), label="how")
    if how == "damage":
        mutated = data.draw(damaged(pkl), label="damaged")
    elif how == "pickle-damage":
        mutated = data.draw(damaged_pickle(pkl), label="damaged")
    else:
        at = data.draw(st.integers(0, len(pkl)), label="at")
        stream = data.draw(opcode_streams(min_ops=1, max_ops=10) | well_formed_pickles(), label="stream")
        mutated = pkl[:at] + stream + (pkl[at:] if how == "splice" else b"")
    if name.endswith(".pt"):
        mutated = rezip(raw, {member: mutated})
    path = workdir / name
    path.write_bytes(mutated)
    _check(path, f"{name.split('-')[0].split('.')[0]}-{how}")


def test_the_pickles_reach_deep_into_the_machine(corpus: _Corpus, workdir: Path) -> None:
    """The generator of well-formed pickles is not noise the machine rejects at the first bytes: among a fixed
    set of them some load (tensors among them), some are refused as unsafe, some as corrupt."""
    outcomes: collections.Counter[str] = collections.Counter()

    archive = corpus["state-dict.pt"]

    @coverage_settings(100)
    @given(stream=well_formed_pickles())
    def run(stream: bytes) -> None:
        path = workdir / "probe.pt"
        path.write_bytes(rezip(archive, {pkl_name(archive): stream}))
        try:
            tensors = tw.load(tw.open(path))
            outcomes["loaded"] += 1
            outcomes["tensors"] += len(tensors)
        except TorchWeightsError as e:
            outcomes[type(e).__name__] += 1

    run()
    assert not _common.CALLS
    assert all(outcomes[k] for k in ("loaded", "tensors", "UnsafeCheckpointError", "CorruptCheckpointError")), outcomes


def test_tripwire_is_live(tmp_path: Path) -> None:
    """The tripwire records calls (so an empty list means something): plain ``pickle.loads`` of a stream naming it
    calls it."""
    stream = b"\x80\x02cfuzz._common\ntrip\nX\x01\x00\x00\x00x\x85R."
    pickle.loads(stream)
    assert _common.CALLS == [("trip", ("x",))]
    _common.CALLS.clear()
    path = tmp_path / "trip.pkl"
    path.write_bytes(stream)
    report = tw.scan(path)
    assert report.verdict == "dangerous" and not _common.CALLS
