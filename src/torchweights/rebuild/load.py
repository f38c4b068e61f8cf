"""``tw.load_model``: a pickled ``nn.Module`` back as a working model, importing and running only what you trusted.

Three steps:

1. Pass 1, inert: :func:`torchweights.open` reads the file with the restricted pickle machine (nothing imported,
   dangerous globals refused) and lists every global it references. Each is judged by
   :class:`~torchweights.unpickle.trust.TrustRules` *before anything is imported*; anything that would need trust is
   refused in one :class:`~torchweights.errors.UnsafeCheckpointError` (``untrusted-global``) naming every global,
   grouped by package, with the ``trust=[...]`` that covers them.
2. The tensors: every storage the pickle uses is read whole by the read engine (one read each, CRC-32 checked,
   ``map_location`` honoured).
3. Pass 2: the same pickle bytes run through :class:`~torchweights.rebuild.unpickler.RebuildUnpickler`, which imports
   only approved names and calls only approved classes and reconstructors; its ``persistent_load`` hands back the
   storages read in step 2, so torch's own rebuild functions give the same tensors ``torch.load`` gives.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any

from ..api import open as open_checkpoint
from ..errors import CorruptCheckpointError, RuleError, UnsafeCheckpointError, UnsupportedCheckpointError
from ..formats import ReadOptions
from ..formats.legacy import storage_refs
from ..formats.torch_zip import model_pickle
from ..limits import DEFAULT_LIMITS, Limits
from ..records import Checkpoint, StorageRef, TensorRecord
from ..text import quote
from ..unpickle.policy import refuse_dangerous_allowed
from ..unpickle.stream import compiled_model_hint
from ..unpickle.trust import TrustRules, package_of, prefix_trustable
from .unpickler import RebuildUnpickler

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["load_model"]

#: Where a checkpoint dict usually keeps its model (ultralytics: ``model`` and ``ema``).
_MODEL_KEYS = ("model", "ema", "module", "net", "network")

#: Formats whose code runs by design when loaded, with the loader to use for trusted files.
_CODE_FORMATS = {
    "torchscript": "torch.jit.load(path)",
    "torchscript-legacy": "torch.jit.load(path)",
    "torch-package": "torch.package.PackageImporter(path).load_pickle(package, resource)",
}


def _names(value: Iterable[str] | str | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, str) else tuple(value)
    bad = [v for v in items if not isinstance(v, str) or not v or v.startswith(".") or v.endswith(".")]
    if bad:
        raise RuleError(f"{what}= takes dotted names such as 'my_project' or 'my_project.models', not {bad[0]!r}.")
    return items


def _rules(trust: Any, allow_globals: Any, rename_classes: Mapping[str, str] | None) -> TrustRules:
    renames = dict(rename_classes or {})
    bad = [(k, v) for k, v in renames.items() if not (isinstance(k, str) and isinstance(v, str) and k and v)]
    if bad:
        raise RuleError(
            f"rename_classes= maps old class names to new ones ({{'old.module.Class': 'new.module.Class'}}), not "
            f"{bad[0]!r}."
        )
    allowed = frozenset(_names(allow_globals, "allow_globals"))
    refuse_dangerous_allowed(allowed)
    return TrustRules(_names(trust, "trust"), allowed, renames)


def _classes_of(names: Iterable[str]) -> list[str]:
    """The globals of a file that are neither the safe table nor torch's: what rename_classes could rename."""
    rules = TrustRules()
    return [n for n in names if rules.verdict(n) == "untrusted"] or list(names)


def untrusted_error(path: str, names: list[str], rules: TrustRules | None = None) -> UnsafeCheckpointError:
    """The one refusal listing every global that needs trust, by package (after ``rules.rename_classes``), with the
    ``trust=[...]`` to pass (and ``allow_globals=[...]`` for names of torch, numpy or the standard library, which
    ``trust`` never covers)."""
    groups: dict[str, list[str]] = {}
    exact: list[str] = []
    for name in names:
        target = rules.target(name) if rules is not None else name
        shown = quote(name) if target == name else f"{quote(name)} (renamed to {quote(target)})"
        groups.setdefault(package_of(target), []).append(shown)
        if not prefix_trustable(target):
            exact.append(target)
    lines = "\n".join(f"  {pkg}: {', '.join(group)}" for pkg, group in sorted(groups.items()))
    main = (
        " ('__main__' classes were defined in the script that saved the file; trust=['__main__'] looks them up in "
        "the script that loads it)"
        if "__main__" in groups
        else ""
    )
    packages = sorted(pkg for pkg in groups if prefix_trustable(pkg))
    fixes = []
    if packages:
        fixes.append(f"pass trust={packages!r}{main}")
    # find_spec of a top-level name only searches sys.path: nothing is imported or run
    missing = [pkg for pkg in packages if pkg != "__main__" and importlib.util.find_spec(pkg) is None]
    note = (
        f" {', '.join(quote(m) for m in missing)} {'is' if len(missing) == 1 else 'are'} not installed here: if the "
        f"package was renamed, rename_classes={{{missing[0]!r}: 'new_package'}} maps all its classes (then trust "
        "the new package)."
        if missing
        else ""
    )
    if exact:
        fixes.append(
            f"name each of {', '.join(quote(n) for n in sorted(set(exact)))} exactly in allow_globals=[...] "
            "(trust= never covers torch, numpy or the standard library: torch's own module classes need no trust, "
            "and their other classes can write files or start processes when built)"
        )
    return UnsafeCheckpointError(
        f"{quote(path)} needs code from {len(groups)} package(s) you have not trusted, so load_model imported "
        f"nothing and ran nothing:\n{lines}\nFix: if you trust this code as installed here, {' and '.join(fixes)}. "
        "To read only the weights, without any of their code: tw.load(path), or build the model in code and call "
        f"tw.load_into(model, path).{note}",
        code="untrusted-global",
        path=path,
    )


def _refuse_format(ckpt: Checkpoint) -> None:
    loader = _CODE_FORMATS.get(ckpt.format)
    if loader is not None:
        raise UnsupportedCheckpointError(
            f"{quote(ckpt.path)} is a {ckpt.format} archive: loading it as a model compiles and runs the code it "
            f"carries, by design, so load_model does not rebuild it. Fix: for a file you trust, {loader}; for the "
            "weights alone, without running anything: tw.load(path) or tw.load_into(model, path).",
            code="unsupported-model-format",
            path=ckpt.path,
        )
    if ckpt.format == "pickle":
        raise UnsupportedCheckpointError(
            f"{quote(ckpt.path)} is a plain pickle (pickle.dump, not torch.save): its tensors are embedded as nested "
            "torch.save streams, which load_model does not rebuild. Fix: tw.load(path) reads its tensors, or "
            "re-save the model from trusted code with torch.save(model, path).",
            code="unsupported-model-format",
            path=ckpt.path,
        )
    if ckpt.format not in ("torch-zip", "torch-legacy"):
        raise RuleError(
            f"{quote(ckpt.path)} is a {ckpt.format} file, which holds tensors, not a pickled model. Fix: build the "
            "model in code and call tw.load_into(model, path), or tw.load(path) for the tensors.",
            code="not-a-model",
            path=ckpt.path,
        )


def _storage_records(storages: dict[str, tuple[StorageRef, str]]) -> list[TensorRecord]:
    """One record per storage, covering it whole (raw bytes; elements when they must be byte-swapped)."""
    out = []
    for key, (ref, dtype) in storages.items():
        if ref.byteorder == "little":
            dtype = "uint8"
        size = TensorRecord(key, (), dtype, (1,), (1,), 0, None).itemsize
        out.append(TensorRecord(key, (key,), dtype, (ref.nbytes // size,), (1,), 0, ref))
    return out


def _storage_dtype(storage_type: Any, path: str) -> torch.dtype:
    import torch

    if storage_type is torch.UntypedStorage:
        return torch.uint8
    if isinstance(storage_type, type) and issubclass(storage_type, torch.storage.TypedStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
            dtype = storage_type.dtype
        if isinstance(dtype, torch.dtype):
            return dtype
    raise CorruptCheckpointError(
        f"{quote(path)}: a storage record names {storage_type!r}, which is not a torch storage class.",
        code="bad-record",
        path=path,
    )


def _persistent_load(path: str, storages: dict[str, torch.UntypedStorage], legacy: bool) -> Callable[[Any], Any]:
    """``persistent_load`` for pass 2: the storages already read, as ``torch.load`` wraps them."""
    import torch

    made: dict[Any, Any] = {}

    def typed(key: Any, dtype: torch.dtype) -> Any:
        storage = storages.get(key) if isinstance(key, str) else None
        if storage is None:
            raise CorruptCheckpointError(
                f"{quote(path)}: the pickle uses storage {key!r}, which the first reading of the file did not find.",
                code="bad-record",
                path=path,
            )
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

    def load(pid: Any) -> Any:
        if legacy and isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            if not isinstance(pid[1], type):
                raise CorruptCheckpointError(f"{quote(path)}: a module record names {pid[1]!r}", code="bad-record")
            return pid[1]  # the class, already approved by find_class; torch only compares its source
        size = 6 if legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == size and pid[0] == "storage"):
            raise CorruptCheckpointError(f"{quote(path)}: unexpected persistent id {pid!r:.80}", code="bad-record")
        dtype = _storage_dtype(pid[1], path)
        key = pid[2]
        if (key, dtype) not in made:
            made[key, dtype] = typed(key, dtype)
        base = made[key, dtype]
        view = pid[5] if legacy else None
        if view is None:
            return base
        view_key, offset, view_size = view
        if view_key not in made:
            start = offset * dtype.itemsize
            sliced = base._untyped_storage[start : start + view_size * dtype.itemsize]
            made[view_key] = torch.storage.TypedStorage(wrap_storage=sliced, dtype=dtype, _internal=True)
        return made[view_key]

    return load


def _source(ckpt: Checkpoint, limits: Limits) -> tuple[Callable[[], IO[bytes]], dict[str, tuple[StorageRef, str]]]:
    """How to open the model pickle (positioned at its first opcode) and every storage it uses, by key."""
    options = ReadOptions(limits=limits)
    if ckpt.format == "torch-zip":
        data, found = model_pickle(ckpt.path, options)
        return lambda: io.BytesIO(data), {key: (s.ref, s.dtype) for key, s in found.items()}
    start, refs = storage_refs(ckpt.path, options)

    def at_main() -> IO[bytes]:
        fh = builtin_open(ckpt.path)
        fh.seek(start)
        return fh

    return at_main, {key: (ref, "uint8") for key, ref in refs.items()}


def _unpickle(path: str, opener: Callable[[], IO[bytes]], rules: TrustRules, load: Callable[[Any], Any]) -> Any:
    import torch

    try:
        with opener() as fh:
            return RebuildUnpickler(fh, rules, path, load).load()
    finally:
        torch._utils._validate_loaded_sparse_tensors()


def builtin_open(path: str) -> io.BufferedReader:
    """The file, opened for reading (``open`` is :func:`torchweights.open` in this module's namespace)."""
    return io.open(path, "rb")  # noqa: UP020 - the builtin, shadowed by the verb's name


def _module_of(obj: Any, path: str) -> torch.nn.Module:
    from torch.nn import Module

    if isinstance(obj, Module):
        return obj
    if isinstance(obj, dict):
        modules = [k for k, v in obj.items() if isinstance(v, Module)]
        for key in _MODEL_KEYS:
            if isinstance(obj.get(key), Module):
                others = [str(k) for k in modules if k != key]
                if others:  # {"model": m, "ema": e}: say which one came back
                    logging.getLogger("torchweights").warning(
                        "%s holds %d models (%s); load_model returns %r. For another, load the dict's weights into "
                        "a model you build: tw.load_into(model, path, container=NAME).",
                        path,
                        len(modules),
                        ", ".join(map(repr, [key, *others])),
                        key,
                    )
                return obj[key]  # type: ignore[no-any-return]
        if len(modules) == 1:
            return obj[modules[0]]  # type: ignore[no-any-return]
        what = f"a dict with keys {sorted(map(str, obj))[:8]}"
    else:
        what = f"a {type(obj).__name__}"
    raise RuleError(
        f"{quote(path)} holds {what}, not a pickled nn.Module (torch.save(model)). Fix: build the model in code and "
        "call tw.load_into(model, path); tw.load(path) gives the tensors.",
        code="not-a-model",
        path=path,
    )


def load_model(
    path: str | os.PathLike[str],
    *,
    trust: Iterable[str] | str = (),
    map_location: str | torch.device | Mapping[str, Any] | Callable[..., Any] | None = "cpu",
    allow_globals: Iterable[str] | str = (),
    rename_classes: Mapping[str, str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> torch.nn.Module:
    """Load a model saved with ``torch.save(model, path)`` as a working ``nn.Module``, running only trusted code.

    The result is what ``torch.load(path, weights_only=False)`` returns (same classes, module tree, tensors bit for
    bit, train/eval and ``requires_grad`` flags, plain attributes, tied weights sharing memory), without running
    anything the file names that you did not trust. torch's own classes (every ``torch.nn`` module, parameters,
    buffers, hooks, ``torch.Size``, dtypes...) need no trust; functions kept as attributes (``self.act = F.gelu``)
    are references, never called while loading.

    Args:
        path: a ``torch.save`` file (zip or legacy stream). A dict that holds a model (``{"model": ...}``, as
            ultralytics saves) gives that model.
        trust: packages whose classes may be imported and rebuilt (``["ultralytics"]`` covers
            ``ultralytics.nn.tasks.DetectionModel``; whole dotted components). Globals that can run code by
            themselves (``os.system``, ``builtins.eval``...) are refused whatever this says.
        map_location: where the tensors go, as for :func:`torchweights.load`.
        allow_globals: exact ``module.qualname`` names that may be imported and called (a custom reconstructor).
        rename_classes: ``{"old.module.Class": "new.module.Class"}`` for classes that moved; the new name must be
            torch's or trusted.
        limits: resource bounds for hostile files.

    Raises:
        UnsafeCheckpointError: globals that need trust (``untrusted-global``, every one listed with the
            ``trust=[...]`` to pass), dangerous globals (``unsafe-global``), or a call of something that is only
            ever referenced (``unsafe-call``). Nothing from the file was run.
        UnsupportedCheckpointError: a trusted class that cannot be imported (``missing-class``), or a TorchScript,
            torch.package or plain-pickle file (``unsupported-model-format``).
        RuleError: the file holds no model (``not-a-model``), or an option is malformed.
    """
    rules = _rules(trust, allow_globals, rename_classes)
    try:
        ckpt = open_checkpoint(path, limits=limits)  # pass 1: inert, allows nothing
    except UnsafeCheckpointError as exc:
        if exc.code != "unsafe-global":
            raise
        # tw.open's message offers allow_globals for a file you wrote yourself; load_model never runs these
        names = ", ".join(quote(n) for n in exc.names) or "them"
        raise UnsafeCheckpointError(
            f"{quote(exc.path or os.fspath(path))} references globals that can run code or touch the system: "
            f"{names}. load_model never imports or calls these, whatever trust= or allow_globals= say, and nothing "
            "was executed. A model file has no reason to name them: do not load it with torch.load either. If you "
            "only need the weights of a file you trust, re-save them from the code that made it (model.state_dict() "
            "and torch.save, or safetensors)." + compiled_model_hint(exc.names),
            names=exc.names,
            code="unsafe-global",
            path=exc.path,
        ) from exc
    _refuse_format(ckpt)
    unused = rules.unused_renames(ckpt.globals)
    if unused:
        raise RuleError(
            f"rename_classes renames {', '.join(quote(k) for k in unused)}, which {quote(ckpt.path)} does not name "
            f"(its classes: {', '.join(quote(n) for n in _classes_of(ckpt.globals)[:8])}). Fix: use the old names "
            "the file holds, exactly, or an old module or package name ({'oldpkg': 'newpkg'} renames all of it).",
            code="bad-rename",
            path=ckpt.path,
        )
    dangerous, untrusted = rules.refused(ckpt.globals)
    if dangerous:
        shown = ", ".join(f"{quote(n)} (renamed to {quote(rules.target(n))})" for n in dangerous)
        raise UnsafeCheckpointError(
            f"{quote(ckpt.path)}: rename_classes maps {shown} onto a global that can run code; load_model never "
            "imports it, whatever trust= says. Nothing was executed.",
            code="unsafe-global",
            path=ckpt.path,
        )
    if untrusted:
        raise untrusted_error(ckpt.path, untrusted, rules)
    from ..storage.read import materialize

    opener, found = _source(ckpt, limits)
    tensors = materialize(_storage_records(found), map_location=map_location, check_crc=True)
    storages = {key: tensor.untyped_storage() for key, tensor in tensors.items()}
    load = _persistent_load(ckpt.path, storages, legacy=ckpt.format == "torch-legacy")
    return _module_of(_unpickle(ckpt.path, opener, rules, load), ckpt.path)
