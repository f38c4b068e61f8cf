"""Whether bytes are a pickle: the tests scan applies to bytes that merely might hold one (a bytes value, a byte
tensor, a member no reader needs), so that tensor bytes and text stay data and only what ``pickle.load`` could
really load is reported; and :func:`blobs`, the bytes values of an unpickled tree worth that test.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from ... import dtypes
from ...records import StorageRef
from ...text import printable
from ...unpickle.machine import FIRST_OPCODES
from ...unpickle.stream import StreamScan
from ...unpickle.values import Global, PickledStorage, Reference, StorageType, Stub
from .messages import short_quote

__all__ = [
    "BYTE_DTYPES",
    "MAX_LATENT_DEPTH",
    "PROBE_BYTES",
    "blobs",
    "is_pickle",
    "is_pickle_head",
    "lenient_persistent",
    "worth_reading",
]


#: Bytes read first from a member that only might be a pickle (by its first byte), to tell tensor bytes from one.
PROBE_BYTES = 1 << 16
#: The only tensor dtypes whose bytes can hold a serialised blob (a pickle or a zip stored as a tensor).
BYTE_DTYPES = frozenset({"uint8", "int8"})
#: How deep scan follows a pickle or zip found inside another one.
MAX_LATENT_DEPTH = 3


def lenient_persistent(pid: Any) -> Any:
    """Persistent ids while scanning: storages become placeholders (so tensor reconstructors see a storage),
    anything else an inert stub. Nothing is read."""
    if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], StorageType):
        dtype = pid[1].dtype or "uint8"
        numel = pid[4] if type(pid[4]) is int and pid[4] >= 0 else 0
        offset = 0
        if len(pid) == 6 and isinstance(pid[5], tuple) and len(pid[5]) == 3 and type(pid[5][1]) is int:
            offset = max(pid[5][1], 0)  # a legacy storage view
        ref = StorageRef(key=printable(str(pid[2]))[:64], file="", offset=-1, nbytes=numel * dtypes.itemsize(dtype))
        return PickledStorage(ref, dtype, offset)
    if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "module" and isinstance(pid[1], (Global, Stub)):
        return pid[1]
    return Stub("persistent_id", (pid,))


def is_pickle_head(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _resolvable(ref: Reference) -> bool:
    """Whether ``pickle.load`` could resolve the global ``ref`` names: its module and attribute parts are
    identifiers (``find_class`` imports the module and fetches the attributes; anything else raises before the
    opcode completes). References derived from others (a call of what a call returned, a BUILD) count as
    resolvable: their own globals are checked."""
    if ref.how in ("BUILD", "EXT") or ref.name.endswith(("(...)", ")")):
        return True
    return all(part.isidentifier() for part in ref.name.split("."))


def _nameable(ref: Reference) -> bool:
    """A dangerous reference pickle could resolve: its module and attributes are identifiers. Text that merely
    starts like a protocol 0 pickle (``import sys\nsys.path...``) names things like ``mport sys.sys.path``."""
    return ref.verdict == "dangerous" and (ref.how in ("BUILD", "EXT") or _resolvable(ref))


def _reached(call: Reference, seen: StreamScan) -> bool:
    """Whether ``pickle.load`` would make ``call``: a dangerous call whose global, and every global named before
    it, resolves (``pickle.loads`` raises at the first one that does not, before anything after it runs)."""
    return _nameable(call) and all(_resolvable(r) for r in seen.references if r.offset <= call.offset)


def is_pickle(head: bytes, seen: StreamScan) -> bool:
    """Whether bytes that merely might hold a pickle (a bytes value, a byte tensor, a member no reader needs)
    really are one that ``pickle.load`` could load: a ``PROTO`` opcode first and a parse that reaches ``STOP``
    with every global it names resolvable, or a parse that reaches a call of something dangerous before it fails
    (what ``pickle.loads`` would run before raising)."""
    loads = is_pickle_head(head) and seen.error is None and all(_resolvable(r) for r in seen.references)
    return loads or any(_reached(c, seen) for c in seen.calls)


def worth_reading(head: bytes, seen: StreamScan) -> bool:
    """Whether the first :data:`PROBE_BYTES` of bytes that might be a pickle justify reading them whole: a parse
    the probe cut short (a long argument: the call may come later), a PROTO pickle that already reached STOP, or
    one that already called something dangerous. Tensor bytes usually fail on a bad opcode at once, or name a
    global no ``pickle.load`` could resolve."""
    if any(_reached(c, seen) for c in seen.calls):
        return True
    if not all(_resolvable(r) for r in seen.references):
        return False
    return (seen.error is not None and seen.error.code == "truncated") or (is_pickle_head(head) and seen.error is None)


def blobs(value: Any, opcodes: int) -> Iterator[tuple[str, bytes]]:
    """Bytes values inside an unpickled tree that are themselves a pickle or a zip, with a short path to each."""
    budget = 4 * opcodes + 10_000
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack and budget > 0:
        obj, path = stack.pop()
        budget -= 1
        if isinstance(obj, (bytes, bytearray)):
            head = bytes(obj[:4])
            if is_pickle_head(head) or head == b"PK\x03\x04" or (head[:1] and head[0] in FIRST_OPCODES):
                yield f"bytes value at {short_quote(path or '<root>')}", bytes(obj)
            continue
        if id(obj) in seen or isinstance(obj, (str, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        children: list[tuple[str, Any]] = []
        if isinstance(obj, dict):
            children = [(_label(k), v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            children = [(str(i), v) for i, v in enumerate(obj)]
        elif type(obj).__name__ == "ndarray" and getattr(getattr(obj, "dtype", None), "hasobject", False):
            children = [(str(i), v) for i, v in zip(range(budget), obj.flat)]  # an object array's elements
        elif isinstance(obj, Stub):
            children = [
                ("args", obj.args),
                ("kwargs", obj.kwargs),
                ("state", obj.state),
                ("items", obj.items),
                ("dictitems", obj.dictitems),
            ]
        elif hasattr(obj, "__dict__") and type(obj).__module__ in ("argparse", "types"):
            children = list(vars(obj).items())
        for name, child in reversed(children):
            stack.append((child, f"{path}.{name}" if path else name))


def _label(key: Any) -> str:
    if isinstance(key, str):
        return printable(key[:40])
    if type(key) is int and key.bit_length() <= 64:
        return str(key)
    return "?"
