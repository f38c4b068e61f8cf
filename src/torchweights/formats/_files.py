"""File access and JSON decoding shared by the readers, raising torchweights errors instead of OSError."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import CheckpointNotFoundError, CheckpointReadError
from ..text import quote

__all__ = ["JsonDecodeProblem", "JsonObject", "decode_json", "file_size", "mapped", "read_prefix"]


def file_size(path: str) -> int:
    """Size of the regular file ``path`` in bytes, raising torchweights errors instead of ``OSError``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"{quote(path)} does not exist. Check the path, or download the checkpoint first.", path=path
        ) from None
    except OSError as exc:
        raise _read_error(path, exc) from exc
    if not os.path.isfile(path):
        raise CheckpointReadError(
            f"{quote(path)} is not a regular file, so it cannot be read as a checkpoint file. "
            "Pass the checkpoint file itself (or, for a sharded checkpoint, its folder or *.index.json file).",
            code="not-a-file",
            path=path,
        )
    return st.st_size


def read_prefix(path: str, nbytes: int) -> bytes:
    """The first ``nbytes`` bytes of ``path`` (fewer if the file is shorter), as torchweights errors on failure."""
    try:
        with open(path, "rb") as handle:
            return handle.read(nbytes)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{quote(path)} disappeared while it was being read.", path=path) from None
    except OSError as exc:
        raise _read_error(path, exc) from exc


def _read_error(path: str, exc: OSError) -> CheckpointReadError:
    reason = exc.strerror or exc.__class__.__name__
    return CheckpointReadError(
        f"could not read {quote(path)}: {reason}. The operating system refused access; "
        "check the file's permissions and that the disk is readable.",
        path=path,
    )


class JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers the keys it held more than once (the last value wins)."""

    duplicates: tuple[str, ...] = ()


class JsonDecodeProblem(ValueError):
    """Raised by :func:`decode_json` with ``kind`` ``"utf8"`` or ``"syntax"`` and a readable ``detail``."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(detail)


def decode_json(raw: bytes) -> Any:
    """Decode UTF-8 JSON; every object comes back as a :class:`JsonObject` that lists its duplicate keys.

    Raises:
        JsonDecodeProblem: the bytes are not UTF-8 (``kind="utf8"``) or not JSON (``kind="syntax"``).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonDecodeProblem("utf8", f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte {exc.start}") from None
    try:
        return json.loads(text, object_pairs_hook=_json_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonDecodeProblem("syntax", f"{exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise JsonDecodeProblem("syntax", "the JSON nests too deeply") from None
    except ValueError as exc:  # over-long integers, NaN/Infinity
        raise JsonDecodeProblem("syntax", str(exc)) from None


def _json_object(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dups: dict[str, None] = {}
        for key, _ in pairs:
            if key in seen:
                dups[key] = None
            seen.add(key)
        obj.duplicates = tuple(dups)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@contextmanager
def mapped(path: str) -> Iterator[memoryview]:
    """The whole file as a read-only memoryview over a mapping (pickles are parsed in place, never copied)."""
    try:
        with open(path, "rb") as fh:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise CheckpointReadError(f"cannot read {quote(path)}: {exc}", path=path) from None
    with buf:
        view = memoryview(buf)
        try:
            yield view
        finally:
            view.release()
