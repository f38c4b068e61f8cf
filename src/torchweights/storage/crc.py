"""CRC-32 of memory, with the fastest backend installed, and of pieces read in parallel.

:func:`crc32` uses the ``zlib-ng`` package (SIMD, about 7x zlib's speed here), the system's libdeflate
(``libdeflate_crc32`` through :mod:`ctypes`, about 3x), or :func:`zlib.crc32`; all compute the same checksum and
release the GIL. :func:`crc32_combine` joins the CRC-32 values of pieces read by different threads (the GF(2)
polynomial arithmetic behind zlib's function of that name, which Python's :mod:`zlib` does not expose).
"""

from __future__ import annotations

import ctypes
import os
import zlib
from typing import Any

__all__ = ["CRC32_BACKENDS", "crc32", "crc32_backend", "crc32_combine"]

# --------------------------------------------------------------------------------------------------------------
# CRC-32 of concatenated pieces: crc(A + B) from crc(A), crc(B) and len(B). In zlib's reflected representation a
# 32-bit word is a polynomial of degree < 32 with x^0 in the top bit; appending len(B) zero bytes to A multiplies
# crc(A) by x^(8 len(B)) modulo the CRC polynomial, and the CRC of B alone is then added (xor).
# --------------------------------------------------------------------------------------------------------------

_POLY = 0xEDB88320  # x^32 + x^26 + ... + 1, reflected, without the x^32 term
_TOP = 1 << 31  # x^0


def _mulmod(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial."""
    product = 0
    bit = _TOP
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _square_table() -> list[int]:
    table = [_TOP >> 1]  # x^1
    for _ in range(63):
        table.append(_mulmod(table[-1], table[-1]))  # x^(2^k)
    return table


_X_POW2 = _square_table()


def _x_pow(n: int) -> int:
    """x^n modulo the CRC polynomial."""
    result = _TOP
    k = 0
    while n:
        if n & 1:
            result = _mulmod(_X_POW2[k], result)
        n >>= 1
        k += 1
    return result


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` (as zlib's ``crc32_combine``)."""
    if len_b <= 0:
        return crc_a
    return _mulmod(_x_pow(8 * len_b), crc_a) ^ crc_b


# --------------------------------------------------------------------------------------------------------------
# CRC-32 of memory
# --------------------------------------------------------------------------------------------------------------

_LIBDEFLATE_NAMES = ("libdeflate.so.0", "libdeflate.so", "libdeflate.dylib", "libdeflate.0.dylib")
#: Backends in order of preference (measured here on 256 MiB: zlib-ng 29 GB/s, libdeflate 1.14 15 GB/s, zlib
#: 4 GB/s on one core). ``TORCHWEIGHTS_CRC32`` names one to use instead (``zlib`` always works).
CRC32_BACKENDS = ("zlib-ng", "libdeflate", "zlib")
_CHECK_VALUE = zlib.crc32(b"123456789")  # the standard CRC-32 check value
_crc: tuple[str, Any, bool] | None = None  # (name, function, takes an address instead of a buffer)


def _load_backend(name: str) -> tuple[Any, bool] | None:
    """The CRC-32 function of one backend, checked against the standard check value, or None if unavailable."""
    fn: Any = None
    by_address = False
    if name == "zlib-ng":
        try:
            from zlib_ng import zlib_ng  # the zlib-ng package (pip install zlib-ng): SIMD CRC-32, GIL released
        except ImportError:
            return None
        fn = zlib_ng.crc32
    elif name == "libdeflate":
        for lib in _LIBDEFLATE_NAMES:
            try:
                fn = ctypes.CDLL(lib).libdeflate_crc32
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_uint32
            fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
            by_address = True  # ctypes cannot take a read-only buffer: the caller passes the memory's address
            break
    elif name == "zlib":
        fn = zlib.crc32
    if fn is None:
        return None
    probe = bytearray(b"123456789")
    value = fn(0, ctypes.addressof(ctypes.c_char.from_buffer(probe)), 9) if by_address else fn(probe)
    return (fn, by_address) if int(value) == _CHECK_VALUE else None


def _backend() -> tuple[str, Any, bool]:
    """The CRC-32 backend in use (chosen once): ``TORCHWEIGHTS_CRC32`` if set and available, else the fastest."""
    global _crc
    if _crc is None:
        wanted = os.environ.get("TORCHWEIGHTS_CRC32", "").strip().lower()
        names = [wanted] if wanted in CRC32_BACKENDS else list(CRC32_BACKENDS)
        for name in [*names, "zlib"]:
            loaded = _load_backend(name)
            if loaded is not None:
                _crc = (name, *loaded)
                break
    assert _crc is not None
    return _crc


def crc32_backend() -> str:
    """What :func:`crc32` uses on this machine: ``"zlib-ng"``, ``"libdeflate"`` or ``"zlib"``."""
    return _backend()[0]


def crc32(mem: memoryview, value: int = 0, address: int | None = None) -> int:
    """CRC-32 of ``mem`` continuing from ``value`` (as :func:`zlib.crc32`), with the fastest backend installed.

    ``address``: where ``mem``'s first byte lives, when known (memory of tensors), so libdeflate can read it in
    place; without it libdeflate is not used (:func:`zlib.crc32` is).
    """
    _, fn, by_address = _backend()
    if not by_address:
        return int(fn(mem, value))
    if address is not None and len(mem):
        return int(fn(value, address, len(mem)))
    return zlib.crc32(mem, value)
