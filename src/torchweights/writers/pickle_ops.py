"""A pickle emitted opcode by opcode, for the writers that must produce pickles torch reads without importing
torch: protocol 2, globals memoised, only plain data, tuples, ``REDUCE`` calls and ``NEWOBJ``/``BUILD`` objects.

>>> p = Pickler()
>>> p.value({"epoch": 3})
>>> p.finish()
b'\\x80\\x02}(X\\x05\\x00\\x00\\x00epochJ\\x03\\x00\\x00\\x00u.'
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Pickler"]


class Pickler:
    """Emits protocol-2 opcodes into :attr:`out`; :meth:`global_` memoises each global it names."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo: dict[str, int] = {}

    def finish(self) -> bytes:
        """The pickle: everything emitted, then ``STOP``."""
        return bytes(self.out + b".")

    def text(self, value: str) -> None:
        """A ``str`` (BINUNICODE)."""
        raw = value.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(raw)) + raw

    def integer(self, value: int) -> None:
        """An ``int`` (BININT, or LONG1 beyond 32 bits)."""
        if -(1 << 31) <= value < (1 << 31):
            self.out += b"J" + struct.pack("<i", value)
            return
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        self.out += b"\x8a" + bytes([len(raw)]) + raw

    def ints(self, values: Sequence[int]) -> None:
        """A tuple of ints."""
        self.out += b"("  # MARK
        for v in values:
            self.integer(v)
        self.out += b"t"  # TUPLE

    def global_(self, module: str, name: str) -> None:
        """Push ``module.name`` (GLOBAL the first time, then LONG_BINGET of its memo slot)."""
        key = f"{module}\n{name}\n"
        index = self.memo.get(key)
        if index is not None:
            self.out += b"j" + struct.pack("<I", index)  # LONG_BINGET
            return
        self.out += b"c" + key.encode("ascii")  # GLOBAL
        index = self.memo[key] = len(self.memo)
        self.out += b"r" + struct.pack("<I", index)  # LONG_BINPUT

    def ordered_dict(self) -> None:
        """An empty ``collections.OrderedDict()``."""
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE

    def call(self, module: str, name: str, *args: Any) -> None:
        """``module.name(*args)`` (REDUCE), each argument plain data (:meth:`value`)."""
        self.global_(module, name)
        self.out += b"("  # MARK
        for arg in args:
            self.value(arg)
        self.out += b"tR"  # TUPLE, REDUCE

    def new_object(self, module: str, name: str, state: Mapping[str, Any] | None) -> None:
        """``cls.__new__(cls)`` with its ``__dict__`` set from ``state`` (NEWOBJ, then BUILD): a dataclass as
        ``pickle`` writes it. Values of ``state`` are emitted by :meth:`value`, or by themselves when callable
        (``lambda p: p.call(...)``)."""
        self.global_(module, name)
        self.out += b")\x81"  # EMPTY_TUPLE, NEWOBJ
        if state is not None:
            self.out += b"}("  # EMPTY_DICT, MARK
            for key, value in state.items():
                self.text(key)
                self.value(value)
            self.out += b"ub"  # SETITEMS, BUILD

    def value(self, value: Any) -> None:
        """Plain data: None, bool, int, finite or not float, str, tuple, list, dict with str keys; or a
        callable that emits its own opcodes (``value(pickler)``)."""
        if callable(value):
            value(self)
        elif value is None:
            self.out += b"N"
        elif isinstance(value, bool):
            self.out += b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE
        elif isinstance(value, int):
            self.integer(value)
        elif isinstance(value, float):
            self.out += b"G" + struct.pack(">d", value)  # BINFLOAT (nan and inf included)
        elif isinstance(value, str):
            self.text(value)
        elif isinstance(value, tuple):
            self.out += b"("
            for v in value:
                self.value(v)
            self.out += b"t"
        elif isinstance(value, list):
            self.out += b"]("  # EMPTY_LIST, MARK
            for v in value:
                self.value(v)
            self.out += b"e"  # APPENDS
        elif isinstance(value, Mapping):
            self.out += b"}("
            for k, v in value.items():
                self.value(k)
                self.value(v)
            self.out += b"u"
        else:
            raise TypeError(f"cannot pickle {type(value).__name__} as plain data")
