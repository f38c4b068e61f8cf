"""``formats/_zip.py``: the per-member inflation rule (``Limits.max_inflate_ratio`` above
``Limits.inflate_ratio_from_bytes``), the global budget, and reads that never inflate more than asked."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace

import pytest

from torchweights.errors import CorruptCheckpointError, ResourceLimitError
from torchweights.formats._zip import ZipMember, check_member_inflation, inflate, read_directory
from torchweights.limits import DEFAULT_LIMITS, Limits

MiB = 1 << 20


def _member(compressed: int, size: int, method: int = 8) -> ZipMember:
    return ZipMember("root/data.pkl", 0, 0, 30, method, compressed, size, 0, 0)


@pytest.mark.parametrize(
    ("compressed", "size", "refused"),
    [
        (1, 16 * MiB, False),  # at the size floor: any ratio
        (1, 16 * MiB + 1, True),
        (170_000, 16 * MiB + 1, False),  # 98.7:1
        (167_773, 16 * MiB + 1, False),  # exactly 100:1 and a little under
        (167_772, 16 * MiB + 1, True),
        (10 * MiB, 1 << 30, True),  # 102.4:1
        (11 * MiB, 1 << 30, False),
        (0, 17 * MiB, True),
    ],
)
def test_rule_boundaries(compressed: int, size: int, refused: bool) -> None:
    assert DEFAULT_LIMITS.inflation_refused(compressed, size) is refused
    m = _member(compressed, size)
    if refused:
        with pytest.raises(ResourceLimitError) as info:
            check_member_inflation(m, "x.pt", DEFAULT_LIMITS)
        assert info.value.code == "limit-inflate" and "'root/data.pkl'" in info.value.message
    else:
        check_member_inflation(m, "x.pt", DEFAULT_LIMITS)


def test_stored_members_and_partial_reads_are_never_refused() -> None:
    check_member_inflation(_member(1 << 30, 1 << 30, method=0), "x.pt", DEFAULT_LIMITS)
    bomb = _member(1000, 1 << 30)
    check_member_inflation(bomb, "x.pt", DEFAULT_LIMITS, size=64 * 1024)  # a probe of its first bytes
    with pytest.raises(ResourceLimitError):
        check_member_inflation(bomb, "x.pt", DEFAULT_LIMITS, size=1 << 30)


def test_limits_are_adjustable() -> None:
    bomb = _member(100_000, 64 * MiB)  # 671:1
    check_member_inflation(bomb, "x.pt", Limits(max_inflate_ratio=1000))
    check_member_inflation(bomb, "x.pt", Limits(inflate_ratio_from_bytes=128 * MiB))
    with pytest.raises(ResourceLimitError):
        check_member_inflation(bomb, "x.pt", replace(DEFAULT_LIMITS, max_inflate_ratio=500))


def test_directory_and_inflate_of_a_real_bomb() -> None:
    """A 32 MiB run of zeros deflates about 1000:1: within deflate's 1032:1 (the directory check passes), refused by
    the per-member rule; ``inflate`` itself never produces more than it is asked for."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("root/data.pkl", bytes(32 * MiB), compresslevel=9)
    size = buffer.tell()
    directory = read_directory(buffer, "bomb.zip", size)
    assert directory.problems == []
    (member,) = directory.members
    assert member.size > 1000 * member.compressed_size
    with pytest.raises(ResourceLimitError):
        check_member_inflation(member, "bomb.zip", DEFAULT_LIMITS)
    assert inflate(buffer, member, 100) == bytes(100)
    # the global budget still applies on top
    tight = read_directory(buffer, "bomb.zip", size, max_inflated=MiB)
    assert [p.code for p in tight.problems] == ["limit-inflate"]


def test_lzma_member_with_a_bad_header_is_one_error() -> None:
    """The member's own header check passes through the decompressor's error handling unchanged."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("root/data.pkl", b"\x80\x02}q\x00." * 100)
    (member,) = read_directory(buffer, "x.zip", buffer.tell()).members
    raw = bytearray(buffer.getvalue())
    raw[member.data_offset + 2] = 7  # lzma properties size: 7 (zip's lzma header always says 5)
    with pytest.raises(CorruptCheckpointError) as info:
        inflate(io.BytesIO(bytes(raw)), member, member.size)
    assert info.value.code == "bad-member" and "[bad-member]" not in info.value.message, info.value
    assert info.value.message == "member 'root/data.pkl' has no valid lzma header"
