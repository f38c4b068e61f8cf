"""The zip central directory, parsed by hand and checked before any reader trusts a member.

:func:`read_directory` walks the end record (classic or zip64), every central directory entry and every local
header, and lists what is wrong with the archive as :class:`ZipProblem` values instead of stopping at the first:

* ``zip-duplicate-member``: two entries with one name (``zipfile`` picks the last, other readers the first);
* ``zip-name-mismatch``: a local header that disagrees with its central entry (name, method, sizes, CRC);
* ``zip-overlap``: members whose bytes overlap (one byte range read, and inflated, several times);
* ``zip-encrypted`` / ``zip-flags`` / ``zip-compression``: encryption, unknown flag bits, unknown methods;
* ``zip-leading-data`` / ``zip-trailing-data``: bytes before the first member or after the end record: the
  shape of a pickle+zip polyglot, read one way by ``zipfile`` and another way by a pickle reader;
* ``zip-hidden-data``: gaps between members that no entry accounts for;
* ``zip-unsafe-name``: member names with ``..``, absolute paths, backslashes or NUL bytes;
* ``limit-inflate``: compressed members that claim more than deflate can produce, or more than the budget;
  :func:`check_member_inflation` adds the per-member rule (``Limits.max_inflate_ratio``) when a member is read whole;
* ``truncated`` / ``bad-zip``: structures cut off or pointing outside the file.

Readers call :func:`check` to refuse any archive with a problem, all named at once; ``scan`` reports them as
findings. Nothing is ever extracted to disk: member names are data, never paths.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import field, replace
from typing import IO

from ..errors import CorruptCheckpointError, ResourceLimitError
from ..limits import Limits
from ..storage.compression import METHODS, decode
from ..structs import structure
from ..text import plural, printable

__all__ = [
    "DEFLATE_MAX_RATIO",
    "ZipDirectory",
    "ZipMember",
    "ZipProblem",
    "check",
    "check_member_inflation",
    "inflate",
    "read_directory",
]

_EOCD = struct.Struct("<4sHHHHLLH")
_EOCD64 = struct.Struct("<4sQHHLLQQQQ")
_LOCATOR = struct.Struct("<4sLQL")
_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")
_LOCAL = struct.Struct("<4sHHHHHLLLHH")
_TAIL_SIZE = _EOCD.size + 0xFFFF + _LOCATOR.size
_MAX_ENTRIES = 1_000_000
#: Deflate cannot expand data more than 1032:1; a member claiming more is damaged or a decompression bomb.
DEFLATE_MAX_RATIO = 1032
_KNOWN_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800  # deflate options, data descriptor, UTF-8 names
_ENCRYPTED_FLAGS = 0x0001 | 0x0040 | 0x2000  # traditional, strong, central directory encryption
# A data descriptor follows the data when flag 0x8 is set: CRC and two sizes, 4- or 8-byte, with or without its
# optional signature.
_DESCRIPTOR_SIZES = frozenset({12, 16, 20, 24})
_MAX_VERSION = 63  # "version needed to extract" of the newest zip specification (6.3), as zipfile checks it


@structure(frozen=True)
class ZipMember:
    """One central directory entry, with the position of its data as the local header gives it.

    Attributes:
        name: member name as stored (decoded as UTF-8, or cp437 without the UTF-8 flag).
        index: position in the central directory.
        header_offset: byte offset of the local header.
        data_offset: byte offset of the first data byte (-1 when the local header could not be read).
        compress_type: zip compression method (0 stored, 8 deflate...).
        compressed_size: bytes the data occupies in the file.
        size: bytes of content once inflated.
        crc32: CRC-32 of the content, as recorded.
        flags: general purpose flag bits.
    """

    name: str
    index: int
    header_offset: int
    data_offset: int
    compress_type: int
    compressed_size: int
    size: int
    crc32: int
    flags: int

    @property
    def data_end(self) -> int:
        """Offset just past the member's data."""
        return self.data_offset + self.compressed_size


@structure(frozen=True)
class ZipProblem:
    """Something wrong with an archive: a stable ``code``, a sentence, and the member it is about."""

    code: str
    message: str
    member: str | None = None


@structure
class ZipDirectory:
    """What the central directory says, and every problem found checking it against the file.

    Attributes:
        path: the file.
        file_size: its size in bytes.
        members: every central directory entry, in directory order (duplicates included).
        problems: everything wrong, in the order found.
        directory_offset: where the central directory starts.
        comment: the archive comment.
        start: where the archive starts (its offsets count from there); not 0 only with leading data.
    """

    path: str
    file_size: int
    members: list[ZipMember] = field(default_factory=list)
    problems: list[ZipProblem] = field(default_factory=list)
    directory_offset: int = 0
    comment: bytes = b""
    start: int = 0
    _index: tuple[int, dict[str, ZipMember]] | None = field(default=None, repr=False, compare=False)

    def names(self) -> list[str]:
        """Member names in directory order."""
        return [m.name for m in self.members]

    def find(self, name: str) -> ZipMember | None:
        """The first member called ``name``, or None."""
        if self._index is None or self._index[0] != len(self.members):  # built once the members are all read
            index: dict[str, ZipMember] = {}
            for m in self.members:
                index.setdefault(m.name, m)
            self._index = (len(self.members), index)
        return self._index[1].get(name)

    def problem(self, code: str, message: str, member: str | None = None) -> None:
        """Record a problem."""
        self.problems.append(ZipProblem(code, message, member))


def _read(fh: IO[bytes], offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _quote_name(name: str) -> str:
    shown = printable(name)
    return f"'{shown[:120]}...'" if len(shown) > 120 else f"'{shown}'"


def _end_record(d: ZipDirectory, fh: IO[bytes]) -> tuple[int, int, int, int] | None:
    """``(entry count, directory size, directory offset, first byte after the directory's records)``."""
    tail_start = max(0, d.file_size - _TAIL_SIZE)
    tail = _read(fh, tail_start, _TAIL_SIZE)
    at = tail.rfind(b"PK\x05\x06")
    # The end record is the last signature whose comment length reaches exactly the end of the file, or, for a
    # file with trailing data, the last whose comment fits.
    while at >= 0 and (at + _EOCD.size > len(tail) or _EOCD.unpack_from(tail, at)[7] > len(tail) - at - _EOCD.size):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        d.problem(
            "truncated",
            f"there is no end-of-central-directory record in the last {len(tail)} bytes: the file is incomplete "
            "(a download or copy cut short)",
        )
        return None
    _, disk, cd_disk, n_disk, count, size, offset, comment_len = _EOCD.unpack_from(tail, at)
    eocd_at = tail_start + at
    d.comment = tail[at + _EOCD.size : at + _EOCD.size + comment_len]
    end = eocd_at + _EOCD.size + comment_len
    if end != d.file_size:
        d.problem(
            "zip-trailing-data",
            f"{d.file_size - end} bytes follow the end record (at byte {end}): data appended to the archive, the "
            "shape of a polyglot file that other readers see differently",
        )
    if disk or cd_disk or n_disk != count:
        d.problem("bad-zip", "the end record describes a multi-disk (spanned) archive, which torch never writes")
    records_end = eocd_at
    saturated = count == 0xFFFF or 0xFFFFFFFF in (size, offset)
    locator_at = eocd_at - _LOCATOR.size
    locator = _read(fh, locator_at, _LOCATOR.size) if locator_at >= 0 else b""
    if len(locator) == _LOCATOR.size and locator.startswith(b"PK\x06\x07"):
        # torch writes the zip64 records even for small archives
        record_at = _LOCATOR.unpack(locator)[2]
        record = _read(fh, record_at, _EOCD64.size) if 0 <= record_at <= locator_at - _EOCD64.size else b""
        if not record.startswith(b"PK\x06\x06") and locator_at >= _EOCD64.size:
            # offsets counted from a later start (an archive appended to other data): the record sits just before
            # its locator; read_directory reports the shift
            record_at = locator_at - _EOCD64.size
            record = _read(fh, record_at, _EOCD64.size)
        if len(record) < _EOCD64.size or not record.startswith(b"PK\x06\x06"):
            d.problem("bad-zip", "a zip64 archive whose zip64 end-of-directory record is missing")
            return None
        fields = _EOCD64.unpack(record)
        if saturated:
            count, size, offset = fields[7], fields[8], fields[9]
        elif (fields[7], fields[8], fields[9]) != (count, size, offset):
            d.problem("bad-zip", "the zip64 end record and the classic end record describe different directories")
        if record_at + 12 + fields[1] != locator_at:
            d.problem("zip-hidden-data", "bytes between the zip64 end record and its locator are not part of either")
        records_end = record_at
    elif saturated:
        d.problem("bad-zip", "a zip64 archive without its zip64 end-of-directory locator")
        return None
    if offset + size > records_end:
        d.problem(
            "truncated",
            f"the central directory ({size} bytes at byte {offset}) runs past where the end records start "
            f"(byte {records_end}): the file is incomplete or damaged",
        )
        return None
    if offset + size < records_end:
        d.problem(
            "zip-hidden-data",
            f"{records_end - offset - size} bytes between the central directory and the end record belong to no "
            "structure",
        )
    if count > _MAX_ENTRIES:
        d.problem("limit-zip-entries", f"the archive claims {count} members, more than {_MAX_ENTRIES}")
        return None
    return count, size, offset, records_end


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF fields from the zip64 extended-information extra field."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        if tag == 0x0001:
            values = [int.from_bytes(body[i : i + 8], "little") for i in range(0, len(body) - len(body) % 8, 8)]
            it = iter(values)
            if usize == 0xFFFFFFFF:
                usize = next(it, usize)
            if csize == 0xFFFFFFFF:
                csize = next(it, csize)
            if offset == 0xFFFFFFFF:
                offset = next(it, offset)
            break
        at += 4 + length
    return usize, csize, offset


def _unsafe_name(name: str) -> str | None:
    if "\0" in name:
        return "contains a NUL byte"
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of the archive with '..'"
    return None


def _entries(d: ZipDirectory, fh: IO[bytes], count: int, size: int, offset: int) -> Iterator[ZipMember]:
    raw = _read(fh, offset, size)
    at = 0
    for index in range(count):
        if at + _CENTRAL.size > len(raw) or raw[at : at + 4] != b"PK\x01\x02":
            d.problem(
                "bad-zip",
                f"central directory entry {index} of {count} is missing or damaged (byte {offset + at})",
            )
            return
        fields = _CENTRAL.unpack_from(raw, at)
        needs, flags, method, crc, csize, usize = fields[2], fields[3], fields[4], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len, local = fields[10], fields[11], fields[12], fields[16]
        name_raw = raw[at + _CENTRAL.size : at + _CENTRAL.size + name_len]
        extra = raw[at + _CENTRAL.size + name_len : at + _CENTRAL.size + name_len + extra_len]
        at += _CENTRAL.size + name_len + extra_len + comment_len
        if at > len(raw):
            d.problem("bad-zip", f"central directory entry {index} runs past the end of the directory")
            return
        usize, csize, local = _zip64_extra(extra, usize, csize, local)
        try:
            name = name_raw.decode("utf-8") if flags & 0x800 else name_raw.decode("cp437")
        except UnicodeDecodeError:
            name = name_raw.decode("utf-8", "replace")
            d.problem("zip-unsafe-name", f"member name {_quote_name(name)} is flagged UTF-8 but is not", name)
        needs &= 0xFF  # the high byte names the writer's system
        if needs > _MAX_VERSION:
            d.problem(
                "bad-zip",
                f"member {_quote_name(name)} needs zip version {needs // 10}.{needs % 10} to be "
                f"extracted, newer than any zip specification ({_MAX_VERSION // 10}.{_MAX_VERSION % 10})",
                name,
            )
        yield ZipMember(name, index, local, -1, method, csize, usize, crc, flags)
    if at != len(raw):
        d.problem("zip-hidden-data", f"{len(raw) - at} bytes of the central directory belong to no entry")


def _local(d: ZipDirectory, fh: IO[bytes], m: ZipMember) -> ZipMember:
    """Check the local header against the central entry; returns the member with its data offset."""
    if not 0 <= m.header_offset <= d.file_size - _LOCAL.size:
        d.problem(
            "truncated",
            f"member {_quote_name(m.name)} is placed at byte {m.header_offset}, outside the {d.file_size}-byte file",
            m.name,
        )
        return m
    head = _read(fh, m.header_offset, _LOCAL.size)
    fields = _LOCAL.unpack(head)
    if fields[0] != b"PK\x03\x04":
        d.problem(
            "zip-name-mismatch",
            f"member {_quote_name(m.name)} has no local header where the central directory points "
            f"(byte {m.header_offset})",
            m.name,
        )
        return m
    flags, method, crc, csize, usize, name_len, extra_len = (
        fields[2],
        fields[3],
        fields[6],
        fields[7],
        fields[8],
        fields[9],
        fields[10],
    )
    local_name = _read(fh, m.header_offset + _LOCAL.size, name_len)
    decoded = local_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    differs = []
    if decoded != m.name:
        differs.append(f"name {_quote_name(decoded)}")
    if method != m.compress_type:
        differs.append(f"method {method} (central: {m.compress_type})")
    if not flags & 0x8 and not m.flags & 0x8:
        extra = _read(fh, m.header_offset + _LOCAL.size + name_len, extra_len)
        usize, csize, _ = _zip64_extra(extra, usize, csize, 0)
        if (crc, csize, usize) != (m.crc32, m.compressed_size, m.size):
            differs.append(f"sizes or CRC ({csize}/{usize}/{crc:08x} vs {m.compressed_size}/{m.size}/{m.crc32:08x})")
    if differs:
        d.problem(
            "zip-name-mismatch",
            f"the local header of member {_quote_name(m.name)} says {', '.join(differs)}: zip readers that trust "
            "one or the other see different files",
            m.name,
        )
    data_offset = m.header_offset + _LOCAL.size + name_len + extra_len
    return ZipMember(
        m.name, m.index, m.header_offset, data_offset, m.compress_type, m.compressed_size, m.size, m.crc32, m.flags
    )


def _check_member(d: ZipDirectory, m: ZipMember, max_inflated: int, inflated: list[int]) -> None:
    why = _unsafe_name(m.name)
    if why:
        d.problem("zip-unsafe-name", f"member name {_quote_name(m.name)} {why}", m.name)
    if m.flags & _ENCRYPTED_FLAGS:
        d.problem("zip-encrypted", f"member {_quote_name(m.name)} is encrypted, which torch.save never does", m.name)
    elif m.flags & ~_KNOWN_FLAGS & 0xFFFF:
        d.problem("zip-flags", f"member {_quote_name(m.name)} sets unknown zip flag bits 0x{m.flags:04x}", m.name)
    if m.compress_type not in METHODS:
        d.problem(
            "zip-compression", f"member {_quote_name(m.name)} uses unknown compression method {m.compress_type}", m.name
        )
    elif m.compress_type == 0 and m.compressed_size != m.size:
        d.problem(
            "zip-name-mismatch",
            f"member {_quote_name(m.name)} is stored uncompressed yet occupies {m.compressed_size} bytes for "
            f"{m.size} bytes of content",
            m.name,
        )
    elif m.compress_type:
        if m.size > max(m.compressed_size, 1) * DEFLATE_MAX_RATIO:
            d.problem(
                "limit-inflate",
                f"member {_quote_name(m.name)} claims {m.size} bytes inflated from {m.compressed_size}, more than "
                "compression can produce (a decompression bomb or a damaged directory)",
                m.name,
            )
        inflated[0] += m.size
        if inflated[0] > max_inflated:
            d.problem(
                "limit-inflate",
                f"compressed members up to {_quote_name(m.name)} would inflate to {inflated[0]} bytes, over the "
                f"{max_inflated}-byte budget (Limits.max_inflated_bytes)",
                m.name,
            )
    if m.data_offset >= 0 and m.data_end > d.directory_offset:
        d.problem(
            "truncated",
            f"member {_quote_name(m.name)} ends at byte {m.data_end}, past the start of the central directory "
            f"(byte {d.directory_offset}): the file is truncated or damaged",
            m.name,
        )


def _layout(d: ZipDirectory) -> None:
    """Members must tile the file from byte 0 to the central directory: no overlap, no leading or hidden bytes."""
    placed = sorted((m for m in d.members if m.data_offset >= 0), key=lambda m: m.header_offset)
    position = d.start
    previous: ZipMember | None = None
    for m in placed:
        if previous is not None and m.header_offset < previous.data_end:
            d.problem(
                "zip-overlap",
                f"members {_quote_name(previous.name)} and {_quote_name(m.name)} share bytes "
                f"[{m.header_offset}, {min(previous.data_end, m.data_end)}): torch.save never writes overlapping "
                "members; the archive was crafted or damaged",
                m.name,
            )
        elif m.header_offset > position:
            gap = m.header_offset - position
            if previous is None:
                d.problem(
                    "zip-leading-data",
                    f"{gap} bytes precede the first member: data (a pickle, a script) placed before the archive, the "
                    "shape of a polyglot file",
                )
            elif not (previous.flags & 0x8 and gap in _DESCRIPTOR_SIZES):
                d.problem(
                    "zip-hidden-data",
                    f"{gap} bytes after member {_quote_name(previous.name)} belong to no member",
                    previous.name,
                )
        if previous is None or m.data_end > previous.data_end:
            previous = m
            position = m.data_end
    if previous is None and d.directory_offset > d.start:
        d.problem("zip-leading-data", f"{d.directory_offset} bytes precede a central directory that lists no member")
    elif previous is not None:
        gap = d.directory_offset - position
        if gap > 0 and not (previous.flags & 0x8 and gap in _DESCRIPTOR_SIZES):
            d.problem("zip-hidden-data", f"{gap} bytes before the central directory belong to no member", previous.name)


def read_directory(
    fh: IO[bytes], path: str, file_size: int, *, max_inflated: int = 16 << 30, local_headers: bool = True
) -> ZipDirectory:
    """Parse and check the archive in ``fh``; every problem is listed in the result, none is raised.

    Args:
        fh: the open file, positioned anywhere.
        path: its name, for messages.
        file_size: its size in bytes.
        max_inflated: budget for the total inflated size of compressed members.
        local_headers: False reads the end records and the central directory only (the same parse, so the same
            members, names and directory problems), leaving every local header unread (``data_offset`` -1) and
            the members' own checks undone: what format detection needs, at the cost of one directory read.
    """
    d = ZipDirectory(path, file_size)
    found = _end_record(d, fh)
    if found is None:
        return d
    count, size, offset, records_end = found
    shift = 0
    if count and _read(fh, offset, 4) != b"PK\x01\x02" and _read(fh, records_end - size, 4) == b"PK\x01\x02":
        # The offsets count from a later start: an archive appended to other data (how zipfile reads it too).
        shift = records_end - size - offset
        offset += shift
        d.problem(
            "zip-leading-data",
            f"the archive starts at byte {shift}, after {shift} bytes of other data (a pickle, a script): the shape "
            "of a polyglot file that pickle readers and zip readers see differently",
        )
    d.directory_offset = offset
    d.start = shift
    seen: dict[str, ZipMember] = {}
    inflated = [0]
    for entry in _entries(d, fh, count, size, offset):
        if shift:
            entry = replace(entry, header_offset=entry.header_offset + shift)
        member = _local(d, fh, entry) if local_headers else entry
        d.members.append(member)
        if member.name in seen:
            d.problem(
                "zip-duplicate-member",
                f"member {_quote_name(member.name)} appears twice (entries {seen[member.name].index} and "
                f"{member.index}); zip readers disagree on which one they read",
                member.name,
            )
        else:
            seen[member.name] = member
        if local_headers:
            _check_member(d, member, max_inflated, inflated)
    if len(d.members) != count or not local_headers:
        return d
    _layout(d)
    return d


#: Error class per problem code; everything else is a :class:`CorruptCheckpointError`.
_LIMIT_CODES = frozenset({"limit-inflate", "limit-zip-entries"})
#: Which problem names the error when there are several: the cause before its consequences (an overlap also
#: makes a local header disagree and leaves bytes unaccounted for).
_PRIORITY = (
    "limit-zip-entries",
    "limit-inflate",
    "truncated",
    "zip-overlap",
    "zip-duplicate-member",
    "zip-encrypted",
    "zip-leading-data",
    "zip-trailing-data",
    "zip-unsafe-name",
    "zip-compression",
    "zip-flags",
    "bad-zip",
    "zip-name-mismatch",
    "zip-hidden-data",
)


def check(d: ZipDirectory, *, ignore: frozenset[str] = frozenset()) -> None:
    """Raise one error naming every problem of ``d`` (codes in ``ignore`` excepted); do nothing if there is none.

    Raises:
        ResourceLimitError: the first problem is a budget (``limit-*``).
        CorruptCheckpointError: otherwise, with the first problem's code.
    """
    problems = [p for p in d.problems if p.code not in ignore]
    if not problems:
        return
    first = min(problems, key=lambda p: _PRIORITY.index(p.code) if p.code in _PRIORITY else len(_PRIORITY))
    listed = "; ".join(p.message for p in problems[:10])
    more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
    message = (
        f"'{d.path}' is a zip archive with {plural(len(problems), 'problem')}: {listed}{more}. torchweights refuses "
        "it rather than guess which reading is the real one. Fix: re-download the file, or re-save it with "
        "torch.save; if you did not expect this, check it with `torchweights scan`."
    )
    cls = ResourceLimitError if first.code in _LIMIT_CODES else CorruptCheckpointError
    raise cls(message, code=first.code, path=d.path)


def check_member_inflation(m: ZipMember, path: str, limits: Limits, size: int | None = None) -> None:
    """Refuse, before anything is inflated, a compressed member whose first ``size`` bytes (all of it by default)
    would inflate past the per-member rule of ``limits`` (:meth:`Limits.inflation_refused`). Loading and ``scan``
    both call it for every member they read whole (pickles, TorchScript source), so they refuse the same files.

    Raises:
        ResourceLimitError: code ``limit-inflate``.
    """
    size = m.size if size is None else min(size, m.size)
    if not m.compress_type or not limits.inflation_refused(m.compressed_size, size):
        return
    raise ResourceLimitError(
        f"'{path}': member {_quote_name(m.name)} would inflate from {m.compressed_size} to {size} bytes, more than "
        f"{limits.max_inflate_ratio} times its compressed size (Limits.max_inflate_ratio, above "
        f"{limits.inflate_ratio_from_bytes} bytes): a decompression bomb, since torch never compresses pickles. "
        "Nothing was inflated. If you trust the file: tw.open(path, limits=Limits(max_inflate_ratio=...)), or "
        "re-save it with torch.save.",
        code="limit-inflate",
        path=path,
    )


def inflate(fh: IO[bytes], m: ZipMember, limit: int) -> bytes:
    """The first ``limit`` bytes of a member's content (inflated when compressed), never more than it declares,
    decoded by :func:`torchweights.storage.compression.decode` (stored, deflate, bzip2, lzma). The CRC is the
    caller's to check.

    Raises:
        CorruptCheckpointError: the member cannot be read or inflated (code ``bad-member``, ``truncated`` or
            ``zip-compression``).
    """
    if m.data_offset < 0:
        raise CorruptCheckpointError(f"member {_quote_name(m.name)} has no readable local header", code="truncated")
    return decode(fh, m.compress_type, m.data_offset, m.compressed_size, min(limit, m.size), _quote_name(m.name))
