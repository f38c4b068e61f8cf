"""The dtype table: names, element sizes and the names each file format uses, without importing torch.

A dtype is named as torch names it without the ``torch.`` prefix (``"bfloat16"``). This module is the single
place that maps between those names, legacy storage class names (``FloatStorage``), safetensors codes (``BF16``)
and torch dtype objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .structs import structure

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DType",
    "DTYPES",
    "dtype_from_safetensors",
    "dtype_from_storage_class",
    "get",
    "itemsize",
    "to_torch",
]


@structure(frozen=True)
class DType:
    """One dtype: torch name, element size in bytes, and its names in file formats."""

    name: str
    itemsize: int
    safetensors: str | None = None
    storage_class: str | None = None
    kind: str = "float"  # float | int | uint | bool | complex | quantized | bits


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float64", 8, "F64", "DoubleStorage"),
        DType("float32", 4, "F32", "FloatStorage"),
        DType("float16", 2, "F16", "HalfStorage"),
        DType("bfloat16", 2, "BF16", "BFloat16Storage"),
        DType("float8_e4m3fn", 1, "F8_E4M3"),
        DType("float8_e5m2", 1, "F8_E5M2"),
        DType("float8_e4m3fnuz", 1),
        DType("float8_e5m2fnuz", 1),
        DType("float8_e8m0fnu", 1, "F8_E8M0"),
        DType("float4_e2m1fn_x2", 1),
        DType("int64", 8, "I64", "LongStorage", "int"),
        DType("int32", 4, "I32", "IntStorage", "int"),
        DType("int16", 2, "I16", "ShortStorage", "int"),
        DType("int8", 1, "I8", "CharStorage", "int"),
        DType("uint64", 8, "U64", None, "uint"),
        DType("uint32", 4, "U32", None, "uint"),
        DType("uint16", 2, "U16", None, "uint"),
        DType("uint8", 1, "U8", "ByteStorage", "uint"),
        DType("bool", 1, "BOOL", "BoolStorage", "bool"),
        DType("complex128", 16, None, "ComplexDoubleStorage", "complex"),
        DType("complex64", 8, "C64", "ComplexFloatStorage", "complex"),
        DType("complex32", 4, None, None, "complex"),
        DType("qint8", 1, None, "QInt8Storage", "quantized"),
        DType("quint8", 1, None, "QUInt8Storage", "quantized"),
        DType("qint32", 4, None, "QInt32Storage", "quantized"),
        DType("quint4x2", 1, None, "QUInt4x2Storage", "quantized"),
        DType("quint2x4", 1, None, "QUInt2x4Storage", "quantized"),
        DType("bits8", 1, None, None, "bits"),
        DType("bits16", 2, None, None, "bits"),
        DType("bits1x8", 1, None, None, "bits"),
        DType("bits2x4", 1, None, None, "bits"),
        DType("bits4x2", 1, None, None, "bits"),
    )
}

# Historical aliases torch still accepts as attribute names (torch.float == torch.float32, ...).
_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}

_BY_STORAGE = {d.storage_class: d for d in DTYPES.values() if d.storage_class}
_BY_SAFETENSORS = {d.safetensors: d for d in DTYPES.values() if d.safetensors}


def get(name: str) -> DType:
    """The :class:`DType` for a torch dtype name (``"bfloat16"``, ``"torch.float"``, ``"half"``)."""
    found = DTYPES.get(name)  # the canonical name: the common case, one dict look-up
    if found is not None:
        return found
    key = name.removeprefix("torch.")
    key = _ALIASES.get(key, key)
    try:
        return DTYPES[key]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r}") from None


def itemsize(name: str) -> int:
    """Bytes per element of dtype ``name``."""
    return get(name).itemsize


def swap_unit(name: str) -> int:
    """Bytes per byte-swapped unit of dtype ``name``: the element size, or half of it for complex numbers (two
    floats)."""
    info = get(name)
    return info.itemsize // 2 if info.kind == "complex" else info.itemsize


def dtype_from_storage_class(class_name: str) -> DType | None:
    """The dtype of a legacy typed storage class (``"FloatStorage"``), or None if it is not one."""
    return _BY_STORAGE.get(class_name)


def dtype_from_safetensors(code: str) -> DType | None:
    """The dtype for a safetensors dtype code (``"BF16"``), or None if unknown."""
    return _BY_SAFETENSORS.get(code)


#: torch dtype objects already looked up, by the name they were asked for.
_TORCH: dict[str, torch.dtype] = {}


def to_torch(name: str) -> torch.dtype:
    """The torch dtype object for ``name``; imports torch."""
    found = _TORCH.get(name)
    if found is not None:
        return found
    import torch

    result: Any = getattr(torch, get(name).name, None)
    if not isinstance(result, torch.dtype):
        from .errors import UnsupportedCheckpointError

        raise UnsupportedCheckpointError(
            f"dtype '{name}' does not exist in the installed torch {torch.__version__}. "
            "Upgrade torch to materialise these tensors, or read them with tw.open() as records.",
            code="unsupported-dtype",
        )
    _TORCH[name] = result
    return result
