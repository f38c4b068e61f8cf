"""What the planner needs to know about a model: names, shapes and dtypes of its parameters and buffers.

A :class:`ModelSpec` is plain data. :meth:`ModelSpec.from_module` reads it off an ``nn.Module`` (imports torch);
:meth:`ModelSpec.from_tuples` builds one from ``(name, shape, dtype)`` tuples for tests and tools.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import field, replace
from typing import TYPE_CHECKING, Any

from ..structs import structure

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ModelEntry", "ModelSpec", "fsdp_module_type", "is_dtensor", "is_sharded"]

#: Buffer names of torch's normalisation layers, for :meth:`ModelSpec.from_tuples`.
_BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


@structure(frozen=True)
class ModelEntry:
    """One key of the model's state dict.

    Attributes:
        name: state-dict key (``encoder.layers.0.attn.q.weight``).
        shape: its shape.
        dtype: torch dtype name without prefix (``"float32"``).
        kind: ``"parameter"`` or ``"buffer"``.
        tied_to: for a key that shares its storage with an earlier key (tied weights), that earlier key.
        module: the owning module's path (``encoder.layers.0.attn.q``; ``""`` for the root).
        meta: whether the tensor lives on the meta device (it has no values until something fills it).
        sharded: whether the tensor is a ``DTensor`` (a parameter of an FSDP2 ``fully_shard`` or tensor-parallel
            model): ``shape`` is then its global shape, and each rank holds and loads only its own part
            (:mod:`torchweights.distributed`).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str = "parameter"
    tied_to: str | None = None
    module: str = ""
    meta: bool = False
    sharded: bool = False


@structure(frozen=True)
class ModelSpec:
    """The model side of a reconciliation.

    Attributes:
        entries: state-dict key -> :class:`ModelEntry`, in ``state_dict()`` order.
        custom_modules: paths of modules that override ``_load_from_state_dict`` or have load_state_dict hooks;
            their keys are loaded through torch's own path.
        class_name: the model's class, for messages.
        on_meta: whether any of the model's tensors lives on the meta device (to be materialised from the
            checkpoint).
        unsaved_meta: buffers on the meta device that ``state_dict()`` leaves out (``persistent=False``): no
            checkpoint can fill them, and no ``reset_parameters()`` is known to compute them.
        init_methods: for each module that owns a tensor on the meta device, the method that initialises its
            tensors (``reset_parameters``, ``_reset_parameters`` or ``reset_running_stats``); modules without one
            are absent. Used by ``init_missing=True``.
        converts: ``(key, checkpoint shape)`` pairs that a module's own ``_load_from_state_dict`` was seen to
            accept although the shape differs from the model's (see :func:`probe_custom_loading`).
        extra_states: state-dict keys (``prefix + "_extra_state"``) of the modules whose class overrides
            ``set_extra_state``: torch's loader passes them the checkpoint's value under that key (any object, a
            tensor included) and, under ``strict=True``, reports the key missing when the checkpoint has none.
    """

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    custom_modules: tuple[str, ...] = ()
    class_name: str = "model"
    on_meta: bool = False
    unsaved_meta: tuple[ModelEntry, ...] = ()
    init_methods: Mapping[str, str] = field(default_factory=dict)
    converts: frozenset[tuple[str, tuple[int, ...]]] = frozenset()
    extra_states: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.entries)

    def materialised(self, keep: Collection[str] = ()) -> ModelSpec:
        """The same spec as if every tensor had values (for planning against a model that was built on the meta
        device only to save memory, as ``torchweights check`` does), except the tensors named in ``keep``: those
        stay on the meta device (a factory that builds them there itself)."""
        entries = {name: e if name in keep else replace(e, meta=False) for name, e in self.entries.items()}
        unsaved = tuple(e for e in self.unsaved_meta if e.name in keep)
        on_meta = bool(unsaved) or any(e.meta for e in entries.values())
        return replace(self, entries=entries, on_meta=on_meta, unsaved_meta=unsaved)

    @classmethod
    def from_tuples(
        cls,
        items: Iterable[tuple[Any, ...]],
        *,
        class_name: str = "model",
        custom_modules: Iterable[str] = (),
        on_meta: bool = False,
    ) -> ModelSpec:
        """A spec from ``(name, shape, dtype)`` tuples, for tests and tools.

        A tuple may carry two more items: ``kind`` (``"parameter"`` or ``"buffer"``) and ``tied_to`` (an earlier
        key sharing its storage). Without ``kind``, BatchNorm's ``running_mean``, ``running_var`` and
        ``num_batches_tracked`` are buffers and everything else a parameter.
        """
        entries: dict[str, ModelEntry] = {}
        for item in items:
            if not 3 <= len(item) <= 5:
                raise ValueError(f"expected (name, shape, dtype[, kind[, tied_to]]), got {item!r}")
            name, shape, dtype = item[0], tuple(int(n) for n in item[1]), str(item[2])
            kind = item[3] if len(item) > 3 else ("buffer" if name.rpartition(".")[2] in _BUFFER_NAMES else "parameter")
            tied_to = item[4] if len(item) > 4 else None
            if tied_to is not None and tied_to not in entries:
                raise ValueError(f"{name!r} is tied to {tied_to!r}, which is not an earlier key")
            entries[name] = ModelEntry(
                name, shape, dtype, kind=kind, tied_to=tied_to, module=name.rpartition(".")[0], meta=on_meta
            )
        return cls(entries=entries, custom_modules=tuple(custom_modules), class_name=class_name, on_meta=on_meta)

    @classmethod
    def from_module(cls, model: torch.nn.Module) -> ModelSpec:
        """Read the spec off a model: parameters and persistent buffers, tied storages, custom loaders."""
        entries: dict[str, ModelEntry] = {}
        seen: dict[tuple[Any, ...], str] = {}
        custom: list[str] = []
        unsaved: list[ModelEntry] = []
        unsaved_names: set[str] = set()
        init_methods: dict[str, str] = {}
        extra_states: list[str] = []
        on_meta = False
        by_class: dict[type, tuple[bool, bool]] = {}  # per class, once a call: (overrides loading, extra state)
        dtype_names: dict[Any, str] = {}
        for module_name, module in model.named_modules(remove_duplicate=False):
            module_class = type(module)
            traits = by_class.get(module_class)
            if traits is None:
                traits = by_class[module_class] = (_overrides_loading(module), has_extra_state(module))
            hooks = _own_hooks(module)
            if (hooks or traits[0]) and module_name not in custom:
                custom.append(module_name)
            if traits[1]:
                extra_states.append(f"{module_name}.{EXTRA_STATE}" if module_name else EXTRA_STATE)
            non_persistent: set[str] = getattr(module, "_non_persistent_buffers_set", set())
            owns_meta = False
            for local, buffer in module._buffers.items():
                if local in non_persistent and buffer is not None and buffer.is_meta:
                    name = f"{module_name}.{local}" if module_name else local
                    if name not in unsaved_names:
                        unsaved_names.add(name)
                        unsaved.append(_entry(name, buffer, "buffer", None, module_name))
            groups = (
                ("parameter", module._parameters.items()),
                ("buffer", ((n, b) for n, b in module._buffers.items() if n not in non_persistent)),
            )
            for kind, tensors in groups:
                for local, tensor in tensors:
                    if tensor is None:
                        continue
                    name = f"{module_name}.{local}" if module_name else local
                    meta = tensor.is_meta
                    owns_meta = owns_meta or meta
                    if name in entries:
                        continue
                    on_meta = on_meta or meta
                    tied_to = None
                    shape = tuple(tensor.shape)
                    if meta:
                        tied_to = seen.setdefault(("meta", id(tensor)), name)
                        tied_to = None if tied_to == name else tied_to
                    elif tensor.numel():
                        try:
                            ptr = tensor.untyped_storage().data_ptr()
                        except (RuntimeError, NotImplementedError):  # sparse, quantized...: no plain storage
                            ptr = None
                        # A tensor without a plain storage (a DTensor of a sharded model) is tied where it is
                        # the same object, as FSDP2 registers a tied parameter once under both names.
                        at = ("id", id(tensor)) if ptr is None else (ptr, tensor.storage_offset(), shape)
                        tied_to = seen.setdefault(at, name)
                        tied_to = None if tied_to == name else tied_to
                    dtype = dtype_names.get(tensor.dtype)
                    if dtype is None:
                        dtype = dtype_names[tensor.dtype] = str(tensor.dtype).removeprefix("torch.")
                    sharded = is_dtensor(tensor)
                    entries[name] = ModelEntry(name, shape, dtype, kind, tied_to, module_name, meta, sharded)
            if owns_meta:
                method = init_method(module)
                if method is not None:
                    init_methods.setdefault(module_name, method)
        return cls(
            entries=entries,
            custom_modules=tuple(custom),
            class_name=type(model).__name__,
            on_meta=on_meta or bool(unsaved),
            unsaved_meta=tuple(unsaved),
            init_methods=init_methods,
            extra_states=tuple(dict.fromkeys(extra_states)),
        )


#: The last part of the state-dict key under which torch saves a module's ``get_extra_state()``.
EXTRA_STATE = "_extra_state"


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a sharded tensor), without importing torch.distributed: none exists
    before it is imported."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return dtensor is not None and isinstance(tensor, dtensor)


def fsdp_module_type() -> type | None:
    """FSDP2's ``FSDPModule`` class where torch.distributed.fsdp was imported, else None (no FSDP2 module exists)."""
    return getattr(sys.modules.get("torch.distributed.fsdp"), "FSDPModule", None)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded: it has an FSDP2 module (sharded or not at the moment) or a DTensor parameter or
    buffer (tensor parallel)."""
    fsdp = fsdp_module_type()
    if fsdp is not None and any(isinstance(m, fsdp) for m in model.modules()):
        return True
    return any(is_dtensor(t) for t in (*model.parameters(), *model.buffers()))


def has_extra_state(module: torch.nn.Module) -> bool:
    """Whether torch's loader restores ``module``'s extra state: its class overrides ``set_extra_state``."""
    import torch

    return getattr(type(module), "set_extra_state", torch.nn.Module.set_extra_state) is not (
        torch.nn.Module.set_extra_state
    )


def _entry(name: str, tensor: torch.Tensor, kind: str, tied_to: str | None, module: str) -> ModelEntry:
    return ModelEntry(
        name=name,
        shape=tuple(tensor.shape),
        dtype=str(tensor.dtype).removeprefix("torch."),
        kind=kind,
        tied_to=tied_to,
        module=module,
        meta=tensor.is_meta,
    )


#: Methods that initialise a module's own tensors, in order of preference: the public one of torch's layers, the
#: private one of ``nn.MultiheadAttention`` and ``nn.Transformer``, and BatchNorm's for its running statistics.
INIT_METHODS = ("reset_parameters", "_reset_parameters", "reset_running_stats")


def init_method(module: torch.nn.Module) -> str | None:
    """The name of the method that initialises ``module``'s own tensors (see :data:`INIT_METHODS`), or None."""
    for name in INIT_METHODS:
        if callable(getattr(module, name, None)):
            return name
    return None


#: Where the load_state_dict hooks that do not change what a module loads are defined: FSDP2 registers a post hook
#: per sharded parameter that only re-syncs its own bookkeeping after ``load_state_dict``.
_BOOKKEEPING_HOOKS = ("torch.distributed.fsdp.",)


def _own_hooks(module: torch.nn.Module) -> bool:
    """Whether ``module`` has load_state_dict hooks of its own (not FSDP2's bookkeeping)."""
    for table in ("_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
        for hook in (getattr(module, table, None) or {}).values():
            fn = getattr(hook, "hook", hook)  # pre hooks come wrapped
            if not str(getattr(fn, "__module__", "") or "").startswith(_BOOKKEEPING_HOOKS):
                return True
    return False


def _overrides_loading(module: torch.nn.Module) -> bool:
    """Whether ``module``'s class overrides ``_load_from_state_dict`` outside ``torch.nn.modules``: with load hooks
    on the module itself (which :meth:`ModelSpec.from_module` checks per module), the ways a module loads its state
    its own way.

    A user subclass of BatchNorm2d inherits torch's loader, which only handles version upgrades and is fine to
    bypass; an override anywhere outside ``torch.nn.modules`` is not."""
    import torch

    owner = next((k for k in type(module).__mro__ if "_load_from_state_dict" in vars(k)), torch.nn.Module)
    return owner is not torch.nn.Module and not owner.__module__.startswith("torch.nn.modules")


def probe_custom_loading(
    model: torch.nn.Module,
    spec: ModelSpec,
    bound: Mapping[str, tuple[tuple[int, ...], str]],
) -> ModelSpec:
    """Ask the modules whose own ``_load_from_state_dict`` may convert a checkpoint's layout whether they accept
    the checkpoint's shapes where these differ from the model's.

    ``bound``: model key -> (shape, dtype) of the checkpoint tensor the plan binds to it. Each module with custom
    loading that owns a key whose shape differs from the model's and overrides ``_load_from_state_dict``
    (itself or a module between it and the key's owner) is copied with every tensor replaced by a meta-device
    twin (no values are copied, read or written; the model is not touched) and without its load_state_dict hooks;
    its loading code then runs on meta tensors of the checkpoint's shapes and dtypes (every checkpoint tensor bound
    to a key of that module). A key is accepted only when that
    code reports no error at all for the module and raises nothing: torch's own size check then passed after
    whatever the module did to the tensors. Modules with hooks only (FSDP2 adds one to every module it shards) use
    torch's loader, which requires the model's shape: nothing is probed for them.

    Returns:
        ``spec`` with :attr:`ModelSpec.converts` holding the accepted ``(key, checkpoint shape)`` pairs.
    """
    import torch

    from .. import dtypes

    by_root: dict[str, list[str]] = {}
    for key, (shape, _) in bound.items():
        entry = spec.entries.get(key)
        if entry is None or entry.shape == tuple(shape):
            continue
        roots = [m for m in spec.custom_modules if m == "" or key.startswith(m + ".")]
        if roots:
            by_root.setdefault(min(roots, key=len), []).append(key)
    accepted: set[tuple[str, tuple[int, ...]]] = set()
    for root, keys in by_root.items():
        module = model.get_submodule(root) if root else model
        prefix = root + "." if root else ""
        owners = {key.rpartition(".")[0] for key in keys}
        if not any(_overrides_on_path(module, owner[len(prefix) :] if root else owner) for owner in owners):
            continue
        try:
            probe = _meta_copy(module)
            meta_state = {
                key[len(prefix) :]: torch.empty(shape, dtype=dtypes.to_torch(dtype), device="meta")
                for key, (shape, dtype) in bound.items()
                if key.startswith(prefix)
            }
            errors: list[str] = []
            _probe_load(probe, meta_state, "", errors)
        except Exception:  # the module's code cannot run on meta tensors: its verdict is unknown, nothing accepted
            continue
        if not errors:
            accepted.update((key, tuple(bound[key][0])) for key in keys)
    return replace(spec, converts=frozenset(accepted))


def _overrides_on_path(module: torch.nn.Module, path: str) -> bool:
    """Whether ``module`` or a module on the way down to ``path`` overrides ``_load_from_state_dict``."""
    current = module
    if _overrides_loading(current):
        return True
    for part in [p for p in path.split(".") if p]:
        current = current._modules.get(part)  # type: ignore[assignment]
        if current is None:
            return False
        if _overrides_loading(current):
            return True
    return False


def _meta_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are meta tensors of the same shapes and dtypes and
    whose load_state_dict hooks are gone; the tensors' values are never copied."""
    import collections

    import torch

    memo: dict[int, Any] = {}
    for sub in module.modules():
        for tensors in (sub._parameters, sub._buffers):
            for tensor in tensors.values():
                if tensor is None or id(tensor) in memo:
                    continue
                twin = torch.empty_like(tensor, device="meta")
                if isinstance(tensor, torch.nn.Parameter):
                    twin = torch.nn.Parameter(twin, requires_grad=tensor.requires_grad)
                memo[id(tensor)] = twin
        for hooks in ("_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
            found = sub.__dict__.get(hooks)
            if found is not None:
                memo[id(found)] = collections.OrderedDict()
    return copy.deepcopy(module, memo)


def _probe_load(module: torch.nn.Module, state: dict[str, Any], prefix: str, errors: list[str]) -> None:
    """torch's ``load_state_dict`` recursion (without hooks, not strict), collecting the modules' error messages."""
    missing: list[str] = []
    unexpected: list[str] = []
    module._load_from_state_dict(state, prefix, {}, False, missing, unexpected, errors)
    for name, child in module._modules.items():
        if child is not None:
            child_prefix = f"{prefix}{name}."
            _probe_load(child, {k: v for k, v in state.items() if k.startswith(child_prefix)}, child_prefix, errors)
