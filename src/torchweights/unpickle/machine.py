"""The only code in torchweights that reads pickle: the opcode machine.

A small pickle virtual machine that decodes every opcode itself and never calls anything named by the file,
except entries of one fixed table of pure data reconstructors (:data:`~.table.SAFE_GLOBALS`) and the globals the
user explicitly allowed by name. Everything else becomes inert data (:mod:`~torchweights.unpickle.values`):

* a global not in the table becomes a :class:`~.values.Global` reference; calling it (``REDUCE``, ``NEWOBJ``,
  ``INST``) makes a :class:`~.values.Stub` that records the class name, the arguments and the state, so a pickled
  ``nn.Module`` still yields its parameters without its class being imported;
* globals known to run code, touch files, processes or the network, or import modules
  (:func:`~.policy.classify_global`) are recorded (:class:`~.record.Recorder`) and refused with
  :class:`~torchweights.errors.UnsafeCheckpointError` once the whole stream has been read, naming every one;
* ``builtins.getattr`` (how pickle spells bound methods and enum members by name) is answered without looking
  anything up: ``getattr(<stub Net>, 'hook')`` is the inert global ``pkg.Net.hook``, classified like any other, so
  ``getattr(<global torch.os>, 'system')`` is refused as ``torch.os.system``;
* tensors and storages become :class:`~.values.PickledTensor` / :class:`~.values.PickledStorage` descriptions; their
  bytes are located by the format reader through ``persistent_load``.

The machine never recurses, never hashes a key nested too deep, never builds chains of deques or object arrays that
CPython would free recursively (:mod:`~torchweights.unpickle.guards`), never prints a value it cannot bound, and
never lets ``bytes(n)`` or ``list(range(n))`` allocate. :mod:`~torchweights.unpickle.stream` runs it.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import copyreg
import struct
from collections.abc import Callable
from typing import Any

from .calls import apply_build, import_allowed, instantiate
from .guards import Nesting, StreamState, check_key, over_budget
from .policy import classify_global
from .record import Recorder
from .table import SAFE_GLOBALS
from .values import Ctor, Global, Pending, Refused, Stub, UnpickleResult, bad_pickle, bounded_repr

__all__ = ["FIRST_OPCODES", "Machine"]


_MARK = object()


#: Opcodes a pickle stream can start with: Python's unpickler needs no PROTO opcode (protocols 0 and 1 have none),
#: so ``\x8c\x05posix\x8c\x06system\x93...`` runs under ``pickle.load`` as well as ``cos\nsystem\n...``.
FIRST_OPCODES = frozenset(b"(cNIJKLFSVUXTG]})iplgRhjqBCMPr\x80\x82\x83\x84\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x95\x96")


class _Reader:
    """Bounds-checked cursor over a bytes-like buffer."""

    __slots__ = ("data", "end", "find", "pos")

    def __init__(self, data: bytes | memoryview, start: int, end: int) -> None:
        self.data = data
        self.pos = start
        self.end = end
        #: ``find(sub, start, end)`` over the same offsets as ``data``, searching in place: bytes, or the mapping
        #: (or bytes) a whole-buffer memoryview shows; None for other views, searched in growing copies.
        self.find: Callable[[bytes, int, int], int] | None = None
        if isinstance(data, (bytes, bytearray)):
            self.find = data.find
        else:
            base: Any = data.obj
            if hasattr(base, "find") and data.contiguous and data.itemsize == 1 and len(base) == data.nbytes:
                self.find = base.find

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise bad_pickle(
                f"pickle data is truncated: an opcode at byte {self.pos} needs {n} more bytes, "
                f"{self.end - self.pos} remain",
                code="truncated",
            )
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def line(self, limit: int = 1 << 16) -> bytes:
        """The text argument of a protocol-0 opcode: the bytes up to the next newline (at most ``limit``)."""
        data = self.data
        start = self.pos
        stop = min(self.end, start + limit)
        if self.find is not None:
            idx = self.find(b"\n", start, stop)
        else:  # copy what is searched, in growing steps: a short line costs a short copy
            idx, lo, step = -1, start, 32
            while lo < stop and idx < 0:
                hi = min(stop, lo + step)
                found = bytes(data[lo:hi]).find(b"\n")
                idx, lo, step = (lo + found if found >= 0 else -1), hi, step * 4
        if idx < 0:
            if stop == self.end:
                raise bad_pickle(
                    f"pickle data is truncated: the text argument at byte {start} has no end", code="truncated"
                )
            raise bad_pickle(f"pickle text argument at byte {start} has no end of line within {limit} bytes")
        self.pos = idx + 1
        return bytes(data[start:idx])

    def u1(self) -> int:
        if self.pos >= self.end:
            raise bad_pickle("pickle data is truncated", code="truncated")
        value = self.data[self.pos]
        self.pos += 1
        return int(value)

    def unpack(self, fmt: struct.Struct) -> Any:
        pos = self.pos
        if pos + fmt.size > self.end:
            self.take(fmt.size)  # raises the truncation error
        self.pos = pos + fmt.size
        return fmt.unpack_from(self.data, pos)[0]


_U2 = struct.Struct("<H")
_U4 = struct.Struct("<I")
_I4 = struct.Struct("<i")
_U8 = struct.Struct("<Q")
_F8 = struct.Struct(">d")


def _decode_py2_str(raw: bytes, kept: dict[int, tuple[str, bytes]]) -> str:
    """A Python 2 ``str`` as text: UTF-8 when it is valid UTF-8 (its bytes then kept in ``kept``), else latin-1
    (which gives the bytes back)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
    if not raw.isascii():
        kept[id(text)] = (text, raw)
    return text


def _text_int(raw: bytes) -> int:
    try:
        return int(raw.rstrip(b"L") or b"0")
    except ValueError:
        raise bad_pickle(f"bad integer literal {raw[:40]!r} in pickle") from None


class Machine(Recorder):
    """The opcode machine for one stream: :meth:`run` executes it, recording what it references and calls (the
    :class:`~.record.Recorder` it is)."""

    def __init__(
        self,
        persistent_load: Callable[[Any], Any] | None,
        allow_globals: frozenset[str],
    ) -> None:
        super().__init__()
        self.persistent_load = persistent_load
        self.allow_globals = allow_globals
        self.proto = 0
        self.created: dict[int, Any] = {}  # objects made by allowed globals, by id
        self.nesting = Nesting()

    # -- globals ---------------------------------------------------------------------------------------------
    def find_global(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise bad_pickle("a pickle global must be named by two strings")
        if self.proto < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        qual = f"{module}.{name}"
        is_allowed = qual in self.allow_globals and classify_global(qual) != "dangerous"  # never one that runs code
        self.refer(qual, verdict="allowed" if is_allowed else None)
        if is_allowed:
            allowed = import_allowed(module, name, self.created)
            return allowed if callable(allowed.obj) else allowed.obj
        entry = SAFE_GLOBALS.get(qual)
        if entry is not None:
            return entry
        return self.note(Global(module, name))

    def note(self, value: Any) -> Any:
        """Record a global reference the stream made (by name, or through ``getattr``); flag it if dangerous."""
        if type(value) is Refused:
            # the call itself is the danger: reported where the stream named the callable (inner names: at the call)
            at = self.at
            self.at = next((r.offset for r in reversed(self.references) if r.name == value.call), at)
            self.refer(value.call, verdict="dangerous")
            self.at = at
            for name in value.names:
                self.refer(name, verdict="dangerous")
            return Stub(value.call, value.args)
        if type(value) is Global:
            qual = value.qualname
            if qual not in self.globals:
                self.refer(qual, "getattr" if self.how in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ") else None)
        else:
            self.nesting.note(value)
        return value

    def extension(self, code: int) -> Any:
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if key is None:
            # ``pickle.load`` resolves it through the loading process's copyreg registry, which we cannot know: any
            # process where a library registered the code would call whatever it names. torch never writes these.
            self.refer(f"copyreg extension code {code}", "EXT", "dangerous", refuse=False)
            raise bad_pickle(f"pickle uses extension code {code}, which is not registered")
        return self.find_global(*key)

    # -- run ---------------------------------------------------------------------------------------------------
    def run(self, data: bytes | memoryview, start: int, end: int, stream: StreamState) -> UnpickleResult:
        r = _Reader(data, start, end)
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        memo: dict[int, Any] = {}
        pending_memo: dict[int, list[int]] = {}
        count = 0

        def pop_mark() -> list[Any]:
            # Rebinds ``stack``: never call it inside an expression that already looked ``stack`` up.
            nonlocal stack
            if not metastack:
                raise bad_pickle(f"pickle opcode at byte {r.pos - 1} needs a MARK that is not there")
            items = stack
            stack = metastack.pop()
            return items

        def top() -> Any:
            if not stack:
                raise bad_pickle(f"pickle stack underflow at byte {r.pos - 1}")
            return stack[-1]

        def pop() -> Any:
            if not stack:
                raise bad_pickle(f"pickle stack underflow at byte {r.pos - 1}")
            return stack.pop()

        def replace(old: Any, new: Any) -> None:
            # BUILD may turn a pending value into a new object: update the memo slots that hold the old one.
            for key in pending_memo.pop(id(old), ()):
                if memo.get(key) is old:
                    memo[key] = new

        def setitems(target: Any, items: list[Any]) -> None:
            if len(items) % 2:
                raise bad_pickle("SETITEMS needs key/value pairs")
            dest = target.dictitems if isinstance(target, Stub) else target
            if not isinstance(dest, dict):
                raise bad_pickle(f"SETITEM on {type(target).__name__}, which is not a dict")
            if isinstance(dest, collections.defaultdict):
                self.nesting.grow(dest, items[1::2])
            try:
                for i in range(0, len(items), 2):
                    check_key(items[i])
                    dest[items[i]] = items[i + 1]
            except TypeError as exc:
                raise bad_pickle(f"bad dict key in pickle: {bounded_repr(str(exc), 200)}") from None

        def extend(target: Any, items: list[Any]) -> None:
            if isinstance(target, Stub):
                target.items.extend(items)
            elif isinstance(target, list):
                target.extend(items)
            elif isinstance(target, collections.deque):
                self.nesting.grow(target, items)
                target.extend(items)
            else:
                raise bad_pickle(f"APPEND on {type(target).__name__}, which is not a list")

        def push_memo(key: int, value: Any) -> None:
            memo[key] = value
            if isinstance(value, Pending):
                pending_memo.setdefault(id(value), []).append(key)

        data, end = r.data, r.end
        py2_bytes, max_opcodes = stream.py2_bytes, stream.max_work
        while True:
            pos = r.pos
            if pos >= end:
                raise bad_pickle("pickle data ended without a STOP opcode: the file is truncated", code="truncated")
            op = data[pos]
            r.pos = pos + 1
            count += 1
            if count > max_opcodes:
                raise over_budget("executes opcodes", max_opcodes)
            # The most frequent opcodes of torch.save pickles come first (an if chain is tested in order).
            if op == 0x72 or op == 0x71 or op == 0x70:  # LONG_BINPUT, BINPUT, PUT
                key = r.unpack(_U4) if op == 0x72 else r.u1() if op == 0x71 else _text_int(r.line())
                push_memo(key, top())
            elif op == 0x68 or op == 0x6A or op == 0x67:  # BINGET, LONG_BINGET, GET
                key = r.u1() if op == 0x68 else r.unpack(_U4) if op == 0x6A else _text_int(r.line())
                if key not in memo:
                    raise bad_pickle(f"pickle reads memo slot {key}, which was never written")
                stack.append(memo[key])
            elif op == 0x4D:  # BININT2
                stack.append(r.unpack(_U2))
            elif op in (0x58, 0x8C, 0x8D):  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                n = r.unpack(_U4) if op == 0x58 else r.u1() if op == 0x8C else r.unpack(_U8)
                try:
                    stack.append(r.take(n).decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise bad_pickle(f"pickle string at byte {r.pos - n} is not valid UTF-8") from None
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x74:  # TUPLE
                items = pop_mark()
                stack.append(tuple(items))
            elif op == 0x4B:  # BININT1
                stack.append(r.u1())
            elif op == 0x52:  # REDUCE
                self.at, self.how = r.pos - 1, "REDUCE"
                args = pop()
                fn = pop()
                if not isinstance(args, tuple):
                    raise bad_pickle("REDUCE arguments are not a tuple")
                if type(fn) is not Ctor or fn.name.startswith("copyreg."):
                    self.call(fn, args, "REDUCE")
                stack.append(self.note(instantiate(fn, args, {}, new=False)))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = op - 0x84
                if len(stack) < n:
                    raise bad_pickle("pickle stack underflow building a tuple")
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif op == 0x51:  # BINPERSID
                stack.append(self.persistent(pop()))
            elif op == 0x89:
                stack.append(False)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x4A:  # BININT
                stack.append(r.unpack(_I4))
            elif op == 0x94:  # MEMOIZE
                push_memo(len(memo), top())
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                setitems(top(), items)
            elif op == 0x73:  # SETITEM
                value = pop()
                key = pop()
                setitems(top(), [key, value])
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                extend(top(), items)
            elif op == 0x61:  # APPEND
                item = pop()
                extend(top(), [item])
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x88:
                stack.append(True)
            elif op == 0x62:  # BUILD
                self.at, self.how = r.pos - 1, "BUILD"
                state = pop()
                obj = pop()
                if self.laundering(obj, state):
                    stack.append(obj)  # nothing is set: the stream is refused once it has been read
                    continue
                new = apply_build(obj, state, self.created)
                if new is not obj:
                    self.nesting.note(new)
                    replace(obj, new)
                stack.append(new)
            elif op == 0x63:  # GLOBAL
                self.at, self.how = r.pos - 1, "GLOBAL"
                module = r.line().decode("utf-8", "replace")
                name = r.line().decode("utf-8", "replace")
                stack.append(self.find_global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                self.at, self.how = r.pos - 1, "STACK_GLOBAL"
                name = pop()
                module = pop()
                stack.append(self.find_global(module, name))
            elif op == 0x81:  # NEWOBJ
                self.at, self.how = r.pos - 1, "NEWOBJ"
                args = pop()
                cls = pop()
                if not isinstance(args, tuple):
                    raise bad_pickle("NEWOBJ arguments are not a tuple")
                self.call(cls, args, "NEWOBJ")
                stack.append(self.note(instantiate(cls, args, {}, new=True)))
            elif op == 0x95:  # FRAME
                r.take(8)
            elif op in (0x42, 0x43, 0x8E):  # BINBYTES, SHORT_BINBYTES, BINBYTES8
                n = r.unpack(_U4) if op == 0x42 else r.u1() if op == 0x43 else r.unpack(_U8)
                stack.append(r.take(n))
            elif op == 0x47:  # BINFLOAT
                stack.append(r.unpack(_F8))
            elif op == 0x80:  # PROTO
                self.proto = r.u1()
                if self.proto > 5:
                    raise bad_pickle(f"unsupported pickle protocol {self.proto}")
            elif op == 0x2E:  # STOP '.'
                if not stack:
                    raise bad_pickle("pickle STOP with an empty stack")
                value = stack.pop()
                return UnpickleResult(value, r.pos, self.globals, count)
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(top())
            elif op == 0x49:  # INT
                raw = r.line()
                stack.append(True if raw == b"01" else False if raw == b"00" else _text_int(raw))
            elif op == 0x4C:  # LONG
                stack.append(_text_int(r.line()))
            elif op == 0x8A:  # LONG1
                stack.append(int.from_bytes(r.take(r.u1()), "little", signed=True))
            elif op == 0x8B:  # LONG4
                n = r.unpack(_I4)
                if n < 0:
                    raise bad_pickle("LONG4 with a negative length")
                stack.append(int.from_bytes(r.take(n), "little", signed=True))
            elif op == 0x46:  # FLOAT
                try:
                    stack.append(float(r.line()))
                except ValueError:
                    raise bad_pickle("bad float literal in pickle") from None
            elif op == 0x53:  # STRING
                raw = r.line()
                if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
                    raise bad_pickle("STRING opcode argument is not quoted")
                try:
                    decoded: Any = codecs.escape_decode(raw[1:-1])[0]
                except ValueError as exc:
                    raise bad_pickle(f"STRING opcode argument has a bad escape: {exc}") from None
                stack.append(_decode_py2_str(decoded, py2_bytes))
            elif op == 0x54:  # BINSTRING
                n = r.unpack(_I4)
                if n < 0:
                    raise bad_pickle("BINSTRING with a negative length")
                stack.append(_decode_py2_str(r.take(n), py2_bytes))
            elif op == 0x55:  # SHORT_BINSTRING
                stack.append(_decode_py2_str(r.take(r.u1()), py2_bytes))
            elif op == 0x56:  # UNICODE
                try:
                    stack.append(r.line().decode("raw-unicode-escape"))
                except UnicodeDecodeError as exc:
                    raise bad_pickle(f"UNICODE opcode argument has a bad escape: {exc.reason}") from None
            elif op == 0x96:  # BYTEARRAY8
                stack.append(bytearray(r.take(r.unpack(_U8))))
            elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
                raise bad_pickle("pickle uses out-of-band buffers (protocol 5), which a checkpoint file cannot carry")
            elif op == 0x6C:  # LIST
                items = pop_mark()
                stack.append(items)
            elif op == 0x64:  # DICT
                items = pop_mark()
                d: dict[Any, Any] = {}
                setitems(d, items)
                stack.append(d)
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                target = top()
                if isinstance(target, Stub):  # a set subclass
                    target.items.extend(items)
                    continue
                if not isinstance(target, set):
                    raise bad_pickle("ADDITEMS on something that is not a set")
                try:
                    for item in items:
                        check_key(item)
                    target.update(items)
                except TypeError as exc:
                    raise bad_pickle(f"bad set item in pickle: {exc}") from None
            elif op == 0x91:  # FROZENSET
                try:
                    items = pop_mark()
                    for item in items:
                        check_key(item)
                    stack.append(frozenset(items))
                except TypeError as exc:
                    raise bad_pickle(f"bad set item in pickle: {exc}") from None
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                self.at, self.how = r.pos - 1, "EXT"
                code = r.u1() if op == 0x82 else r.unpack(_U2) if op == 0x83 else r.unpack(_I4)
                stack.append(self.extension(code))
            elif op == 0x92:  # NEWOBJ_EX
                self.at, self.how = r.pos - 1, "NEWOBJ_EX"
                kwargs = pop()
                args = pop()
                cls = pop()
                if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                    raise bad_pickle("NEWOBJ_EX arguments are not a tuple and a dict")
                if not all(isinstance(k, str) for k in kwargs):
                    raise bad_pickle("NEWOBJ_EX keyword arguments are not named by strings")
                self.call(cls, args, "NEWOBJ_EX")
                stack.append(self.note(instantiate(cls, args, kwargs, new=True)))
            elif op == 0x69:  # INST
                self.at, self.how = r.pos - 1, "INST"
                module = r.line().decode("utf-8", "replace")
                name = r.line().decode("utf-8", "replace")
                cls = self.find_global(module, name)
                items = pop_mark()
                self.call(cls, tuple(items), "INST")
                stack.append(self.note(instantiate(cls, tuple(items), {}, new=False)))
            elif op == 0x6F:  # OBJ
                self.at, self.how = r.pos - 1, "OBJ"
                items = pop_mark()
                if not items:
                    raise bad_pickle("OBJ without a class")
                self.call(items[0], tuple(items[1:]), "OBJ")
                stack.append(self.note(instantiate(items[0], tuple(items[1:]), {}, new=False)))
            elif op == 0x50:  # PERSID
                stack.append(self.persistent(r.line().decode("ascii", "replace")))
            else:
                raise bad_pickle(f"unknown pickle opcode 0x{op:02x} at byte {r.pos - 1}: this is not a valid pickle")

    def persistent(self, pid: Any) -> Any:
        if self.persistent_load is None:
            raise bad_pickle("the pickle refers to external data (persistent id) but this format has none")
        return self.persistent_load(pid)
