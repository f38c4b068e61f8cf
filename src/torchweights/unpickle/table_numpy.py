"""The safe reconstructors of numpy's globals: dtypes, arrays and scalars, rebuilt through numpy's public constructors.

A dtype's pickled state is interpreted here (byte order, sub-arrays, structured fields, datetime units) and rebuilt
with ``numpy.dtype``, never handed to ``__setstate__``; array and scalar data must match their dtype and shape. Without
numpy installed they stay inert stubs.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from ..errors import CorruptCheckpointError, pass_through
from .guards import STREAM
from .values import Ctor, Global, Pending, Stub, bad_pickle, bounded_repr, callable_name, int_tuple

__all__ = ["entries"]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is optional
        return None
    return numpy


_NP_ALIGNED_STRUCT = 0x80  # numpy's NPY_ALIGNED_STRUCT dtype flag


def _np_fail(what: str, exc: BaseException) -> CorruptCheckpointError:
    """The error for numpy refusing ``what``; one of ours raised while checking it passes through unchanged."""
    pass_through(exc)
    return bad_pickle(f"{what} is invalid: {bounded_repr(str(exc), 200)}")


def _np_datetime_unit(metadata: Any) -> str | None:
    """``[5s]`` from a datetime dtype's pickled metadata: ``(user metadata, (unit, num, 1, 1))``, where the user
    metadata is a dict up to numpy 2.3 and None from numpy 2.4 when there is none (``(None, (b's', 1, 1, 1))``);
    numpy before 1.7 wrote the tuple alone."""
    if isinstance(metadata, tuple) and len(metadata) == 2 and (metadata[0] is None or isinstance(metadata[0], dict)):
        metadata = metadata[1]
    if not (isinstance(metadata, tuple) and len(metadata) >= 2):
        return None
    unit, num = metadata[0], metadata[1]
    if isinstance(unit, (bytes, bytearray)):
        unit = bytes(unit).decode("ascii", "replace")
    if not isinstance(unit, str) or not unit.isalpha() or len(unit) > 8 or type(num) is not int or num < 1:
        raise bad_pickle(f"numpy datetime unit {bounded_repr(metadata)} is invalid")
    return None if unit == "generic" else f"[{num}{unit}]"


def _np_struct(np: Any, names: Any, fields: Any, elsize: Any, flags: Any) -> Any:
    """A structured dtype from its pickled field table ``{name: (dtype, offset[, title])}``."""
    if not (isinstance(names, tuple) and isinstance(fields, dict) and type(elsize) is int):
        raise bad_pickle("numpy structured dtype state is malformed")
    spec: dict[str, list[Any]] = {"names": [], "formats": [], "offsets": [], "titles": []}
    for name in names:
        field_info = fields.get(name) if isinstance(name, str) else None
        if not (
            isinstance(field_info, tuple)
            and len(field_info) in (2, 3)
            and isinstance(field_info[0], np.dtype)
            and type(field_info[1]) is int
        ):
            raise bad_pickle(f"numpy structured dtype field {bounded_repr(name)} is malformed")
        title = field_info[2] if len(field_info) == 3 else None
        if title is not None and not isinstance(title, str):
            raise bad_pickle(f"numpy structured dtype field {bounded_repr(name)} has a title that is not a string")
        spec["names"].append(name)
        spec["formats"].append(field_info[0])
        spec["offsets"].append(field_info[1])
        spec["titles"].append(title)
    aligned = type(flags) is int and bool(flags & _NP_ALIGNED_STRUCT)
    return np.dtype({**spec, "itemsize": elsize}, align=aligned)


def _np_dtype(spec: Any, align: Any = False, copy: Any = False, *_: Any) -> Any:
    if isinstance(spec, Global) and spec.name == "record" and spec.module.startswith("numpy"):
        spec = "V"  # np.rec arrays: a structured dtype of numpy.record scalars, read as a plain structured dtype
    if not isinstance(spec, str) or not (0 < len(spec) <= 16) or not spec.isalnum():
        raise bad_pickle(f"numpy dtype spec {bounded_repr(spec)} is not a plain type code")

    def finish(state: Any) -> Any:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]).
        # It is interpreted here and rebuilt through numpy's public constructor, never handed to __setstate__.
        np = _numpy()
        if not isinstance(state, tuple) or len(state) < 2 or not isinstance(state[1], str):
            raise bad_pickle(f"numpy dtype {spec!r} has a malformed state")
        order = state[1] if state[1] in ("<", ">", "|", "=") else "="
        if np is None:
            return Stub("numpy.dtype", (order + spec,))
        padded = (*state, None, None, None, None, None, None, None, None)
        subarray, names, fields, elsize, flags = padded[2], padded[3], padded[4], padded[5], padded[7]
        metadata = padded[8] if state[0] == 4 else None
        try:
            if spec[0] in "Mm" and metadata is not None:
                base = np.dtype(spec + (_np_datetime_unit(metadata) or ""))
            elif spec == "V" and type(elsize) is int and elsize > 0:
                base = np.dtype(f"V{elsize}")
            else:
                base = np.dtype(spec)
            if subarray is not None:
                if not (isinstance(subarray, tuple) and len(subarray) == 2 and isinstance(subarray[0], np.dtype)):
                    raise bad_pickle(f"numpy dtype {spec!r} has a malformed sub-array")
                shape = subarray[1] if isinstance(subarray[1], tuple) else (subarray[1],)
                base = np.dtype((subarray[0], int_tuple(shape, "numpy sub-array shape")))
            elif names is not None:
                base = _np_struct(np, names, fields, elsize, flags)
            native = "<" if sys.byteorder == "little" else ">"
            if order in "<>" and base.byteorder != "|" and order != native:
                base = base.newbyteorder(order)
            if isinstance(metadata, dict) and spec[0] not in "Mm" and metadata:
                base = np.dtype(base, metadata=dict(metadata))
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise _np_fail(f"numpy dtype {spec!r}", exc) from None
        return base

    return Pending(finish, f"numpy.dtype({spec!r})")


def _np_bytes(raw: Any) -> bytes | None:
    """Array data as bytes. Python 2 pickles carry it as a ``str``: its bytes as the file holds them (the machine
    keeps them for a ``str`` it read as UTF-8, see :class:`StreamState`), else encoded with latin-1, as numpy does
    for pickles read with ``encoding='latin1'``."""
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, str):
        stream = STREAM.get()
        kept = stream.py2_bytes.get(id(raw)) if stream is not None else None
        if kept is not None and kept[0] is raw:
            return kept[1]
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _np_array(np: Any, raw: Any, dt: Any, shape: tuple[int, ...], fortran: bool) -> Any:
    """A new writable array from pickled data, laid out in C or Fortran order as it was saved."""
    if any(n < 0 for n in shape):
        raise bad_pickle(f"numpy array shape {shape} has a negative size")
    count = math.prod(shape)
    order = "F" if fortran else "C"
    if dt.hasobject and dt.kind != "O":
        return Stub("numpy.ndarray", (shape, dt, raw))  # a structured array holding objects: kept inert
    if dt.hasobject:
        # Object arrays are pickled as a list of their elements in C order, whatever their layout.
        if not isinstance(raw, list) or len(raw) != count:
            raise bad_pickle("numpy object array data does not match its shape")
        arr = np.empty(count, dtype=object)
        arr[:] = raw
        return np.array(arr.reshape(shape), order=order)
    data = _np_bytes(raw)
    if data is None or len(data) != count * dt.itemsize:
        raise bad_pickle(
            f"numpy array data holds {len(data) if data is not None else '?'} bytes, "
            f"shape {shape} x {dt.itemsize} needs {count * dt.itemsize}"
        )
    if count == 0 or dt.itemsize == 0:
        return np.zeros(shape, dtype=dt, order=order)
    return np.frombuffer(data, dtype=dt).reshape(shape, order=order).copy(order="K")


def _np_reconstruct(cls: Any, shape: Any = (0,), typecode: Any = b"b", *_: Any) -> Any:
    cls_name = callable_name(cls)

    def finish(state: Any) -> Any:
        if not (isinstance(state, tuple) and len(state) == 5):
            # An ndarray subclass with a state of its own: keep it inert, with everything it carried.
            stub = Stub(cls_name, (shape, typecode))
            stub.state = state
            return stub
        _, shp, dt, fortran, raw = state
        shp = int_tuple(shp, "numpy shape")
        np = _numpy()
        if np is None or not isinstance(dt, np.dtype):
            return Stub("numpy.ndarray", (shp, dt, raw))
        try:
            return _np_array(np, raw, dt, shp, bool(fortran))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _np_fail("numpy array", exc) from None

    return Pending(finish, "numpy.ndarray")


def _np_scalar(dtype: Any, data: Any = None, *_: Any) -> Any:
    np = _numpy()
    if np is None or not isinstance(dtype, np.dtype):
        return Stub("numpy.scalar", (dtype, data))
    if dtype.hasobject:
        return data
    raw = _np_bytes(data)
    if raw is None or len(raw) != dtype.itemsize:
        raise bad_pickle("numpy scalar data does not match its dtype size")
    try:
        return np.frombuffer(raw, dtype=dtype)[0].copy()
    except (TypeError, ValueError) as exc:
        raise _np_fail("numpy scalar", exc) from None


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C", *_: Any) -> Any:
    np = _numpy()
    shp = int_tuple(shape, "numpy shape")
    if np is None or not isinstance(dtype, np.dtype) or dtype.hasobject:
        return Stub("numpy.ndarray", (buf, dtype, shp))
    try:
        return _np_array(np, buf, dtype, shp, order == "F")
    except (TypeError, ValueError, OverflowError) as exc:
        raise _np_fail("numpy array", exc) from None


def entries() -> dict[str, Any]:
    """numpy's part of :data:`~torchweights.unpickle.table.SAFE_GLOBALS`: ``module.qualname`` -> reconstructor."""
    table: dict[str, Any] = {}
    for np_core in ("numpy.core", "numpy._core"):
        for name, call in (
            ("multiarray._reconstruct", _np_reconstruct),
            ("multiarray.scalar", _np_scalar),
            ("numeric._frombuffer", _np_frombuffer),
        ):
            table[f"{np_core}.{name}"] = Ctor(f"{np_core}.{name}", call)
    table["numpy.dtype"] = Ctor("numpy.dtype", _np_dtype)
    table["numpy.ndarray"] = Ctor("numpy.ndarray", lambda *a: Stub("numpy.ndarray", a))
    return table
