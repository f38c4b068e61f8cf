"""Shared by the security suite (and ``tests/test_full_model_pickle.py``): payload builders, marker files, the three
checks every attack file makes (nothing ran, ``tw.load`` refused it, ``scan`` flagged it), zip surgery, and the
module-with-a-marker used by the benign files.

Markers: every payload would create a file named ``MARKER*`` in the test's ``tmp_path``; ``conftest.py`` checks
once more at the end of the session that none exists anywhere under pytest's base temporary folder (payloads such
as ``subprocess.Popen`` would create theirs a moment later, in a child process). Canaries create ``CANARY*``
files instead: they prove, with plain ``pickle.loads``, that a payload really does run code.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import importlib
import io
import json
import math
import os
import pickle
import pickletools
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from torchweights.cli import main as cli_main
from torchweights.errors import UnsafeCheckpointError
from torchweights.tools.scan.report import Finding, ScanReport
from torchweights.tools.scan.scanner import scan

# --------------------------------------------------------------------------------------------------- payloads


class Reduce:
    """Pickles as ``fn(*args)``: what every pickle exploit boils down to. ``fn`` may itself be a :class:`Reduce`
    (a callable computed by the pickle, such as ``getattr(obj, 'system')``)."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args

    def __call__(self, *args: Any) -> Any:  # pickle wants the callable of a reduce to be callable; never called
        raise AssertionError("a payload was called while pickling")


def touch(marker: Path) -> str:
    """A shell command that creates ``marker``."""
    return f"touch {marker}"


def opener(marker: Path) -> str:
    """Python source that creates ``marker``."""
    return f"open({str(marker)!r}, 'w').close()"


def qualname(fn: Any) -> str:
    """The name pickle writes for ``fn`` (``posix.system`` for ``os.system`` on Linux)."""
    return f"{fn.__module__}.{fn.__qualname__}"


def as_read(name: str, protocol: int) -> str:
    """The name the reader sees for global ``name`` pickled at ``protocol``: below 3, pickle writes Python 2 module
    names (``_pickle`` -> ``pickle``, ``builtins`` -> ``__builtin__``) and readers map them back as Python 2 would."""
    if protocol >= 3:
        return name
    module, _, attr = name.rpartition(".")
    written = _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module)
    return f"{_compat_pickle.IMPORT_MAPPING.get(written, written)}.{attr}"


def u(text: str) -> bytes:
    """A pickle string opcode (SHORT_BINUNICODE, or BINUNICODE when long)."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw


def markers(folder: Path) -> list[Path]:
    """Marker files a payload created under ``folder`` (there must never be any)."""
    return sorted(folder.rglob("MARKER*"))


def assert_no_markers(folder: Path) -> None:
    found = markers(folder)
    assert not found, f"a payload ran: {found}"


# ---------------------------------------------------------------------------------------------------- canaries


def _wait(value: Any) -> None:
    """Let a payload's child process finish (``subprocess.Popen`` returns before ``touch`` has run)."""
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]:
        if isinstance(item, subprocess.Popen):
            item.wait(timeout=30)


def wait_for(paths: Iterable[Path], timeout: float = 10.0) -> list[Path]:
    """The paths that exist, waiting up to ``timeout`` seconds for all of them."""
    paths = list(paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.exists() for p in paths):
        time.sleep(0.01)
    return [p for p in paths if p.exists()]


def canary_in_process(data: bytes) -> None:
    """``pickle.loads(data)`` here (for payloads whose effect is a file in a temporary folder)."""
    with contextlib.suppress(Exception):
        _wait(pickle.loads(data))


_CANARY_SCRIPT = """
import pickle, subprocess, sys
for data in {payloads!r}:
    try:
        value = pickle.loads(data)
        items = value.values() if isinstance(value, dict) else [value]
        for item in items:
            if isinstance(item, subprocess.Popen):
                item.wait(timeout=30)
    except Exception as exc:
        print("payload raised", type(exc).__name__, exc, file=sys.stderr)
"""


def canary_subprocess(payloads: Iterable[bytes], cwd: Path, env: dict[str, str] | None = None) -> None:
    """``pickle.loads`` every payload in a fresh interpreter (no torch imported), with ``cwd`` first on its path."""
    code = _CANARY_SCRIPT.format(payloads=list(payloads))
    full_env = {**os.environ, "PYTHONPATH": str(cwd), **(env or {})}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=cwd, env=full_env, timeout=120)


# ------------------------------------------------------------------------------------------- the three checks


def assert_refused(err: BaseException, *names: str) -> UnsafeCheckpointError:
    """``err`` is the refusal of a dangerous pickle naming every one of ``names``, after nothing was executed."""
    assert isinstance(err, UnsafeCheckpointError), f"{type(err).__name__}: {err}"
    assert err.code == "unsafe-global"
    assert "Nothing was executed" in str(err)
    for name in names:
        assert f"'{name}'" in str(err), str(err)
        assert name in err.names, err.names
    return err


def refusal(call: Any, *args: Any, **kwargs: Any) -> UnsafeCheckpointError:
    """Run ``call`` and return the UnsafeCheckpointError it must raise."""
    with pytest.raises(UnsafeCheckpointError) as info:
        call(*args, **kwargs)
    return info.value


def alarms(report: ScanReport) -> list[Finding]:
    return [f for f in report.findings if f.severity in ("dangerous", "suspicious")]


def flagged(
    report: ScanReport,
    code: str,
    *,
    name: str | None = None,
    member: str | None = None,
    member_contains: str | None = None,
) -> Finding:
    """The report's verdict is dangerous and it has a finding with this code (and name, member); returns it."""
    assert report.verdict == "dangerous", _describe(report)
    assert report.exit_code == 1
    found = [
        f
        for f in report.findings
        if f.code == code
        and (name is None or f.name == name)
        and (member is None or f.member == member)
        and (member_contains is None or (f.member is not None and member_contains in f.member))
    ]
    assert found, f"no {code} finding (name {name}, member {member or member_contains}): {_describe(report)}"
    finding = found[0]
    assert finding.severity in ("dangerous", "suspicious"), finding
    assert finding.file and finding.message
    return finding


def _describe(report: ScanReport) -> str:
    rows = [f"{f.severity} {f.code} member={f.member!r} @{f.offset} {f.name}" for f in report.findings]
    return f"verdict {report.verdict}; findings:\n  " + "\n  ".join(rows)


#: Opcodes a finding about a global may point at.
NAMING_OPS = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "EXT1", "EXT2", "EXT4"})
#: ... when the name was built by ``builtins.getattr`` (the call) or set by ``BUILD``.
CALL_OPS = frozenset({"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"})


def opcodes(data: bytes, start: int = 0) -> dict[int, str]:
    """Opcode name by byte offset for the pickle starting at ``start`` (as far as pickletools can decode it)."""
    found: dict[int, str] = {}
    with contextlib.suppress(Exception):
        for op, _arg, pos in pickletools.genops(io.BytesIO(data[start:])):
            found[start + (pos or 0)] = op.name
            if op.name == "STOP":
                break
    return found


def assert_offset(finding: Finding, data: bytes, ops: frozenset[str] = NAMING_OPS, start: int = 0) -> None:
    """The finding's offset is the position of one of ``ops`` in the pickle ``data`` (starting at ``start``)."""
    assert finding.offset is not None, finding
    at = opcodes(data, start)
    assert at.get(finding.offset) in ops, (finding.offset, at.get(finding.offset), sorted(at.items())[:40])


def pickle_end(data: bytes, start: int = 0) -> int:
    """Offset just past the STOP of the pickle starting at ``start``."""
    for op, _arg, pos in pickletools.genops(io.BytesIO(data[start:])):
        if op.name == "STOP":
            return start + (pos or 0) + 1
    raise AssertionError("no STOP")


def pickle_bounds(data: bytes, count: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the first ``count`` pickles laid back to back from byte 0."""
    bounds, position = [], 0
    for _ in range(count):
        end = pickle_end(data, position)
        bounds.append((position, end))
        position = end
    return bounds


def cli_scan(capsys: pytest.CaptureFixture[str], *paths: Path, json_output: bool = False) -> tuple[int, str]:
    """``torchweights scan PATH... [--json]``: its exit code and standard output."""
    capsys.readouterr()
    code = cli_main(["scan", *map(str, paths), *(["--json"] if json_output else [])])
    out = capsys.readouterr().out
    if json_output:
        json.loads(out)
    return code, out


def assert_cli_flags(capsys: pytest.CaptureFixture[str], path: Path, code: str) -> None:
    """The CLI exits 1 and its JSON report names the finding code."""
    exit_code, out = cli_scan(capsys, path, json_output=True)
    assert exit_code == 1, out
    (report,) = json.loads(out)["reports"]
    assert report["verdict"] == "dangerous"
    assert code in {f["code"] for f in report["findings"]}, out


# ------------------------------------------------------------------------------------------------ zip surgery


def write_zip(path: Path, members: Iterable[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip of ``members`` in order (duplicate names allowed)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, content in members:
                zf.writestr(name, content)
    return path


def torch_zip_members(
    pkl: bytes, storages: dict[str, bytes] | None = None, root: str = "archive"
) -> list[tuple[str, bytes]]:
    """The members of a minimal torch zip whose ``data.pkl`` is ``pkl``, with storages by key."""
    members = [(f"{root}/data.pkl", pkl), (f"{root}/byteorder", b"little")]
    members += [(f"{root}/data/{key}", content) for key, content in (storages or {}).items()]
    return [*members, (f"{root}/version", b"3\n")]


def read_members(path: Path) -> list[tuple[str, bytes]]:
    """Every member of a zip, in order."""
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


@dataclass(frozen=True)
class Entry:
    """Where one member's structures are."""

    name: str
    local: int  # local header
    data: int  # first data byte
    central: int  # central directory entry


def zip_entries(data: bytes) -> list[Entry]:
    """Every member's local header, data and central entry offsets, in directory order."""
    at = data.rindex(b"PK\x05\x06")
    count, _size, position = struct.unpack_from("<HLL", data, at + 10)
    entries = []
    for _ in range(count):
        assert data[position : position + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, position + 28)
        local = struct.unpack_from("<L", data, position + 42)[0]
        name = data[position + 46 : position + 46 + name_len].decode()
        local_name, local_extra = struct.unpack_from("<HH", data, local + 26)
        entries.append(Entry(name, local, local + 30 + local_name + local_extra, position))
        position += 46 + name_len + extra_len + comment_len
    return entries


def entry(data: bytes, name: str, index: int = 0) -> Entry:
    return [e for e in zip_entries(data) if e.name == name][index]


# ---------------------------------------------------------------------------------------- a module with a marker

MARKER_PRELUDE = """
import os

ARMED = {armed!r}
MARKER = {marker!r}


def _trip(what):
    if os.path.exists(ARMED):
        with open(MARKER, "a") as f:
            f.write(what + "\\n")


_trip("import")
"""


class MarkerModule:
    """A module written to a temporary folder, imported to save objects, then removed from ``sys.modules`` and
    ``sys.path`` and deleted. From then on it is armed: its ``_trip(what)`` appends ``what`` to :attr:`marker`, and
    importing it again (from a stale copy) trips ``"import"``. Its ``body`` calls ``_trip`` wherever running code
    would be a failure (``__setstate__``, ``__reduce__`` callables, hooks, ``__new__``)::

        with MarkerModule(folder, "twbenign_cfg", BODY) as mod:
            torch.save(mod.Config(), folder / "cfg.pt")
        ...                      # load it
        module.assert_untouched()
    """

    def __init__(self, folder: Path, name: str, body: str) -> None:
        self.folder = folder
        self.name = name
        self.body = body
        self.armed = folder / "ARMED"
        self.marker = folder / "MARKER"
        self.source = folder / f"{name}.py"

    def __enter__(self) -> ModuleType:
        self.armed.unlink(missing_ok=True)  # (entered again: disarmed while it exists)
        prelude = MARKER_PRELUDE.format(armed=str(self.armed), marker=str(self.marker))
        self.source.write_text(prelude + textwrap.dedent(self.body))
        sys.path.insert(0, str(self.folder))
        try:
            return importlib.import_module(self.name)
        except BaseException:
            self._remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self._remove()
        self.armed.touch()  # from now on, any code of the module that runs leaves a mark

    def _remove(self) -> None:
        if str(self.folder) in sys.path:
            sys.path.remove(str(self.folder))
        sys.modules.pop(self.name, None)
        self.source.unlink(missing_ok=True)
        shutil.rmtree(self.folder / "__pycache__", ignore_errors=True)
        importlib.invalidate_caches()

    def tripped(self) -> str:
        """What ran (one line per ``_trip``), or ``""``."""
        return self.marker.read_text() if self.marker.exists() else ""

    def assert_untouched(self) -> None:
        assert not self.marker.exists(), self.marker.read_text()
        assert self.name not in sys.modules
        assert not self.source.exists()


# ------------------------------------------------------------------------------------------------- benign files

#: ``torch.save`` keyword arguments of the formats every benign value is saved in.
FORMATS: dict[str, dict[str, Any]] = {
    "zip": {},
    "zip-protocol4": {"pickle_protocol": 4},
    "zip-protocol5": {"pickle_protocol": 5},
    "legacy": {"_use_new_zipfile_serialization": False},
}
STDLIB = frozenset(sys.stdlib_module_names)


def save_formats(folder: Path, checkpoint: Any, stem: str = "ckpt") -> dict[str, Path]:
    """``checkpoint`` saved with ``torch.save`` in each of :data:`FORMATS`."""
    import torch

    files = {}
    for fmt, kwargs in FORMATS.items():
        files[fmt] = folder / f"{stem}-{fmt}.pt"
        torch.save(checkpoint, files[fmt], **kwargs)
    return files


def reference_loads(files: dict[str, Path]) -> dict[str, Any]:
    """What ``torch.load(weights_only=False)`` reads from each file (call it while the classes still exist); None
    where torch cannot read its own file (legacy streams of dtypes without a typed storage class, such as float8)."""
    import torch

    loaded = {}
    for fmt, path in files.items():
        try:
            loaded[fmt] = torch.load(path, weights_only=False)
        except AttributeError as exc:
            assert fmt == "legacy" and "UntypedStorage" in str(exc), exc
            loaded[fmt] = None
    return loaded


@dataclass
class Benign:
    """A benign checkpoint saved in every format of :data:`FORMATS`, and its values pickled at every protocol.

    Attributes:
        values: the non-tensor values, as saved (top-level keys of the checkpoint).
        tensors: the tensors, as saved.
        files: format -> file.
        reference: format -> what ``torch.load(weights_only=False)`` returned (while the classes existed).
        raw: protocol -> ``pickle.dumps(values, protocol)``.
        module: the module with a marker that defined the classes, if any.
    """

    folder: Path
    values: dict[str, Any]
    tensors: dict[str, Any]
    files: dict[str, Path]
    reference: dict[str, Any]
    raw: dict[int, bytes]
    module: MarkerModule | None = None


def save_benign(
    folder: Path,
    make: Any,
    tensors: dict[str, Any] | None = None,
    *,
    module: tuple[str, str] | None = None,
) -> Benign:
    """Save ``{**tensors, **make(mod)}`` in every format; ``module=(name, body)`` defines a :class:`MarkerModule`
    first (``make`` receives it; the module is gone, and armed, when this returns)."""
    marker_module = MarkerModule(folder, *module) if module else None
    with marker_module if marker_module else contextlib.nullcontext() as mod:  # type: ignore[attr-defined]
        values = make(mod)
        files = save_formats(folder, {**(tensors or {}), **values})
        reference = reference_loads(files)
        raw = {p: pickle.dumps(values, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)}
    return Benign(folder, values, tensors or {}, files, reference, raw, marker_module)


def tensors_of(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Tensors in nested dicts / lists / tuples by dotted name, as torchweights names them."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found: dict[str, Any] = {}
    for key, value in items:
        found.update(tensors_of(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def assert_same_tensor(got: Any, expected: Any) -> None:
    """Bit for bit: dtype, shape, stride, storage offset and bytes."""
    import torch

    assert got.dtype == expected.dtype and got.shape == expected.shape, (got.dtype, got.shape, expected.shape)
    assert got.stride() == expected.stride() and got.storage_offset() == expected.storage_offset()
    flat = [t.contiguous().reshape(-1).view(torch.uint8) for t in (got, expected)]
    assert torch.equal(*flat)


def load_benign(saved: Benign, fmt: str) -> Any:
    """``tw.open`` then ``tw.load`` one file, importing nothing and running nothing; its tensors are those of
    ``torch.load(weights_only=False)``, bit for bit. Returns the checkpoint (its extras are the values)."""
    import torchweights.api as tw

    with no_new_imports():
        ckpt = tw.open(saved.files[fmt])
        tensors = tw.load(ckpt)
    reference = saved.reference[fmt]
    expected = tensors_of(saved.tensors if reference is None else reference)
    assert list(tensors) == list(expected)
    for name, value in expected.items():
        assert_same_tensor(tensors[name], value)
    if saved.module is not None:
        saved.module.assert_untouched()
    return ckpt


def assert_clean_scan(path: Path, unknown: Iterable[str] = ()) -> ScanReport:
    """Scan raises no alarm: verdict clean, nothing dangerous, suspicious or unreadable, and the only warnings are
    the unknown classes named in ``unknown`` (each must be reported: they become inert stubs when loading)."""
    report = scan(path)
    assert report.verdict == "clean", _describe(report)
    assert report.exit_code == 0 and report.complete and report.load_error is None
    assert report.format is not None
    warnings = [f for f in report.findings if f.severity == "warning"]
    assert all(f.code == "unknown-global" for f in warnings), _describe(report)
    assert {f.name for f in warnings} == set(unknown), _describe(report)
    assert all(report.globals[name] == "unknown" for name in unknown)
    assert not [v for v in report.globals.values() if v == "dangerous"]
    return report


@contextlib.contextmanager
def no_new_imports() -> Iterator[None]:
    """Nothing is imported for the file: at most torchweights' own lazy imports, the stdlib they use, and the
    CRC-32 backend (``zlib_ng``, imported by the first CRC-checked read of the process)."""
    before = set(sys.modules)
    yield
    ours = {"torchweights", "zlib_ng", *STDLIB}
    new = {m for m in set(sys.modules) - before if m.split(".")[0] not in ours}
    assert not new, new


# ------------------------------------------------------------------------------------------ random-weight files

#: Every dtype ``torch.save`` writes for plain tensors (quantized tensors need their quantizer: not random bits).
SAVABLE_DTYPES = (
    "float64 float32 float16 bfloat16 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu "
    "float4_e2m1fn_x2 int64 int32 int16 int8 uint64 uint32 uint16 uint8 bool complex128 complex64 complex32 "
    "bits8 bits16 bits1x8 bits2x4 bits4x2"
).split()

#: First bytes that look like the start of a pickle or a zip to a scanner that probes tensor bytes: PROTO 2 and
#: 4 (+FRAME), EXT1/EXT2/EXT4 (with and without PROTO), GLOBAL 'c', SHORT_BINUNICODE, MARK, EMPTY_LIST/DICT, INST,
#: a zip's local header.
PICKLE_LOOKING_HEADS = (
    b"\x80\x02",
    b"\x80\x02\x82\x00",
    b"\x80\x04\x95",
    b"\x82",
    b"\x83",
    b"\x84",
    b"\x80\x03\x83\x01\x00",
    b"c",
    b"cos\nsystem\n",
    b"\x8c",
    b"(",
    b"]",
    b"}",
    b"i",
    b"PK\x03\x04",
)


def random_checkpoint(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint of random weights as training code saves one, the same for the same seed, and the
    ``torch.save`` keyword arguments to save it with (every fourth one a legacy stream).

    Tensors of random dtypes from :data:`SAVABLE_DTYPES` and random shapes (0-d, empty, up to 64 elements) hold
    random bits; about half start with one of :data:`PICKLE_LOOKING_HEADS`, in float and integer tensors alike.
    Every fifth checkpoint is a model and an Adam optimizer after a few steps (``exp_avg``/``exp_avg_sq`` states,
    step counters), whose own values start with such bytes as often as chance makes them."""
    import random

    import torch

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    checkpoint: dict[str, Any] = {}
    if seed % 5 == 0:
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        optimizer = torch.optim.Adam(model.parameters(), lr=rng.choice([1e-3, 3e-4]))
        for _ in range(rng.randint(1, 3)):
            model(torch.randn(5, 4, generator=gen)).pow(2).sum().backward()
            optimizer.step()
        checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": rng.randint(0, 99)}
    state: dict[str, Any] = {}
    for index in range(rng.randint(1, 6)):
        dtype = getattr(torch, rng.choice(SAVABLE_DTYPES))
        shape = rng.choice([(), (0,), (rng.randint(1, 64),), (rng.randint(1, 8), rng.randint(1, 8))])
        nbytes = math.prod(shape) * dtype.itemsize
        raw = bytearray(torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen).numpy().tobytes())
        head = rng.choice(PICKLE_LOOKING_HEADS)
        if rng.random() < 0.5 and len(head) <= nbytes:
            raw[: len(head)] = head
        if dtype == torch.bool:
            raw = bytearray(b & 1 for b in raw)  # bools are 0 or 1
        flat = torch.frombuffer(raw, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        state[f"layer{index}.weight"] = flat.view(dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)
    checkpoint["state_dict"] = state
    kwargs = {"_use_new_zipfile_serialization": False} if seed % 4 == 3 else {}
    return checkpoint, kwargs


def random_byte_checkpoint(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A state dict of uint8/int8 weights as quantized models save them, the same for the same seed, and the
    ``torch.save`` keyword arguments (every fourth one a legacy stream): one to six tensors of 16 to 4,096 random
    bytes, each starting with ``0x80`` (the zero point of uint8 quantized weights) and ``0x02``..``0x05``, that is a
    pickle ``PROTO`` opcode, half of them followed by ``GLOBAL`` (``c``), so that every one of them is probed and
    parsed as a pickle and many name a "global"; plus a float tensor."""
    import random

    import torch

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for index in range(rng.randint(1, 6)):
        size = rng.choice([16, 256, 4096])
        raw = bytearray(torch.randint(0, 256, (size,), dtype=torch.uint8, generator=gen).numpy().tobytes())
        raw[:2] = bytes([0x80, rng.randint(2, 5)])
        if rng.random() < 0.5:
            raw[2] = ord("c")  # GLOBAL: its module and name are whatever random lines follow
        dtype = rng.choice([torch.uint8, torch.int8])
        state[f"q{index}.weight"] = torch.frombuffer(raw, dtype=torch.uint8).view(dtype)
    state["f.weight"] = torch.randn(100, generator=gen)
    kwargs = {"_use_new_zipfile_serialization": False} if seed % 4 == 3 else {}
    return state, kwargs
