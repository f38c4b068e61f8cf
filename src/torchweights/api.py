"""The public verbs: :func:`open` (records, no tensor bytes) and :func:`load` (tensors)."""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from .formats import ReadOptions, open_path
from .limits import DEFAULT_LIMITS, Limits
from .progress import ProgressCallback, metered
from .records import Checkpoint
from .report.load import LoadReport

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .plan.model import Plan
    from .plan.rules import Rules
    from .plan.spec import ModelSpec

__all__ = ["load", "load_into", "open", "refuse_allowed_modules", "selected"]


def open(
    path: str | os.PathLike[str],
    *,
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> Checkpoint:
    """Describe a checkpoint without reading tensor bytes and without importing torch.

    Args:
        path: a checkpoint file, a sharded index (``*.index.json``) or a folder holding one.
        allow_globals: pickle globals (``"module.qualname"``) you trust: only these may be imported and called.
            Everything else unknown becomes an inert stub; known-dangerous globals are refused.
        limits: resource bounds for hostile files.

    Returns:
        A :class:`Checkpoint` with records, extras, globals and metadata.

    Raises:
        TorchWeightsError: a subclass naming what is wrong with the file and what to do.
    """
    if isinstance(allow_globals, str):
        allow_globals = [allow_globals]
    options = ReadOptions(allow_globals=frozenset(allow_globals), limits=limits)
    ckpt = open_path(os.fspath(path), options)
    ckpt.reader = _reader_of(ckpt)
    return ckpt


def _reader_of(ckpt: Checkpoint) -> Callable[..., dict[str, Any]]:
    """``ckpt.reader``: :func:`load` of selected names of this checkpoint (exact names, no patterns)."""

    def read(names: Iterable[str], **options: Any) -> dict[str, Any]:
        return load(ckpt, select=[_exact(ckpt, name) for name in names], **options)

    return read


def _exact(ckpt: Checkpoint, name: str) -> str:
    """``name`` as a select pattern that matches that tensor only; RuleError ``no-such-tensor`` when absent."""
    if name not in ckpt.records:
        from .errors import RuleError
        from .text import close_names_hint

        raise RuleError(
            f"{ckpt.path!r} has no tensor named {name!r}{close_names_hint(name, ckpt.records)}. "
            "Fix: use a name from tw.open(path).records (torchweights inspect PATH lists them).",
            code="no-such-tensor",
            path=ckpt.path,
        )
    return glob_escape(name)


def glob_escape(name: str) -> str:
    """A glob pattern that matches exactly ``name`` (``[`` -> ``[[]``, ``*`` -> ``[*]``, ``?`` -> ``[?]``)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@overload
def load(
    source: str | os.PathLike[str] | Checkpoint,
    *,
    map_location: str | torch.device | Mapping[str, Any] | Callable[..., Any] | None = ...,
    allow_globals: Iterable[str] = ...,
    limits: Limits = ...,
    check_crc: bool = ...,
    mmap: bool = ...,
    unsupported: str = ...,
    select: Iterable[str] | str | None = ...,
    nested: Literal[False] = ...,
    progress: ProgressCallback | None = ...,
) -> dict[str, torch.Tensor]: ...


@overload
def load(
    source: str | os.PathLike[str] | Checkpoint,
    *,
    map_location: str | torch.device | Mapping[str, Any] | Callable[..., Any] | None = ...,
    allow_globals: Iterable[str] = ...,
    limits: Limits = ...,
    check_crc: bool = ...,
    mmap: bool = ...,
    unsupported: str = ...,
    select: None = ...,
    nested: Literal[True],
    progress: ProgressCallback | None = ...,
) -> Any: ...


def load(
    source: str | os.PathLike[str] | Checkpoint,
    *,
    map_location: str | torch.device | Mapping[str, Any] | Callable[..., Any] | None = "cpu",
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    check_crc: bool = True,
    mmap: bool = False,
    unsupported: str = "error",
    select: Iterable[str] | str | None = None,
    nested: bool = False,
    progress: ProgressCallback | None = None,
) -> Any:
    """Read every tensor of a checkpoint (or those ``select`` names) into memory, executing nothing from the file.

    Args:
        source: a path (as for :func:`open`) or an already opened :class:`Checkpoint`.
        map_location: device for the tensors (``"cpu"``, ``"cuda:0"``, a ``torch.device``), a dict from saved
            location to device (``{"cuda:1": "cuda:0"}``), None for the device each tensor was saved from, or a
            callable as ``torch.load`` takes it: ``map_location(storage, location)`` returning a storage (its device
            is used: ``lambda storage, location: storage`` keeps everything on the CPU), a device, or None for the
            saved location. The callable gets an empty CPU storage (bytes are read straight onto their device) and
            is called once per saved location; a callable of the location alone also works. Anything else is
            ``RuleError`` code ``bad-map-location``.
        allow_globals: pickle globals you trust (see :func:`open`).
        limits: resource bounds for hostile files.
        check_crc: compare each zip member's bytes with the CRC-32 the archive records, as they are read
            (``CorruptCheckpointError`` code ``bad-crc`` on mismatch). ``False`` skips it for trusted files.
        mmap: CPU tensors as zero-copy views of a private (copy-on-write) mapping of the file where the bytes can
            be used as they are; the file must not change while they live. See README, "Speed".
        unsupported: what to do with tensors the file holds but torchweights cannot rebuild (nested tensors,
            wrapper subclasses, ...; listed in ``Checkpoint.warnings``): ``"error"`` (default) raises
            ``UnsupportedCheckpointError`` (code ``unsupported-tensor``) naming every one; ``"skip"`` returns the
            others without them.
        select: glob patterns of the tensors to read (``["encoder.*", "lm_head.weight"]``; a pattern without
            wildcards also selects everything below it, as ``skip`` patterns do); only their storages are read.
            A pattern that selects nothing is ``RuleError`` code ``nothing-selected``. None: every tensor.
        nested: return the file's original structure instead of flat names: for a pickle-based checkpoint (torch
            zip, legacy, legacy tar, plain pickle) the object ``torch.load(path, weights_only=True)`` would give
            (dicts, lists, tuples, extras such as ``epoch``, tensors where they were; objects of classes not
            allowed as inert stubs: see :mod:`torchweights.nested`), so ``ckpt["optimizer"]`` can go straight to
            ``optimizer.load_state_dict``. Other formats (safetensors, sharded, npz, TorchScript, torch.package)
            give the flat dict. Cannot be combined with ``select`` (``RuleError`` code ``nested-select``).
        progress: ``progress(done_bytes, total_bytes)``, told from this thread as the bytes are read, throttled,
            last with ``done == total`` (see :mod:`torchweights.progress`).

    Returns:
        ``{dotted name: tensor}`` in file order (or, with ``nested=True``, the file's structure); tensors that
        shared a storage in the file share it here.

    Raises:
        UnsupportedCheckpointError: the file holds tensors that cannot be rebuilt (see ``unsupported``).
        RuleError: ``select`` is not a list of strings (``bad-select``) or a pattern selects nothing.
    """
    from .errors import RuleError
    from .formats.tree import refuse_unreadable
    from .storage.read import materialize

    if unsupported not in ("error", "skip"):
        raise RuleError(f"unsupported={unsupported!r}: pass 'error' or 'skip'.", code="bad-rule")
    if nested and select is not None:
        raise RuleError(
            "tw.load(nested=True) returns the whole file's structure, so it takes no select=. Fix: drop select= "
            "and index the result (ckpt['model']), or drop nested=True to read the selected tensors by name.",
            code="nested-select",
        )
    ckpt = source if isinstance(source, Checkpoint) else open(source, allow_globals=allow_globals, limits=limits)
    refuse_allowed_modules(ckpt)
    if nested and ckpt.structure is not None:
        if unsupported == "error":
            refuse_unreadable(ckpt.path, ckpt.extras)
        from .nested import read_nested

        with metered(progress):
            return read_nested(ckpt.structure, map_location=map_location, check_crc=check_crc, mmap=mmap)
    records, extras = ckpt.records, ckpt.extras
    if select is not None:
        records, extras = selected(ckpt, select)
    if unsupported == "error":
        refuse_unreadable(ckpt.path, extras)
    with metered(progress):
        return materialize(builtins.list(records.values()), map_location=map_location, check_crc=check_crc, mmap=mmap)


def refuse_allowed_modules(ckpt: Checkpoint) -> None:
    """RuleError ``module-allowed`` when an allowed global rebuilt an ``nn.Module`` object: its tensors are inside
    an object :func:`load` does not return, so the result would silently miss them (an empty dict for a model)."""
    import sys

    from .errors import RuleError

    torch = sys.modules.get("torch")  # an allowed module class imported it; otherwise there is no module object
    if torch is None:
        return
    found = [(name, v) for name, v in ckpt.extras.items() if isinstance(v, torch.nn.Module)]
    if found:
        name, module = found[0]
        cls = f"{type(module).__module__}.{type(module).__qualname__}"
        raise RuleError(
            f"allow_globals let tw.load rebuild {name or 'the root object'!r} of {ckpt.path!r} as a real {cls} "
            "module, but tw.load returns tensors, and those inside a module object rebuilt this way would be "
            f"missing from the result. Fix: tw.load_model(path, trust=[{cls.split('.')[0]!r}]) for the model "
            "itself; or tw.load(path) without allowing the class, for its tensors named as state_dict() names them.",
            code="module-allowed",
            path=ckpt.path,
        )


def _nested_hint(pattern: str, names: Iterable[str]) -> str:
    """`` (names here start with 'state_dict.': select 'state_dict.encoder.*')`` when ``pattern`` matches the names
    below a container prefix, or ``""``."""
    from .plan.rules import matches_any
    from .text import quote

    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            if matches_any(".".join(parts[i:]), [pattern]):
                prefix = ".".join(parts[:i]) + "."
                return f" (names here start with {quote(prefix)}: select {quote(prefix + pattern)})"
    return ""


def selected(ckpt: Checkpoint, select: Iterable[str] | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records and extras ``select`` picks; every pattern must pick at least one tensor."""
    from .errors import RuleError
    from .plan.rules import matches_any
    from .text import close_names_hint, quote

    patterns = [select] if isinstance(select, str) else builtins.list(select)
    bad = [p for p in patterns if not isinstance(p, str) or not p]
    if bad:
        raise RuleError(
            f"select= takes glob patterns of tensor names (strings such as 'encoder.*'), not {bad[0]!r}.",
            code="bad-select",
        )
    records = {n: r for n, r in ckpt.records.items() if matches_any(n, patterns)}
    extras = {n: v for n, v in ckpt.extras.items() if matches_any(n, patterns)}
    unused = [p for p in patterns if not any(matches_any(n, [p]) for n in (*records, *extras))]
    if unused:
        hint = _nested_hint(unused[0], ckpt.records) or close_names_hint(unused[0], ckpt.records)
        raise RuleError(
            f"select pattern {quote(unused[0])} matches no tensor of {quote(ckpt.path)}"
            f"{hint}. Fix: use names from tw.open(path).records "
            "(torchweights inspect PATH lists them); patterns are globs ('encoder.*').",
            code="nothing-selected",
            path=ckpt.path,
        )
    return records, extras


#: Where :func:`load_into` reports loads that are not clean (one warning per load; ``print(report)`` has the rest).
logger = logging.getLogger("torchweights")


def load_into(
    model: torch.nn.Module | ModelSpec,
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, Any],
    *,
    strict: bool | str = True,
    container: str = "auto",
    prefix: str | None = "auto",
    rename: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    skip: Iterable[str] | str = (),
    on_mismatch: str = "error",
    dtype: str = "model",
    allow_globals: Iterable[str] = (),
    dry_run: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    check_crc: bool = True,
    mmap: bool = False,
    init_missing: bool = False,
    progress: ProgressCallback | None = None,
    check_values: bool = False,
    align: str | None = None,
    adapt: Iterable[str] | str = (),
) -> LoadReport:
    """Load a checkpoint into ``model``: reconcile every key first, then copy, and report what happened.

    What users call instead of ``model.load_state_dict(torch.load(path))``.

    Args:
        model: the ``nn.Module`` to fill (may live on the meta device: it is then materialised from the file);
            for ``dry_run=True``, a :class:`~torchweights.plan.spec.ModelSpec` also works.
        source: a checkpoint path (any format :func:`open` reads), an opened :class:`Checkpoint`, or a plain
            ``{name: tensor}`` state dict.
        strict: ``True``: every model key loaded and no unexpected checkpoint tensors; ``"model"``: every model
            key loaded, extra checkpoint keys allowed and reported; ``False``: load what fits (shape mismatches
            included: they are not loaded, where torch's ``strict=False`` raises), report the rest. Under ``True``
            and ``"model"``, a model tensor on the meta device that nothing fills (a skipped or missing key) is a
            problem too; under ``False`` it is loaded around and the report is not ``ok``.
        container: ``"auto"`` finds the dict of tensors that fits the model best (``state_dict``, ``model``,
            ``ema``, a pickled module, the root...); a dotted path (``"ema"``, ``"state_dict"``) forces one.
        prefix: ``"auto"`` infers the prefix to strip or add (``module.``, ``_orig_mod.``...); ``None`` changes
            nothing; ``"module."`` strips it; ``"+model."`` adds it; ``"a.->b."`` replaces one with the other.
        rename: ``{regex: replacement}`` applied in order to the container's keys as stored, before prefix
            handling; a rename that matches none of them applies after prefix handling (a rename written in the
            model's names). The report says how many keys each matched ("matched 0 keys" included).
        skip: glob patterns (``"head.*"``) of keys to leave as initialised (model side) or not to load.
        on_mismatch: ``"error"`` (default) or ``"skip"`` to leave every shape-mismatched key as initialised.
        dtype: ``"model"`` casts to the model's dtypes; ``"checkpoint"`` keeps the checkpoint's (assigns).
        allow_globals: pickle globals you trust (see :func:`open`).
        dry_run: plan and report only; the model is not touched.
        limits: resource bounds for hostile files.
        check_crc: compare each zip member's bytes with its recorded CRC-32 as they are read. On a mismatch
            (``CorruptCheckpointError`` code ``bad-crc``) tensors that would be assigned (meta model, ``mmap``,
            dtype changes) are not, and the error says which tensors were already written in place.
        mmap: assign parameters as zero-copy views of a private (copy-on-write) mapping of the file where no
            cast is needed (for inference; the file must not change while the model lives). See README, "Speed".
        init_missing: on a meta-device model, allocate the tensors that no checkpoint tensor fills (skipped,
            missing or mismatched keys) and initialise them with their module's ``reset_parameters()`` (or
            ``_reset_parameters()`` / ``reset_running_stats()``), as transformers initialises missing weights.
            Modules without such a method stay on meta, and the report says so. No effect on tensors that have
            values.
        progress: ``progress(done_bytes, total_bytes)``, told from this thread as tensor bytes are read
            (throttled; last with ``done == total``; not called by a dry run). See :mod:`torchweights.progress`.
        check_values: after the copy, check the loaded tensors' values (one at a time, in bounded chunks, from the
            model: nothing is read again) for NaN, Inf, all-zero and constant weight matrices and kernels, and list
            the tensors left at their initial values: ``report.value_findings``. Warnings only (``report.ok`` does
            not change); the rules are in :mod:`torchweights.values.checks`. With ``dry_run=True``, the checkpoint's
            tensors the plan would load are checked instead, read from the file one at a time.
        align: ``"auto"`` pairs the keys still unmatched after containers, prefixes and renames by the model's
            structure (shapes, layer indices, names; never by declaration order alone), for checkpoints of
            refactored code. Every pair and its confidence is in ``report.plan.alignment``; modules that only a
            guess could pair raise ``LoadError`` (code ``ambiguous-alignment``) with the ``rename`` that would
            settle them. See README, "Across refactors".
        adapt: adapters that load a tensor into another layout, by name (``["input_conv", "pos_embed",
            "patch_embed", "qkv"]``, or ``"all"``); each adapted key is a line of the report. Without them, a
            load that one would make fit fails with a fix that names it.

    Returns:
        A :class:`~torchweights.report.load.LoadReport` accounting for every key. A load that is not clean (keys
        missing, skipped, left as initialised or on meta, cast with precision loss, unexpected tensors not loaded,
        value findings) is also logged as one warning on the ``torchweights`` logger.

    Raises:
        LoadError: the checkpoint does not fit under ``strict`` (and ``dry_run`` is False), including keys that
            would be left on the meta device; the model is untouched and ``error.report`` has the full account.
        RuleError: an option cannot be followed (unknown container, bad regex, colliding renames).
        TorchWeightsError: the file cannot be read safely (see :func:`open`).
    """
    import time

    from .apply import apply_plan, bytes_to_read
    from .errors import RuleError
    from .plan.rules import Rules
    from .plan.spec import ModelSpec, is_sharded

    started = time.perf_counter()

    def make_rules() -> Rules:
        return Rules.make(
            strict=strict,  # type: ignore[arg-type]
            container=container,
            prefix=prefix,
            rename=rename if rename is None or isinstance(rename, Mapping) else builtins.list(rename),
            skip=skip,
            on_mismatch=on_mismatch,
            dtype=dtype,
            init_missing=init_missing,
            align=align,
            adapt=adapt,
        )

    if isinstance(model, ModelSpec) and not dry_run:
        raise RuleError(
            "load_into got a ModelSpec, which describes a model but holds no tensors to fill: pass the nn.Module, "
            "or dry_run=True to plan only.",
            code="bad-model",
        )
    if not dry_run and not isinstance(model, ModelSpec) and is_sharded(model):
        from .distributed import Piece, agree, check_pieces, check_sharded, plan_digest

        # Every rank plans; all agree before any byte is read, and again after the reads (see distributed.py).
        failure: Exception | None = None
        report: LoadReport | None = None
        digest = ""
        try:  # (an option refused on one rank only is agreed on too: no rank is left waiting)
            checkpoint, spec, plan, report = _planned(model, source, make_rules(), allow_globals, limits)
            check_sharded(model, plan, spec, mmap=mmap, check_values=check_values)
            if plan.problems or plan.ambiguous:
                report.seconds = time.perf_counter() - started
                report.raise_if_problems()
            digest = plan_digest(plan, checkpoint)
        except Exception as exc:  # agreed below: every rank raises the first failing rank's error
            failure = exc
        agree(failure, digest, written=False, report=report)
        assert report is not None
        pieces: list[Piece] = []
        try:
            with metered(progress):  # (pieces: the zip members' parts this rank read, for their CRC-32)
                done = apply_plan(plan, model, checkpoint, spec, check_crc=check_crc, pieces=pieces)
            report.bytes_read, report.fallback_modules = done
        except Exception as exc:
            failure = exc
        everyone = agree(failure, "", written=True, report=report, payload=pieces)
        if isinstance(checkpoint, Checkpoint):
            check_pieces(
                (p for rank in everyone for p in rank),
                checkpoint,
                "Every rank had written its shards before the ranks' pieces could be checked together: do not use "
                "the model as it is; reload it from a good file, on every rank.",
            )
        report.applied = True
        report.meta_after = _on_meta(model)
        report.seconds = time.perf_counter() - started
        if not report.clean:
            logger.warning("%s", report.log_line())
        return report
    checkpoint, spec, plan, report = _planned(model, source, make_rules(), allow_globals, limits)
    if not dry_run:
        assert not isinstance(model, ModelSpec)  # refused above
        if plan.problems or plan.ambiguous:
            report.seconds = time.perf_counter() - started
            report.raise_if_problems()
        with metered(progress):
            report.bytes_read, report.fallback_modules = apply_plan(
                plan, model, checkpoint, spec, check_crc=check_crc, mmap=mmap
            )
        report.applied = True
        report.meta_after = _on_meta(model)
    else:  # what the load would read
        report.bytes_read = bytes_to_read(plan, checkpoint)
    if check_values:  # (a plan with problems raised above unless this is a dry run)
        from .values import checks

        report.value_findings = (
            checks.check_planned(checkpoint, plan, spec)
            if dry_run
            else checks.check_values(model, plan, report.meta_after or ())  # type: ignore[arg-type]
        )
        report.checked_values = True
    report.seconds = time.perf_counter() - started
    if report.applied and not report.clean:
        logger.warning("%s", report.log_line())
    return report


def _planned(
    model: torch.nn.Module | ModelSpec,
    source: str | os.PathLike[str] | Checkpoint | Mapping[str, Any],
    rules: Rules,
    allow_globals: Iterable[str],
    limits: Limits,
) -> tuple[Checkpoint | Mapping[str, Any], ModelSpec, Plan, LoadReport]:
    """Open ``source`` and plan the load into ``model``: ``(checkpoint, spec, plan, report)``."""
    from .plan.reconcile import reconcile
    from .plan.spec import ModelSpec, probe_custom_loading

    checkpoint: Checkpoint | Mapping[str, Any]
    if isinstance(source, (str, os.PathLike)):
        checkpoint = open(source, allow_globals=allow_globals, limits=limits)
        name = os.fspath(source)
    else:
        checkpoint = source
        name = source.path if isinstance(source, Checkpoint) else "<state dict>"
    spec = model if isinstance(model, ModelSpec) else ModelSpec.from_module(model)
    plan = reconcile(checkpoint, spec, rules, source=name)
    if spec.custom_modules and not isinstance(model, ModelSpec):
        # Shapes that differ under modules with their own loading code: ask that code (on meta copies).
        bound = {
            a.target: (a.src_shape, a.src_dtype)
            for a in plan.actions
            if a.target is not None and a.source is not None and a.src_shape is not None and a.src_dtype
        }
        probed = probe_custom_loading(model, spec, bound)
        if probed.converts:
            spec = probed
            plan = reconcile(checkpoint, spec, rules, source=name)
    report = LoadReport(plan, notes=builtins.list(checkpoint.warnings) if isinstance(checkpoint, Checkpoint) else [])
    return checkpoint, spec, plan, report


def _on_meta(model: torch.nn.Module) -> tuple[str, ...]:
    """Every parameter and buffer of ``model`` still on the meta device, by name (each tied tensor once)."""
    found: list[str] = []
    for module_name, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for attr, tensor in table.items():
                if tensor is not None and tensor.is_meta:
                    found.append(f"{module_name}.{attr}" if module_name else attr)
    return tuple(found)
