"""Resource guards of the pickle machine: the work budget of one stream, and the bounds that keep a hostile pickle
from crashing or stalling the interpreter.

* :class:`StreamState`, the stream being read (in the context variable :data:`STREAM`, for the reconstructors of
  the table): its work budget (``Limits.max_pickle_opcodes``) and the hashing work spent so far, the bytes of its
  Python 2 strings, and the format reader's hook for storages pickled on their own;
* :func:`over_budget`: the error for a stream over that budget;
* :func:`check_key`: no dict key or set element is hashed when its tuples nest too deep or hold too many items
  (CPython hashes them recursively, without a guard);
* :class:`Nesting`: deques, defaultdicts and numpy object arrays never nest directly in one another deep enough for
  CPython to crash freeing them.
"""

from __future__ import annotations

import collections
import contextvars
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ResourceLimitError
from .values import EmbeddedStorage, bad_pickle

__all__ = ["STREAM", "EmbeddedReader", "Nesting", "StreamState", "check_key", "over_budget"]

#: The format reader's hook for ``torch.storage._load_from_bytes(blob)``: reads ``blob``, the legacy ``torch.save``
#: stream of one storage, with this same machine (raising :class:`~torchweights.errors.UnsafeCheckpointError` for a
#: blob that is not one, or that names dangerous globals).
EmbeddedReader = Callable[[Any], EmbeddedStorage]


class StreamState:
    """What the reconstructors of the table need to know of the stream being read (:data:`STREAM`).

    Attributes:
        py2_bytes: the Python 2 ``str`` payloads (``STRING``, ``BINSTRING``, ``SHORT_BINSTRING``) decoded as UTF-8
            that are not ASCII, by id: ``(text, bytes in the file)``. Text is read as UTF-8 as torch reads it, but
            numpy's reconstructors need the bytes themselves (``'é'`` may have been ``c3 a9`` or ``e9``).
        hashed: items of tuples checked (and so about to be hashed) as dict keys or set elements so far.
        max_work: ``Limits.max_pickle_opcodes``: the bound on ``hashed`` (and, in the machine, on opcodes).
        read_embedded: the format reader's :data:`EmbeddedReader`, or None: the reader sits above this package, so
            it hands the hook down rather than being imported here.
    """

    __slots__ = ("hashed", "max_work", "py2_bytes", "read_embedded")

    def __init__(self, max_work: int, read_embedded: EmbeddedReader | None = None) -> None:
        self.py2_bytes: dict[int, tuple[str, bytes]] = {}
        self.hashed = 0
        self.max_work = max_work
        self.read_embedded = read_embedded


#: The stream the machine of this thread (context) is reading, for the module-level reconstructors.
STREAM: contextvars.ContextVar[StreamState | None] = contextvars.ContextVar("STREAM", default=None)


def over_budget(what: str, limit: int) -> ResourceLimitError:
    """The error for a stream that ``what`` (``"executes opcodes"``) more than ``limit`` allows."""
    return ResourceLimitError(
        f"the pickle stream {what} more than the {limit:,} allowed (Limits.max_pickle_opcodes): reading it would take "
        "minutes of CPU. torch.save writes about 30 opcodes per tensor, so no weights file comes near; the file is "
        "hostile or holds tens of millions of Python objects. If you trust it, raise the limit: "
        "tw.open(path, limits=Limits(max_pickle_opcodes=...)).",
        code="limit-pickle-opcodes",
    )


_MAX_KEY_DEPTH = 100
_MAX_KEY_NODES = 100_000


def check_key(value: Any) -> None:
    """Refuse a dict key or set element whose hash would recurse too deep or take too long.

    Python hashes a tuple by hashing every element, recursively and without a depth guard: a key nested a million
    tuples deep crashes the interpreter, and a key of shared tuples nested 60 deep takes 2**60 steps.
    """
    if type(value) is not tuple:
        return
    pending = [(value, 1)]
    seen = 0
    stream = STREAM.get()
    if stream is not None and stream.hashed > stream.max_work:
        raise over_budget("hashes tuple items in dict keys and set elements", stream.max_work)
    while pending:
        tup, depth = pending.pop()
        seen += len(tup)
        if depth > _MAX_KEY_DEPTH or seen > _MAX_KEY_NODES:
            raise ResourceLimitError(
                f"a dict key or set element in the pickle is a tuple nested more than {_MAX_KEY_DEPTH} levels deep or "
                f"holding more than {_MAX_KEY_NODES} items; no real checkpoint has one. The file is malformed or "
                "hostile.",
                code="limit-depth",
            )
        for item in tup:
            if type(item) is tuple:
                pending.append((item, depth + 1))
    if stream is not None:
        stream.hashed += seen


_MAX_NESTING = 16


class Nesting:
    """Bounds chains of deques, defaultdicts and numpy object arrays nested directly in one another.

    CPython frees those recursively in C, without the "trashcan" guard that lists, dicts, tuples and instances of
    Python classes have: a chain a few thousand deep crashes the interpreter when it is freed, whoever frees it.
    Guarded containers in between only help so much (the guard lets 50 of them nest before it defers), so direct
    chains are kept short: 50 x 16 unguarded frames stay far from the C stack's end. Every such container the
    machine makes is registered with its depth (and kept alive until the stream is read, so ids stay unique); one
    that grows deeper after being nested in another is refused, so no recorded depth can go stale.
    """

    def __init__(self) -> None:
        self.entries: dict[int, list[Any]] = {}  # id -> [object, depth, nested in another]

    @staticmethod
    def _items(obj: Any) -> Any:
        if isinstance(obj, collections.deque):
            return obj
        if isinstance(obj, collections.defaultdict):
            return list(obj.values())
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.ndarray) and obj.dtype.hasobject:
            return obj.ravel()
        return None

    def _entry(self, obj: Any) -> list[Any] | None:
        entry = self.entries.get(id(obj))
        return entry if entry is not None and entry[0] is obj else None

    def _depth(self, items: Any, parent: Any) -> int:
        depth = 1
        for item in items:
            entry = self._entry(item) if item is not parent else None
            if entry is not None:
                entry[2] = True
                depth = max(depth, entry[1] + 1)
        if depth > _MAX_NESTING:
            raise ResourceLimitError(
                f"the pickle nests deques or numpy object arrays directly in one another more than {_MAX_NESTING} "
                "levels deep; no real checkpoint does. The file is malformed or hostile.",
                code="limit-depth",
            )
        return depth

    def note(self, obj: Any) -> Any:
        """Register ``obj`` if it is a new deque or object array; returns it."""
        items = self._items(obj)
        if items is not None and self._entry(obj) is None:
            self.entries[id(obj)] = [obj, self._depth(items, obj), False]
        return obj

    def grow(self, target: Any, items: list[Any]) -> None:
        """``items`` are about to be added to the deque or defaultdict ``target``."""
        entry = self._entry(target)
        if entry is None:
            self.note(target)
            entry = self._entry(target)
            assert entry is not None
        depth = self._depth(items, target)
        if depth > entry[1]:
            if entry[2]:
                raise bad_pickle(
                    f"a {type(target).__name__} grew deeper after it was nested in another container; pickle never "
                    "writes that"
                )
            entry[1] = depth
