"""Tar archives read from their raw 512-byte headers: the one walk that both detection and the torch tar reader use.

:func:`walk` yields every entry (pax and GNU long-name headers applied, each member checked to lie inside the file,
every header checksum verified); nothing is extracted and member names are never used as paths. Detection
(:mod:`torchweights.detect.archive`) and :mod:`.legacy_tar` read the same archive the same way, so a file one
refuses the other cannot accept.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator

from ..errors import CorruptCheckpointError, ResourceLimitError
from ..structs import structure
from ..text import quote

__all__ = ["FIX", "MEMBERS", "REGULAR_KINDS", "TarEntry", "fail", "header_name", "normalize", "walk"]

MEMBERS = ("sys_info", "pickle", "tensors", "storages")
"""The members the first torch releases wrote into a tar checkpoint, in the order they wrote them."""

#: The fix every message about a damaged torch tar ends with.
FIX = "The file is corrupt or was crafted; re-download it, or re-save it from an old torch if you trust it."

_BLOCK = 512
_MAX_HEADERS = 4096  # a torch tar has 4 members; this bounds the walk over a crafted archive
_MAX_EXTENDED = 1 << 20  # largest pax / GNU long-name header accepted
_EXTENDED_KINDS = (b"x", b"g", b"L", b"K")
#: Type flags of regular files (a link or folder has no data of its own).
REGULAR_KINDS = (b"0", b"\0", b"7")


@structure(frozen=True)
class TarEntry:
    """One member of the archive: its name (normalised), where its data starts, its size and its tar type flag."""

    name: str
    start: int  # absolute offset of the member's data
    size: int
    kind: bytes  # tar type flag

    @property
    def end(self) -> int:
        """Offset just past the member's data."""
        return self.start + self.size


def fail(path: str, message: str, code: str) -> CorruptCheckpointError:
    """The error for a damaged archive: ``'<path>' <message>`` with ``code``."""
    return CorruptCheckpointError(f"{quote(path)} {message}", code=code, path=path)


def _tar_number(raw: bytes, what: str, path: str, at: int) -> int:
    """A numeric header field: NUL/space-terminated octal text, or GNU base-256 (high bit set)."""
    if raw[:1] == b"\x80":
        return int.from_bytes(raw[1:], "big")
    if raw[:1] == b"\xff":
        raise fail(path, f"has a tar header at byte {at} with a negative {what}. {FIX}", "tar-bad-header")
    text = raw.split(b"\0", 1)[0].strip()
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise fail(
            path, f"has a tar header at byte {at} whose {what} {text[:16]!r} is not a number. {FIX}", "tar-bad-header"
        )
    return int(text, 8)


def _check_checksum(block: bytes, path: str, at: int) -> None:
    stored = _tar_number(block[148:156], "checksum", path, at)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise fail(
            path,
            f"has a damaged tar header at byte {at}: its checksum is {stored} but its bytes sum to {unsigned}. {FIX}",
            "tar-bad-header",
        )


def _pax_records(raw: bytes, path: str, at: int) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        if not raw[pos:].strip(b"\0"):
            break
        space = raw.find(b" ", pos, pos + 24)
        length_text = raw[pos:space] if space > pos else b""
        length = int(length_text) if length_text.isdigit() else 0
        record = raw[pos : pos + length]
        if length <= space - pos or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise fail(path, f"has a malformed pax extended header at byte {at}. {FIX}", "tar-bad-header")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


def header_name(block: bytes) -> str:
    """The member name a plain 512-byte header gives (with its ustar prefix); pax and GNU long names come from
    the headers before it, which :func:`walk` applies."""
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
    return name


def normalize(name: str) -> str:
    """``./a//b`` -> ``a/b``, as tarfile compares names."""
    # A string operation only (as tarfile compares names): the name is never used to touch the file system.
    return posixpath.normpath(name) if name else name


def walk(
    read: Callable[[int, int], bytes], size: int, path: str, *, max_headers: int | None = None
) -> Iterator[TarEntry]:
    """Every entry of the archive, in order, from its raw headers, each checked to lie inside the file.

    Args:
        read: ``read(offset, n)`` returns up to ``n`` bytes of the file from ``offset``.
        size: the file's size in bytes.
        path: the file's name, for messages.
        max_headers: stop (without an error) after this many headers: detection looks at the first few only.

    Raises:
        CorruptCheckpointError: a header is damaged (``tar-bad-header``) or a member runs past the end of the file
            (``truncated``).
        ResourceLimitError: more than 4096 headers, or an extended header over 1 MiB.
    """
    pending: dict[str, str] = {}
    long_name: str | None = None
    pos = 0
    headers = 0
    while pos + _BLOCK <= size:
        if max_headers is not None and headers >= max_headers:
            return
        block = read(pos, _BLOCK)
        if len(block) < _BLOCK or not block.strip(b"\0"):
            return  # end-of-archive marker
        headers += 1
        if headers > _MAX_HEADERS:
            raise ResourceLimitError(
                f"{quote(path)} is a tar archive of more than {_MAX_HEADERS} entries; a torch tar checkpoint has 4. "
                "The file is not a torch checkpoint, or was crafted.",
                code="limit-tar-members",
                path=path,
            )
        _check_checksum(block, path, pos)
        kind = block[156:157]
        own_size = _tar_number(block[124:136], "size", path, pos)
        data = pos + _BLOCK
        if kind in _EXTENDED_KINDS:
            if own_size > _MAX_EXTENDED:
                raise ResourceLimitError(
                    f"{quote(path)} has a {own_size}-byte tar extended header at byte {pos}, more than the "
                    f"{_MAX_EXTENDED} bytes accepted. The file is not a torch checkpoint, or was crafted.",
                    code="limit-tar-header",
                    path=path,
                )
            if data + own_size > size:
                raise _truncated(path, "a tar extended header", data, own_size, size)
            raw = read(data, own_size)
            if kind == b"x":
                pending = _pax_records(raw, path, pos)
            elif kind == b"L":
                long_name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            pos = data + _round_up(own_size)
            continue
        name = pending.get("path", long_name if long_name is not None else header_name(block))
        length = own_size
        if "size" in pending:
            text = pending["size"]
            if not text.isdigit():
                raise fail(path, f"has a pax header giving member size {text[:20]!r}. {FIX}", "tar-bad-header")
            length = int(text)
        pending, long_name = {}, None
        if kind not in REGULAR_KINDS:
            length = 0 if kind in (b"1", b"2", b"5") else length  # links and folders have no data
        if data + length > size:
            raise _truncated(path, f"tar member {quote(name)}", data, length, size)
        yield TarEntry(normalize(name), data, length, kind)
        pos = data + _round_up(length)


def _round_up(n: int) -> int:
    return (n + _BLOCK - 1) // _BLOCK * _BLOCK


def _truncated(path: str, what: str, start: int, length: int, size: int) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{quote(path)} is truncated: {what} needs {length} bytes from byte {start} but the file has {size} bytes. "
        "An incomplete download or copy is the usual cause; re-download the file.",
        code="truncated",
        path=path,
    )
