"""Shared by the fuzz suites (``test_properties.py``, ``test_fuzz_formats.py``): valid sample checkpoints, byte
and pickle mutations, zip surgery, and the per-example bounds on CPU time and memory; and :func:`random_bits`,
random tensors of any dtype for the contract and convert suites.

Environment variables for longer runs: ``TW_FUZZ_EXAMPLES`` (examples per test), ``TW_FUZZ_DEADLINE_MS``
(Hypothesis' wall-clock deadline per example, default 2000; 0 turns it off on a busy machine) and
``TW_FUZZ_FLOOR`` (the fixed part of the memory bound, in bytes).
"""

from __future__ import annotations

import collections
import datetime
import io
import json
import math
import os
import pickle
import pickletools
import resource
import signal
import struct
import time
import tracemalloc
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

import torchweights as tw
from torchweights.errors import TorchWeightsError
from torchweights.limits import DEFAULT_LIMITS, Limits

T = TypeVar("T")

#: Examples per fuzz test when ``TW_FUZZ_EXAMPLES`` is set (each suite has its own default otherwise).
EXAMPLES_OVERRIDE = os.environ.get("TW_FUZZ_EXAMPLES")
EXAMPLES = int(EXAMPLES_OVERRIDE or "60")
# Hypothesis' deadline is wall-clock time, which a loaded machine can stall: long runs may raise it (or switch it
# off with 0); the CPU-time bound in bounded() stays.
DEADLINE_MS = int(os.environ.get("TW_FUZZ_DEADLINE_MS", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE_MS or None, derandomize=True, database=None)
CPU_SECONDS = 2.0  # per bounded call (test_properties: open and load together)

MIB = 1 << 20
# Memory bound per call: FLOOR + 20 x the input size (TW_FUZZ_FLOOR overrides the fixed part).
FLOOR = int(os.environ.get("TW_FUZZ_FLOOR", 16 * MIB))
HANG_SECONDS = 20  # hard stop for a hang; the 2 s per-example bound is Hypothesis' deadline
# The sharded reader reads index files with a buffer of limits.max_index_bytes (64 MiB by default) whatever the
# file's size (see test_sharded_index_read_is_bounded_by_file_size); the fuzz tests use a 1 MiB index limit so the
# memory bound still checks everything else.
SHARDED_LIMITS = Limits(max_index_bytes=MIB)


# --------------------------------------------------------------------------------------------------------------
# Bounded calls
# --------------------------------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm: the call did not return."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"the call did not return within {HANG_SECONDS} s")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def bounded(
    call: Callable[[], T], input_bytes: int, what: str, *, catch: bool = True, cpu_seconds: float = CPU_SECONDS
) -> tuple[T | None, TorchWeightsError | None]:
    """Run ``call()`` within bounds; returns ``(result, None)``, or ``(None, error)`` for a TorchWeightsError
    when ``catch`` (with ``catch=False`` it escapes like any other exception).

    Asserts at most ``cpu_seconds`` (``CPU_SECONDS``) of CPU time (and interrupts a hang after ``HANG_SECONDS`` of
    wall time).
    Asserts that at most ``FLOOR`` + 20 x ``input_bytes`` were allocated (tracemalloc peak; torch's own
    allocator is not traced, so the growth of the process's peak RSS is bounded too, at twice that), and that an
    error carries a code and a message.
    """
    budget = FLOOR + 20 * input_bytes
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    rss_before = _maxrss_bytes()
    cpu_before = time.process_time()
    tracemalloc.start()
    result: T | None = None
    error: TorchWeightsError | None = None
    try:
        try:
            result = call()
        except TorchWeightsError as exc:
            if not catch:
                raise
            error = exc
        peak = tracemalloc.get_traced_memory()[1]
        cpu = time.process_time() - cpu_before
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cpu <= cpu_seconds, f"{what} took {cpu:.2f} s of CPU for {input_bytes:,} bytes of input ({error!r:.300})"
    assert (
        peak <= budget
    ), f"{what} allocated {peak:,} bytes (traced) for {input_bytes:,} bytes of input ({error!r:.300})"
    rss_growth = _maxrss_bytes() - rss_before  # counts tracemalloc's own bookkeeping too, hence twice the budget
    assert rss_growth <= 2 * budget, f"{what}: peak RSS grew by {rss_growth:,} bytes for {input_bytes:,} bytes"
    if error is not None:
        assert isinstance(error.code, str) and error.code, repr(error)
        assert str(error).startswith(f"[{error.code}] ") and error.message
    return result, error


def exercise(
    path: Path,
    input_bytes: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    mmap: bool = False,
    cpu_seconds: float = CPU_SECONDS,
) -> TorchWeightsError | None:
    """``tw.load(tw.open(path))`` within the bounds of :func:`bounded` (open and load together); returns the
    TorchWeightsError raised, None on success; anything else escapes."""
    load = lambda: tw.load(tw.open(path, limits=limits), mmap=mmap)  # noqa: E731
    return bounded(load, input_bytes, "tw.open/tw.load", cpu_seconds=cpu_seconds)[1]


# --------------------------------------------------------------------------------------------------------------
# The valid files
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Sample:
    """One valid checkpoint: its files (relative name -> bytes) and what to open (a file name, or "." for all)."""

    name: str
    files: dict[str, bytes]
    entry: str

    def __repr__(self) -> str:  # Hypothesis prints the fixtures of a failing example: keep the bytes out
        return f"<sample {self.name}: {', '.join(self.files)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # what Hypothesis' pretty printer calls
        printer.text(repr(self))

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())

    @property
    def main(self) -> bytes:
        return self.files[self.entry]

    @property
    def limits(self) -> Limits:
        """The limits the fuzz tests open it with."""
        return SHARDED_LIMITS if self.entry == "." else DEFAULT_LIMITS

    def write(self, folder: Path, replace: dict[str, bytes] | None = None) -> Path:
        """Write every file (with ``replace`` applied) into ``folder``; returns the path to open."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in {**self.files, **(replace or {})}.items():
            (folder / name).write_bytes(data)
        return folder / self.entry


def _state() -> dict[str, Any]:
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "w": base,
        "view": base[1:, ::2],  # shares w's storage, offset and strides
        "half": torch.ones(3, dtype=torch.float16),
        "bf16": torch.zeros(2, dtype=torch.bfloat16),
        "ids": torch.arange(5),
        "mask": torch.tensor([True, False, True]),
        "nested": {"c": torch.randn(2, 2, dtype=torch.float64), "epoch": 7, "tags": ["a", "b"]},
        "step": 3,
    }


def build_samples(folder: Path) -> dict[str, Sample]:
    """One small valid file per format torch writes today (torch zip, legacy stream, pickled model, safetensors,
    plain pickle, both sharded sets), written under ``folder`` once to produce the bytes."""
    from safetensors import torch as safetensors_torch

    samples: dict[str, Sample] = {}

    def single(name: str, filename: str, save: Callable[[Path], object]) -> None:
        path = folder / filename
        save(path)
        samples[name] = Sample(name, {filename: path.read_bytes()}, filename)

    state = _state()
    single("zip", "zip.pt", lambda p: torch.save(state, p))
    single("zip-protocol4", "zip_p4.pt", lambda p: torch.save(state, p, pickle_protocol=4))
    single("legacy", "legacy.pt", lambda p: torch.save(state, p, _use_new_zipfile_serialization=False))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.BatchNorm1d(3))
    single("model", "model.pt", lambda p: torch.save(model, p))
    flat = {"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3, dtype=torch.bfloat16), "b": torch.arange(4)}
    single("safetensors", "model.safetensors", lambda p: safetensors_torch.save_file(flat, str(p), {"format": "pt"}))
    plain = {
        "meta": torch.empty(3, 4, device="meta"),  # pickles as data: the only tensors a plain pickle can carry
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "cfg": collections.OrderedDict(lr=0.1, when=datetime.date(2024, 1, 2), big=2**70),
        "tags": {"x", "y"},
    }
    single("pickle", "plain.pkl", lambda p: p.write_bytes(pickle.dumps(plain, protocol=2)))

    shards = {"a.weight": flat["a.weight"]}, {"a.bias": flat["a.bias"], "b": flat["b"]}
    for name, stem, ext, index in (
        ("sharded-safetensors", "model", "safetensors", "model.safetensors.index.json"),
        ("sharded-bin", "pytorch_model", "bin", "pytorch_model.bin.index.json"),
    ):
        sub = folder / name
        sub.mkdir()
        files: dict[str, bytes] = {}
        weight_map: dict[str, str] = {}
        for i, part in enumerate(shards, 1):
            shard = f"{stem}-{i:05d}-of-00002.{ext}"
            if ext == "safetensors":
                safetensors_torch.save_file(part, str(sub / shard))
            else:
                torch.save(part, sub / shard)
            files[shard] = (sub / shard).read_bytes()
            weight_map.update(dict.fromkeys(part, shard))
        files[index] = json.dumps({"metadata": {"total_size": 76}, "weight_map": weight_map}, indent=2).encode()
        samples[name] = Sample(name, files, ".")
    return samples


FIXTURES = Path(__file__).resolve().parent / "fixtures"


class _Script(torch.nn.Module):
    """A TorchScript sample: parameters, buffers of a submodule, a strided buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)
        self.register_buffer("steps", torch.arange(6).reshape(2, 3).t())  # a strided view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x)) + self.steps.sum()  # type: ignore[operator]


def build_extra_samples(folder: Path) -> dict[str, Sample]:
    """One small valid file per format torch.save does not write: both legacy tar layouts (the committed
    fixtures), TorchScript, torch.package (a state dict, a pickled module, a text resource), and the numpy files
    torchweights refuses but ``scan`` walks (``.npy`` plain and object arrays, ``.npz``)."""
    from torch.package import PackageExporter

    out: dict[str, Sample] = {}

    def single(name: str, filename: str, data: bytes) -> None:
        out[name] = Sample(name, {filename: data}, filename)

    single("legacy-tar", "tar.pt", (FIXTURES / "legacy_tar.pt").read_bytes())
    single("legacy-tar-early", "tar_early.pt", (FIXTURES / "legacy_tar_early.pt").read_bytes())
    torch.manual_seed(0)
    script = folder / "script.pt"
    torch.jit.script(_Script()).save(str(script))
    single("torchscript", "script.pt", script.read_bytes())
    package = folder / "package.pt"
    weights = torch.arange(6.0).reshape(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated
        with PackageExporter(str(package)) as exporter:
            exporter.extern(["torch.**"])
            exporter.save_pickle("weights", "sd.pkl", {"w": weights, "t": weights.t(), "b": torch.ones(2)})
            exporter.save_pickle("models", "net.pkl", torch.nn.Linear(2, 2))
            exporter.save_text("notes", "readme.txt", "hi")
    single("torch-package", "package.pt", package.read_bytes())
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype="<i8").reshape(2, 3))
    single("npy", "array.npy", buf.getvalue())
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a", {"k": 2.5}, None], dtype=object), allow_pickle=True)
    single("npy-object", "objects.npy", buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, x=np.arange(4, dtype="<f4"), y=np.array([1, 2], dtype=object))
    single("npz", "arrays.npz", buf.getvalue())
    return out


def check_samples(built: dict[str, Sample], folder: Path, *, readable: frozenset[str] | None = None) -> None:
    """Warm up (first calls import modules and initialise torch, allocating megabytes), then check that each
    undamaged sample in ``readable`` (all by default) loads within the bounds, or the fuzzing proves little."""
    for sample in built.values():
        try:
            tw.load(tw.open(sample.write(folder / "warm-up" / sample.name), limits=SHARDED_LIMITS))
        except TorchWeightsError:
            if readable is None or sample.name in readable:
                raise
    for sample in built.values():
        if readable is None or sample.name in readable:
            path = sample.write(folder / "check" / sample.name)
            assert exercise(path, sample.size, limits=sample.limits) is None, sample.name


_BUILT: dict[str, dict[str, Sample]] = {}


def base_samples(factory: Any) -> dict[str, Sample]:
    """:func:`build_samples`, checked by :func:`check_samples`, built once per session (``factory`` is pytest's
    ``tmp_path_factory``) and shared by every suite that asks."""
    if "base" not in _BUILT:
        built = build_samples(factory.mktemp("valid"))
        check_samples(built, factory.mktemp("valid-check"))
        _BUILT["base"] = built
    return _BUILT["base"]


# --------------------------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    """``data`` truncated, with 1-8 bytes flipped, a slice overwritten or a slice deleted, inside ``[lo, hi)``."""
    hi = len(data) if hi is None else hi
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "delete"]))
    if kind == "truncate":
        return data[: draw(st.integers(lo, hi))]
    out = bytearray(data)
    if kind == "flip":
        for pos, mask in draw(
            st.lists(st.tuples(st.integers(lo, hi - 1), st.integers(1, 255)), min_size=1, max_size=8)
        ):
            out[pos] ^= mask
    elif kind == "overwrite":
        start = draw(st.integers(lo, hi - 1))
        junk = draw(st.binary(min_size=1, max_size=min(64, hi - start)))
        out[start : start + len(junk)] = junk
    else:
        start = draw(st.integers(lo, hi - 1))
        del out[start : start + draw(st.integers(1, 64))]
    return bytes(out)


OPCODES = sorted({op.code.encode("latin-1")[0] for op in pickletools.opcodes})


@st.composite
def damaged_pickle(draw: st.DrawFn, data: bytes) -> bytes:
    """A damaged pickle stream: byte-level damage, or a random opcode (with argument bytes) spliced in."""
    if draw(st.booleans()):
        return draw(damaged(data))
    at = draw(st.integers(0, len(data) - 1))
    op = draw(st.sampled_from(OPCODES))
    return data[:at] + bytes([op]) + draw(st.binary(max_size=9)) + data[at:]


# --------------------------------------------------------------------------------------------------------------
# Zip surgery
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """Where one zip member's structures are."""

    local: int  # offset of the local header
    data: int  # offset of the first data byte
    size: int  # bytes in the file
    central: int  # offset of the central directory entry


def zip_members(data: bytes) -> dict[str, Member]:
    """Every member of a (valid) archive, by name."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        pos = zf.start_dir  # type: ignore[attr-defined]
    out: dict[str, Member] = {}
    for info in infos:
        assert data[pos : pos + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        local_name, local_extra = struct.unpack_from("<HH", data, info.header_offset + 26)
        start = info.header_offset + 30 + local_name + local_extra
        out[info.filename] = Member(info.header_offset, start, info.compress_size, pos)
        pos += 46 + name_len + extra_len + comment_len
    return out


def pkl_name(data: bytes) -> str:
    """The name of a torch zip's ``data.pkl`` member."""
    return next(n for n in zip_members(data) if n.endswith("/data.pkl"))


def patch_member(data: bytes, name: str, content: bytes) -> bytes:
    """Replace a stored member's bytes in place (same length) and fix its CRC-32 in both headers."""
    member = zip_members(data)[name]
    assert len(content) == member.size
    out = bytearray(data)
    out[member.data : member.data + member.size] = content
    crc = struct.pack("<I", zlib.crc32(content))
    out[member.local + 14 : member.local + 18] = crc
    out[member.central + 16 : member.central + 20] = crc
    return bytes(out)


def rezip(data: bytes, replace: dict[str, bytes | None], compression: int | None = zipfile.ZIP_STORED) -> bytes:
    """The archive rewritten member by member (order kept), with members replaced or (None) dropped, every member
    compressed with ``compression`` (None: each as it was)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = replace.get(info.filename, src.read(info))
            if content is not None:
                method = info.compress_type if compression is None else compression
                dst.writestr(info.filename, content, compress_type=method)
    return out.getvalue()


def set_central_field(data: bytes, name: str, offset: int, fmt: str, value: int) -> bytes:
    """Overwrite one field of a member's central directory entry (offset relative to the entry)."""
    member = zip_members(data)[name]
    out = bytearray(data)
    struct.pack_into(fmt, out, member.central + offset, value)
    return bytes(out)


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A tensor of random bit patterns of any dtype (bools as 0/1), the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)
