"""TorchScript archives (``torch.jit.save``), read as data: the module's weights, never its code.

An archive is a zip with one root folder: ``data.pkl`` (the module object), ``constants.pkl`` (tensors the code
refers to as ``CONSTANTS.c0``...), ``data/<key>`` and ``constants/<key>`` (their storages), ``code/`` (the
TorchScript source of every class), ``version``, ``byteorder`` and ``extra/`` (files the user attached).

Naming: records are named as ``torch.jit.load(path).state_dict()`` names them (``fc.weight``, ``layers.0.bias``).
The pickle holds each TorchScript object as a flat attribute dict; which attributes are parameters and buffers is
declared by the class's ``__parameters__`` / ``__buffers__`` lines in ``code/`` (read as text, never run; a class
missing there falls back to ``requires_grad``: parameters, other tensors: buffers). Each module is turned into an
inert module stub (``_parameters``, ``_buffers``, ``_modules``), so :mod:`~torchweights.containers` names it like
any pickled ``nn.Module``. Beyond ``state_dict()``:

* quantized modules and packed parameters (``__torch__.torch.classes.quantized.LinearPackedParamsBase``,
  ``Conv2dPackedParamsBase``, quantized ``Conv2d`` whose ``__getstate__`` returns a tuple) keep their weights where
  TorchScript's ``state_dict()`` cannot see them; they are listed as ``<path>.weight`` and ``<path>.bias``
  (``0._packed_params._packed_params.weight``), whatever the packing version, with their scale and zero point
  (:attr:`TensorRecord.quantization <torchweights.records.TensorRecord>`). Unknown packing versions are read with
  the nearest known layout and say so in ``warnings``; other objects with a tuple state name their tensors
  ``<path>.state.<i>``;
* the tensors of ``constants.pkl`` are records named ``constants.c0``, ``constants.c1``..., as the code names
  them (a frozen module keeps all its weights there). ``load_into`` reports them as unexpected keys under
  ``strict=True``; ``skip=["constants.*"]`` leaves them out.

Non-tensor attributes (``training``, sizes, strings) are dropped, as for pickled modules; tensor attributes that
are neither parameters nor buffers (not in ``state_dict()``) are dropped too, and named in one warning.
``metadata["code_files"]`` lists every file under ``code/`` with its size; ``metadata["extra_files"]`` the
``extra/`` files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..containers import Flattened, flatten, is_module_stub, record_maker, short_repr
from ..errors import CorruptCheckpointError, ResourceLimitError
from ..limits import Limits
from ..records import Checkpoint
from ..text import plural, quote, quote_list
from ..unpickle import PickledTensor, Stub, UnpickleResult
from ._pickled import run_pickle
from ._zip import ZipMember
from .torch_zip import Archive, _Storages, check_byteorder, open_archive, read_text_members

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["parse_declarations", "read"]

_RECORDS = ("version", "byteorder", ".data/version", ".data/serialization_id", "producer_info")
#: Largest ``code/`` source file parsed for declarations (TorchScript writes a few KiB per class).
_CODE_MAX_BYTES = 16 << 20


# --------------------------------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------------------------------


def _find_root(names: list[str], path: str) -> str:
    """The archive's root folder (``"model/"``): the one holding ``data.pkl`` next to ``constants.pkl`` or ``code/``."""
    roots = [n[: -len("data.pkl")] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    present = set(names)
    for root in roots:
        if root + "constants.pkl" in present or any(n.startswith(root + "code/") for n in names):
            return root
    raise CorruptCheckpointError(
        f"{quote(path)} has no '<root>/data.pkl' next to 'constants.pkl' or 'code/', so it is not a TorchScript "
        "archive. Re-save it with torch.jit.save.",
        code="zip-no-data-pkl",
        path=path,
    )


def _read_pickle(archive: Archive, info: ZipMember, options: ReadOptions) -> bytes:
    path = archive.path
    if info.size > options.limits.max_pickle_bytes:
        raise ResourceLimitError(
            f"{quote(path)}: {quote(info.name)} is {info.size} bytes, over the "
            f"{options.limits.max_pickle_bytes}-byte limit. If you trust the file: "
            "tw.open(path, limits=Limits(max_pickle_bytes=...)).",
            code="limit-pickle-size",
            path=path,
        )
    return archive.read(info)


def _listing(archive: Archive, prefix: str) -> dict[str, int]:
    """``{name below prefix: size}`` of the members under ``prefix``."""
    return {m.name[len(prefix) :]: m.size for m in archive.members() if m.name.startswith(prefix)}


# --------------------------------------------------------------------------------------------------------------
# Class declarations in code/: which attributes are parameters and buffers
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClassDecl:
    """What a ``class X(Module):`` block of TorchScript source declares."""

    is_module: bool
    parameters: frozenset[str]
    buffers: frozenset[str]


_CLASS_LINE = re.compile(r"class\s+([A-Za-z_]\w*)\s*\(\s*([\w.]*)\s*\)\s*:")
_LIST_LINE = re.compile(r"\s+(__parameters__|__buffers__)\s*=\s*\[(.*)\]\s*$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"' + r"|'((?:[^'\\]|\\.)*)'")


def _names(text: str) -> frozenset[str]:
    return frozenset(
        (m.group(1) if m.group(1) is not None else m.group(2)).replace('\\"', '"').replace("\\'", "'")
        for m in _STRING.finditer(text)
    )


def parse_declarations(source: str, module: str) -> dict[str, _ClassDecl]:
    """``{qualified class name: declaration}`` of one ``code/`` file, read line by line as text (never run)."""
    out: dict[str, _ClassDecl] = {}
    current: str | None = None
    fields: dict[str, Any] = {}

    def close() -> None:
        if current is not None:
            out[current] = _ClassDecl(**fields)

    for line in source.splitlines():
        if not line or line[0].isspace():
            match = _LIST_LINE.match(line) if current is not None else None
            if match:
                fields["parameters" if match.group(1) == "__parameters__" else "buffers"] = _names(match.group(2))
            continue
        close()
        match = _CLASS_LINE.match(line)
        current = f"{module}.{match.group(1)}" if match else None
        if match:
            fields = {"is_module": match.group(2) == "Module", "parameters": frozenset(), "buffers": frozenset()}
    close()
    return out


def _declarations(archive: Archive, root: str, limits: Limits, warnings: list[str]) -> dict[str, _ClassDecl]:
    """Every class declared under ``<root>code/``, from its ``.py`` files (at most ``max_pickle_bytes`` in all)."""
    decls: dict[str, _ClassDecl] = {}
    budget = limits.max_pickle_bytes
    skipped: list[str] = []
    prefix = f"{root}code/"
    for info in archive.members():
        name = info.name
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        if info.size > min(_CODE_MAX_BYTES, budget):
            skipped.append(name[len(prefix) :])
            continue
        budget -= info.size
        source = archive.read(info).decode("utf-8", "replace")
        decls.update(parse_declarations(source, name[len(prefix) : -3].replace("/", ".")))
    if skipped:
        warnings.append(
            f"{plural(len(skipped), 'code file')} too large to read for class declarations: {quote_list(skipped)}"
        )
    return decls


# --------------------------------------------------------------------------------------------------------------
# TorchScript objects -> module stubs named like state_dict()
# --------------------------------------------------------------------------------------------------------------


def _is_script_object(value: Any) -> bool:
    return isinstance(value, Stub) and value.cls.startswith("__torch__.")


def _quantized_class(cls: str) -> bool:
    """A class of torch's own quantization stack (``__torch__.torch.ao.nn.quantized...``, packed params)."""
    return cls.startswith("__torch__.torch.") and "quantized" in cls.split(".")


def _tensor_or_none(value: Any) -> bool:
    return value is None or isinstance(value, PickledTensor)


def _conv_packed(state: tuple[Any, ...] | list[Any]) -> tuple[dict[str, Any], str | None] | None:
    """Weight and bias of a ``ConvNdPackedParamsBase`` state, for every serialization version torch wrote.

    Version 1: ``(weight, bias, stride, padding, dilation, groups)``; version 2: ``("2", [config, weight], [bias])``;
    version 3: ``(3, [config ints], [None, weight, bias])``. Returns the tensors and, for a version not among these,
    a note saying which layout was used; None when the state fits none of them.
    """
    head = state[0] if state else None
    if isinstance(head, PickledTensor) and len(state) >= 2 and _tensor_or_none(state[1]):
        return {"weight": head, "bias": state[1]}, None
    if len(state) != 3 or not all(isinstance(part, (list, tuple)) for part in state[1:]):
        return None
    if isinstance(head, str):
        tensors, optional = state[1], state[2]
        if len(tensors) >= 2 and isinstance(tensors[1], PickledTensor) and all(map(_tensor_or_none, optional[:1])):
            note = None if head == "2" else f"version {head!r}, read with the layout of version '2'"
            return {"weight": tensors[1], "bias": optional[0] if optional else None}, note
    elif type(head) is int:
        tensors = state[2]
        if len(tensors) == 3 and isinstance(tensors[1], PickledTensor) and _tensor_or_none(tensors[2]):
            note = None if head == 3 else f"version {head}, read with the layout of version 3"
            return {"weight": tensors[1], "bias": tensors[2]}, note
    return None


def _packed_weights(cls: str, state: Any) -> tuple[dict[str, Any], str | None] | None:
    """``{"weight": ..., "bias": ...}`` of a quantized object whose state is a ``__getstate__`` tuple, or None.

    Conv packed params have their own versions (:func:`_conv_packed`); linear packed params are ``(weight, bias)``;
    quantized modules (``Conv2d``, old ``LinearPackedParams``) keep weight and bias as their only tensors at the top
    of the tuple, in that order.
    """
    if not (_quantized_class(cls) and isinstance(state, (tuple, list))):
        return None
    leaf = cls.rsplit(".", 1)[-1]
    if leaf.startswith("Conv") and leaf.endswith("PackedParamsBase"):
        return _conv_packed(state)
    tensors = [v for v in state if isinstance(v, PickledTensor)]
    if 1 <= len(tensors) <= 2:
        return {"weight": tensors[0], "bias": tensors[1] if len(tensors) == 2 else None}, None
    return None


class _Converter:
    """Turns TorchScript objects into inert module stubs that :func:`~torchweights.containers.flatten` names like
    ``state_dict()``: each object once (shared submodules stay shared, cycles end), at most ``max_depth`` deep."""

    def __init__(self, decls: dict[str, _ClassDecl], limits: Limits) -> None:
        self.decls = decls
        self.limits = limits
        self.memo: dict[int, Stub] = {}
        self.dropped: list[str] = []  # tensor attributes that state_dict() does not list
        self.undeclared: set[str] = set()
        self.notes: list[str] = []

    def is_module(self, value: Stub) -> bool:
        decl = self.decls.get(value.cls)
        if decl is not None:
            return decl.is_module
        return isinstance(value.state, dict) and "training" in value.state

    def convert(self, obj: Stub, name: str, depth: int = 0) -> Stub:
        """The module stub standing for ``obj`` (found at attribute path ``name``)."""
        done = self.memo.get(id(obj))
        if done is not None:
            return done
        if depth > self.limits.max_depth:
            raise ResourceLimitError(
                f"TorchScript module '{name[:200]}' is nested more than {self.limits.max_depth} modules deep; no real "
                "model is. If you trust the file, raise the limit: tw.open(path, limits=Limits(max_depth=...)).",
                code="limit-depth",
            )
        params: dict[str, Any] = {}
        buffers: dict[str, Any] = {}
        modules: dict[str, Any] = {}
        out = Stub(obj.cls)
        out.state = {"_parameters": params, "_buffers": buffers, "_modules": modules}
        self.memo[id(obj)] = out
        if isinstance(obj.state, dict):
            self._attributes(obj, name, depth, params, buffers, modules)
        elif obj.state is not None:
            found = _packed_weights(obj.cls, obj.state)
            if found is None:
                buffers["state"] = obj.state  # named <path>.state.<i>
            else:
                buffers.update((k, v) for k, v in found[0].items() if v is not None)
                if found[1]:
                    self.notes.append(f"'{name or '<root>'}' ({obj.cls}) is packed with serialization {found[1]}")
        return out

    def _attributes(
        self,
        obj: Stub,
        name: str,
        depth: int,
        params: dict[str, Any],
        buffers: dict[str, Any],
        modules: dict[str, Any],
    ) -> None:
        assert isinstance(obj.state, dict)
        decl = self.decls.get(obj.cls)
        if decl is None:
            self.undeclared.add(obj.cls)
        for key, value in obj.state.items():
            if not isinstance(key, str):
                continue
            here = f"{name}.{key}" if name else key
            if isinstance(value, PickledTensor):
                if decl is None:
                    target = params if value.requires_grad else buffers
                elif key in decl.parameters:
                    target = params
                elif key in decl.buffers:
                    target = buffers
                else:
                    self.dropped.append(here)
                    continue
                if target is params:
                    value.is_parameter = True
                target[key] = value
            elif _is_script_object(value):
                if self.is_module(value) or not isinstance(value.state, dict):
                    modules[key] = self.convert(value, here, depth + 1)
                elif _holds_tensor(value.state.values()):
                    self.dropped.append(here)
            elif isinstance(value, (list, tuple, dict)) and _holds_tensor(
                value.values() if isinstance(value, dict) else value
            ):
                self.dropped.append(here)

    def warnings(self) -> list[str]:
        """What the conversion left out or guessed, as sentences."""
        out = list(self.notes)
        if self.dropped:
            out.append(
                f"{plural(len(self.dropped), 'tensor attribute')} {'is' if len(self.dropped) == 1 else 'are'} neither "
                f"parameters nor buffers, so state_dict() does not list them and neither does torchweights: "
                f"{quote_list(self.dropped)}"
            )
        if self.undeclared:
            out.append(
                f"{plural(len(self.undeclared), 'class')} {'has' if len(self.undeclared) == 1 else 'have'} no "
                f"declaration in the archive's code/: {quote_list(sorted(self.undeclared))}; their tensors are "
                "listed as parameters (requires_grad) or buffers"
            )
        return out


def _holds_tensor(values: Any) -> bool:
    return any(isinstance(v, PickledTensor) for v in values)


# --------------------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------------------


def _merge(into: Flattened, other: Flattened) -> None:
    for name, record in other.records.items():
        if name in into.records:
            n = 2
            while f"{name}#{n}" in into.records:
                n += 1
            into.warnings.append(f"two tensors are both named '{name}'; the second is listed as '{name}#{n}'")
            name = f"{name}#{n}"
        into.records[name] = record
    into.extras.update(other.extras)
    into.warnings.extend(other.warnings)


def _flatten(root: Any, where: str, result: UnpickleResult, options: ReadOptions) -> Flattened:
    return flatten(root, record_maker(where), limits=options.limits, budget=4 * result.opcodes + 10_000)


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a TorchScript archive's module and constants pickles and locate every storage; nothing is run."""
    warnings: list[str] = []
    with open_archive(path, options) as archive:
        names = archive.names()
        root = _find_root(names, path)
        records = read_text_members(archive, root, _RECORDS)
        byteorder = check_byteorder(records, path)
        decls = _declarations(archive, root, options.limits, warnings)

        pkl = archive.get(root + "data.pkl")
        assert pkl is not None  # _find_root found it
        where = f"{quote(path)} member {quote(pkl.name)}"
        storages = _Storages(archive, root, byteorder)
        result = run_pickle(_read_pickle(archive, pkl, options), options, where, persistent_load=storages)
        constants: UnpickleResult | None = None
        const_where = f"{quote(path)} member {quote(root + 'constants.pkl')}"
        const_member = archive.get(root + "constants.pkl")
        if const_member is not None:
            data = _read_pickle(archive, const_member, options)
            loader = _Storages(archive, root, byteorder, folder="constants")
            constants = run_pickle(data, options, const_where, persistent_load=loader)
        code_files = _listing(archive, f"{root}code/")
        extra_files = _listing(archive, f"{root}extra/")

    converter = _Converter(decls, options.limits)
    module = result.value
    try:
        tree = converter.convert(module, "") if _is_script_object(module) else module
    except RecursionError:  # only with a max_depth raised far beyond the default
        raise ResourceLimitError(
            f"{where}: TorchScript modules nest too deeply to name their tensors", code="limit-depth", path=path
        ) from None
    flat = _flatten(tree, where, result, options)
    globals_seen = set(result.globals)
    if constants is not None:
        values = constants.value if isinstance(constants.value, (tuple, list)) else (constants.value,)
        named = {
            f"c{i}": converter.convert(v, f"constants.c{i}") if _is_script_object(v) else v
            for i, v in enumerate(values)
        }
        if named:
            _merge(flat, _flatten({"constants": named}, const_where, constants, options))
        globals_seen |= constants.globals
    if not is_module_stub(tree):
        warnings.append(f"data.pkl holds {short_repr(module, 80)}, not a TorchScript module")
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **records}
    if isinstance(module, Stub):
        metadata["module_class"] = module.cls
    metadata["code_files"] = code_files
    if extra_files:
        metadata["extra_files"] = extra_files
    return Checkpoint(
        path=path,
        format="torchscript",
        files=(path,),
        records=flat.records,
        extras=flat.extras,
        globals=tuple(sorted(globals_seen)),
        metadata=metadata,
        warnings=[*warnings, *converter.warnings(), *flat.warnings],
    )
