"""Tensors from records: torch views over loaded (or mapped) storages, quantized tensors, and the checks that turn
torch's refusals into corrupt-file errors.

Used by the read engine (:mod:`torchweights.storage.engine`, for views that are not contiguous), the mappings
(:mod:`torchweights.storage.mapping`) and :func:`torchweights.storage.read.materialize`. torch is imported inside the
functions, never at import time.

Per-channel scales and zero points saved as tensors are records of their own, a few numbers each: :func:`_qparams`
reads them whole on the CPU through :func:`torchweights.storage.raw.read_storage_bytes` (CRC-checked), below the
engine, so building a tensor never needs the engine that builds tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CorruptCheckpointError, RuleError, UnsupportedCheckpointError, pass_through
from ..records import TensorRecord
from .results import not_whole_elements

if TYPE_CHECKING:  # pragma: no cover
    import torch


_MAP_LOCATION_FIX = (
    "Pass a device ('cpu', 'cuda:0'), a dict from saved location to device, None, or a callable as torch.load "
    "takes it: map_location=lambda storage, location: storage (keep on the CPU) or a function returning a "
    "device; a function of the location alone also works."
)


def _bad_map_location(what: str) -> RuleError:
    return RuleError(f"map_location {what}. {_MAP_LOCATION_FIX}", code="bad-map-location")


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))[:60]


def _takes(fn: Callable[..., Any], *args: Any) -> bool:
    try:
        inspect.signature(fn).bind(*args)
    except TypeError:
        return False
    return True


def device_resolver(map_location: Any) -> Callable[[str], Any]:
    """Where storages saved from a location go: ``resolve(saved_location) -> device``, for any ``map_location``
    ``torch.load`` takes (a device, a mapping of locations, None for the saved location, or a callable).

    A callable is called as torch calls it, ``map_location(storage, location)``, with an empty CPU storage (tensor
    bytes are read straight onto their device, so it sees no bytes): what it returns decides the device (a storage
    or tensor: its device; a device or string: that one; None: the saved location). A callable of one argument
    (the location) is called with the location alone. Called once per saved location.

    Raises:
        RuleError: ``bad-map-location`` (when resolving): the callable takes neither form, raises, or returns
            something else.
    """
    if map_location is None:
        return _checked(lambda location: location, "None (the saved location)")
    if isinstance(map_location, Mapping):
        return _checked(lambda location: map_location.get(location, location), "(a mapping)")
    if not callable(map_location) or isinstance(map_location, type):
        return _checked(lambda location: map_location, repr(map_location)[:60])
    import torch

    try:
        inspect.signature(map_location)
        torch_form = _takes(map_location, None, "cpu")
        if not torch_form and not _takes(map_location, "cpu"):
            raise _bad_map_location(
                f"{_name(map_location)} cannot be called as torch.load calls it, map_location(storage, "
                "location), nor with the location alone"
            )
    except (TypeError, ValueError):  # no signature to read (some builtins): torch's form
        torch_form = True
    cache: dict[str, Any] = {}

    def resolve(location: str) -> Any:
        if location in cache:
            return cache[location]
        args = (torch.UntypedStorage(0), location) if torch_form else (location,)
        try:
            result = map_location(*args)
        except Exception as exc:
            raise _bad_map_location(
                f"{_name(map_location)} raised {type(exc).__name__} ({exc}) for saved location " f"{location!r}"
            ) from exc
        if result is None:
            device: Any = location
        elif isinstance(result, (torch.UntypedStorage, torch.TypedStorage, torch.Tensor)):
            device = result.device
        elif isinstance(result, (str, torch.device)):
            device = result
        else:
            raise _bad_map_location(
                f"{_name(map_location)} returned {repr(result)[:60]} for saved location {location!r}, "
                "not a storage, a device or None"
            )
        cache[location] = device
        return device

    return _checked(resolve, _name(map_location))


def _checked(resolve: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """``resolve``, whose every answer must be a device torch knows and this machine has: anything else is
    ``bad-map-location`` (not torch's bare RuntimeError, TypeError or AssertionError from the first allocation)."""
    import torch

    def check(location: str) -> Any:
        device = resolve(location)
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise _bad_map_location(
                f"{what} gives {repr(device)[:60]} for saved location {location!r}, which is not a device "
                f"({str(exc).splitlines()[0][:120]})"
            ) from None
        backend = getattr(torch, parsed.type, None) if parsed.type not in ("cpu", "meta") else None
        available = getattr(backend, "is_available", None)
        if callable(available) and not available():  # a backend torch knows but this machine lacks (cuda, mps...)
            raise _bad_map_location(
                f"{what} gives device {str(parsed)!r} for saved location {location!r}, and this machine has no "
                f"{parsed.type} device (torch {torch.__version__}); map_location='cpu' keeps every tensor on the CPU"
            )
        return device

    return check


_INT64_MAX = (1 << 63) - 1


def check_record_view(record: TensorRecord) -> None:
    """Refuse views torch cannot represent (negative or 64-bit-overflowing sizes, strides, offset or numel).

    Readers already check that views fit their storage; this guards the torch calls below so a record that slipped
    through (a meta tensor, a zero stride over a huge size) fails as a corrupt file, not as a torch exception.
    """
    shape, stride, offset = record.shape, record.stride, record.storage_offset
    problem = None
    if len(shape) != len(stride):
        problem = f"has {len(shape)} sizes but {len(stride)} strides"
    elif any(type(v) is not int or not 0 <= v <= _INT64_MAX for v in (*shape, *stride, offset)):
        problem = "has a size, stride or offset that is negative or does not fit in 64 bits"
    else:
        numel = 1
        for n in shape:
            numel *= n
        extent = offset + sum((n - 1) * s for n, s in zip(shape, stride) if n)
        if numel * record.itemsize > _INT64_MAX or (extent + 1) * record.itemsize > _INT64_MAX:
            problem = "spans more elements than a 64-bit size can count"
    if problem:
        raise CorruptCheckpointError(
            f"tensor '{record.name}' {problem} (size {shape}, stride {stride}, offset {offset}), so torch cannot "
            "build it. The file is corrupt or was crafted; re-download or re-save it.",
            code="bad-record",
            path=record.storage.file if record.storage else None,
        )


def _refused(record: TensorRecord, what: str, layout: str, exc: Exception) -> CorruptCheckpointError:
    """torch would not build ``record`` from its storage: the file's layout is impossible."""
    return CorruptCheckpointError(
        f"torch refused to build {what} '{record.name}' ({record.dtype}, {layout}): {exc}. The file is corrupt or "
        "was crafted; re-download or re-save it.",
        code="bad-record",
        path=record.storage.file if record.storage else None,
    )


def build_tensor(record: TensorRecord, storage: torch.UntypedStorage | None, base: int = 0) -> torch.Tensor:
    """One tensor over its loaded storage (or on the meta device), with torch's refusals as corrupt-file errors,
    as ``torch.load`` returns it: conjugate and negative bits set, saved Python attributes set.

    ``base``: byte offset of the file storage's first byte inside ``storage`` (a multiple of the element size).
    """
    tensor = stored_view(record, storage, base)
    if storage is None or record.quantization is not None:
        return tensor
    return _finish(record, tensor)


def stored_view(record: TensorRecord, storage: torch.UntypedStorage | None, base: int = 0) -> torch.Tensor:
    """:func:`build_tensor` without the conjugate and negative bits and the saved attributes: the record's view of
    the values as stored, for a destination that receives them as stored and then :func:`apply_flags_in_place`."""
    import torch

    if record.quantization is not None:  # quantized tensors: see _build_quantized at the end of this module
        return _build_quantized(record, storage, base)
    dtype = dtypes.to_torch(record.dtype)
    check_record_view(record)
    try:
        if storage is None:
            return torch.empty_strided(record.shape, record.stride, dtype=dtype, device="meta")
        tensor = torch.empty(0, dtype=dtype, device=storage.device)
        offset = record.storage_offset + base // max(1, record.itemsize)
        tensor.set_(storage, offset, record.shape, record.stride)
    except (RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise _refused(
            record, "tensor", f"size {record.shape}, stride {record.stride}, offset {record.storage_offset}", exc
        ) from None
    return tensor


def _finish(record: TensorRecord, tensor: torch.Tensor) -> torch.Tensor:
    """Apply what torch applies after building the view: the conjugate and negative bits (the tensor stays a view
    of the stored values with the bits set, as ``torch.load`` returns it) and saved Python attributes."""
    import torch

    flags = {k: True for k in ("conj", "neg") if getattr(record, k)}
    if flags:
        torch._utils.set_tensor_metadata(tensor, flags)
    for key, value in (record.attributes or {}).items():
        if key.startswith("__") or hasattr(tensor, key):
            raise UnsupportedCheckpointError(
                f"tensor {record.name!r} was saved with a Python attribute {key!r}, which would replace torch's own "
                f"{key!r} of the tensor if it were set. tw.open(path) lists the tensor and its attributes "
                "(TensorRecord.attributes); re-save the tensor without that attribute.",
                code="unsupported-tensor-state",
                path=record.storage.file if record.storage else None,
            )
        setattr(tensor, key, value)
    return tensor


def apply_flags_in_place(record: TensorRecord, tensor: torch.Tensor) -> None:
    """Turn the stored values just read into ``tensor`` into the tensor's values: conjugate and negate them in
    place where the record's bits say so (for destinations that must hold plain values, such as parameters; not
    recorded by autograd, as the read itself is not)."""
    import torch

    with torch.no_grad():
        if record.neg:
            tensor.neg_()
        if record.conj and tensor.is_complex():
            tensor.conj_physical_()


def needs_flags(record: TensorRecord) -> bool:
    """True when the stored values are not the tensor's values as they are (conjugate or negative bit set)."""
    return record.conj or record.neg


# --------------------------------------------------------------------------------------------------------------
# Sparse tensors (records with ``sparse``)
# --------------------------------------------------------------------------------------------------------------


def build_sparse(record: TensorRecord, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A sparse tensor from its loaded components, as ``torch._utils._rebuild_sparse_tensor`` builds it, then checked
    as ``torch.load`` checks it under ``torch.sparse.check_sparse_tensor_invariants`` (always, here: an index out of
    range would make later operations read or write outside the tensor's memory)."""
    import torch

    sparse = record.sparse or {}
    layout = sparse.get("layout", "")
    tensors = {key: parts[value.name] for key, value in sparse.items() if isinstance(value, TensorRecord)}
    size = record.shape
    try:
        if layout == "sparse_coo":
            indices, values = tensors["indices"], tensors["values"]
            coalesced = sparse.get("is_coalesced")
            torch._validate_sparse_coo_tensor_args(indices, values, size, coalesced, check_pinning=False)
            result = torch.sparse_coo_tensor(indices, values, size, check_invariants=False, is_coalesced=coalesced)
        else:
            compressed, plain, values = tensors["compressed_indices"], tensors["plain_indices"], tensors["values"]
            torch_layout = getattr(torch, layout)
            torch._validate_sparse_compressed_tensor_args(
                compressed, plain, values, size, torch_layout, check_pinning=False
            )
            result = torch.sparse_compressed_tensor(
                compressed, plain, values, size, layout=torch_layout, check_invariants=False
            )
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CorruptCheckpointError(
            f"sparse tensor {record.name!r} ({layout}, size {size}) has components torch refuses: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. Using it could read or write outside "
            "its memory. The file is corrupt or was crafted; re-download or re-save it.",
            code="bad-sparse",
            path=None,
        ) from None
    return _finish(record, result)


# --------------------------------------------------------------------------------------------------------------
# Quantized tensors (records with ``quantization``)
# --------------------------------------------------------------------------------------------------------------


def _build_quantized(record: TensorRecord, storage: torch.UntypedStorage | None, base: int = 0) -> torch.Tensor:
    """A quantized tensor as torch rebuilds one: an empty quantized tensor with the record's scale and zero point(s),
    set to its view of the loaded storage (so strides, offsets and shared storages stay exact)."""
    import torch

    quant = record.quantization or {}
    check_record_view(record)
    why, fix = None, "tw.open(path) still lists its record, with its scale and zero point(s)."
    if record.dtype not in ("qint8", "quint8", "qint32"):
        why = f"is a {record.dtype} quantized tensor, which tw.load cannot build yet"
    elif storage is None:
        why = "is a quantized tensor saved without data (meta), which torch cannot represent"
    elif storage.device.type != "cpu":
        why = f"is quantized, and torch builds quantized tensors on the CPU only, not on {storage.device}"
        fix = "Load it with map_location='cpu'."
    if why:
        raise UnsupportedCheckpointError(
            f"tensor '{record.name}' {why}. {fix}",
            code="unsupported-quantized",
            path=record.storage.file if record.storage else None,
        )
    assert storage is not None
    dtype = dtypes.to_torch(record.dtype)
    try:
        if "axis" in quant:
            tensor = torch._empty_per_channel_affine_quantized(
                [0],
                scales=_qparams(quant["scales"], torch.float64),
                zero_points=_qparams(quant["zero_points"], torch.int64),
                axis=quant["axis"],
                dtype=dtype,
            )
        else:
            tensor = torch._empty_affine_quantized(
                [0], scale=quant["scale"], zero_point=quant["zero_point"], dtype=dtype
            )
        tensor.set_(storage, record.storage_offset + base // record.itemsize, record.shape, record.stride)
        return tensor
    except (RuntimeError, TypeError, ValueError, OverflowError, KeyError) as exc:
        pass_through(exc)  # reading the per-channel scales (bad-crc, truncated...) is not torch refusing
        raise _refused(
            record, "quantized tensor", f"size {record.shape}, quantization {quant.get('qscheme')}", exc
        ) from None


def _qparams(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel scales or zero points: read from their own record, or made from the numbers an old file held."""
    import torch

    if isinstance(value, TensorRecord):
        return _read_small(value)
    if any(isinstance(v, float) for v in value):
        dtype = torch.float64
    return torch.tensor(value, dtype=dtype)


def _read_small(record: TensorRecord) -> torch.Tensor:
    """A small tensor of its own storage, read whole onto the CPU and checked against its CRC-32, as
    :func:`torchweights.storage.read.materialize` would build it (big-endian storages swapped)."""
    import torch

    ref = record.storage
    if ref is None:
        return build_tensor(record, None)
    from .contents import to_little_endian  # rare (a big-endian file): imported when needed
    from .raw import read_storage_bytes

    unit = dtypes.swap_unit(record.dtype)
    if ref.byteorder == "big" and unit > 1 and ref.nbytes % unit:
        raise not_whole_elements(ref, unit)
    data = to_little_endian(read_storage_bytes(ref, tensors=(record.name,)), ref, record.dtype)
    storage = torch.frombuffer(data, dtype=torch.uint8).untyped_storage() if data else torch.UntypedStorage(0)
    return build_tensor(record, storage)
