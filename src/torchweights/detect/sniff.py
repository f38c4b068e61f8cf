"""The sniffers: recognise a file from its first 4 KiB, in a fixed order (:data:`SNIFFERS`).

Each sniffer returns a format id, None (not mine), or raises the diagnosis of a file that is not a checkpoint:
empty files, Git LFS pointers, web pages, JSON documents, other text, gzip streams and foreign binary formats
(GGUF, HDF5, ONNX) each get a message saying what the file is and the exact fix. Pickles (the torch legacy stream,
plain and protocol 0/1 text pickles), safetensors headers and ``.npy`` arrays are recognised here; zip and tar
archives are classified by :mod:`.archive`, from the same parse of their directory that the readers use.
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from collections.abc import Callable

from ..errors import CorruptCheckpointError, NotACheckpointError
from ..fold import human_bytes
from ..text import quote
from .sample import Sample, read_at

__all__ = ["SNIFFERS", "looks_safetensors", "unknown"]

_MAX_JSON_PARSE = 64 * 1024 * 1024
_SAFETENSORS_MAX_HEADER = 100 * 1000 * 1000
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_LEGACY_MAGIC_TEXT = b"L119547037146038801333356L\n."
_LFS_PREFIX = b"version https://git-lfs.github.com/spec/"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


# ----------------------------------------------------------------------------------------- small content families


def _sniff_empty(s: Sample) -> str | None:
    """A zero-byte file: an interrupted save or download."""
    if s.size > 0:
        return None
    raise NotACheckpointError(
        f"{quote(s.path)} is empty (0 bytes): the save or download was interrupted, or the disk was full. "
        "Fix: re-download the file, or save the checkpoint again.",
        code="empty-file",
        path=s.path,
    )


def _sniff_lfs_pointer(s: Sample) -> str | None:
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
        f"{quote(s.path)} is a {s.size}-byte Git LFS pointer{extra}, not the weights: the repository was cloned or "
        "downloaded without Git LFS, so only the pointer text was saved. Fix: run `git lfs pull` in the "
        "repository (or `git lfs install` and clone again), or download the file directly.",
        code="lfs-pointer",
        path=s.path,
    )


def _sniff_pickle(s: Sample) -> str | None:
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


def _sniff_text_pickle(s: Sample) -> str | None:
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


def _sniff_safetensors(s: Sample) -> str | None:
    """An 8-byte little-endian header length followed by a JSON object."""
    if len(s.head) < 9:
        return None
    n = int.from_bytes(s.head[:8], "little")
    if not 2 <= n < _SAFETENSORS_MAX_HEADER or not s.head[8 : 8 + n].lstrip(b" ").startswith(b"{"):
        return None
    if 8 + n > s.size:
        raise CorruptCheckpointError(
            f"{quote(s.path)} is a truncated safetensors file: its header says {n} bytes of JSON follow, but the "
            f"file is only {s.size} bytes ({human_bytes(s.size)}), so the download or copy was cut short. "
            "Fix: re-download it.",
            code="truncated",
            path=s.path,
        )
    return "safetensors"


def _sniff_gzip(s: Sample) -> str | None:
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
        f"{quote(s.path)} is {what}, which PyTorch cannot read directly. Fix: {fix}.", code="gzip", path=s.path
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


def _sniff_zip(s: Sample) -> str | None:
    """A zip archive: :func:`.archive.classify_zip` (imported only for a zip, with the zip reader it calls)."""
    if not s.head.startswith(_ZIP_MAGICS):
        return None
    from .archive import classify_zip

    return classify_zip(s)


def _sniff_tar(s: Sample) -> str | None:
    """A tar archive: :func:`.archive.classify_tar` (imported only for a tar, with the tar walk it calls)."""
    if s.head[257:262] != b"ustar":
        return None
    from .archive import classify_tar

    return classify_tar(s)


def _sniff_numpy(s: Sample) -> str | None:
    """A NumPy ``.npy`` array (``numpy.save``)."""
    return "npy" if s.head.startswith(b"\x93NUMPY") else None


def _sniff_magic(s: Sample) -> str | None:
    """Foreign formats with a fixed leading magic (:data:`_MAGIC_FORMATS`)."""
    for magic, code, explanation in _MAGIC_FORMATS:
        if s.head.startswith(magic):
            raise NotACheckpointError(f"{quote(s.path)} {explanation}", code=code, path=s.path)
    return None


def _sniff_hdf5(s: Sample) -> str | None:
    """An HDF5 file (Keras / TensorFlow weights); the superblock may follow a user block."""
    if not any(s.head[at : at + 8] == _HDF5_MAGIC for at in (0, 512, 1024, 2048)):
        return None
    raise NotACheckpointError(
        f"{quote(s.path)} is an HDF5 file (typically Keras/TensorFlow .h5 weights), not a PyTorch checkpoint. "
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


def _sniff_onnx(s: Sample) -> str | None:
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
        f"{quote(s.path)} is an ONNX model, not a PyTorch checkpoint. Fix: run it with onnxruntime, or extract its "
        "weights with `onnx.numpy_helper.to_array` over `onnx.load(path).graph.initializer`.",
        code="onnx",
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


def _sniff_html(s: Sample) -> str | None:
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
        f"{quote(s.path)} is an HTML web page{titled} ({human_bytes(s.size)}), not a checkpoint: typically a login, "
        "error or redirect page saved instead of the file. Fix: download the raw file URL (on Hugging Face use "
        "/resolve/ rather than /blob/), with authentication (e.g. `huggingface-cli login` or a token header) if "
        "the file is gated or private.",
        code="html-page",
        path=s.path,
    )


def _sniff_json(s: Sample) -> str | None:
    """A JSON file: a sharded index (``weight_map``), or a document that is not weights."""
    text = _text(s.head)
    if text is None or not text.startswith(("{", "[")):
        return None
    if s.size > _MAX_JSON_PARSE:
        if '"weight_map"' in text:
            return "sharded"
        raise _json_document(s, None, _excerpt(text))
    try:
        document = json.loads(read_at(s.path, 0, min(s.size, _MAX_JSON_PARSE)).decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        if '"weight_map"' in text:
            return "sharded"  # the sharded reader reports the broken index
        raise _json_document(s, None, _excerpt(text)) from None
    if isinstance(document, dict) and "weight_map" in document:
        return "sharded"
    raise _json_document(s, document, _excerpt(text))


def _json_document(s: Sample, document: object, excerpt: str) -> NotACheckpointError:
    """The error for JSON that is not a sharded index."""
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        excerpt = f'an error message: "{_excerpt(document["error"])}"'
    elif isinstance(document, dict) and ("model_type" in document or "architectures" in document):
        excerpt = f"a model config: {excerpt}"
    return NotACheckpointError(
        f'{quote(s.path)} is a JSON document, not weights and not a sharded index (no "weight_map" key); it holds '
        f"{excerpt}. Fix: it is not a checkpoint; if it came from a download, check the URL and your access; if "
        "you meant a sharded checkpoint, pass its *.index.json (not config.json).",
        code="json-document",
        path=s.path,
    )


def _sniff_text(s: Sample) -> str | None:
    """Any other text file."""
    text = _text(s.head)
    if text is None:
        return None
    first = next((line for line in text.splitlines() if line.strip()), "")
    raise NotACheckpointError(
        f'{quote(s.path)} is a text file ({human_bytes(s.size)}) starting "{_excerpt(first, 120)}", not a '
        "checkpoint. Fix: pass the weights file itself (e.g. *.safetensors, *.bin, *.pt).",
        code="text-file",
        path=s.path,
    )


def unknown(s: Sample) -> NotACheckpointError:
    """The error for content no sniffer recognised."""
    return NotACheckpointError(
        f"{quote(s.path)} ({human_bytes(s.size)}) is in no format torchweights recognises; it starts with bytes "
        f"{s.head[:16].hex(' ')}. A PyTorch checkpoint starts with 'PK' (torch.save zip), 0x80 (pickle) or an "
        "8-byte length and '{' (safetensors). Fix: check that this is the file you meant and that it was "
        "downloaded completely.",
        code="unknown-format",
        path=s.path,
    )


#: The sniffers, in order. Each returns a format id, None (not mine), or raises the diagnosis.
SNIFFERS: tuple[Callable[[Sample], str | None], ...] = (
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
