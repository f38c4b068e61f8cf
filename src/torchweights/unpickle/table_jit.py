"""The safe reconstructors of TorchScript's pickles: ``torch.jit._pickle``'s list builders, type tags and tensor
table indices (pure data; nothing else under ``torch.jit`` is safe), and the inert loader torch.package names for an
embedded TorchScript module. Quantized tensors, which TorchScript files often hold, are torch's
(:mod:`~torchweights.unpickle.table_torch`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .values import Ctor, Global, Stub, bad_pickle, bounded_repr

__all__ = ["entries"]


def _ts_list(kinds: tuple[type, ...], what: str) -> Callable[..., list[Any]]:
    """``torch.jit._pickle.build_<what>list(data)``: the list itself, its elements checked to be ``kinds``."""

    def build(data: Any = None, *_: Any) -> list[Any]:
        if not isinstance(data, (list, tuple)):
            raise bad_pickle(f"torch.jit._pickle.build_{what}list got {bounded_repr(data)}, not a list")
        if kinds and not all(type(v) in kinds for v in data):
            raise bad_pickle(f"torch.jit._pickle.build_{what}list got a list holding something else than {what}s")
        return list(data)

    return build


def _ts_restore_type_tag(value: Any = None, type_str: Any = None, *_: Any) -> Any:
    """``torch.jit._pickle.restore_type_tag(value, "List[int]")``: the tag only matters to TorchScript's types."""
    if not isinstance(type_str, str):
        raise bad_pickle(f"torch.jit._pickle.restore_type_tag with type {bounded_repr(type_str)}, not a type name")
    return value


def _ts_tensor_id(index: Any = None, *_: Any) -> Stub:
    """``torch.jit._pickle.build_tensor_from_id(i)``: entry ``i`` of model.json's tensor table, as an inert stub."""
    if type(index) is not int or index < 0:
        raise bad_pickle(f"torch.jit._pickle.build_tensor_from_id got {bounded_repr(index)}, not a tensor table index")
    return Stub("torch.jit._pickle.build_tensor_from_id", (index,))


def entries() -> dict[str, Any]:
    """TorchScript's part of :data:`~torchweights.unpickle.table.SAFE_GLOBALS`: ``module.qualname`` -> reconstructor
    or inert reference."""
    table: dict[str, Any] = {}
    for kind, types_ in (("int", (int,)), ("double", (float,)), ("bool", (bool,)), ("tensor", ())):
        name = f"torch.jit._pickle.build_{kind}list"
        table[name] = Ctor(name, _ts_list(types_, kind))
    table["torch.jit._pickle.restore_type_tag"] = Ctor("torch.jit._pickle.restore_type_tag", _ts_restore_type_tag)
    # torch 1.1-1.2 attributes.pkl: a tensor of model.json's tensor table, by index (resolved by the TorchScript
    # reader); torch.package: the loader named in the persistent id of an embedded TorchScript module, an inert
    # reference the package reader resolves by reading the module's pickles (calling it only makes a stub).
    table["torch.jit._pickle.build_tensor_from_id"] = Ctor("torch.jit._pickle.build_tensor_from_id", _ts_tensor_id)
    table["torch.jit._script.unpackage_script_module"] = Global("torch.jit._script", "unpackage_script_module")
    return table
