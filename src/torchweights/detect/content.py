"""Decide what a path holds from its content alone, before any parser runs.

:func:`detect` returns a format id (``"torch-zip"``, ``"safetensors"``, ...) or raises a
:class:`~torchweights.errors.TorchWeightsError` subclass whose message says what the file is, why it cannot be
loaded and the exact fix. It never looks at file names or extensions, never reads whole files (only the first
4 KiB, the zip central directory, a few tar headers, and a JSON index of at most 64 MiB), and never imports torch
or numpy.

Format ids: ``torch-zip``, ``torchscript``, ``torch-package``, ``torch-legacy``, ``legacy-tar``, ``safetensors``,
``sharded``, ``dcp``, ``pickle``, ``npy``, ``npz`` (NumPy arrays and archives).

Error codes: ``not-found``, ``read-failed``, ``not-a-file``, ``directory``, ``empty-file``, ``lfs-pointer``,
``html-page``, ``json-document``, ``truncated``, ``bad-zip``, ``zip-not-checkpoint``, ``gzip``,
``tar``, ``gguf``, ``hdf5``, ``onnx``, ``text-file``, ``unknown-format``.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import CheckpointNotFoundError, CheckpointReadError, CorruptCheckpointError, NotACheckpointError
from ..fold import human_bytes

__all__ = ["FORMATS", "detect", "looks_safetensors"]

#: Every format id :func:`detect` can return.
FORMATS = (
    "torch-zip",
    "torchscript",
    "torch-package",
    "torch-legacy",
    "legacy-tar",
    "safetensors",
    "sharded",
    "dcp",
    "pickle",
    "npy",
    "npz",
)

_HEAD_SIZE = 4096
_ZIP_TAIL_SIZE = 22 + 65535 + 20  # end-of-central-directory record, longest comment, zip64 locator
_MAX_ZIP_ENTRIES = 1_000_000
_MAX_JSON_PARSE = 64 * 1024 * 1024
_SAFETENSORS_MAX_HEADER = 100 * 1000 * 1000
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_LEGACY_MAGIC_TEXT = b"L119547037146038801333356L\n."
_LFS_PREFIX = b"version https://git-lfs.github.com/spec/"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_LEGACY_TAR_MEMBERS = frozenset({"storages", "tensors", "pickle", "sys_info"})
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class _Sample:
    """What every sniffer sees: the path, its size and its first 4 KiB."""

    path: str
    size: int
    head: bytes


def detect(path: str | os.PathLike[str]) -> str:
    """Return the format id of ``path``, decided from its content only.

    Args:
        path: a checkpoint file, a sharded index, or a folder holding one.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        CheckpointNotFoundError: nothing exists at ``path``.
        CheckpointReadError: the operating system refused to read it.
        NotACheckpointError: it is something else (LFS pointer, web page, ONNX model, ...).
        CorruptCheckpointError: it is a checkpoint format but truncated or broken.
    """
    path = os.fspath(path)
    info = _stat(path)
    if stat.S_ISDIR(info.st_mode):
        return _detect_directory(path)
    if not stat.S_ISREG(info.st_mode):
        raise NotACheckpointError(
            f"{_q(path)} is not a regular file (a device, pipe or socket), so it cannot be read as a checkpoint. "
            "Fix: pass the path of the checkpoint file itself.",
            code="not-a-file",
            path=path,
        )
    sample = _Sample(path, info.st_size, _read_at(path, 0, _HEAD_SIZE))
    for sniff in _SNIFFERS:
        found = sniff(sample)
        if found is not None:
            return found
    raise _unknown(sample)


# --------------------------------------------------------------------------------------------------- file access


def _q(path: str) -> str:
    """Quote a path for messages."""
    return f"'{path}'"


def _stat(path: str) -> os.stat_result:
    """``os.stat`` with our errors."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found(path) from None
    except OSError as exc:
        raise _read_failed(path, exc) from exc


def _read_at(path: str, offset: int, size: int) -> bytes:
    """Read at most ``size`` bytes of ``path`` starting at ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except OSError as exc:
        raise _read_failed(path, exc) from exc


def _read_failed(path: str, exc: OSError) -> CheckpointReadError:
    """The error for a file the operating system will not let us read."""
    if isinstance(exc, PermissionError):
        why = "permission denied"
        fix = "make it readable (e.g. `chmod u+r`), or run as a user that can read it"
    else:
        why = exc.strerror or str(exc)
        fix = "check the disk or network mount and retry, or copy the file to a local disk first"
    return CheckpointReadError(f"Cannot read {_q(path)}: {why}. Fix: {fix}.", code="read-failed", path=path)


def _not_found(path: str) -> CheckpointNotFoundError:
    """The error for a missing path, suggesting a similarly named sibling when there is one."""
    if os.path.islink(path):
        return CheckpointNotFoundError(
            f"{_q(path)} is a symbolic link to {_q(os.readlink(path))}, which does not exist (typically an "
            "incomplete download into a cache). Fix: re-download the file, or pass the real file's path.",
            code="not-found",
            path=path,
        )
    parent, name = os.path.split(path.rstrip("/" + os.sep) or path)
    where = "" if os.path.isabs(path) else f" (relative paths start from {os.getcwd()})"
    try:
        siblings = os.listdir(parent or ".")
    except OSError:
        return CheckpointNotFoundError(
            f"No file or folder at {_q(path)}: the folder {_q(parent)} does not exist{where}. Fix: check the path.",
            code="not-found",
            path=path,
        )
    import difflib  # only on this error path: not worth its import time on every open

    close = difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(_q(os.path.join(parent, c)) for c in close)}?" if close else ""
    return CheckpointNotFoundError(
        f"No file or folder at {_q(path)}{where}.{hint} Fix: check the path and spelling.",
        code="not-found",
        path=path,
    )


# ----------------------------------------------------------------------------------------------------- directories


def _detect_directory(path: str) -> str:
    """A folder is a sharded checkpoint (``*.index.json``) or a torch.distributed.checkpoint (``.metadata``)."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise _read_failed(path, exc) from exc
    files = [e for e in entries if os.path.isfile(os.path.join(path, e))]
    if ".metadata" in files:
        return "dcp"
    if any(e.endswith(".index.json") for e in files):
        return "sharded"  # several indexes: the sharded reader reports the ambiguity
    candidates = [e for e in files if e.lower().endswith(_CHECKPOINT_SUFFIXES)]
    if candidates:
        listed = _listing(candidates)
        fix = f"pass one of them, e.g. {_q(os.path.join(path, candidates[0]))}"
        what = f"It contains these checkpoint files: {listed}."
    else:
        fix = "pass the path of the checkpoint file itself"
        what = "It contains no checkpoint-looking files (*.safetensors, *.bin, *.pt, *.pth, *.ckpt)."
    raise NotACheckpointError(
        f"{_q(path)} is a directory without a sharded index (*.index.json) or a distributed-checkpoint "
        f".metadata file, so there is no single checkpoint to read. {what} Fix: {fix}.",
        code="directory",
        path=path,
    )


def _listing(names: list[str], limit: int = 10) -> str:
    """``a, b, c and 7 more``."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


# ----------------------------------------------------------------------------------------- small content families


def _sniff_empty(s: _Sample) -> str | None:
    """A zero-byte file: an interrupted save or download."""
    if s.size > 0:
        return None
    raise NotACheckpointError(
        f"{_q(s.path)} is empty (0 bytes): the save or download was interrupted, or the disk was full. "
        "Fix: re-download the file, or save the checkpoint again.",
        code="empty-file",
        path=s.path,
    )


def _sniff_lfs_pointer(s: _Sample) -> str | None:
    """A Git LFS pointer checked out instead of the real file."""
    if not s.head.startswith(_LFS_PREFIX):
        return None
    text = s.head.decode("utf-8", "replace")
    oid = re.search(r"^oid (\S+)", text, re.MULTILINE)
    real = re.search(r"^size (\d+)", text, re.MULTILINE)
    details = [f"oid {oid.group(1)}"] if oid else []
    if real:
        details.append(f"real size {human_bytes(int(real.group(1)))}")
    extra = f" ({', '.join(details)})" if details else ""
    raise NotACheckpointError(
        f"{_q(s.path)} is a {s.size}-byte Git LFS pointer{extra}, not the weights: the repository was cloned or "
        "downloaded without Git LFS, so only the pointer text was saved. Fix: run `git lfs pull` in the "
        "repository (or `git lfs install` and clone again), or download the file directly.",
        code="lfs-pointer",
        path=s.path,
    )


def _sniff_pickle(s: _Sample) -> str | None:
    """A pickle stream (PROTO 2..5): the torch legacy format when the magic number comes first."""
    if s.head.startswith(_LEGACY_MAGIC_TEXT):
        return "torch-legacy"  # saved with pickle_protocol 0 or 1: the magic number is a text LONG
    if len(s.head) < 2 or s.head[0] != 0x80 or not 2 <= s.head[1] <= 5:
        return None
    if looks_safetensors(s.head):  # a safetensors header length of 640 (0x280) starts with the bytes of PROTO 2
        return None
    body = s.head[2:]
    if body[:1] == b"\x95":  # protocol 4+ FRAME opcode and its 8-byte length
        body = body[9:]
    return "torch-legacy" if body.startswith(_LEGACY_MAGIC) else "pickle"


def _sniff_text_pickle(s: _Sample) -> str | None:
    """A protocol 0 or 1 pickle (no PROTO opcode; ``pickle.dumps(obj, protocol=0)`` is text): its first 4 KiB
    parse as pickle opcodes up to STOP, or up to the end of the sample for a longer file. Text never does."""
    from ..formats._pickled import read_embedded
    from ..unpickle.machine import FIRST_OPCODES
    from ..unpickle.stream import scan_stream

    if not s.head or s.head[0] not in FIRST_OPCODES:
        return None
    # a longer file is cut at the end of the sample: cut it where a text opcode's argument line ends, so that a
    # pickle reads to the cut and stops there as truncated (text fails within a few bytes)
    cut = s.size > len(s.head)
    head = s.head[: s.head.rfind(b"\n") + 1] if cut and b"\n" in s.head else s.head
    seen = scan_stream(head, max_bytes=len(head), read_embedded=read_embedded)
    read_to_cut = cut and seen.error is not None and seen.error.code == "truncated" and len(head) >= 1024
    return "pickle" if seen.end is not None or read_to_cut else None


def _sniff_safetensors(s: _Sample) -> str | None:
    """An 8-byte little-endian header length followed by a JSON object."""
    if len(s.head) < 9:
        return None
    n = int.from_bytes(s.head[:8], "little")
    if not 2 <= n < _SAFETENSORS_MAX_HEADER or not s.head[8 : 8 + n].lstrip(b" ").startswith(b"{"):
        return None
    if 8 + n > s.size:
        raise CorruptCheckpointError(
            f"{_q(s.path)} is a truncated safetensors file: its header says {n} bytes of JSON follow, but the "
            f"file is only {s.size} bytes ({human_bytes(s.size)}), so the download or copy was cut short. "
            "Fix: re-download it.",
            code="truncated",
            path=s.path,
        )
    return "safetensors"


def _sniff_gzip(s: _Sample) -> str | None:
    """A gzip stream; peek at the decompressed start to say what is inside."""
    if not s.head.startswith(b"\x1f\x8b"):
        return None
    try:
        inner = zlib.decompressobj(wbits=31).decompress(s.head, 1024)
    except zlib.error:
        inner = b""
    if inner[257:262] == b"ustar":
        what, fix = (
            "a gzip-compressed tar archive (.tar.gz)",
            f"extract it (`tar xzf {s.path}`) and pass the checkpoint inside",
        )
    elif inner.startswith((b"PK\x03\x04", b"\x80")) or looks_safetensors(inner):
        what, fix = (
            "a gzip-compressed checkpoint",
            f"decompress it (`gunzip -c {s.path} > checkpoint.pt`) and pass the result",
        )
    else:
        what, fix = (
            "gzip-compressed data",
            f"decompress it (`gunzip -c {s.path} > decompressed`, or `tar xzf` for a tarball) and pass the result",
        )
    raise NotACheckpointError(
        f"{_q(s.path)} is {what}, which PyTorch cannot read directly. Fix: {fix}.", code="gzip", path=s.path
    )


def looks_safetensors(data: bytes) -> bool:
    """Whether ``data`` starts like a safetensors file."""
    return len(data) > 8 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < _SAFETENSORS_MAX_HEADER


#: Foreign formats recognised by their leading magic bytes: (magic, error code, what it is and the fix).
_MAGIC_FORMATS: tuple[tuple[bytes, str, str], ...] = (
    (
        b"GGUF",
        "gguf",
        "is a GGUF model (llama.cpp format), not a PyTorch checkpoint. Fix: use it with llama.cpp, read it with "
        "the `gguf` Python package, or convert it back with llama.cpp's conversion scripts.",
    ),
)


def _sniff_numpy(s: _Sample) -> str | None:
    """A NumPy ``.npy`` array (``numpy.save``)."""
    return "npy" if s.head.startswith(b"\x93NUMPY") else None


def _sniff_magic(s: _Sample) -> str | None:
    """Foreign formats with a fixed leading magic (:data:`_MAGIC_FORMATS`)."""
    for magic, code, explanation in _MAGIC_FORMATS:
        if s.head.startswith(magic):
            raise NotACheckpointError(f"{_q(s.path)} {explanation}", code=code, path=s.path)
    return None


def _sniff_hdf5(s: _Sample) -> str | None:
    """An HDF5 file (Keras / TensorFlow weights); the superblock may follow a user block."""
    if not any(s.head[at : at + 8] == _HDF5_MAGIC for at in (0, 512, 1024, 2048)):
        return None
    raise NotACheckpointError(
        f"{_q(s.path)} is an HDF5 file (typically Keras/TensorFlow .h5 weights), not a PyTorch checkpoint. "
        "Fix: read it with `h5py` or Keras and convert the arrays with `torch.from_numpy`.",
        code="hdf5",
        path=s.path,
    )


# ----------------------------------------------------------------------------------------------------------- onnx

_ONNX_WIRE = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}  # ModelProto fields


def _varint(data: bytes, at: int) -> tuple[int, int] | None:
    """Decode a protobuf varint at ``at``: ``(value, next offset)``, or None when malformed or cut."""
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def _onnx_fields(data: bytes, size: int) -> list[tuple[int, bytes]]:
    """Walk the first ModelProto fields: ``(field number, short payload)``; stops at anything unexpected."""
    fields: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data) and len(fields) < 8:
        key = _varint(data, at)
        if key is None or _ONNX_WIRE.get(key[0] >> 3) != key[0] & 7:
            break
        value = _varint(data, key[1])
        if value is None:
            break
        number, (n, at) = key[0] >> 3, value
        if number in (1, 5):
            fields.append((number, n.to_bytes(8, "little")))
            continue
        if at + n > size:
            break
        fields.append((number, data[at : at + n]))
        at += n
    return fields


def _sniff_onnx(s: _Sample) -> str | None:
    """An ONNX ModelProto: ir_version first, then producer/graph fields that parse as protobuf."""
    if s.head[:1] != b"\x08":
        return None
    fields = _onnx_fields(s.head[:256], s.size)
    if len(fields) < 2 or fields[0][0] != 1 or not 1 <= int.from_bytes(fields[0][1], "little") <= 64:
        return None
    producer = next((p for n, p in fields if n == 2), b"")
    named = producer.isascii() and producer.decode("ascii").isprintable() and len(producer) > 0
    if not (named or b"onnx" in s.head[:256] or b"pytorch" in s.head[:256]):
        return None
    raise NotACheckpointError(
        f"{_q(s.path)} is an ONNX model, not a PyTorch checkpoint. Fix: run it with onnxruntime, or extract its "
        "weights with `onnx.numpy_helper.to_array` over `onnx.load(path).graph.initializer`.",
        code="onnx",
        path=s.path,
    )


# ----------------------------------------------------------------------------------------------------------- zip


@dataclass
class _ZipSummary:
    """What the central directory says, gathered while streaming it."""

    count: int = 0
    first: list[str] = field(default_factory=list)
    data_pkl_roots: set[str] = field(default_factory=set)
    script_roots: set[str] = field(default_factory=set)
    model_json_roots: set[str] = field(default_factory=set)  # TorchScript of torch 1.0-1.2
    constants_roots: set[str] = field(default_factory=set)
    nested_data_pkl: str | None = None
    torch_package: bool = False
    all_npy: bool = True
    #: root -> the torch.save/torch.jit.save records seen there (an archive that lost its data.pkl still has them)
    torch_marks: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str) -> None:
        """Fold one member name in."""
        self.count += 1
        if len(self.first) < 8:
            self.first.append(name)
        parts = name.split("/")
        self.all_npy = self.all_npy and name.endswith(".npy")
        self.torch_package = self.torch_package or name.endswith(".data/extern_modules")
        if parts[-1] == "data.pkl":
            if len(parts) == 2:
                self.data_pkl_roots.add(parts[0])
            else:
                self.nested_data_pkl = self.nested_data_pkl or name
        if (len(parts) > 2 and parts[1] == "code") or (len(parts) == 2 and parts[1] == "constants.pkl"):
            self.script_roots.add(parts[0])
        if len(parts) == 2 and parts[1] in ("model.json", "constants.pkl"):
            (self.model_json_roots if parts[1] == "model.json" else self.constants_roots).add(parts[0])
        mark = "/".join(parts[1:-1] + [parts[-1] if not parts[-1].isdigit() else "N"]) if len(parts) > 1 else ""
        if mark in _TORCH_MARKS:
            self.torch_marks.setdefault(parts[0], set()).add(mark)


#: Members only torch's archive writer produces (``data/N``: a storage). Two of them under one root make a zip a
#: torch archive even without its ``data.pkl``, which is then reported as missing (a damaged archive), not as
#: "not a checkpoint".
_TORCH_MARKS = frozenset(
    {
        "version",
        ".data/version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
        "data/N",
    }
)


def _sniff_zip(s: _Sample) -> str | None:
    """A zip archive: torch.save, TorchScript, torch.package, .npz, or something else."""
    if not s.head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return None
    offset, size, count = _zip_directory(s)
    summary = _ZipSummary()
    for name in _zip_names(s.path, offset, size, count):
        summary.add(name)
    return _classify_zip(s, summary)


def _zip_directory(s: _Sample) -> tuple[int, int, int]:
    """Locate the central directory from the end record: ``(offset, size, entry count)``."""
    tail_start = max(0, s.size - _ZIP_TAIL_SIZE)
    tail = _read_at(s.path, tail_start, _ZIP_TAIL_SIZE)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and (at + 22 > len(tail) or struct.unpack_from("<H", tail, at + 20)[0] > len(tail) - at - 22):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise CorruptCheckpointError(
            f"{_q(s.path)} is a zip archive without a central directory ({human_bytes(s.size)}): the file is "
            "incomplete, typically a download or copy that was cut short. Fix: re-download it (or save it again).",
            code="truncated",
            path=s.path,
        )
    count, size, offset = _eocd_fields(tail, at)
    if count == 0xFFFF or 0xFFFFFFFF in (size, offset):
        count, size, offset = _zip64_fields(s, tail, at)
    if offset + size > s.size:
        raise CorruptCheckpointError(
            f"{_q(s.path)} is a zip archive whose central directory points past the end of the file "
            f"({human_bytes(s.size)}): the file is incomplete or damaged. Fix: re-download it.",
            code="truncated",
            path=s.path,
        )
    return offset, size, count


def _eocd_fields(tail: bytes, at: int) -> tuple[int, int, int]:
    """``(entry count, directory size, directory offset)`` from the classic end record."""
    count, size, offset = struct.unpack_from("<HLL", tail, at + 10)
    return count, size, offset


def _zip64_fields(s: _Sample, tail: bytes, at: int) -> tuple[int, int, int]:
    """``(entry count, directory size, directory offset)`` from the zip64 end record."""
    locator = tail[at - 20 : at] if at >= 20 else b""
    if not locator.startswith(b"PK\x06\x07"):
        raise _bad_zip(s, "a zip64 archive without its zip64 locator")
    (record_at,) = struct.unpack_from("<Q", locator, 8)
    record = _read_at(s.path, record_at, 56) if record_at + 56 <= s.size else b""
    if len(record) < 56 or not record.startswith(b"PK\x06\x06"):
        raise _bad_zip(s, "a zip64 archive whose zip64 end record is missing")
    count, size, offset = struct.unpack_from("<QQQ", record, 32)
    return count, size, offset


def _bad_zip(s: _Sample, what: str) -> CorruptCheckpointError:
    """The error for a zip whose directory structures are damaged."""
    return CorruptCheckpointError(
        f"{_q(s.path)} is {what}: the archive is damaged or incomplete. Fix: re-download it (or save it again).",
        code="bad-zip",
        path=s.path,
    )


def _zip_names(path: str, offset: int, size: int, count: int) -> Iterator[str]:
    """Stream member names out of the central directory (at most ``_MAX_ZIP_ENTRIES``)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            consumed = 0
            for _ in range(min(count, _MAX_ZIP_ENTRIES)):
                fixed = f.read(46)
                if len(fixed) < 46 or not fixed.startswith(b"PK\x01\x02") or consumed >= size:
                    return
                name_len, extra_len, comment_len = struct.unpack_from("<HHH", fixed, 28)
                name = f.read(name_len)
                f.seek(extra_len + comment_len, os.SEEK_CUR)
                consumed += 46 + name_len + extra_len + comment_len
                yield name.decode("utf-8", "replace")
    except OSError as exc:
        raise _read_failed(path, exc) from exc


def _classify_zip(s: _Sample, z: _ZipSummary) -> str:
    """Turn a central-directory summary into a format id, or explain what the zip is."""
    if z.torch_package:
        return "torch-package"
    if (z.data_pkl_roots | z.model_json_roots) & z.script_roots:
        return "torchscript"
    if z.data_pkl_roots:
        return "torch-zip"
    if z.constants_roots:
        return "torchscript"  # without its data.pkl: the reader names the missing member
    if any(len(marks) >= 2 for marks in z.torch_marks.values()):
        # a torch archive without its data.pkl: the reader names the missing member
        return "torchscript" if z.script_roots & set(z.torch_marks) else "torch-zip"
    if z.count and z.all_npy:
        return "npz"
    members = _listing(z.first, 5) + (f" ({z.count} members)" if z.count > 5 else "")
    hint = (
        f" It holds {z.nested_data_pkl!r}, which suggests a checkpoint re-zipped inside a folder; torch.save "
        "archives keep data.pkl one level deep (<root>/data.pkl)."
        if z.nested_data_pkl
        else ""
    )
    raise NotACheckpointError(
        f"{_q(s.path)} is a zip archive but not a PyTorch checkpoint (no <root>/data.pkl member); it contains "
        f"{members or 'no members'}.{hint} Fix: extract it and pass the checkpoint inside, or pass the file "
        "torch.save wrote.",
        code="zip-not-checkpoint",
        path=s.path,
    )


# ----------------------------------------------------------------------------------------------------------- tar


def _tar_names(s: _Sample, limit: int = 5) -> list[str]:
    """The first member names of a tar archive, parsed from raw 512-byte headers."""
    names: list[str] = []
    offset = 0
    for _ in range(4 * limit):  # bounded even when every header is a pax/long-name header
        if len(names) >= limit:
            break
        if offset + 512 > s.size:
            break
        block = s.head[offset : offset + 512] if offset + 512 <= len(s.head) else _read_at(s.path, offset, 512)
        if len(block) < 512 or not block.strip(b"\0"):
            break
        size = _tar_number(block[124:136])
        if block[156:157] not in (b"x", b"g", b"L", b"K"):  # pax / GNU long-name headers describe the next one
            names.append(_tar_name(block))
        offset += 512 + (size + 511) // 512 * 512
    return names


def _tar_number(field_bytes: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field_bytes[:1] and field_bytes[0] & 0x80:
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0")[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        return 0


def _tar_name(block: bytes) -> str:
    """The member name of a tar header, with the ustar prefix and without ``./``."""
    name = block[:100].split(b"\0")[0].decode("utf-8", "replace")
    prefix = block[345:500].split(b"\0")[0].decode("utf-8", "replace") if block[257:262] == b"ustar" else ""
    full = f"{prefix}/{name}" if prefix else name
    return full[2:] if full.startswith("./") else full


def _sniff_tar(s: _Sample) -> str | None:
    """A tar archive: the torch < 0.4 layout, or an archive to extract first."""
    if s.head[257:262] != b"ustar":
        return None
    names = _tar_names(s)
    if names and all(n in _LEGACY_TAR_MEMBERS for n in names[:4]):
        return "legacy-tar"
    raise NotACheckpointError(
        f"{_q(s.path)} is a tar archive, not a checkpoint; it starts with {_listing(names, 5) or 'no members'}. "
        f"Fix: extract it (`tar xf {s.path}`) and pass the checkpoint inside.",
        code="tar",
        path=s.path,
    )


# ------------------------------------------------------------------------------------------------- text families


def _text(head: bytes) -> str | None:
    """The first 4 KiB as UTF-8 text (BOM and leading whitespace removed), or None when it is not text."""
    if b"\0" in head:
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    text = text.lstrip("\ufeff \t\r\n")
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\t\n\r\f")
    return text if text and printable >= 0.95 * len(text) else None


def _excerpt(text: str, limit: int = 160) -> str:
    """Whitespace collapsed and cut to ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _sniff_html(s: _Sample) -> str | None:
    """A web page (login, error or redirect page) saved instead of the file."""
    text = s.head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    lower = text[:512].lower()
    is_xml_html = lower.startswith("<?xml") and "<html" in text.lower()
    if not (lower.startswith(("<!doctype html", "<html", "<head")) or is_xml_html):
        return None
    import html  # only on this error path: not worth its import time on every open

    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    titled = f' titled "{_excerpt(html.unescape(title.group(1)), 100)}"' if title else ""
    raise NotACheckpointError(
        f"{_q(s.path)} is an HTML web page{titled} ({human_bytes(s.size)}), not a checkpoint: typically a login, "
        "error or redirect page saved instead of the file. Fix: download the raw file URL (on Hugging Face use "
        "/resolve/ rather than /blob/), with authentication (e.g. `huggingface-cli login` or a token header) if "
        "the file is gated or private.",
        code="html-page",
        path=s.path,
    )


def _sniff_json(s: _Sample) -> str | None:
    """A JSON file: a sharded index (``weight_map``), or a document that is not weights."""
    text = _text(s.head)
    if text is None or not text.startswith(("{", "[")):
        return None
    if s.size > _MAX_JSON_PARSE:
        if '"weight_map"' in text:
            return "sharded"
        raise _json_document(s, None, _excerpt(text))
    try:
        document = json.loads(_read_at(s.path, 0, min(s.size, _MAX_JSON_PARSE)).decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        if '"weight_map"' in text:
            return "sharded"  # the sharded reader reports the broken index
        raise _json_document(s, None, _excerpt(text)) from None
    if isinstance(document, dict) and "weight_map" in document:
        return "sharded"
    raise _json_document(s, document, _excerpt(text))


def _json_document(s: _Sample, document: object, excerpt: str) -> NotACheckpointError:
    """The error for JSON that is not a sharded index."""
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        excerpt = f'an error message: "{_excerpt(document["error"])}"'
    elif isinstance(document, dict) and ("model_type" in document or "architectures" in document):
        excerpt = f"a model config: {excerpt}"
    return NotACheckpointError(
        f'{_q(s.path)} is a JSON document, not weights and not a sharded index (no "weight_map" key); it holds '
        f"{excerpt}. Fix: it is not a checkpoint; if it came from a download, check the URL and your access; if "
        "you meant a sharded checkpoint, pass its *.index.json (not config.json).",
        code="json-document",
        path=s.path,
    )


def _sniff_text(s: _Sample) -> str | None:
    """Any other text file."""
    text = _text(s.head)
    if text is None:
        return None
    first = next((line for line in text.splitlines() if line.strip()), "")
    raise NotACheckpointError(
        f'{_q(s.path)} is a text file ({human_bytes(s.size)}) starting "{_excerpt(first, 120)}", not a '
        "checkpoint. Fix: pass the weights file itself (e.g. *.safetensors, *.bin, *.pt).",
        code="text-file",
        path=s.path,
    )


def _unknown(s: _Sample) -> NotACheckpointError:
    """The error for content no sniffer recognised."""
    return NotACheckpointError(
        f"{_q(s.path)} ({human_bytes(s.size)}) is in no format torchweights recognises; it starts with bytes "
        f"{s.head[:16].hex(' ')}. A PyTorch checkpoint starts with 'PK' (torch.save zip), 0x80 (pickle) or an "
        "8-byte length and '{' (safetensors). Fix: check that this is the file you meant and that it was "
        "downloaded completely.",
        code="unknown-format",
        path=s.path,
    )


#: The sniffers, in order. Each returns a format id, None (not mine), or raises the diagnosis.
_SNIFFERS: tuple[Callable[[_Sample], str | None], ...] = (
    _sniff_empty,
    _sniff_lfs_pointer,
    _sniff_zip,
    _sniff_pickle,
    _sniff_safetensors,
    _sniff_gzip,
    _sniff_tar,
    _sniff_numpy,
    _sniff_magic,
    _sniff_hdf5,
    _sniff_onnx,
    _sniff_html,
    _sniff_text_pickle,
    _sniff_json,
    _sniff_text,
)
