"""The safe reconstructors of torch's globals: tensors, parameters, storages, dtypes and devices, rebuilt as data.

``torch._utils._rebuild_tensor_v2`` and its kin become :class:`~.values.PickledTensor` descriptions (sparse and
quantized tensors their own kinds), storage classes :class:`~.values.StorageType`, ``torch.float32`` and
``torch.device('cuda')`` :class:`~.values.TorchValue`; nothing of torch is imported or called. A storage pickled on
its own (``torch.storage._load_from_bytes``) is read by the format reader's hook
(:attr:`~.guards.StreamState.read_embedded`); with no hook the call is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import dtypes
from ..errors import UnsafeCheckpointError, UnsupportedCheckpointError
from .guards import STREAM
from .values import (
    Ctor,
    Global,
    PickledQTensor,
    PickledSparse,
    PickledStorage,
    PickledTensor,
    Refused,
    StorageType,
    Stub,
    TorchValue,
    bad_pickle,
    bounded_repr,
    int_arg,
    int_tuple,
)

__all__ = ["TENSOR_FLAGS", "entries"]


def _storage_of(value: Any) -> PickledStorage:
    if not isinstance(value, PickledStorage):
        raise bad_pickle(f"a tensor was rebuilt from {bounded_repr(value)}, which is not a storage saved in this file")
    return value


def _tensor(
    storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None, requires_grad: Any = False
) -> PickledTensor:
    st = _storage_of(storage)
    return PickledTensor(
        storage=st,
        dtype=dtype or st.dtype,
        storage_offset=int_arg(offset, "storage offset") + (st.offset if dtype is None else 0),
        shape=int_tuple(size, "tensor size"),
        stride=int_tuple(stride, "tensor stride"),
        requires_grad=bool(requires_grad),
    )


#: The tensor metadata torch saves (``torch._utils.get_tensor_metadata``: the conjugate and negative bits).
TENSOR_FLAGS = ("conj", "neg")


def _unsupported_flag(what: str) -> UnsupportedCheckpointError:
    return UnsupportedCheckpointError(
        f"a tensor in this file carries {what}, which torchweights does not know how to apply, so its values could "
        "come out wrong. Load it with the torch version that saved it and re-save it, or report the file.",
        code="unsupported-tensor-flag",
    )


def _check_hooks(hooks: Any) -> None:
    """``backward_hooks``: torch saves an empty ``OrderedDict`` (hooks are never serialised); anything else is
    something the file wants run."""
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _unsupported_flag(f"backward hooks {bounded_repr(hooks)}")


def _apply_metadata(tensor: PickledTensor, metadata: Any) -> PickledTensor:
    """The conjugate and negative bits (``{'conj': True}``, ``{'neg': True}``); an unknown key is an error."""
    if metadata is None or (isinstance(metadata, dict) and not metadata):
        return tensor
    if not isinstance(metadata, dict):
        raise _unsupported_flag(f"tensor metadata {bounded_repr(metadata)} (not a dict)")
    for key, value in metadata.items():
        if key not in TENSOR_FLAGS or type(value) is not bool:
            raise _unsupported_flag(f"the tensor metadata {bounded_repr(key)}: {bounded_repr(value)}")
        if key == "conj" and value and dtypes.get(tensor.dtype).kind != "complex":
            raise bad_pickle(f"a {tensor.dtype} tensor has the conjugate bit set, which only complex tensors have")
        setattr(tensor, key, value)
    return tensor


def _apply_state(tensor: Any, state: Any) -> Any:
    """Python attributes saved with a tensor (``_rebuild_parameter_with_state``, ``_rebuild_from_type_v2``): a
    ``__dict__`` or ``(__dict__, slots)``, kept as data for :mod:`torchweights.storage.tensors` to set."""
    if not isinstance(tensor, PickledTensor) or state is None:
        return tensor
    parts = state if isinstance(state, tuple) else (state,)
    if len(parts) not in (1, 2) or not all(p is None or isinstance(p, dict) for p in parts):
        raise _unsupported_flag(f"a saved state {bounded_repr(state)} (not a dict or a (dict, slots) pair)")
    attributes: dict[str, Any] = {}
    for part in parts:
        for key, value in (part or {}).items():
            if not isinstance(key, str) or not key.isidentifier():
                raise _unsupported_flag(f"a saved attribute named {bounded_repr(key)}")
            attributes[key] = value
    if attributes:
        tensor.attributes = {**(tensor.attributes or {}), **attributes}
    return tensor


def _no_extra(name: str, extra: tuple[Any, ...]) -> None:
    if extra:
        raise _unsupported_flag(f"{len(extra)} argument(s) to {name} beyond those torch passes ({bounded_repr(extra)})")


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_tensor", extra)
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
    *extra: Any,
) -> PickledTensor:
    _no_extra("torch._utils._rebuild_tensor_v2", extra)
    _check_hooks(hooks)
    return _apply_metadata(_tensor(storage, offset, size, stride, requires_grad=requires_grad), metadata)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
    *extra: Any,
) -> PickledTensor:
    _no_extra("torch._utils._rebuild_tensor_v3", extra)
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise bad_pickle(f"_rebuild_tensor_v3 needs a torch dtype, found {bounded_repr(dtype)}")
    st = _storage_of(storage)
    if st.offset:
        raise bad_pickle("_rebuild_tensor_v3 cannot use a legacy storage view")
    _check_hooks(hooks)
    return _apply_metadata(_tensor(st, offset, size, stride, dtype=dtype.value, requires_grad=requires_grad), metadata)


def _as_parameter(data: Any, requires_grad: Any = True, hooks: Any = None, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_parameter", extra)
    if not isinstance(data, PickledTensor):
        raise bad_pickle(f"a Parameter was rebuilt from {bounded_repr(data)}, which is not a tensor")
    _check_hooks(hooks)
    data.is_parameter = True
    data.requires_grad = bool(requires_grad)
    return data


def _as_parameter_with_state(data: Any, requires_grad: Any, hooks: Any, state: Any, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_parameter_with_state", extra)
    return _apply_state(_as_parameter(data, requires_grad, hooks), state)  # type: ignore[no-any-return]


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None, *extra: Any) -> Any:
    _no_extra("torch._tensor._rebuild_from_type_v2", extra)
    if not isinstance(func, Ctor) or not isinstance(args, tuple):
        raise bad_pickle(
            f"_rebuild_from_type_v2 with {bounded_repr(func)}: only known tensor reconstructors are called"
        )
    result = func.call(*args)
    if isinstance(result, PickledTensor):
        type_name = new_type.name if isinstance(new_type, Ctor) else getattr(new_type, "qualname", None)
        if type_name in ("torch.nn.parameter.Parameter", "torch.nn.Parameter"):
            result.is_parameter = True
        elif type_name not in (None, "torch.Tensor", "torch._tensor.Tensor"):
            result.subclass = type_name
        _apply_state(result, state)
    return result


def _rebuild_meta(dtype: Any, size: Any, stride: Any, requires_grad: Any = False, *extra: Any) -> PickledTensor:
    _no_extra("torch._utils._rebuild_meta_tensor_no_storage", extra)
    if not (isinstance(dtype, TorchValue) and dtype.kind == "dtype"):
        raise bad_pickle(f"a meta tensor needs a torch dtype, found {bounded_repr(dtype)}")
    return PickledTensor(
        None, dtype.value, 0, int_tuple(size, "size"), int_tuple(stride, "stride"), bool(requires_grad)
    )


def _rebuild_device_tensor(data: Any, dtype: Any = None, device: Any = None, requires_grad: Any = False) -> Any:
    if isinstance(data, PickledTensor):
        data.requires_grad = bool(requires_grad)
    return data


def _load_from_bytes(blob: Any, *extra: Any) -> Any:
    """``torch.storage._load_from_bytes(b)`` (how ``pickle.dumps(tensor)`` saves storages): ``b`` is a legacy
    ``torch.save`` stream, read by the format reader's hook (:attr:`~.guards.StreamState.read_embedded`) with this
    same machine; torch.load is never called. Anything else (or a stream naming dangerous globals, or a stream read
    without the hook) is a dangerous call."""
    _no_extra("torch.storage._load_from_bytes", extra)
    stream = STREAM.get()
    read_embedded = stream.read_embedded if stream is not None else None
    if read_embedded is None:
        return Refused("torch.storage._load_from_bytes", (), (blob,))
    try:
        return read_embedded(blob)
    except UnsafeCheckpointError as exc:
        return Refused("torch.storage._load_from_bytes", exc.names, (blob,))


_SPARSE_PARTS = {
    "sparse_coo": ("indices", "values"),
    "sparse_csr": ("compressed_indices", "plain_indices", "values"),
    "sparse_csc": ("compressed_indices", "plain_indices", "values"),
    "sparse_bsr": ("compressed_indices", "plain_indices", "values"),
    "sparse_bsc": ("compressed_indices", "plain_indices", "values"),
}


def _rebuild_sparse(layout: Any, data: Any, *extra: Any) -> Any:
    """``torch._utils._rebuild_sparse_tensor(layout, data)``: the components as tensors, checked when loaded."""
    _no_extra("torch._utils._rebuild_sparse_tensor", extra)
    if not (isinstance(layout, TorchValue) and layout.kind == "layout" and layout.value in _SPARSE_PARTS):
        raise _unsupported_flag(f"a sparse layout {bounded_repr(layout)}")
    parts = _SPARSE_PARTS[layout.value]
    coalesced: Any = None
    if not isinstance(data, tuple):
        raise bad_pickle(f"a {layout.value} tensor was saved with {bounded_repr(data)}, not a tuple of its parts")
    if layout.value == "sparse_coo" and len(data) == 4:
        *data, coalesced = data
        if type(coalesced) is not bool:
            raise bad_pickle(f"a sparse_coo tensor has is_coalesced {bounded_repr(coalesced)}, not a bool")
    if len(data) != len(parts) + 1:
        raise bad_pickle(f"a {layout.value} tensor was saved with {len(data)} parts, expected {len(parts) + 1}")
    components = dict(zip(parts, data[:-1]))
    for name, part in components.items():
        if type(part) is not PickledTensor or part.storage is None:
            raise bad_pickle(
                f"the {name.replace('_', ' ')} of a {layout.value} tensor is {bounded_repr(part)}, not a tensor"
            )
    values = components["values"]
    return PickledSparse(
        None,
        values.dtype,
        0,
        int_tuple(data[-1], "sparse tensor size"),
        (),
        layout=layout.value,
        components=components,
        is_coalesced=coalesced,
    )


def _unsupported_tensor(name: str) -> Callable[..., Stub]:
    def make(*args: Any) -> Stub:
        return Stub(name, args)

    return make


_QSCHEMES = (
    "per_tensor_affine",
    "per_channel_affine",
    "per_channel_affine_float_qparams",
    "per_tensor_symmetric",
    "per_channel_symmetric",
)
_SAVED_QSCHEMES = ("per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams")
_SUB_BYTE = ("quint4x2", "quint2x4")  # two or four elements per byte: views cannot be checked element-wise


def _qparam_values(value: Any, what: str) -> Any:
    """Per-channel scales or zero points: a tensor saved in the file, or (old files) a sequence of numbers."""
    if isinstance(value, PickledTensor) and not isinstance(value, PickledQTensor):
        return value
    if isinstance(value, (list, tuple)) and all(type(v) in (int, float) for v in value):
        return tuple(value)
    raise bad_pickle(
        f"a quantized tensor has per-channel {what} {bounded_repr(value)}, not a tensor or a list of numbers"
    )


def _rebuild_qtensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    qparams: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    *extra: Any,
) -> Any:
    """A quantized tensor as data: its integer storage view plus scale and zero point(s); nothing is called."""
    _no_extra("torch._utils._rebuild_qtensor", extra)
    _check_hooks(hooks)
    st = _storage_of(storage)
    if dtypes.get(st.dtype).kind != "quantized":
        raise bad_pickle(f"a quantized tensor was rebuilt from a {st.dtype} storage, not a quantized one")
    if not isinstance(qparams, tuple) or not qparams:
        raise bad_pickle(f"a quantized tensor has quantizer parameters {bounded_repr(qparams)}, not a tuple")
    head = qparams[0]
    saved = isinstance(head, TorchValue) and head.kind == "qscheme" and head.value in _SAVED_QSCHEMES
    scheme = head.value if saved else None
    quant: dict[str, Any]
    if scheme is None or st.dtype in _SUB_BYTE:
        # A scheme torch never saved, or elements packed several to a byte: kept inert, so that it is reported
        # (as a quantized tensor torchweights does not read), not guessed at.
        return Stub("torch._utils._rebuild_qtensor", (storage, offset, size, stride, qparams, requires_grad))
    if scheme == "per_tensor_affine":
        if len(qparams) != 3 or type(qparams[1]) not in (int, float) or type(qparams[2]) is not int:
            raise bad_pickle(
                f"a per-tensor quantized tensor needs (qscheme, scale, zero_point), found {bounded_repr(qparams)}"
            )
        quant = {"qscheme": scheme, "scale": float(qparams[1]), "zero_point": qparams[2]}
    else:
        if len(qparams) != 4:
            raise bad_pickle(
                "a per-channel quantized tensor needs (qscheme, scales, zero_points, axis), "
                f"found {bounded_repr(qparams)}"
            )
        quant = {
            "qscheme": scheme,
            "scales": _qparam_values(qparams[1], "scales"),
            "zero_points": _qparam_values(qparams[2], "zero points"),
            "axis": int_arg(qparams[3], "quantization axis"),
        }
    base = _tensor(st, offset, size, stride, requires_grad=requires_grad)
    return PickledQTensor(
        base.storage, base.dtype, base.storage_offset, base.shape, base.stride, base.requires_grad, quantization=quant
    )


#: Classes that only hold data (dataclasses, enums) that checkpoints name: inert references, never imported or
#: called (REDUCE/NEWOBJ of one makes a stub), and "safe" for scan. torch.distributed.checkpoint's ``.metadata``
#: consists of these.
_DATA_CLASSES: dict[str, tuple[str, ...]] = {
    "torch.distributed.checkpoint.metadata": (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    ),
    "torch.distributed.checkpoint.filesystem": ("_StorageInfo", "_StoragePrefix"),
}


def _storage_types() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for d in dtypes.DTYPES.values():
        if d.storage_class:
            for module in ("torch", "torch.cuda"):
                table[f"{module}.{d.storage_class}"] = StorageType(d.storage_class, d.name)
    for name in ("torch.UntypedStorage", "torch.storage.UntypedStorage", "torch.cuda.UntypedStorage"):
        table[name] = StorageType("UntypedStorage", None)
    for module, names in _DATA_CLASSES.items():
        for name in names:
            table[f"{module}.{name}"] = Global(module, name)
    for d in dtypes.DTYPES.values():
        if d.storage_class and d.storage_class.endswith("Storage") and d.kind != "quantized":
            # the legacy tensor classes (torch.FloatTensor) old files name as types: inert references, never called
            tensor_class = d.storage_class[: -len("Storage")] + "Tensor"
            for module in ("torch", "torch.cuda"):
                table.setdefault(f"{module}.{tensor_class}", Global(module, tensor_class))
    return table


def _torch_constants() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in dtypes.DTYPES:
        table[f"torch.{name}"] = TorchValue("dtype", name)
    for alias in ("float", "double", "half", "long", "int", "short", "cfloat", "cdouble", "chalf"):
        table[f"torch.{alias}"] = TorchValue("dtype", dtypes.get(alias).name)
    for layout in (
        "strided",
        "sparse_coo",
        "sparse_csr",
        "sparse_csc",
        "sparse_bsr",
        "sparse_bsc",
        "_mkldnn",
        "jagged",
    ):
        table[f"torch.{layout}"] = TorchValue("layout", layout)
    for fmt in ("contiguous_format", "channels_last", "channels_last_3d", "preserve_format"):
        table[f"torch.{fmt}"] = TorchValue("memory_format", fmt)
    return table


def _torch_device(*args: Any) -> TorchValue:
    if not args or not isinstance(args[0], str) or len(args) > 2:
        raise bad_pickle(f"torch.device({', '.join(bounded_repr(a) for a in args[:3])}) is not a device")
    text = args[0] if len(args) == 1 or args[1] is None else f"{args[0]}:{int_arg(args[1], 'device index')}"
    return TorchValue("device", text)


def _torch_size(*args: Any) -> tuple[int, ...]:
    return int_tuple(args[0] if args else (), "torch.Size")


def _get_layout(name: Any) -> TorchValue:
    if not isinstance(name, str) or not name.startswith("torch."):
        raise bad_pickle(f"unknown layout {bounded_repr(name)}")
    return TorchValue("layout", name.removeprefix("torch."))


def entries() -> dict[str, Any]:
    """torch's part of :data:`~torchweights.unpickle.table.SAFE_GLOBALS`: ``module.qualname`` -> reconstructor or
    constant."""
    table: dict[str, Any] = {}

    def add(name: str, call: Callable[..., Any]) -> None:
        table[name] = Ctor(name, call)

    module = "torch._utils"
    add(f"{module}._rebuild_tensor", _rebuild_tensor)
    add(f"{module}._rebuild_tensor_v2", _rebuild_tensor_v2)
    add(f"{module}._rebuild_tensor_v3", _rebuild_tensor_v3)
    add(f"{module}._rebuild_parameter", _as_parameter)
    add(f"{module}._rebuild_parameter_with_state", _as_parameter_with_state)
    add(f"{module}._rebuild_meta_tensor_no_storage", _rebuild_meta)
    add(f"{module}._rebuild_device_tensor_from_cpu_tensor", _rebuild_device_tensor)
    add(f"{module}._rebuild_qtensor", _rebuild_qtensor)
    add(f"{module}._rebuild_sparse_tensor", _rebuild_sparse)
    for kind in (
        "_rebuild_sparse_csr_tensor",
        "_rebuild_nested_tensor",
        "_rebuild_wrapper_subclass",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_xla_tensor",
        "_rebuild_mps_tensor",
        "_rebuild_mtia_tensor",
    ):
        add(f"{module}.{kind}", _unsupported_tensor(f"{module}.{kind}"))
    add("torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2)
    add("torch._tensor._rebuild_from_type", _rebuild_from_type_v2)
    add("torch.nn.parameter.Parameter", _as_parameter)
    add("torch.nn.parameter.Buffer", _rebuild_device_tensor)
    add("torch.Tensor", _rebuild_device_tensor)
    add("torch._tensor.Tensor", _rebuild_device_tensor)
    add("torch.Size", _torch_size)
    add("torch.device", _torch_device)
    add("torch.serialization._get_layout", _get_layout)
    add("torch.storage._load_from_bytes", _load_from_bytes)
    table.update(_storage_types())
    table.update(_torch_constants())
    for scheme in _QSCHEMES:
        table[f"torch.{scheme}"] = TorchValue("qscheme", scheme)
    return table
