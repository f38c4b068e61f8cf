"""``torchweights check CKPT --model MODULE:FACTORY``: would this checkpoint load into this model?

Builds the model from a factory (on the meta device when it allows, so no memory is allocated for its weights),
plans the load with :func:`torchweights.api.load_into` in dry-run mode, and prints the report: every key accounted
for, problems first, with the exact option that fixes them. ``--json`` prints the report as JSON.

A model built on the meta device here only to save memory has values in a real call of the factory: the plan
treats its tensors as such. To know which tensors a real call leaves on the meta device itself (a factory that
builds under ``torch.device("meta")``, as ``init_empty_weights()`` does), the factory is called once more under
torch's fake-tensor mode, which allocates nothing and keeps every device as a real call would: tensors on meta
there stay on meta in the plan, so the CLI and a Python dry run on the factory's model agree. Where that check
cannot run, the report says that the tensors are assumed to have values; ``--meta-model`` plans the model as a
meta model (every tensor to be filled from the checkpoint).

``--align auto`` pairs keys renamed by a refactor by structure (:func:`torchweights.load_into`'s ``align="auto"``):
the report lists every pair with its confidence before anything is loaded, and ``--write-rename FILE`` writes the
pairs as a ``rename`` mapping (JSON, ``{regex: replacement}``) to keep in code: ``load_into(model, path,
rename=json.load(open(FILE)))`` then loads the same keys without alignment. ``--adapt NAME`` (repeatable, or a comma
list; ``all``) plans with adapters, as ``adapt=[...]``.

Exit codes: 0 the checkpoint loads under the options given; 1 it does not (the report says why; alignment that only a
guess could settle included); 2 the checkpoint cannot be read, an option cannot be followed (``--write-rename`` with
nothing to write), or the model factory cannot be imported or called.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from ..errors import RuleError
from . import EXIT_OK, EXIT_UNREADABLE, print_error
from ._options import add_allow_global, add_verb

__all__ = [
    "EXAMPLES",
    "RenameMappingError",
    "EXIT_CODES",
    "EXIT_DOES_NOT_FIT",
    "ModelFactoryError",
    "build_model",
    "factory_spec",
    "register",
    "run",
    "write_rename",
]

#: The checkpoint was read but does not fit the model under the options given.
EXIT_DOES_NOT_FIT = 1

#: What each exit code of ``check`` means (its ``--help`` lists them).
EXIT_CODES = {
    0: "the checkpoint loads into the model under the options given",
    1: "it does not (the report says why and which option fixes it; with --align auto, also when modules could be "
    "paired only by guessing: JSON load_error code ambiguous-alignment); with --check-values, also when a tensor "
    "holds NaN or Inf or a weight is all zero or constant",
    2: "the checkpoint cannot be read, an option cannot be followed (--write-rename when the alignment has nothing "
    "a rename mapping can express), or the model factory cannot be imported or called",
}
#: ``(command line, what it does)`` for ``check --help``.
EXAMPLES = (
    ("torchweights check model.pt --model my_project.models:build", "would it load? every key accounted for"),
    ("torchweights check ckpt.pt --model models.py:Net --skip 'head.*'", "a new head: keep it as initialised"),
    ("torchweights check dp.pt --model models.py:Net --strict false", "load what fits, report the rest"),
    ("torchweights check -q model.pt --model models.py:Net && echo fits", "in a script: only the exit code"),
    (
        "torchweights check old.pt --model models.py:Net --align auto --write-rename rename.json",
        "a refactored model: review the pairs, keep them as a rename",
    ),
    ("torchweights check rgb.pt --model models.py:GrayNet --adapt input_conv", "plan with an adapter"),
)

_STRICT: dict[str, bool | str] = {"true": True, "false": False, "model": "model"}


class ModelFactoryError(RuleError):
    """``--model`` could not be turned into a model: the message says what, why and what to do."""

    default_code = "bad-factory"


class RenameMappingError(RuleError):
    """``--write-rename``: the alignment has nothing a ``rename`` mapping can express (not asked for, nothing
    aligned, groups only a guess could pair, or pairs that no order of renames expresses)."""

    default_code = "no-rename-mapping"


# --------------------------------------------------------------------------------------------------- argparse


def _rename(text: str) -> tuple[str, str]:
    pattern, sep, replacement = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected REGEX=REPLACEMENT, got {text!r}")
    return pattern, replacement


def _adapters(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected an adapter name or a comma list of them, got {text!r}")
    return names


def factory_spec(text: str) -> str:
    """``--model`` as argparse checks it: ``MODULE:FACTORY`` or ``path/to/file.py:FACTORY``."""
    module, sep, attr = text.rpartition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(
            f"expected MODULE:FACTORY or path/to/file.py:FACTORY, got {text!r} (e.g. my_project.models:build_vit)"
        )
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "check",
        help="dry-run a load: would CKPT load into the model a factory builds, and what would happen to every key",
        description=(
            "Plan loading CKPT into the model that FACTORY builds, without changing anything, and report what "
            "would happen to every key."
        ),
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
        json="print the report as one JSON object",
    )
    parser.add_argument("path", metavar="CKPT", help="checkpoint file, sharded index (*.index.json) or folder")
    parser.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        required=True,
        type=factory_spec,
        help="a callable returning the nn.Module, called without arguments: 'pkg.models:build' or 'models.py:Net'",
    )
    parser.add_argument(
        "--strict",
        choices=sorted(_STRICT),
        default="true",
        help="true: every key on both sides must match (default); model: extra checkpoint keys allowed; "
        "false: load what fits",
    )
    parser.add_argument("--container", metavar="NAME", default="auto", help="dict inside the file to load from")
    parser.add_argument(
        "--prefix",
        metavar="P",
        default="auto",
        help="'auto' (default) infers it; 'module.' strips it; '+model.' adds it; 'a.->b.' replaces it; "
        "'' changes nothing",
    )
    parser.add_argument(
        "--skip",
        metavar="PATTERN",
        action="append",
        default=[],
        help="glob of keys to keep as initialised / not load ('head.*'); repeat for several",
    )
    parser.add_argument(
        "--rename",
        metavar="RE=REPL",
        action="append",
        type=_rename,
        default=[],
        help="regex rename of checkpoint keys, applied in order (split at the last '='); repeat for several",
    )
    parser.add_argument("--on-mismatch", choices=["error", "skip"], default="error", help="default: error")
    parser.add_argument(
        "--dtype", choices=["model", "checkpoint"], default="model", help="whose dtypes the loaded keys keep"
    )
    parser.add_argument(
        "--init-missing",
        action="store_true",
        help="plan as load_into(init_missing=True): tensors on the meta device that no checkpoint tensor fills "
        "are initialised by their modules' reset_parameters()",
    )
    parser.add_argument(
        "--meta-model",
        action="store_true",
        help="plan for a model that stays on the meta device (a factory that builds on meta, to be filled from the "
        "checkpoint): tensors no checkpoint fills stay on meta, as load_into would leave them",
    )
    parser.add_argument(
        "--align",
        choices=["auto"],
        default=None,
        help="pair keys a refactor renamed by structure (layer indices, shapes, names), as load_into(align='auto'): "
        "the report lists every pair and its confidence",
    )
    parser.add_argument(
        "--write-rename",
        metavar="FILE",
        default=None,
        help="with --align auto: write the aligned pairs as a rename mapping (JSON {regex: replacement}) to keep in "
        "code: load_into(..., rename=json.load(open(FILE)))",
    )
    parser.add_argument(
        "--adapt",
        metavar="NAME",
        action="append",
        type=_adapters,
        default=[],
        help="plan with adapter NAME, as load_into(adapt=[...]); repeat or separate with commas; 'all' for every one",
    )
    add_allow_global(parser)
    parser.add_argument(
        "--check-values",
        action="store_true",
        help="also read the tensors the plan loads, one at a time, and report NaN, Inf, all-zero and constant "
        "weights (exit 1 when there are any: asked for, they fail a CI job as a misfit does)",
    )
    parser.set_defaults(handler=run)


# --------------------------------------------------------------------------------------------------- the model


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _import(module: str, spec_text: str) -> Any:
    """The module named ``module`` (dotted name or ``.py`` path)."""
    if _is_path(module):
        path = os.path.abspath(module)
        if not os.path.isfile(path):
            raise ModelFactoryError(
                f"--model {spec_text!r}: {module!r} is not a file. Pass an existing .py file, or a module name "
                "importable from here (my_project.models:build)."
            )
        name = "_torchweights_check_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - only for unloadable suffixes
            raise ModelFactoryError(f"--model {spec_text!r}: Python cannot load {module!r} as a module.")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        folder = os.path.dirname(path)
        sys.path.insert(0, folder)  # the file may import its neighbours
        try:
            spec.loader.exec_module(loaded)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ModelFactoryError(
                f"--model {spec_text!r}: running {module!r} failed with {type(e).__name__}: {e}. "
                "Fix the file, or point --model at a module that imports cleanly."
            ) from e
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
        return loaded
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules next to the caller are importable
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ModelFactoryError(
            f"--model {spec_text!r}: cannot import {module!r} ({e}). Run from the folder that holds it, add that "
            "folder to PYTHONPATH, or pass the file itself: --model path/to/models.py:FACTORY."
        ) from e
    except Exception as e:
        raise ModelFactoryError(
            f"--model {spec_text!r}: importing {module!r} failed with {type(e).__name__}: {e}. "
            "Fix the module, or point --model at one that imports cleanly."
        ) from e


def _factory(spec_text: str) -> Callable[[], Any]:
    module_name, _, attr = spec_text.rpartition(":")
    obj = _import(module_name, spec_text)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            hint = f" Callables there: {', '.join(public[:12])}{', ...' if len(public) > 12 else ''}." if public else ""
            raise ModelFactoryError(
                f"--model {spec_text!r}: {module_name!r} has no attribute {part!r}.{hint}"
            ) from None
    if not callable(obj):
        raise ModelFactoryError(
            f"--model {spec_text!r}: {attr!r} is a {type(obj).__name__}, not a callable. "
            "Name a function or class that builds the model when called without arguments."
        )
    return obj  # type: ignore[no-any-return]


def build_model(spec_text: str) -> Any:
    """Import and call the factory of ``MODULE:FACTORY``; on the meta device when the factory allows it.

    Raises:
        ModelFactoryError: the module cannot be imported, the factory is missing, fails, or returns no nn.Module.
    """
    return _build(spec_text)[0]


def _build(spec_text: str) -> tuple[Any, bool, Callable[[], Any]]:
    """:func:`build_model`, whether it was built on the meta device by this command (not by the factory), and the
    factory."""
    try:
        import torch
    except ImportError as e:
        raise ModelFactoryError(
            "check needs torch to build the model: install it (pip install torch), or use `torchweights inspect` "
            "to look at the checkpoint alone."
        ) from e
    factory = _factory(spec_text)
    on_meta = True
    try:
        with torch.device("meta"):
            model = factory()
    except Exception:  # factories that load files or check values on their tensors: build for real
        on_meta = False
        try:
            model = factory()
        except Exception as e:
            raise ModelFactoryError(
                f"--model {spec_text!r}: calling it failed with {type(e).__name__}: {e}. The factory is called "
                "without arguments: wrap the call you need in a small function (def build(): return Net(classes=10))."
            ) from e
    if not isinstance(model, torch.nn.Module):
        raise ModelFactoryError(
            f"--model {spec_text!r} returned a {type(model).__name__}, not a torch.nn.Module. "
            "Name a function or class that returns the model."
        )
    return model, on_meta, factory


def real_meta(factory: Callable[[], Any]) -> tuple[set[str] | None, str]:
    """The parameters and buffers that a real call of ``factory`` leaves on the meta device, seen by calling it
    under torch's fake-tensor mode (nothing is allocated; devices are kept as a real call would have them), or None
    with the reason when that cannot be done."""
    try:
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError as e:  # pragma: no cover - torch without fake tensors
        return None, f"this torch has no fake-tensor mode ({e})"
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            model = factory()
        if not isinstance(model, torch.nn.Module):
            return None, f"it returned a {type(model).__name__} there"
        found = set()
        for module_name, module in model.named_modules(remove_duplicate=False):
            for table in (module._parameters, module._buffers):
                for attr, tensor in table.items():
                    if tensor is not None and tensor.is_meta:
                        found.add(f"{module_name}.{attr}" if module_name else attr)
        return found, ""
    except Exception as e:  # a factory that reads files, checks values or moves tensors cannot run on fake tensors
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


# --------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Build the model, plan the load and print the report; return the exit code."""
    from ..plan.spec import ModelSpec
    from ..report.text import render
    from ..style import render_for

    try:
        model, on_meta, factory = _build(args.model)
    except ModelFactoryError as e:
        print_error(e, json_output=args.json, lead="cannot build the model")  # stdout is dropped under -q
        return EXIT_UNREADABLE
    target = model
    notes: list[str] = []
    if args.meta_model:
        notes.append(
            "--meta-model: planned for a model on the meta device; tensors no checkpoint fills stay on meta"
            if on_meta
            else "--meta-model: the factory cannot build on the meta device; planned with the tensors it built"
        )
    elif on_meta:  # built on meta here to save memory: which tensors does a real call give values?
        spec = ModelSpec.from_module(model)
        keep, why = real_meta(factory)
        if keep is None:
            notes.append(
                "the model was built on the meta device to save memory; tensors a real call of the factory "
                f"initialises are assumed to have values (checking with fake tensors failed: {why}). If the factory "
                "builds its model on the meta device itself, pass --meta-model."
            )
        elif keep:
            n = len(keep)
            notes.append(
                f"the factory itself leaves {n} {'tensor' if n == 1 else 'tensors'} on the meta device (seen by "
                "building it with fake tensors): planned as load_into would load that model"
            )
        target = spec.materialised(keep=keep or ())
    report = _plan(args, target)
    report.notes.extend(notes)
    full = bool(getattr(args, "verbose", 0))  # -v: no section cut short
    if args.write_rename is not None:
        try:
            report.notes.append(write_rename(report, args.write_rename, lambda mapping: _plan(args, target, mapping)))
        except RenameMappingError as e:
            if not args.json:  # the report first: it shows what the alignment found
                sys.stdout.write(render_for(sys.stdout, lambda: render(report, full=full)))
            print_error(e, json_output=args.json)
            return EXIT_UNREADABLE
    text = report.to_json(indent=2) + "\n" if args.json else render_for(sys.stdout, lambda: render(report, full=full))
    sys.stdout.write(text)
    sys.stdout.flush()
    flagged = any(f.in_values for f in report.value_findings)  # NaN/Inf/zero/constant (not "left as initialised")
    return EXIT_OK if report.ok and not flagged else EXIT_DOES_NOT_FIT


def _plan(args: argparse.Namespace, target: Any, rename: dict[str, str] | None = None) -> Any:
    """The dry run ``check`` reports: ``load_into`` with the command line's options; with ``rename``, the same
    without ``align`` and with those renames instead (what ``--write-rename`` writes, checked)."""
    from .. import api

    return api.load_into(
        target,
        args.path,
        strict=_STRICT[args.strict],
        container=args.container,
        prefix=args.prefix,
        rename=args.rename if rename is None else rename,
        skip=args.skip,
        on_mismatch=args.on_mismatch,
        dtype=args.dtype,
        allow_globals=args.allow_globals,
        dry_run=True,
        init_missing=args.init_missing,
        check_values=args.check_values and rename is None,
        align=args.align if rename is None else None,
        adapt=[name for names in args.adapt for name in names],
    )


def _loads(report: Any) -> set[tuple[str | None, tuple[str, ...]]]:
    """What a report loads: each model key with the checkpoint tensors it comes from."""
    return {(a.target, a.adapt.sources if a.adapt else (a.source,)) for a in report.plan.by_kind("load")}


def write_rename(report: Any, path: str, replan: Callable[[dict[str, str]], Any]) -> str:
    """Write the alignment of ``report`` (a :class:`~torchweights.report.load.LoadReport` planned with
    ``align="auto"``) to ``path`` as a ``rename`` mapping (JSON ``{regex: replacement}``, in the order to apply),
    atomically, once ``replan`` (the same dry run with that ``rename`` and without ``align``) shows it loads the same
    keys from the same tensors; return the note for the report.

    Raises:
        RenameMappingError: alignment was not asked for, paired nothing, left groups only a guess could pair, made
            pairs that no order of renames expresses, or the renames alone load other keys (a group adapter placed
            through the alignment).
        WriteError: the file cannot be written.
    """
    import json

    from ..plan.align import rename_mapping
    from ..text import quote
    from ..writers.atomic import Outputs

    alignment = report.plan.alignment
    if alignment is None:
        raise RenameMappingError(
            "--write-rename writes the pairs --align auto makes, and alignment was not asked for. "
            "Fix: add --align auto."
        )
    if alignment.ambiguous:
        import shlex

        from ..report.alignment import settling_rename
        from ..text import plural

        rename = settling_rename(alignment.ambiguous)
        flags = " ".join(f"--rename {shlex.quote(f'{p}={r}')}" for p, r in rename.items())
        how = (
            f"check that these pair them as you mean (declaration order), then add them: {flags}"
            if rename
            else "write --rename REGEX=REPLACEMENT for those modules yourself (their order is unknown) and add them"
        )
        raise RenameMappingError(
            f"--write-rename: {plural(len(alignment.ambiguous), 'group')} of modules could be paired only by "
            f"guessing (listed in the report), so the alignment is not complete; nothing was written. Fix: {how}; "
            "then --write-rename writes the rest."
        )
    if not alignment.pairs:
        why = alignment.note or "every key matched by name: nothing was left to align"
        raise RenameMappingError(
            f"--write-rename: the alignment paired nothing ({why}); nothing was written. Fix: drop --write-rename, "
            "or check that the checkpoint is for this model."
        )
    mapping = rename_mapping(alignment)
    if not mapping:
        raise RenameMappingError(
            f"--write-rename: the {len(alignment.pairs)} aligned pairs swap names (a module's new name is another's "
            "old one), which no order of regex renames expresses; nothing was written. Fix: keep align='auto' in "
            "code instead of a rename mapping."
        )
    # The renames given with --rename come first, as they applied first: the file alone loads the same keys.
    mapping = {**dict(report.plan.rules.rename), **mapping}
    differ = sorted({str(target) for target, _ in _loads(report) ^ _loads(replan(mapping))})
    if differ:
        raise RenameMappingError(
            f"--write-rename: the renames alone would not load the same keys as the alignment ({len(differ)} "
            f"differ, e.g. {quote(differ[0])}: an adapter placed through the aligned modules); nothing was written. "
            "Fix: keep align='auto' in code instead of a rename mapping."
        )
    with Outputs(force=True) as out:
        out.reserve([path])
        with out.write(path) as fh:
            fh.write((json.dumps(mapping, indent=2) + "\n").encode())
        out.commit()
    n = len(mapping)
    return (
        f"--write-rename: wrote {n} rename{'' if n == 1 else 's'} to {quote(path)}: load_into(model, path, "
        "rename=json.load(open(FILE))) loads the same keys without align"
    )
