"""The only code that mutates a model: executes a :class:`~torchweights.plan.model.Plan`.

Copy path: each loaded tensor's bytes are read from the file straight into the existing parameter's memory
(:func:`torchweights.storage.read.fill`: in file order, over a few threads; casts, big-endian files and compressed
members through a bounded scratch buffer), with no intermediate state dict; each destination's autograd version
counter is bumped as an in-place torch op would (a graph that saved the old values raises at ``backward()``, as
after ``load_state_dict``). Meta path: each parameter on the meta
device is allocated once (``torch.empty``) and filled the same way, then assigned; tied parameters are re-tied.
``mmap=True``: parameters become views of a private mapping of the file where the bytes can be used as they are
(same dtype, uncompressed, little-endian, aligned), and are read like the meta path elsewhere. Modules that load
their state their own way (``_load_from_state_dict`` overrides, load_state_dict hooks) receive their keys through
torch's own ``load_state_dict`` (with ``assign=True`` where their tensors are on the meta device).

Meta-device models: keys that get no tensor stay on the meta device, except BatchNorm's ``num_batches_tracked``
(set to 0, as torch's own loader sets it) and, with ``init_missing=True``, the tensors of modules that have an init
method: those are allocated and initialised by the module's ``reset_parameters()`` (or ``_reset_parameters()``,
``reset_running_stats()``) before the checkpoint's tensors are assigned, so a module's loaded tensors keep the
file's values; tensors of the model that already had values are put back as they were after the method ran.

CRC-32 (``check_crc=True``): storages are checked as they are read. Tensors that are assigned (meta path,
``mmap``, dtype changes) are only assigned once every check passed, so a damaged file leaves them untouched;
tensors written in place hold the file's bytes by the time a mismatch is known, and the ``bad-crc`` error says
so, naming what was written.

Extra state (``extra`` actions): each module whose class overrides ``set_extra_state`` gets the checkpoint's value
under ``prefix + "_extra_state"`` (a tensor read like the others, or any value kept in ``Checkpoint.extras``)
through ``module.set_extra_state(value)``, as torch's loader does, once every tensor is in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from .errors import CorruptCheckpointError
from .plan.model import Action, Plan
from .plan.sources import extra_state_values, mapping_tensors
from .plan.spec import ModelSpec, is_dtensor
from .records import Checkpoint, TensorRecord
from .text import plural, quote, shorten_list

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["apply_plan", "bytes_to_read"]


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        return model, attr
    module = model
    for atom in module_name.split("."):  # what get_submodule walks, minus its per-step checks
        child = module._modules.get(atom)
        if child is None:
            return model.get_submodule(module_name), attr  # its own answer (or error) for any other path
        module = child
    return module, attr


def _outermost_custom(name: str, custom: tuple[str, ...]) -> str | None:
    best: str | None = None
    for module in custom:
        if module == "" or name.startswith(module + "."):
            if best is None or len(module) < len(best):
                best = module
    return best


def _prepare(action: Action, tensor: torch.Tensor) -> torch.Tensor:
    if "reshape" in action.via and action.dst_shape is not None:
        tensor = tensor.reshape(action.dst_shape)  # 0-dim <-> (1,) scalars, checked by the planner
    return tensor


def _current(module: torch.nn.Module, attr: str) -> torch.Tensor | None:
    return module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr)


def apply_plan(
    plan: Plan,
    model: torch.nn.Module,
    checkpoint: Checkpoint | Mapping[str, Any],
    spec: ModelSpec,
    *,
    check_crc: bool = True,
    mmap: bool = False,
    pieces: list[Any] | None = None,
) -> tuple[int, tuple[str, ...]]:
    """Execute ``plan`` on ``model``.

    Args:
        plan: what to load where (from :func:`~torchweights.plan.reconcile.reconcile`).
        model: the module to fill.
        checkpoint: the opened checkpoint (or plain state dict) the plan was made from.
        spec: the model's spec the plan was made against.
        check_crc: check zip members' CRC-32 while reading (``bad-crc`` on mismatch).
        mmap: assign parameters as views of a private mapping of the file where possible.
        pieces: on a sharded model, receives the CRC-32 of every part of a zip member this rank read into its
            shards (:func:`torchweights.distributed.crc_pieces`, with ``check_crc``), for the ranks to join.

    Returns:
        ``(bytes read from the checkpoint, modules loaded through torch's own path)``.
    """
    loads = [
        a
        for a in plan.actions
        if a.kind == "load" and a.target is not None and a.source is not None and a.adapt is None
    ]
    own: list[Action] = []
    fallback_actions: dict[str, list[Action]] = {}
    for action in loads:
        assert action.target is not None
        custom = _outermost_custom(action.target, spec.custom_modules) if action.fallback else None
        if custom is None:
            own.append(action)
        else:
            fallback_actions.setdefault(custom, []).append(action)
    if isinstance(checkpoint, Checkpoint):
        return _apply_checkpoint(plan, model, checkpoint, spec, own, fallback_actions, check_crc, mmap, pieces)
    return _apply_mapping(plan, model, checkpoint, spec, own, fallback_actions)


def bytes_to_read(plan: Plan, checkpoint: Checkpoint | Mapping[str, Any]) -> int:
    """The tensor bytes applying ``plan`` reads from ``checkpoint``: each loaded source once, and the tensor
    records of modules' extra state (what :func:`apply_plan` returns, and what a dry run reports it would read)."""
    sources = {a.source for a in plan.actions if a.kind == "load" and a.target is not None and a.source is not None}
    sources.update(name for a in plan.by_kind("load") if a.adapt is not None for name in a.adapt.sources)
    if isinstance(checkpoint, Checkpoint):
        records = checkpoint.records
        sources.update(a.source for a in plan.by_kind("extra") if a.source is not None and a.source in records)
        return sum(records[name].nbytes for name in sources)
    flat = mapping_tensors(checkpoint)
    return sum(flat[name][1].numel() * flat[name][1].element_size() for name in sources)


def _fallback_states(
    fallback_actions: dict[str, list[Action]], tensors: Mapping[str, torch.Tensor], spec: ModelSpec
) -> dict[str, dict[str, torch.Tensor]]:
    from . import dtypes

    states: dict[str, dict[str, torch.Tensor]] = {}
    for custom, actions in fallback_actions.items():
        for action in actions:
            assert action.target is not None and action.source is not None
            local = action.target[len(custom) + 1 :] if custom else action.target
            tensor = _prepare(action, tensors[action.source])
            if spec.entries[action.target].meta and action.dst_dtype and action.dst_dtype != action.src_dtype:
                tensor = tensor.to(dtypes.to_torch(action.dst_dtype))  # assigned, not copied: cast here
            states.setdefault(custom, {})[local] = tensor
    return states


def _load_fallback(model: torch.nn.Module, states: dict[str, dict[str, torch.Tensor]]) -> None:
    for module_name, state in states.items():
        module = model.get_submodule(module_name) if module_name else model
        # A meta tensor cannot be copied into: torch assigns the checkpoint's (after the module's own code ran).
        meta = any(t.is_meta for t in (*module.parameters(), *module.buffers()))
        module.load_state_dict(state, strict=False, assign=meta)


def _defaults(plan: Plan, model: torch.nn.Module, spec: ModelSpec) -> None:
    """Keys kept at their default whose tensor is on the meta device (``num_batches_tracked``): set to 0, as torch's
    BatchNorm loader does."""
    import torch

    from . import dtypes

    for action in plan.by_kind("default"):
        assert action.target is not None
        if spec.entries[action.target].meta:
            module, attr = _owner(model, action.target)
            shape = action.dst_shape or ()
            _assign(module, attr, torch.zeros(shape, dtype=dtypes.to_torch(action.dst_dtype or "int64")))


def _initialise(plan: Plan, model: torch.nn.Module) -> None:
    """``init_missing=True``: allocate the meta tensors of each module of :attr:`Plan.initialise` that has an init
    method, then call it. Every other tensor of the module's subtree that has values is put back afterwards (same
    object, same values), so the method changes nothing but the tensors it was called for."""
    import torch

    if not plan.rules.init_missing:
        return
    memo: dict[int, torch.Tensor] = {}  # id of a meta tensor -> its allocation (tied tensors stay tied)
    for init in plan.initialise:
        if init.method is None:
            continue
        module = model.get_submodule(init.module) if init.module else model
        fresh: set[int] = set()
        for name in init.tensors:
            attr = name.rpartition(".")[2]
            current = _current(module, attr)
            if current is None or not current.is_meta:
                continue
            new = memo.get(id(current))
            if new is None:
                new = torch.empty_like(current, device="cpu")
                if isinstance(current, torch.nn.Parameter):
                    new = torch.nn.Parameter(new, requires_grad=current.requires_grad)
                memo[id(current)] = new
            fresh.add(id(new))
            if attr in module._parameters:
                module._parameters[attr] = new  # type: ignore[assignment]
            else:
                module._buffers[attr] = new
        kept: list[tuple[dict[str, Any], str, Any, torch.Tensor]] = []
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for attr, tensor in table.items():
                    if tensor is not None and not tensor.is_meta and id(tensor) not in fresh:
                        kept.append((table, attr, tensor, tensor.detach().clone()))
        with torch.no_grad():
            getattr(module, init.method)()
            for owner, name, original, value in kept:
                owner[name] = original  # the same object as before the method ran
                original.copy_(value)


def _apply_checkpoint(
    plan: Plan,
    model: torch.nn.Module,
    checkpoint: Checkpoint,
    spec: ModelSpec,
    own: list[Action],
    fallback_actions: dict[str, list[Action]],
    check_crc: bool,
    mmap: bool,
    pieces: list[Any] | None,
) -> tuple[int, tuple[str, ...]]:
    import torch

    from . import dtypes
    from .storage.prefault import fresh
    from .storage.read import fill, materialize
    from .storage.results import crc_error

    records = checkpoint.records
    empty = [a for a in own if a.source is not None and not records[a.source].has_data and records[a.source].numel > 0]
    if empty:
        names = shorten_list(quote(a.source or "") for a in empty)
        raise CorruptCheckpointError(
            f"{quote(checkpoint.path)}: {plural(len(empty), 'tensor')} {names} {'was' if len(empty) == 1 else 'were'} "
            "saved from the meta device and hold no values, so they cannot be loaded. Nothing was loaded. Skip "
            f"them (skip=[{', '.join(repr(a.target) for a in empty[:3])}]) or save the checkpoint from real tensors.",
            code="no-data",
            path=checkpoint.path,
        )
    bytes_read = bytes_to_read(plan, checkpoint)

    # Modules with their own loading code get real tensors through torch's path (read before anything is written).
    fallback_sources = sorted({a.source for acts in fallback_actions.values() for a in acts if a.source is not None})
    states = _fallback_states(
        fallback_actions,
        materialize([records[n] for n in fallback_sources], check_crc=check_crc) if fallback_sources else {},
        spec,
    )

    extra = plan.by_kind("extra")
    extra_records = [records[a.source] for a in extra if a.source in records]
    extra_values: dict[str, Any] = extra_state_values(checkpoint)
    if extra_records:
        extra_values.update(materialize(extra_records, check_crc=check_crc))

    adapted = _adapted(plan, lambda names: materialize([records[n] for n in names], check_crc=check_crc))

    mapped: dict[str, torch.Tensor] = {}
    if mmap:
        from .storage.mapping import mapped_tensors  # only for mmap=True

        mapped = mapped_tensors(_mappable(own, records, model), check_crc=check_crc)

    requests: list[tuple[TensorRecord, torch.Tensor]] = []
    shards: list[tuple[TensorRecord, torch.Tensor]] = []  # parts of sharded tensors: CRC-checked by all ranks
    bands: list[Any] = []  # rows of sharded tensors read through scratch (distributed.Band)
    replaced: dict[str, torch.Tensor] = {}
    in_place: list[str] = []
    for action in own:
        assert action.target is not None and action.source is not None
        record = records[action.source]
        module, attr = _owner(model, action.target)
        current = _current(module, attr)
        if spec.entries[action.target].sharded and current is not None:
            from .distributed import local_reads  # only for a sharded model

            parts, banded = local_reads(record, current)  # this rank's bytes only, into its own shard
            shards.extend(parts)
            bands.extend(banded)
            bytes_read += sum(p.nbytes for p, _ in parts) + sum(b.span.nbytes for b in banded) - record.nbytes
            in_place.append(action.target)
            continue
        dst_dtype = dtypes.to_torch(action.dst_dtype or action.src_dtype or "float32")
        shape = tuple(action.dst_shape if action.dst_shape is not None else record.shape)
        view = mapped.get(action.source)
        if view is not None:
            replaced[action.target] = _prepare(action, view)
            continue
        if current is not None and not current.is_meta and current.dtype == dst_dtype and tuple(current.shape) == shape:
            requests.append((record, current))
            in_place.append(action.target)
            continue
        device = "cpu" if current is None or current.is_meta else current.device
        new = fresh(torch.empty(shape, dtype=dst_dtype, device=device))
        requests.append((record, new))
        replaced[action.target] = new

    result = fill(requests, check_crc=check_crc)
    if shards or bands:  # (a rank reads part of a member: the ranks check its CRC-32 together, check_pieces)
        from .distributed import crc_pieces, read_bands

        fill(shards, check_crc=False)
        read_bands(bands)
        if check_crc and pieces is not None:  # a band's bytes are not in the shard as stored: read again
            pieces += crc_pieces([*shards, *((band.span, None) for band in bands)], checkpoint.files)
    if result.bad_crc:
        raise crc_error(result.bad_crc, _consequence(in_place, result.bad_crc))

    _initialise(plan, model)
    _defaults(plan, model, spec)
    for action in own:
        assert action.target is not None
        tensor = replaced.get(action.target)
        if tensor is not None:
            module, attr = _owner(model, action.target)
            _assign(module, attr, tensor)
    _put_adapted(model, adapted, replaced)
    _retie(model, spec, replaced)
    _load_fallback(model, states)
    _restore_extra_states(model, extra, extra_values)
    return bytes_read, tuple(states)


def _mappable(own: list[Action], records: Mapping[str, TensorRecord], model: torch.nn.Module) -> list[TensorRecord]:
    """Records that may become mapped views: no cast, not bound for a GPU, not overlapping another target's bytes."""
    candidates: list[TensorRecord] = []
    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for action in own:
        assert action.source is not None and action.target is not None
        record = records[action.source]
        ref = record.storage
        if ref is None:
            continue
        lo, hi = record.byte_range or (0, 0)
        spans.setdefault((ref.file, ref.key), []).append((lo, hi))
        if (action.dst_dtype or record.dtype) != record.dtype:
            continue
        module, attr = _owner(model, action.target)
        current = _current(module, attr)
        if current is not None and not current.is_meta and current.device.type != "cpu":
            continue
        candidates.append(record)
    shared = set()
    for key, ranges in spans.items():
        ranges.sort()
        if any(b[0] < a[1] for a, b in pairwise(ranges)):
            shared.add(key)
    return [r for r in candidates if r.storage is not None and (r.storage.file, r.storage.key) not in shared]


def _consequence(in_place: list[str], bad: list[Any]) -> str:
    if not in_place:
        return "The model was left untouched."
    damaged = {n for b in bad for n in b.tensors}
    return (
        f"The model was written in place before the check could finish: {plural(len(in_place), 'tensor')} now "
        f"hold{'s' if len(in_place) == 1 else ''} this file's bytes, the damaged ones included "
        f"({shorten_list((quote(n) for n in sorted(damaged)), 4)}), and nothing else was changed. Do not use the "
        "model as it is: reload it from a good file."
    )


def _retie(model: torch.nn.Module, spec: ModelSpec, replaced: Mapping[str, torch.Tensor]) -> None:
    """Re-tie weights whose twin was replaced."""
    for entry in spec.entries.values():
        if entry.tied_to is not None and entry.tied_to in replaced and entry.name not in replaced:
            twin_module, twin_attr = _owner(model, entry.tied_to)
            module, attr = _owner(model, entry.name)
            shared: torch.Tensor | None = twin_module._parameters.get(twin_attr)
            if shared is None:
                shared = twin_module._buffers.get(twin_attr)
            if shared is not None:
                if attr in module._parameters:
                    module._parameters[attr] = shared  # type: ignore[assignment]
                else:
                    module._buffers[attr] = shared


def _apply_mapping(
    plan: Plan,
    model: torch.nn.Module,
    checkpoint: Mapping[str, Any],
    spec: ModelSpec,
    own: list[Action],
    fallback_actions: dict[str, list[Action]],
) -> tuple[int, tuple[str, ...]]:
    """A plain ``{name: tensor}`` source: the tensors are in memory already; copy (or assign) them."""
    import torch

    from . import dtypes

    flat = mapping_tensors(checkpoint)
    wanted = {a.source for a in own if a.source is not None}
    for actions in fallback_actions.values():
        wanted.update(a.source for a in actions if a.source is not None)
    tensors = {name: flat[name][1] for name in wanted}
    bytes_read = bytes_to_read(plan, checkpoint)
    states = _fallback_states(fallback_actions, tensors, spec)
    adapted = _adapted(plan, lambda names: {n: flat[n][1] for n in names})
    replaced: dict[str, torch.Tensor] = {}
    _initialise(plan, model)
    _defaults(plan, model, spec)
    with torch.no_grad():
        for action in own:
            assert action.target is not None and action.source is not None
            source = _prepare(action, tensors[action.source])
            module, attr = _owner(model, action.target)
            current = _current(module, attr)
            dst_dtype = dtypes.to_torch(action.dst_dtype or action.src_dtype or "float32")
            if _copy_sharded(current, source):
                continue
            if current is None or current.is_meta or current.dtype != dst_dtype:
                new = source.to(dtype=dst_dtype, device="cpu" if current is None or current.is_meta else current.device)
                if new.untyped_storage().data_ptr() == source.untyped_storage().data_ptr() and (
                    not new.is_contiguous() or new.numel() * new.element_size() != new.untyped_storage().nbytes()
                ):
                    new = new.clone()  # a view into a shared checkpoint storage: give the model its own memory
                _assign(module, attr, new)
                replaced[action.target] = new
            else:
                current.copy_(source)
        _put_adapted(model, adapted, replaced)
        _retie(model, spec, replaced)
    _load_fallback(model, states)
    extra_values: dict[str, Any] = extra_state_values(checkpoint)
    extra_values.update((name, tensor) for name, (_, tensor) in flat.items())
    _restore_extra_states(model, plan.by_kind("extra"), extra_values)
    return bytes_read, tuple(states)


def _adapted(plan: Plan, read: Callable[[Sequence[str]], Mapping[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """The model tensors that adapters make (``Action.adapt``), computed before anything is written (a source
    that cannot be read leaves the model untouched): ``(model key, tensor in the model's dtype)``. Sources are read
    with ``read`` one action at a time; the last ones read are kept while the next action uses them too (a fused
    projection split into three), so what is held at once is the adapted outputs and one action's sources."""
    actions = [a for a in plan.by_kind("load") if a.adapt is not None and a.target is not None and a.dst_shape]
    if not actions:
        return []
    from . import dtypes
    from .adapt.registry import ADAPTERS  # (only for a plan with adapted keys)

    out: list[tuple[str, torch.Tensor]] = []
    held: Mapping[str, torch.Tensor] = {}
    for action in actions:
        step = action.adapt
        assert step is not None and action.target is not None and action.dst_shape is not None
        if set(step.sources) - set(held):
            held = read(step.sources)
        tensor = ADAPTERS[step.adapter].apply(step, [held[n] for n in step.sources], action.dst_shape)
        if tuple(tensor.shape) != action.dst_shape:
            raise AssertionError(f"adapter {step.adapter!r} made {tuple(tensor.shape)}, not {action.dst_shape}")
        dst_dtype = dtypes.to_torch(action.dst_dtype or action.src_dtype or "float32")
        tensor = tensor.to(dst_dtype)
        if any(tensor.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in held.values()):
            tensor = tensor.clone()  # a view of a source (a split): give the model its own memory
        out.append((action.target, tensor.contiguous()))
    return out


def _put_adapted(
    model: torch.nn.Module, adapted: list[tuple[str, torch.Tensor]], replaced: dict[str, torch.Tensor]
) -> None:
    """Copy each adapted tensor into the model's own (same shape and dtype, with values) or assign it."""
    import torch

    with torch.no_grad():
        for name, tensor in adapted:
            module, attr = _owner(model, name)
            current = _current(module, attr)
            if _copy_sharded(current, tensor):
                continue
            if (
                current is not None
                and not current.is_meta
                and current.dtype == tensor.dtype
                and current.shape == tensor.shape
            ):
                current.copy_(tensor)
            else:
                device = "cpu" if current is None or current.is_meta else current.device
                new = tensor.to(device)
                _assign(module, attr, new)
                replaced[name] = new


def _copy_sharded(current: torch.Tensor | None, full: torch.Tensor) -> bool:
    """Copy this rank's part of ``full`` into ``current`` when it is a sharded tensor (a DTensor); False otherwise."""
    if not is_dtensor(current):
        return False
    from .distributed import copy_local  # only for a sharded model

    assert current is not None
    copy_local(current, full)
    return True


def _restore_extra_states(model: torch.nn.Module, actions: list[Action], values: Mapping[str, Any]) -> None:
    """Give each module its extra state from the checkpoint, as torch's ``_load_from_state_dict`` does."""
    for action in actions:
        assert action.target is not None and action.source is not None
        module, _ = _owner(model, action.target)
        module.set_extra_state(values[action.source])


def _assign(module: torch.nn.Module, attr: str, tensor: torch.Tensor) -> None:
    import torch

    if attr in module._parameters:
        old = module._parameters[attr]
        requires_grad = (old.requires_grad if old is not None else True) and (
            tensor.is_floating_point() or tensor.is_complex()
        )
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    else:
        module._buffers[attr] = tensor
