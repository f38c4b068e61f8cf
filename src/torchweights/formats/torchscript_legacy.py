"""TorchScript archives of torch 1.0 to 1.2: ``model.json``, ``tensors/``, ``attributes.pkl``; nothing run.

Those releases wrote the module tree as a ``torch.ModelDef`` message (``caffe2/proto/torch.proto``) in protobuf's
JSON mapping, ``model.json``: a table of every tensor (``tensors``: dims, strides and offset in elements,
``dataType`` a ``caffe2.TensorProto.DataType``, the storage member ``data.key`` such as ``tensors/0``, and for
quantized tensors ``isQuantized``, ``scale``, ``zeroPoint``) and the modules (``mainModule``: ``name``,
``submodules``, ``parameters`` ``[{isBuffer, tensorId, name}]`` into that table, ``attributes`` ``[{type, name,
id}]`` into ``attributes.pkl``, ``getStateAttributeId`` for modules with ``__getstate__``). ``attributes.pkl``
(proto version 2 on; a list, a tuple from version 3) refers to table tensors as
``torch.jit._pickle.build_tensor_from_id(i)`` (``__main__.TensorID(i)`` earlier). Storages are the raw bytes of
``tensors/<n>``, shared by every tensor that names the same key. The layout follows ``import_legacy.cpp``.

Records are named like ``state_dict()``: submodule names, then parameter or buffer names. A module restored by
``__setstate__`` (quantized modules) lists the tensors of its state tuple as ``<path>.weight`` and ``<path>.bias``
when there are one or two, as ``<path>.state.<i>`` otherwise. Tensor attributes that are neither parameters nor
buffers are left out, named in a warning, as for later archives.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CorruptCheckpointError, ResourceLimitError, pass_through
from ..records import Checkpoint, StorageRef
from ..text import plural, quote, quote_list, shorten_list
from ..unpickle.values import PickledQTensor, PickledStorage, PickledTensor, Stub
from ._pickled import run_pickle
from .torch_zip import Archive, missing_storage
from .tree import flatten, record_maker, short_repr

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["missing_member", "read_model_json"]

#: caffe2.TensorProto.DataType (name and number) -> dtype, as DataTypeToTypeMeta maps them
_DATA_TYPES: dict[Any, str] = {}
for _number, _name, _dtype in (
    (1, "FLOAT", "float32"),
    (2, "INT32", "int32"),
    (3, "BYTE", "uint8"),
    (5, "BOOL", "bool"),
    (6, "UINT8", "uint8"),
    (7, "INT8", "int8"),
    (9, "INT16", "int16"),
    (10, "INT64", "int64"),
    (12, "FLOAT16", "float16"),
    (13, "DOUBLE", "float64"),
):
    _DATA_TYPES[_number] = _DATA_TYPES[_name] = _dtype
#: toQIntType: the integer type of a quantized tensor -> its quantized dtype
_QUANTIZED = {"int8": "qint8", "uint8": "quint8", "int32": "qint32"}
_TENSOR_ID_GLOBALS = ("torch.jit._pickle.build_tensor_from_id", "__main__.TensorID")


class _Reader:
    def __init__(self, archive: Archive, root: str, options: ReadOptions) -> None:
        self.archive = archive
        self.root = root
        self.options = options
        self.path = archive.path
        self.storages: dict[str, PickledStorage] = {}
        self.unchecked: list[str] = []  # members that are not whole elements: CRC-32 not checked
        self.table: list[PickledTensor] = []
        self.attributes: list[Any] = []
        self.dropped: list[str] = []
        self.globals: set[str] = set()

    def bad(self, what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{quote(self.path)}: {self.root}model.json {what}. The archive is corrupt or was modified; re-save it "
            "with torch.jit.save.",
            code="bad-record",
            path=self.path,
        )

    def integer(self, value: Any, what: str) -> int:
        """An int64 field: a string in protobuf's JSON mapping (a number is accepted too)."""
        if type(value) is int or (isinstance(value, str) and value.lstrip("-").isdigit() and len(value) < 21):
            return int(value)
        raise self.bad(f"has {what} {short_repr(value, 40)}, not an integer")

    def ints(self, value: Any, what: str) -> tuple[int, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.bad(f"has {what} {short_repr(value, 40)}, not a list")
        return tuple(self.integer(v, what) for v in value)

    def storage(self, key: Any, dtype: str, location: str) -> PickledStorage:
        if not isinstance(key, str) or not key.startswith("tensors/"):
            raise self.bad(f"names tensor data {short_repr(key, 60)}, not a 'tensors/<n>' record")
        found = self.storages.get(key)
        if found is not None:
            if found.dtype != dtype:
                raise self.bad(f"reads record {quote(key)} as both {found.dtype} and {dtype}")
            return found
        member = self.root + key
        info = self.archive.get(member)
        if info is None:
            raise missing_storage(self.path, f"model.json refers to tensor data {quote(key)}", member)
        size = dtypes.itemsize(dtype)
        if info.size % size:  # the CRC covers the trailing partial element, which reads stop before
            self.unchecked.append(f"{quote(member)} ({info.size} bytes of {dtype})")
        ref = StorageRef(
            key=key,
            file=self.path,
            offset=info.data_offset,
            nbytes=info.size - info.size % size,
            member=member,
            compression=info.compress_type,
            compressed_size=info.compressed_size,
            crc32=info.crc32 if info.size % size == 0 else None,
            location=location,
        )
        found = self.storages[key] = PickledStorage(ref, dtype)
        return found

    def tensor(self, i: int, spec: Any) -> PickledTensor:
        if not isinstance(spec, dict):
            raise self.bad(f"has tensor {i} {short_repr(spec, 60)}, not a TensorDef")
        kind = spec.get("dataType")
        dtype = _DATA_TYPES.get(kind)
        if dtype is None:
            raise self.bad(f"has tensor {i} of data type {short_repr(kind, 40)}, which torch never wrote")
        quantized = spec.get("isQuantized") is True
        if quantized:
            if dtype not in _QUANTIZED:
                raise self.bad(f"has quantized tensor {i} of data type {kind}")
            dtype = _QUANTIZED[dtype]
        device = spec.get("device", "cpu")
        data = spec.get("data")
        storage = self.storage(data.get("key") if isinstance(data, dict) else None, dtype, str(device))
        shape = self.ints(spec.get("dims"), "dims")
        stride = self.ints(spec.get("strides"), "strides")
        if len(stride) != len(shape):
            raise self.bad(f"gives tensor {i} {len(shape)} dims but {len(stride)} strides")
        offset = self.integer(spec.get("offset", "0"), "offset")
        requires_grad = spec.get("requiresGrad") is True
        if not quantized:
            return PickledTensor(storage, dtype, offset, shape, stride, requires_grad)
        scale, zero_point = spec.get("scale"), self.integer(spec.get("zeroPoint", "0"), "zeroPoint")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise self.bad(f"gives quantized tensor {i} the scale {short_repr(scale, 40)}")
        quant = {"qscheme": "per_tensor_affine", "scale": float(scale), "zero_point": zero_point}
        return PickledQTensor(storage, dtype, offset, shape, stride, requires_grad, quantization=quant)

    def resolve(self, value: Any, depth: int = 0) -> Any:
        """Attribute values with their tensor table references replaced by the tensors."""
        if depth > self.options.limits.max_depth:
            raise ResourceLimitError(f"{quote(self.path)}: attributes.pkl nests too deeply", code="limit-depth")
        if isinstance(value, Stub) and value.cls in _TENSOR_ID_GLOBALS:
            index = value.args[0] if len(value.args) == 1 else None
            if type(index) is not int or not 0 <= index < len(self.table):
                raise self.bad(f"attributes.pkl refers to tensor {short_repr(index, 40)}, not in the tensor table")
            return self.table[index]
        if isinstance(value, (list, tuple)):
            items = [self.resolve(v, depth + 1) for v in value]
            return tuple(items) if isinstance(value, tuple) else items
        if isinstance(value, dict):
            return {k: self.resolve(v, depth + 1) for k, v in value.items()}
        return value

    def module(self, spec: Any, path: str, depth: int) -> Stub:
        if depth > self.options.limits.max_depth:
            raise ResourceLimitError(
                f"{quote(self.path)}: model.json nests modules more than {self.options.limits.max_depth} deep",
                code="limit-depth",
                path=self.path,
            )
        if not isinstance(spec, dict):
            raise self.bad(f"has module {path or '<root>'} {short_repr(spec, 60)}, not a ModuleDef")
        params: dict[str, Any] = {}
        buffers: dict[str, Any] = {}
        modules: dict[str, Any] = {}
        out = Stub(f"__torch__.{path}" if path else "__torch__")
        out.state = {"_parameters": params, "_buffers": buffers, "_modules": modules}
        for sub in _list(spec.get("submodules"), self, "submodules"):
            name = sub.get("name") if isinstance(sub, dict) else None
            if not isinstance(name, str):
                raise self.bad(f"has a submodule of {path or '<root>'} without a name")
            modules[name] = self.module(sub, f"{path}.{name}" if path else name, depth + 1)
        for param in _list(spec.get("parameters"), self, "parameters"):
            name = param.get("name") if isinstance(param, dict) else None
            if not isinstance(name, str):
                raise self.bad(f"has a parameter of {path or '<root>'} without a name")
            tensor = self._table_entry(param.get("tensorId"))
            if param.get("isBuffer") is True:
                buffers[name] = tensor
            else:
                tensor = (
                    PickledTensor(**{**vars(tensor), "is_parameter": True}) if type(tensor) is PickledTensor else tensor
                )
                params[name] = tensor
        for attr in _list(spec.get("attributes"), self, "attributes"):
            name = attr.get("name") if isinstance(attr, dict) else None
            if name in params or name in buffers or not isinstance(name, str):
                continue
            value = self._attribute(attr.get("id"))
            if _holds_tensor(value):
                self.dropped.append(f"{path}.{name}" if path else name)
        if "getStateAttributeId" in spec:
            state = self._attribute(spec["getStateAttributeId"])
            tensors = [v for v in state if isinstance(v, PickledTensor)] if isinstance(state, tuple) else []
            if 1 <= len(tensors) <= 2:
                buffers.update(zip(("weight", "bias"), tensors))
            elif _holds_tensor(state):
                buffers["state"] = state
        return out

    def _table_entry(self, index: Any) -> PickledTensor:
        i = self.integer(index, "tensorId")
        if not 0 <= i < len(self.table):
            raise self.bad(f"refers to tensor {i}, past its {len(self.table)}-entry tensor table")
        return self.table[i]

    def _attribute(self, index: Any) -> Any:
        i = self.integer(index, "attribute id")
        if i < 0:
            return None  # an attribute without a value (set by __setstate__)
        if i >= len(self.attributes):
            raise self.bad(f"refers to attribute {i}, past the {len(self.attributes)} of attributes.pkl")
        return self.attributes[i]


def missing_member(path: str, member: str, why: str) -> CorruptCheckpointError:
    """The error for a TorchScript archive without ``member``, which ``why`` (a clause: "holds the module")."""
    return CorruptCheckpointError(
        f"{quote(path)} is a TorchScript archive without its {quote(member)} member, which {why}; torch.jit.load "
        "refuses it too. The archive is incomplete or was modified: re-download it or re-save it with "
        "torch.jit.save.",
        code="missing-member",
        path=path,
    )


def _list(value: Any, reader: _Reader, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise reader.bad(f"has {what} {short_repr(value, 40)}, not a list")
    return value


def _holds_tensor(value: Any, depth: int = 0) -> bool:
    if isinstance(value, PickledTensor):
        return True
    if depth < 8 and isinstance(value, (list, tuple)):
        return any(_holds_tensor(v, depth + 1) for v in value)
    if depth < 8 and isinstance(value, dict):
        return any(_holds_tensor(v, depth + 1) for v in value.values())
    return False


def read_model_json(archive: Archive, root: str, records: dict[str, str], options: ReadOptions) -> Checkpoint:
    """Read a torch 1.0-1.2 TorchScript archive: its tensor table, module tree and attributes; nothing is run."""
    path = archive.path
    reader = _Reader(archive, root, options)
    info = archive.get(root + "model.json")
    assert info is not None  # the caller found it
    try:
        model = json.loads(archive.read_parsed(info, "model.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        pass_through(exc)  # the member could not be read (bad-crc, limit-inflate...)
        raise reader.bad(f"is not JSON ({type(exc).__name__})") from None
    if not isinstance(model, dict):
        raise reader.bad("is not a ModelDef object")
    version = reader.integer(model.get("protoVersion", "1"), "protoVersion")
    if not 1 <= version <= 5:
        raise reader.bad(f"has proto version {version}; torch wrote 1 to 5")
    reader.table = [reader.tensor(i, spec) for i, spec in enumerate(_list(model.get("tensors"), reader, "tensors"))]
    budget = 4 * len(reader.table) + 10_000
    if version >= 2:
        attributes = archive.get(root + "attributes.pkl")
        if attributes is None:
            raise missing_member(path, root + "attributes.pkl", f"model.json of proto version {version} needs")
        where = f"{quote(path)} member {quote(attributes.name)}"
        result = run_pickle(archive.read(attributes), options, where)
        reader.globals |= result.globals
        budget += 4 * result.opcodes
        expected = list if version == 2 else tuple
        if not isinstance(result.value, expected):
            raise reader.bad(
                f"of proto version {version} comes with attributes.pkl holding {short_repr(result.value, 60)}"
            )
        reader.attributes = list(reader.resolve(result.value))
    tree = reader.module(model.get("mainModule"), "", 0)
    flat = flatten(tree, record_maker(f"{quote(path)} member {quote(info.name)}"), limits=options.limits, budget=budget)
    warnings = list(flat.warnings)
    if reader.unchecked:
        warnings.append(
            f"the CRC-32 of {plural(len(reader.unchecked), 'member')} is not checked: each ends in a partial "
            f"element that no tensor reads, and the checksum covers it: {shorten_list(reader.unchecked)}. "
            "Re-save the model with torch.jit.save to have them checked."
        )
    if reader.dropped:
        warnings.append(
            f"{plural(len(reader.dropped), 'tensor attribute')} {'is' if len(reader.dropped) == 1 else 'are'} neither "
            f"parameters nor buffers, so state_dict() does not list them and neither does torchweights: "
            f"{quote_list(reader.dropped)}"
        )
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **records, "proto_version": version}
    for key in ("producerName", "producerVersion"):
        if isinstance(model.get(key), str):
            metadata[key] = model[key][:100]
    metadata["code_files"] = {
        m.name[len(root) + 5 :]: m.size for m in archive.members() if m.name.startswith(root + "code/")
    }
    return Checkpoint(
        path=path,
        format="torchscript",
        files=(path,),
        records=flat.records,
        extras=flat.extras,
        globals=tuple(sorted(reader.globals)),
        metadata=metadata,
        warnings=warnings,
    )
