"""TorchScript archives (``torch.jit.save``), read as data: the module's weights, never its code.

An archive is a zip with one root folder: ``data.pkl`` (the module object), ``constants.pkl`` (tensors the code
refers to as ``CONSTANTS.c0``...), ``data/<key>`` and ``constants/<key>`` (their storages), ``code/`` (the
TorchScript source of every class), ``version``, ``byteorder`` and ``extra/`` (files the user attached).

Naming: records are named as ``torch.jit.load(path).state_dict()`` names them (``fc.weight``, ``layers.0.bias``).
The pickle holds each TorchScript object as a flat attribute dict; which attributes are parameters and buffers is
declared by the class's ``__parameters__`` / ``__buffers__`` lines in ``code/`` (read as text, never run; a class
missing there falls back to ``requires_grad``: parameters, other tensors: buffers). Each module is turned into an
inert module stub (``_parameters``, ``_buffers``, ``_modules``), so :mod:`~torchweights.formats.tree` names it like
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CorruptCheckpointError, ResourceLimitError
from ..limits import Limits
from ..records import Checkpoint
from ..structs import structure
from ..text import plural, quote, quote_list
from ..unpickle.values import PickledTensor, Stub
from ._pickled import run_pickle
from ._zip import ZipMember
from .torch_zip import Archive, ZipStorages, check_byteorder, open_archive, read_text_members
from .torchscript_legacy import missing_member, read_model_json
from .tree import Flattened, flatten, is_module_stub, record_maker, short_repr

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["ScriptModule", "ScriptStorages", "missing_member", "parse_declarations", "read", "read_script_module"]

_RECORDS = ("version", "byteorder", ".data/version", ".data/serialization_id", "producer_info")
#: Largest ``code/`` source file parsed for declarations (TorchScript writes a few KiB per class).
_CODE_MAX_BYTES = 16 << 20


# --------------------------------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------------------------------


def _find_root(names: list[str], path: str) -> tuple[str, str]:
    """The archive's root folder (``"model/"``) and its layout: ``"data.pkl"`` (torch 1.3 on) or ``"model.json"``
    (torch 1.0 to 1.2). A folder with ``constants.pkl`` or ``code/`` but no ``data.pkl`` is a TorchScript archive
    that lost its module pickle: refused by name."""
    present = set(names)
    folders = list(dict.fromkeys(n.split("/", 1)[0] + "/" for n in names if "/" in n))
    script = [r for r in folders if r + "constants.pkl" in present or any(n.startswith(r + "code/") for n in names)]
    for root in script:
        if root + "data.pkl" in present:
            return root, "data.pkl"
    for root in script + folders:
        if root + "model.json" in present:
            return root, "model.json"
    if script:
        raise missing_member(path, script[0] + "data.pkl", "holds the module")
    raise CorruptCheckpointError(
        f"{quote(path)} has no '<root>/data.pkl' next to 'constants.pkl' or 'code/', so it is not a TorchScript "
        "archive. Re-save it with torch.jit.save.",
        code="zip-no-data-pkl",
        path=path,
    )


def _listing(archive: Archive, prefix: str) -> dict[str, int]:
    """``{name below prefix: size}`` of the members under ``prefix``."""
    return {m.name[len(prefix) :]: m.size for m in archive.members() if m.name.startswith(prefix)}


# --------------------------------------------------------------------------------------------------------------
# Class declarations in code/: which attributes are parameters and buffers
# --------------------------------------------------------------------------------------------------------------


@structure(frozen=True)
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


def _declarations(archive: Archive, prefix: str, limits: Limits, warnings: list[str]) -> dict[str, _ClassDecl]:
    """Every class declared under ``prefix`` (``<root>code/``), from its ``.py`` files (at most ``max_pickle_bytes``
    in all)."""
    decls: dict[str, _ClassDecl] = {}
    budget = limits.max_pickle_bytes
    skipped: list[str] = []
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
    if leaf == "EmbeddingPackedParamsBase":  # (version, [weight], doubles, [bit_rate])
        tensors = state[1] if len(state) == 4 and isinstance(state[1], (list, tuple)) else ()
        if len(tensors) == 1 and isinstance(tensors[0], PickledTensor):
            return {"weight": tensors[0]}, None
        return None
    tensors = [v for v in state if isinstance(v, PickledTensor)]
    if 1 <= len(tensors) <= 2:
        return {"weight": tensors[0], "bias": tensors[1] if len(tensors) == 2 else None}, None
    return None


#: ``CellParamsBase`` (quantized RNN cells, torch 1.5 on): ``(type, tensors, doubles, longs, packed)``, the tensors
#: and packed linear params named by their role in each type (``aten/src/ATen/native/RNN.cpp``, ``__getstate__``).
_CELL_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "quantized": (("weight_ih", "weight_hh", "bias_ih", "bias_hh", "col_offsets_ih", "col_offsets_hh"), ()),
    "quantized_dynamic": (("bias_ih", "bias_hh"), ("packed_ih", "packed_hh")),
    "quantized_fp16": ((), ("packed_ih", "packed_hh")),
}


def _cell_params(cls: str, state: Any) -> tuple[dict[str, Any], dict[str, Any], str | None] | None:
    """Tensors and packed params of a quantized RNN cell (``__torch__.torch.classes.rnn.CellParamsBase``) by role,
    and a note when its type is unknown (then named ``tensors.<i>`` / ``packed.<i>``); None for anything else."""
    if not cls.endswith(".classes.rnn.CellParamsBase") or not isinstance(state, (tuple, list)) or len(state) != 5:
        return None
    kind, tensors, packed = state[0], state[1], state[4]
    if not (isinstance(kind, str) and isinstance(tensors, (list, tuple)) and isinstance(packed, (list, tuple))):
        return None
    roles = _CELL_ROLES.get(kind)
    if roles is not None and len(tensors) == len(roles[0]) and len(packed) == len(roles[1]):
        return dict(zip(roles[0], tensors)), dict(zip(roles[1], packed)), None
    note = f"quantized RNN cell type {kind[:40]!r} with {len(tensors)} tensors and {len(packed)} packed params"
    return {f"tensors.{i}": t for i, t in enumerate(tensors)}, {f"packed.{i}": p for i, p in enumerate(packed)}, note


class _Converter:
    """Turns TorchScript objects into inert module stubs that :func:`~torchweights.formats.tree.flatten` names like
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
        elif (cell := _cell_params(obj.cls, obj.state)) is not None:
            tensors, packed, note = cell
            for key, value in tensors.items():
                if isinstance(value, PickledTensor):
                    buffers[key] = value
            for key, value in packed.items():
                if _is_script_object(value):
                    modules[key] = self.convert(value, f"{name}.{key}", depth + 1)
            if note:
                self.notes.append(f"'{name or '<root>'}' is a {note}, named by position")
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


class ScriptStorages:
    """persistent_load for TorchScript pickles: the zip resolver it wraps, also for the ids torch 1.3 to 1.5 wrote.

    Their pickler ended each storage id with a sixth element, the ``view_metadata`` slot of the legacy stream
    format, always None (``('storage', torch.FloatStorage, '0', 'cpu', 6, None)``); every ``torch.jit.load`` reads
    the first five and ignores it. Anything but None there was never written by torch and is refused.
    """

    def __init__(self, inner: Callable[[Any], Any], path: str) -> None:
        self.inner = inner
        self.path = path

    def __call__(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage":
            if pid[5] is not None:
                raise CorruptCheckpointError(
                    f"{quote(self.path)}: storage id {short_repr(pid, 120)} carries view metadata "
                    f"{short_repr(pid[5], 60)}; TorchScript only ever wrote None there, so the file was modified. "
                    "Re-save it with torch.jit.save.",
                    code="bad-record",
                    path=self.path,
                )
            pid = pid[:5]
        return self.inner(pid)


@structure
class ScriptModule:
    """One TorchScript module read from its ``data.pkl`` and ``constants.pkl``, nothing run.

    Attributes:
        tree: the module as an inert module stub (named like its ``state_dict()`` by
            :func:`~torchweights.formats.tree.flatten`), or what ``data.pkl`` holds when it is not a module.
        constants: ``{"c0": value, ...}``, the tensors (and objects) the code names ``CONSTANTS.c0``...
        module_class: the root object's class (``__torch__.Net``), or None.
        globals: every global the two pickles reference.
        budget: a bound for walking the tree (from the opcodes the pickles ran).
        warnings: what the conversion left out or guessed.
    """

    tree: Any
    constants: dict[str, Any]
    module_class: str | None
    globals: set[str]
    budget: int
    warnings: list[str]


def read_script_module(
    archive: Archive,
    data: ZipMember,
    constants: ZipMember,
    code_prefix: str,
    storages: Callable[[Any], Any],
    constant_storages: Callable[[Any], Any],
    options: ReadOptions,
) -> ScriptModule:
    """Read one TorchScript module: its pickles with the given storage resolvers, its classes from ``code_prefix``.

    Shared by TorchScript archives (``<root>/data.pkl``, storages under ``data/`` and ``constants/``) and
    torch.package (``.data/ts_code/<id>/data.pkl``, storages in the package's ``.data/``).
    """
    path = archive.path
    warnings: list[str] = []
    decls = _declarations(archive, code_prefix, options.limits, warnings)
    where = f"{quote(path)} member {quote(data.name)}"
    result = run_pickle(
        archive.read_parsed(data, quote(data.name)), options, where, persistent_load=ScriptStorages(storages, path)
    )
    const_where = f"{quote(path)} member {quote(constants.name)}"
    const_result = run_pickle(
        archive.read_parsed(constants, quote(constants.name)),
        options,
        const_where,
        persistent_load=ScriptStorages(constant_storages, path),
    )
    converter = _Converter(decls, options.limits)
    module = result.value
    try:
        tree = converter.convert(module, "") if _is_script_object(module) else module
        values = const_result.value if isinstance(const_result.value, (tuple, list)) else (const_result.value,)
        named = {
            f"c{i}": converter.convert(v, f"constants.c{i}") if _is_script_object(v) else v
            for i, v in enumerate(values)
        }
    except RecursionError:  # only with a max_depth raised far beyond the default
        raise ResourceLimitError(
            f"{where}: TorchScript modules nest too deeply to name their tensors", code="limit-depth", path=path
        ) from None
    if not is_module_stub(tree):
        warnings.append(f"{data.name} holds {short_repr(module, 80)}, not a TorchScript module")
    return ScriptModule(
        tree=tree,
        constants=named,
        module_class=module.cls if isinstance(module, Stub) else None,
        globals=result.globals | const_result.globals,
        budget=4 * (result.opcodes + const_result.opcodes) + 10_000,
        warnings=[*warnings, *converter.warnings()],
    )


def _require(archive: Archive, root: str, name: str, why: str) -> ZipMember:
    info = archive.get(root + name)
    if info is None:
        raise missing_member(archive.path, root + name, why)
    return info


def _check_version(archive: Archive, root: str) -> None:
    """Every release wrote a ``version`` record (later ones ``.data/version``); torch refuses archives without."""
    if archive.get(root + "version") is None and archive.get(root + ".data/version") is None:
        raise missing_member(archive.path, root + "version", "every torch release wrote (the format version)")


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a TorchScript archive's module and constants pickles and locate every storage; nothing is run."""
    with open_archive(path, options) as archive:
        root, layout = _find_root(archive.names(), path)
        records = read_text_members(archive, root, _RECORDS)
        byteorder = check_byteorder(records, path)
        _check_version(archive, root)
        if layout == "model.json":
            return read_model_json(archive, root, records, options)
        data = _require(archive, root, "data.pkl", "holds the module")
        constants = _require(archive, root, "constants.pkl", "every release since torch 1.3 wrote and reads")
        module = read_script_module(
            archive,
            data,
            constants,
            f"{root}code/",
            data_storages := ZipStorages(archive, root, byteorder),
            constant_storages := ZipStorages(archive, root, byteorder, folder="constants"),
            options,
        )
        code_files = _listing(archive, f"{root}code/")
        extra_files = _listing(archive, f"{root}extra/")
        bytecode = archive.get(root + "bytecode.pkl") is not None

    where = f"{quote(path)} member {quote(data.name)}"
    flat = flatten(module.tree, record_maker(where), limits=options.limits, budget=module.budget)
    if module.constants:
        const_where = f"{quote(path)} member {quote(constants.name)}"
        _merge(
            flat,
            flatten(
                {"constants": module.constants}, record_maker(const_where), limits=options.limits, budget=module.budget
            ),
        )
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **records}
    if module.module_class is not None:
        metadata["module_class"] = module.module_class
    metadata["code_files"] = code_files
    if extra_files:
        metadata["extra_files"] = extra_files
    if bytecode:
        metadata["bytecode"] = True  # saved for the lite interpreter: bytecode.pkl is code, never read
    return Checkpoint(
        path=path,
        format="torchscript",
        files=(path,),
        records=flat.records,
        extras=flat.extras,
        globals=tuple(sorted(module.globals)),
        metadata=metadata,
        warnings=[*module.warnings, *flat.warnings, *data_storages.warnings, *constant_storages.warnings],
    )
