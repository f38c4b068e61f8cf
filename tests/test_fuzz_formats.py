"""Fuzz harness over every format and the scanner (issue 4): structured damage to valid files of every format.

For each format (torch zip in protocols 2 and 4, a pickled model, the legacy stream, both legacy tar layouts,
TorchScript, torch.package, safetensors, both sharded sets, a plain pickle, ``.npy`` plain and object arrays,
``.npz``) one small valid sample is damaged by a mutation aimed at its structures:

* any file: truncation, byte flips, overwritten or deleted slices, a huge integer written over 4 or 8 bytes;
* pickles (plain, the legacy stream's, zip and tar members, object arrays): random opcodes with random arguments,
  or hostile sequences (deep nesting, memo indexes near 2**32, recursive containers, lengths and frames of
  exabytes, dangerous globals, extension codes) spliced in;
* zips: one field of a central directory entry, a local header, the end record, the zip64 end record or its
  locator set to an edge value (sizes and offsets near 2**32, 2**64, the file size); a member's content damaged
  (pickles as above) with its CRC-32 fixed so the damage reaches the parser; a member duplicated (a second
  entry of the same name, or a copy of its central directory entry pointing at the same bytes), dropped, renamed
  (``..``, absolute, non-UTF-8 bytes), or all members deflated, optionally claiming a huge inflated size (a bomb);
* tars: one field of a member's 512-byte header (with or without a fixed checksum), a member's content damaged
  inside a well-formed tar, members duplicated, dropped, renamed or reordered;
* legacy streams and tars: a storage's element count set to an edge value;
* safetensors: the header length, a duplicate key, an entry's byte range overlapping another's, a non-UTF-8 name,
  huge shapes;
* sharded sets: shard names with ``..`` or absolute paths pointing at a real copy outside the folder, shards
  replaced by symbolic links (outside, dangling, to the index, to the folder) or by a FIFO;
* ``.npy``: the header length and the header dictionary (shape, ``descr`` turned into an object array).

Two more tests feed bytes that only start like a format (zip, pickle, ``.npy``, JSON) and polyglots (the tail of a
zip glued after another sample).

For every damaged file:

* ``tw.open`` and then ``tw.load`` (in place or ``mmap=True``) either succeed or raise a
  :class:`~torchweights.errors.TorchWeightsError` with a code and a message; mutations that must be refused (a
  shard outside its folder) are;
* :func:`torchweights.tools.scan.scanner.scan` never raises, and never says ``clean`` for a file ``tw.open`` refuses;
* :func:`torchweights.formats._zip.read_directory` never raises on any damaged file, whatever its format, and a
  file that starts like a zip and has directory problems is never opened by ``tw.open`` as that zip;

each call within the CPU-time and memory bounds of :func:`_samples.bounded`.

The default run is short and deterministic (``derandomize=True``, ``_DEFAULT_EXAMPLES`` examples per format and
test, a few seconds in all). ``TW_FUZZ_EXAMPLES`` sets the examples per format and test for longer runs (``make
fuzz`` uses 2000; ``TW_FUZZ_DEADLINE_MS=0`` turns the wall-clock deadline off on a busy machine). The coverage-
guided counterpart is ``fuzz/atheris_scan.py``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import torchweights as tw
from _samples import (
    DEADLINE_MS,
    EXAMPLES_OVERRIDE,
    FIXTURES,
    Sample,
    base_samples,
    bounded,
    build_extra_samples,
    check_samples,
    damaged,
    damaged_pickle,
    patch_member,
    rezip,
    zip_members,
)
from torchweights.errors import NotACheckpointError, TorchWeightsError, UnsupportedCheckpointError
from torchweights.formats._zip import ZipDirectory, read_directory
from torchweights.tools.scan.report import ScanReport
from torchweights.tools.scan.scanner import scan

warnings.filterwarnings("ignore", message=".*(TypedStorage|Duplicate name).*")

_DEFAULT_EXAMPLES = 8
_EXAMPLES = int(EXAMPLES_OVERRIDE or _DEFAULT_EXAMPLES)
# One example runs tw.open, tw.load, scan and read_directory, each bounded to 2 s of CPU by bounded(): the
# wall-clock deadline covers them together.
_FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=3 * DEADLINE_MS or None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _tar_generator() -> ModuleType:
    """``tests/fixtures/make_legacy_tar.py`` (shared with ``formats/test_legacy_tar.py`` when it is loaded)."""
    loaded = sys.modules.get("make_legacy_tar")
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("make_legacy_tar", FIXTURES / "make_legacy_tar.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_legacy_tar"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------
# The valid files: the base samples of _samples.py, plus the formats torch.save does not write
# --------------------------------------------------------------------------------------------------------------


#: What tw.open calls each valid sample; None: refused (not a checkpoint), scan still walks it.
_FORMATS: dict[str, str | None] = {
    "zip": "torch-zip",
    "zip-protocol4": "torch-zip",
    "legacy": "torch-legacy",
    "model": "torch-zip",
    "safetensors": "safetensors",
    "pickle": "pickle",
    "sharded-safetensors": "sharded-safetensors",
    "sharded-bin": "sharded-torch",
    "legacy-tar": "legacy-tar",
    "legacy-tar-early": "legacy-tar",
    "torchscript": "torchscript",
    "torch-package": "torch-package",
    "npy": "npy",
    "npy-object": "npy",
    "npz": "npz",
}
_NAMES = list(_FORMATS)
#: Samples holding a NumPy object array: tw.open lists it, tw.load refuses it (allow_pickle=False semantics).
_OBJECT_ARRAYS = frozenset({"npy-object", "npz"})


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    extra = build_extra_samples(tmp_path_factory.mktemp("valid-extra"))
    check_samples(
        extra,
        tmp_path_factory.mktemp("valid-extra-check"),
        readable=frozenset(n for n in extra if _FORMATS[n] and n not in _OBJECT_ARRAYS),
    )
    built = {**base_samples(tmp_path_factory), **extra}
    for sample in built.values():  # warm up scan and the directory parser too (first calls import modules)
        path = sample.write(tmp_path_factory.mktemp("warm-up") / sample.name)
        scan(path, limits=sample.limits)
        for data in sample.files.values():
            read_directory(io.BytesIO(data), "warm-up", len(data))
    return built


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed")


# --------------------------------------------------------------------------------------------------------------
# A damaged case and the checks every one goes through
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One mutation: files replaced, and files turned into symbolic links (to a path relative to the sample's
    folder), FIFOs, or written outside the folder (``outside``: name -> bytes, in its parent)."""

    label: str
    replace: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    fifos: tuple[str, ...] = ()
    outside: dict[str, bytes] = field(default_factory=dict)
    must_refuse: bool = False


def _write(sample: Sample, workdir: Path, case: Case) -> tuple[Path, int]:
    """Lay the case out in a fresh folder; returns the path to open and the input size."""
    base = workdir / sample.name
    if base.exists():
        shutil.rmtree(base)  # links from the previous example must not be written through
    folder = base / "set"
    path = sample.write(folder, case.replace)
    for name, data in case.outside.items():
        (base / name).write_bytes(data)
    for name, target in case.links.items():
        (folder / name).unlink()
        os.symlink(target, folder / name)
    for name in case.fifos:
        (folder / name).unlink()
        os.mkfifo(folder / name)
    size = sum(len(b) for b in {**sample.files, **case.replace}.values()) + sum(map(len, case.outside.values()))
    return path, size


def _check(sample: Sample, workdir: Path, case: Case, mmap: bool) -> None:
    path, size = _write(sample, workdir, case)
    limits = sample.limits
    ckpt, open_error = bounded(lambda: tw.open(path, limits=limits), size, f"tw.open ({case.label})")
    load_error = None
    if ckpt is not None:
        _, load_error = bounded(lambda: tw.load(ckpt, mmap=mmap), size, f"tw.load ({case.label})")
    report, _ = bounded(lambda: scan(path, limits=limits), size, f"scan ({case.label})", catch=False)
    assert isinstance(report, ScanReport) and report.verdict in ("clean", "dangerous", "unreadable")
    if open_error is not None:
        assert report.verdict != "clean", f"scan says clean, tw.open refuses ({case.label}): {open_error}"
    elif case.must_refuse:
        pytest.fail(f"tw.open read {sample.name} after {case.label}; it must refuse")
    main = case.replace.get(sample.entry, b"") if sample.entry != "." else b""
    if ckpt is not None and main[:4] == b"PK\x03\x04":  # the readers of zips refuse any directory problem
        directory = read_directory(io.BytesIO(main), "fuzzed", len(main))
        assert not directory.problems, f"tw.open read a zip with problems ({case.label}): {directory.problems}"
    for name, data in case.replace.items():
        directory = _directory(data, name, case.label)
        assert all(p.code and p.message for p in directory.problems)
    if report.verdict == "clean" and load_error is not None:  # allowed (scan reads no tensor bytes); counted
        event(f"scan clean, tw.load refuses: [{load_error.code}]")
    for finding in report.findings:  # scan's net for builtin errors (fail closed): allowed, counted
        if finding.code == "scan-failed":
            event(f"scan-failed: {finding.message[:60]}")
    error = open_error or load_error
    event(f"{case.label}: {type(error).__name__} [{error.code}]" if error else f"{case.label}: loaded")
    event(f"scan {report.verdict}")


def _directory(data: bytes, name: str, label: str) -> ZipDirectory:
    """``read_directory`` of ``data``, bounded; it must never raise."""
    directory, _ = bounded(
        lambda: read_directory(io.BytesIO(data), name, len(data)), len(data), f"read_directory ({label})", catch=False
    )
    assert isinstance(directory, ZipDirectory)
    return directory


# --------------------------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------------------------


def _edges(width: int, file_size: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * width)) - 1
    specials = [0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE, 1 << 31, top, top - 1, top >> 1]
    specials += [file_size - 1, file_size, file_size + 1, file_size * 1000]
    return st.sampled_from([v for v in specials if 0 <= v <= top]) | st.integers(0, top)


_FMT = {2: "<H", 4: "<I", 8: "<Q"}
# (offset, width) of every field of a central directory entry, a local header, the end record, the zip64 end
# record and the zip64 locator.
_CENTRAL_FIELDS = [(4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2)]
_CENTRAL_FIELDS += [(32, 2), (34, 2), (36, 2), (38, 4), (42, 4)]
_LOCAL_FIELDS = [(4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)]
_END_FIELDS = {
    b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
    b"PK\x06\x06": [(4, 8), (12, 2), (14, 2), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 8)],
    b"PK\x06\x07": [(4, 4), (8, 8), (16, 4)],
}


def _put(data: bytes, at: int, width: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(_FMT[width], out, at, value)
    return bytes(out)


def _zip_field(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    members = zip_members(data)
    where = draw(st.sampled_from(["central", "local", *(s.decode("latin-1") for s in _END_FIELDS)]))
    if where in ("central", "local"):
        member = members[draw(st.sampled_from(sorted(members)))]
        base = member.central if where == "central" else member.local
        at, width = draw(st.sampled_from(_CENTRAL_FIELDS if where == "central" else _LOCAL_FIELDS))
    else:
        signature = where.encode("latin-1")
        base = data.rfind(signature)
        if base < 0:
            return "zip-end-field (absent)", data
        at, width = draw(st.sampled_from(_END_FIELDS[signature]))
        where = {b"PK\x05\x06": "end", b"PK\x06\x06": "zip64-end", b"PK\x06\x07": "zip64-locator"}[signature]
    return f"zip-{where}-field", _put(data, base + at, width, draw(_edges(width, len(data))))


def _zip_contents(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _zip_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as zf:
        warnings.simplefilter("ignore")
        for name, content, method in entries:
            zf.writestr(name, content, compress_type=method)
    return out.getvalue()


def _is_pickle(content: bytes) -> bool:
    return len(content) >= 2 and content[0] == 0x80 and 2 <= content[1] <= 5


_HOSTILE_NAMES = ["../escape.pkl", "/etc/passwd", "a\\b.pkl", "nul\x00.pkl", "x" * 300]


def _zip_mutation(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    op = draw(
        st.sampled_from(["field", "member", "duplicate", "duplicate-central", "drop", "rename", "raw-name", "deflate"])
    )
    if op == "field":
        return _zip_field(draw, data)
    entries = _zip_contents(data)
    names = [info.filename for info, _ in entries]
    pick = draw(st.integers(0, len(entries) - 1))
    info, content = entries[pick]
    if op == "member":
        if not content:
            return "zip-member (empty)", data
        new = draw(hostile_pickle(content) if _is_pickle(content) else damaged(content))
        if len(new) == len(content) and info.compress_type == zipfile.ZIP_STORED:
            # in place, CRC fixed: the damage reaches the parser
            return "zip-member-in-place", patch_member(data, info.filename, new)
        return "zip-member-rezipped", rezip(data, {info.filename: new}, compression=None)
    rebuilt = [(i.filename, c, i.compress_type) for i, c in entries]
    if op == "duplicate":
        other = draw(st.sampled_from([content, b"", *(c for _, c in entries if _is_pickle(c))]))
        at = draw(st.integers(0, len(rebuilt)))
        rebuilt.insert(at, (info.filename, other, zipfile.ZIP_STORED))
        return "zip-duplicate-member", _zip_of(rebuilt)
    if op == "duplicate-central":
        return "zip-duplicate-central", _duplicate_central(data, names[pick])
    if op == "drop":
        del rebuilt[pick]
        return "zip-drop-member", _zip_of(rebuilt)
    if op == "rename":
        rebuilt[pick] = (draw(st.sampled_from([*_HOSTILE_NAMES, *names])), content, info.compress_type)
        return "zip-rename-member", _zip_of(rebuilt)
    if op == "raw-name":  # a name of arbitrary bytes (non-UTF-8 under the UTF-8 flag), in one header or both
        member = zip_members(data)[names[pick]]
        length = struct.unpack_from("<H", data, member.central + 28)[0]
        junk = draw(st.binary(min_size=length, max_size=length))
        out = bytearray(data)
        struct.pack_into("<H", out, member.central + 8, struct.unpack_from("<H", data, member.central + 8)[0] | 0x800)
        for base, header in ((member.central, 46), (member.local, 30)):
            if draw(st.booleans()):
                out[base + header : base + header + length] = junk
        return "zip-raw-name", bytes(out)
    # deflate every member, and maybe claim a huge inflated size for one (a decompression bomb)
    deflated = _zip_of([(n, c, zipfile.ZIP_DEFLATED) for n, c, _ in rebuilt])
    if draw(st.booleans()):
        member = zip_members(deflated)[names[pick]]
        deflated = _put(deflated, member.central + 24, 4, draw(_edges(4, len(deflated))))
        return "zip-deflate-bomb", deflated
    return "zip-deflate", deflated


def _duplicate_central(data: bytes, name: str) -> bytes:
    """A copy of ``name``'s central directory entry right after it (both point at the same bytes), with the end
    records' counts and sizes updated."""
    members = zip_members(data)
    entry_at = members[name].central
    lens = struct.unpack_from("<HHH", data, entry_at + 28)
    entry = data[entry_at : entry_at + 46 + sum(lens)]
    out = bytearray(data[: entry_at + len(entry)] + entry + data[entry_at + len(entry) :])
    end = out.rfind(b"PK\x05\x06")
    count, size = struct.unpack_from("<HI", out, end + 10)[0], struct.unpack_from("<I", out, end + 12)[0]
    if count != 0xFFFF:
        struct.pack_into("<HH", out, end + 8, count + 1, count + 1)
    if size != 0xFFFFFFFF:
        struct.pack_into("<I", out, end + 12, size + len(entry))
    record = out.rfind(b"PK\x06\x06", 0, end)
    if record >= 0:
        records, cd_size = struct.unpack_from("<QQ", out, record + 32)
        struct.pack_into("<QQQ", out, record + 24, records + 1, records + 1, cd_size + len(entry))
        locator = out.rfind(b"PK\x06\x07", 0, end)
        if locator >= 0:
            struct.pack_into("<Q", out, locator + 8, record)
    return bytes(out)


# -- tar


_TAR_FIELDS = [(0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8), (156, 1), (157, 100)]
_TAR_FIELDS += [(257, 6), (263, 2), (345, 155)]


def _tar_value(draw: st.DrawFn, width: int) -> bytes:
    kind = draw(st.sampled_from(["octal", "base256", "junk", "text"]))
    if kind == "octal":
        value = draw(st.sampled_from([0, 1, 511, 512, 513, 8**11 - 1, 10**6]) | st.integers(0, 8 ** (width - 1) - 1))
        text = f"{value:0{width - 1}o}".encode()[-(width - 1) :] + b"\0"
    elif kind == "base256":
        value = draw(st.sampled_from([2**63 - 1, 2**40, 2**64 - 1]) | st.integers(0, 2 ** (8 * (width - 1)) - 1))
        text = b"\x80" + (value % (1 << (8 * (width - 1)))).to_bytes(width - 1, "big")
    elif kind == "junk":
        text = draw(st.binary(min_size=width, max_size=width))
    else:
        text = draw(st.sampled_from([b"../pickle", b"/abs", b"pickle", b"storages", b"tensors", b"x" * width, b"2"]))
    return text[:width].ljust(width, b"\0")


def _tar_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()


def _tar_mutation(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    gen = _tar_generator()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        infos = tar.getmembers()
        contents = [(m.name, tar.extractfile(m).read()) for m in infos]  # type: ignore[union-attr]
    op = draw(st.sampled_from(["header", "member", "duplicate", "drop", "rename", "reorder"]))
    pick = draw(st.integers(0, len(contents) - 1))
    if op == "header":
        at = infos[pick].offset
        start, width = draw(st.sampled_from(_TAR_FIELDS))
        out = bytearray(data)
        out[at + start : at + start + width] = _tar_value(draw, width)
        if draw(st.booleans()):
            header = out[at : at + 512]
            _tar_checksum(header)
            out[at : at + 512] = header
        return "tar-header-field", bytes(out)
    name, content = contents[pick]
    if op == "member":
        if not content:
            return "tar-member (empty)", data
        new = draw(hostile_pickle(content) if name in ("sys_info", "pickle") else damaged(content))
        contents[pick] = (name, new)
    elif op == "duplicate":
        contents.insert(draw(st.integers(0, len(contents))), (name, draw(st.sampled_from([content, b""]))))
    elif op == "drop":
        del contents[pick]
    elif op == "rename":
        contents[pick] = (
            draw(st.sampled_from(["../pickle", "/pickle", "./pickle", "pickle/", "tensors", ""])),
            content,
        )
    else:
        contents = draw(st.permutations(contents))
    return f"tar-{op}", gen.tar_bytes(contents)


# -- storage element counts of legacy streams and tars, found through the reader itself


_LAYOUTS: dict[str, list[int]] = {}


def _storage_headers(sample: Sample, workdir: Path) -> list[int]:
    """Offsets of the 8-byte element counts before each storage's bytes (the first: where the pickles end)."""
    if sample.name not in _LAYOUTS:
        ckpt = tw.open(sample.write(workdir / f"{sample.name}-layout"))
        refs = {r.storage.offset - 8 for r in ckpt.records.values() if r.storage is not None and r.storage.nbytes}
        _LAYOUTS[sample.name] = sorted(refs)
    return _LAYOUTS[sample.name]


def _storage_count(draw: st.DrawFn, sample: Sample, workdir: Path) -> tuple[str, bytes]:
    at = draw(st.sampled_from(_storage_headers(sample, workdir)))
    count = draw(st.sampled_from([2**60, 2**62, 2**63 - 1, -1, -(2**63), 0, 1]) | st.integers(-(2**63), 2**63 - 1))
    return "storage-count", sample.main[:at] + struct.pack("<q", count) + sample.main[at + 8 :]


# -- safetensors


def _safetensors_mutation(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    n = struct.unpack_from("<Q", data)[0]
    header: dict[str, Any] = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    tensors = sorted(k for k in header if k != "__metadata__")
    name = draw(st.sampled_from(tensors))
    op = draw(st.sampled_from(["length", "duplicate", "overlap", "non-utf8", "huge-shape", "offsets"]))
    if op == "length":
        length = draw(_edges(8, len(data)) | st.integers(max(0, n - 16), n + 16))
        return "safetensors-length", struct.pack("<Q", length) + data[8:]
    items = list(header.items())
    if op == "duplicate":
        copy = dict(header[name])
        if draw(st.booleans()):
            copy["data_offsets"] = header[draw(st.sampled_from(tensors))]["data_offsets"]
        items.insert(draw(st.integers(0, len(items))), (name, copy))
    elif op == "overlap":
        begin, end = header[name]["data_offsets"]
        shift = draw(st.integers(-(end - begin), end - begin))
        other = header[draw(st.sampled_from(tensors))]["data_offsets"]
        header[name]["data_offsets"] = draw(st.sampled_from([other, [begin + shift, end + shift], [0, end - begin]]))
        items = list(header.items())
    elif op == "huge-shape":
        header[name]["shape"] = draw(st.lists(st.sampled_from([2**31, 2**32, 2**62, 2**64, 0, -1]), max_size=3))
        items = list(header.items())
    elif op == "offsets":
        header[name]["data_offsets"] = [draw(_edges(8, len(body))), draw(_edges(8, len(body)))]
        items = list(header.items())
    text = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items) + "}").encode()
    if op == "non-utf8":
        quoted = json.dumps(name).encode()
        text = text.replace(
            quoted, b'"' + draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"a\x80"])) + b'"', 1
        )
    if draw(st.booleans()):
        text += b" " * ((8 - len(text) % 8) % 8)  # the official writer pads with spaces
    return f"safetensors-{op}", struct.pack("<Q", len(text)) + text + body


# -- sharded sets


def _sharded_mutation(draw: st.DrawFn, sample: Sample) -> Case:
    index_name = next(n for n in sample.files if n.endswith(".index.json"))
    shards = sorted(n for n in sample.files if n != index_name)
    shard = draw(st.sampled_from(shards))
    op = draw(
        st.sampled_from(["dotdot", "absolute", "link-outside", "link-dangling", "link-index", "link-dir", "fifo"])
    )
    if op in ("dotdot", "absolute"):
        index = json.loads(sample.files[index_name])
        outside = f"outside-{shard}"
        # the index names a real, valid copy of the shard outside the folder: it must still be refused
        target = f"../{outside}" if op == "dotdot" else "/" + outside
        if op == "absolute":
            return Case(
                f"shard-{op}", {index_name: _renamed(index, shard, "/nonexistent/" + outside)}, must_refuse=True
            )
        return Case(
            f"shard-{op}",
            {index_name: _renamed(index, shard, target)},
            outside={outside: sample.files[shard]},
            must_refuse=True,
        )
    if op == "link-outside":
        return Case(
            "shard-link-outside",
            links={shard: f"../outside-{shard}"},
            outside={f"outside-{shard}": sample.files[shard]},
            must_refuse=True,
        )
    if op == "link-dangling":
        return Case("shard-link-dangling", links={shard: "missing-shard"}, must_refuse=True)
    if op == "link-index":
        return Case("shard-link-index", links={shard: index_name}, must_refuse=True)
    if op == "link-dir":
        return Case("shard-link-dir", links={shard: "."}, must_refuse=True)
    victim = draw(st.sampled_from([shard, index_name]))
    return Case("fifo", fifos=(victim,), must_refuse=True)


def _renamed(index: dict[str, Any], shard: str, new: str) -> bytes:
    weight_map = {k: (new if v == shard else v) for k, v in index["weight_map"].items()}
    return json.dumps({**index, "weight_map": weight_map}).encode()


# -- .npy


def _npy_mutation(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    header_len = struct.unpack_from("<H", data, 8)[0]
    header = data[10 : 10 + header_len].decode("latin-1")
    body = data[10 + header_len :]
    op = draw(st.sampled_from(["length", "shape", "descr"]))
    if op == "length":
        return "npy-length", data[:8] + struct.pack("<H", draw(_edges(2, len(data)))) + data[10:]
    if op == "shape":
        shape = draw(
            st.sampled_from(["(2**62,)", "(4294967296, 4294967296)", "(-1,)", "()", "(3,", "(" + "1," * 64 + ")"])
        )
        new = header.split("'shape':")[0] + f"'shape': {shape}, }}"
    else:
        descr = draw(st.sampled_from(["|O", "<f8", "|V0", "<U999999999", "junk", "|b1"]))
        new = "{'descr': '" + descr + "'," + header.split(",", 1)[1]
    new = new.ljust(header_len - 1) + "\n"
    return f"npy-{op}", data[:8] + struct.pack("<H", len(new)) + new.encode("latin-1") + body


# -- pickles


_HOSTILE_OPS = [
    b"]" * 3000,  # deep nesting
    b"(" * 3000,  # marks without end
    b"r\xff\xff\xff\xff",  # LONG_BINPUT at index 2**32 - 1
    b"j\xff\xff\xff\x7f",  # LONG_BINGET of a memo index never set
    b"\x94" * 2000,  # MEMOIZE, many times
    b"]r\xfe\xff\xff\x7fj\xfe\xff\xff\x7fa",  # a list appended to itself: a recursive structure
    b"}r\xfd\xff\xff\x7fK\x01j\xfd\xff\xff\x7fs",  # a dict holding itself
    b"\x95" + (2**62).to_bytes(8, "little"),  # FRAME claiming 4 EiB
    b"\x8e" + (2**62).to_bytes(8, "little"),  # BINBYTES8 of 4 EiB
    b"B\xff\xff\xff\x7f",  # BINBYTES of 2 GiB
    b"\x8a\xff" + b"\xff" * 255,  # LONG1 of 255 bytes
    b"\x8b\xff\xff\xff\x7f",  # LONG4 of 2 GiB
    b"(K\x01K\x02\x85\x85\x85t" * 200,  # tuples of tuples
    b"c__builtin__\neval\n",  # a dangerous global
    b"\x82\xff",  # EXT1: a copyreg extension code
    b"Q",  # BINPERSID
]


@st.composite
def hostile_pickle(draw: st.DrawFn, data: bytes) -> bytes:
    """:func:`_samples.damaged_pickle`, or a hostile opcode sequence (nesting, memo indexes near 2**32, recursive
    containers, huge lengths, dangerous globals) spliced in at a random point."""
    if draw(st.integers(0, 2)):
        return draw(damaged_pickle(data))
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.sampled_from(_HOSTILE_OPS)) + data[at:]


# -- one case per example


def _huge_int(draw: st.DrawFn, data: bytes) -> bytes:
    width = draw(st.sampled_from([4, 8]))
    if len(data) < width:
        return data
    at = draw(st.integers(0, len(data) - width))
    return _put(data, at, width, draw(_edges(width, len(data))))


@st.composite
def cases(draw: st.DrawFn, sample: Sample, workdir: Path) -> Case:
    """A structured mutation suited to ``sample``'s format, or generic damage to one of its files."""
    if sample.entry == "." and draw(st.booleans()):
        return _sharded_mutation(draw, sample)
    name = draw(st.sampled_from(sorted(sample.files)))
    data = sample.files[name]
    if draw(st.integers(0, 3)) == 0:  # generic damage, a quarter of the time
        if draw(st.booleans()):
            return Case("bytes", {name: draw(damaged(data))})
        return Case("huge-int", {name: _huge_int(draw, data)})
    if sample.name in ("pickle", "npy-object"):
        start = 0 if sample.name == "pickle" else 10 + struct.unpack_from("<H", data, 8)[0]
        if sample.name == "npy-object" and draw(st.booleans()):
            label, mutated = _npy_mutation(draw, data)
            return Case(label, {name: mutated})
        return Case("pickle-splice", {name: data[:start] + draw(hostile_pickle(data[start:]))})
    if sample.name in ("legacy", "legacy-tar", "legacy-tar-early") and draw(st.booleans()):
        label, mutated = _storage_count(draw, sample, workdir)
        return Case(label, {name: mutated})
    if sample.name == "legacy":
        end = _storage_headers(sample, workdir)[0]
        return Case("legacy-pickles", {name: draw(hostile_pickle(data[:end])) + data[end:]})
    if data[:4] == b"PK\x03\x04":
        label, mutated = _zip_mutation(draw, data)
    elif data[257:262] == b"ustar":
        label, mutated = _tar_mutation(draw, data)
    elif name.endswith(".safetensors"):
        label, mutated = _safetensors_mutation(draw, data)
    elif name.endswith(".npy"):
        label, mutated = _npy_mutation(draw, data)
    else:  # a sharded index
        label, mutated = "index-bytes", draw(damaged(data))
    return Case(label, {name: mutated})


# --------------------------------------------------------------------------------------------------------------
# The fuzz tests
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", _NAMES)
@_FUZZ
@given(data=st.data())
def test_structured_damage(samples: dict[str, Sample], workdir: Path, fmt: str, data: st.DataObject) -> None:
    sample = samples[fmt]
    case = data.draw(cases(sample, workdir), label="case")
    _check(sample, workdir, case, mmap=data.draw(st.booleans(), label="mmap"))


_MAGICS = [b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x04\x95", b"\x93NUMPY\x01\x00", b"{", b""]


@_FUZZ
@given(head=st.sampled_from(_MAGICS), body=st.binary(max_size=2048))
def test_arbitrary_bytes(workdir: Path, head: bytes, body: bytes) -> None:
    """Bytes that start like a format and continue at random: the scanner and the directory parser never raise."""
    data = head + body
    sample = Sample("arbitrary", {"blob.bin": data}, "blob.bin")
    _check_raw(sample, workdir, data)


@_FUZZ
@given(data=st.data())
def test_zip_tail_stitched_onto_other_data(samples: dict[str, Sample], workdir: Path, data: st.DataObject) -> None:
    """Polyglots: a zip's tail (some of its members, directory and end records) after another format's bytes, or
    a valid zip after junk, so every offset in the directory is wrong by a shift."""
    zips = [b for s in samples.values() for b in s.files.values() if b[:4] == b"PK\x03\x04"]
    donor = data.draw(st.sampled_from(zips), label="zip")
    host = data.draw(st.sampled_from(list(samples.values())), label="host")
    cut = data.draw(st.integers(0, len(donor)), label="cut")
    glued = host.files[sorted(host.files)[0]] + donor[cut:]
    _check_raw(Sample("polyglot", {"glued.pt": glued}, "glued.pt"), workdir, glued)


def _check_raw(sample: Sample, workdir: Path, data: bytes) -> None:
    path, size = _write(sample, workdir, Case("raw"))
    _, open_error = bounded(lambda: tw.load(tw.open(path)), size, "tw.open/tw.load (raw)")
    report, _ = bounded(lambda: scan(path), size, "scan (raw)", catch=False)
    assert report is not None
    if open_error is not None:
        assert report.verdict != "clean", f"scan says clean, tw.open refuses: {open_error}"
    _directory(data, "raw", "raw")


# --------------------------------------------------------------------------------------------------------------
# The harness itself
# --------------------------------------------------------------------------------------------------------------


def test_every_format_is_sampled(samples: dict[str, Sample], tmp_path: Path) -> None:
    """Each sample is read by the reader meant to be fuzzed (or refused as the non-checkpoint it is), and scan
    calls the readable ones clean: the fuzzing starts from files every check accepts."""
    assert set(samples) == set(_FORMATS)
    from torchweights.formats import READERS

    # folder formats (sharded sets, torch.distributed.checkpoint) are not single-file samples; tests/formats cover them
    assert {f for f in _FORMATS.values() if f} >= set(READERS()) - {"sharded", "dcp"}
    for name, sample in samples.items():
        path = sample.write(tmp_path / name)
        report = scan(path, limits=sample.limits)
        if _FORMATS[name] is None:
            with pytest.raises(NotACheckpointError):
                tw.open(path)
            assert report.verdict == "unreadable", name
            continue
        ckpt = tw.open(path, limits=sample.limits)
        if name in _OBJECT_ARRAYS:  # listed, never unpickled; tw.load refuses it, so scan cannot call it clean
            assert ckpt.format == _FORMATS[name] and ckpt.warnings
            with pytest.raises(UnsupportedCheckpointError):
                tw.load(path)
            assert report.verdict != "clean"
            continue
        assert ckpt.format == _FORMATS[name] and ckpt.records, name
        assert report.verdict == "clean", (name, [f.message for f in report.findings])
        for filename, data in sample.files.items():
            if data[:4] == b"PK\x03\x04":
                assert not read_directory(io.BytesIO(data), filename, len(data)).problems, (name, filename)


def test_mutations_reach_their_targets(samples: dict[str, Sample], tmp_path: Path) -> None:
    """The zip surgery makes the archives it means to: a duplicated central entry is seen as a duplicate and an
    overlap, a duplicated member as a duplicate, a raw-name member as a non-UTF-8 name."""
    raw = samples["zip"].main
    name = next(n for n in zip_members(raw) if n.endswith("data.pkl"))
    dup = _duplicate_central(raw, name)
    codes = {p.code for p in read_directory(io.BytesIO(dup), "dup", len(dup)).problems}
    assert {"zip-duplicate-member", "zip-overlap"} <= codes, codes
    (tmp_path / "dup.pt").write_bytes(dup)
    with pytest.raises(TorchWeightsError) as info:
        tw.open(tmp_path / "dup.pt")
    assert info.value.code in ("zip-overlap", "zip-duplicate-member"), str(info.value)
    entries = [(i.filename, c, i.compress_type) for i, c in _zip_contents(raw)]
    twice = _zip_of([*entries, (name, pickle.dumps({}, protocol=2), 0)])
    assert "zip-duplicate-member" in {p.code for p in read_directory(io.BytesIO(twice), "x", len(twice)).problems}
    tar = samples["legacy-tar"].main
    gen = _tar_generator()
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        contents = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]  # type: ignore[union-attr]
    assert gen.tar_bytes(contents) == tar  # rebuilding an unchanged tar is the identity
