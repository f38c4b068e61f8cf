"""The user's loading rules and torchweights' built-in key knowledge: pure data and string logic, no torch.

:class:`Rules` holds what ``load_into`` was asked to do. The tables here say which container names are usual,
which prefixes training wrappers add, and which legacy renames turn a mismatch into a match.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from typing import Literal

from ..errors import RuleError
from ..structs import structure

__all__ = [
    "CONTAINER_NAMES",
    "EMA_NAMES",
    "KNOWN_PREFIXES",
    "LEGACY_RENAMES",
    "OPTIMIZER_NAMES",
    "WRAPPER_PARTS",
    "RuleError",
    "Rules",
    "is_ema",
    "is_training_state",
    "matches_any",
]

Strictness = Literal[True, False, "model"]

#: Usual names of the dict that holds the weights inside a training checkpoint, most usual first.
CONTAINER_NAMES = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "params",
    "params_ema",
    "weights",
    "generator",
    "teacher",
    "student",
)
#: Containers holding an exponential moving average of the weights: chosen only when asked, or when they fit
#: strictly better than every other container.
EMA_NAMES = ("ema", "model_ema", "state_dict_ema", "ema_model", "ema_state_dict", "params_ema", "shadow")

#: Parts of a path that hold training state rather than weights (optimizer moments keyed like the model, schedulers,
#: gradient scalers): a container below one of them loses every tie against one that is not.
OPTIMIZER_NAMES = (
    "optimizer",
    "optimizers",
    "optimizer_states",
    "optimizer_state",
    "optimizer_state_dict",
    "optim",
    "optim_state",
    "opt_state",
    "lr_scheduler",
    "lr_schedulers",
    "scheduler",
    "schedulers",
    "scaler",
    "grad_scaler",
)

#: Prefixes that training wrappers put in front of every key (DataParallel, torch.compile, Lightning, PEFT...).
KNOWN_PREFIXES = (
    "module.",
    "_orig_mod.",
    "_orig_mod.module.",
    "module._orig_mod.",
    "model.",
    "net.",
    "backbone.",
    "encoder.",
    "base_model.model.",
    "model.model.",
    "module.model.",
    "model.module.",
    "_forward_module.",
    "_fsdp_wrapped_module.",
    "teacher.",
    "student.",
)

#: Names that training wrappers insert as a level of their own, anywhere in a key (DataParallel/DDP on a submodule,
#: torch.compile, FSDP, activation checkpointing, Lightning's forward module): removing or inserting them never
#: moves a tensor into another module.
WRAPPER_PARTS = frozenset(
    {"module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_forward_module"}
)


@structure(frozen=True)
class LegacyRename:
    """A built-in rename, applied to a checkpoint key only when it turns a mismatch into a match."""

    label: str
    pattern: re.Pattern[str]
    replacement: str
    leaves: tuple[str, ...] = ()  # the last dotted parts of the keys it can change (a pre-filter); () for any


def _rename(label: str, pattern: str, replacement: str, *leaves: str) -> LegacyRename:
    return LegacyRename(label, re.compile(pattern), replacement, leaves)


#: Built-in legacy renames (old LayerNorm names, weight norm before and after parametrizations, TF-style BN).
LEGACY_RENAMES: tuple[LegacyRename, ...] = (
    _rename("LayerNorm gamma -> weight", r"(^|\.)gamma$", r"\1weight", "gamma"),
    _rename("LayerNorm beta -> bias", r"(^|\.)beta$", r"\1bias", "beta"),
    _rename(
        "weight_g -> parametrizations.weight.original0",
        r"(^|\.)weight_g$",
        r"\1parametrizations.weight.original0",
        "weight_g",
    ),
    _rename(
        "weight_v -> parametrizations.weight.original1",
        r"(^|\.)weight_v$",
        r"\1parametrizations.weight.original1",
        "weight_v",
    ),
    _rename(
        "parametrizations.weight.original0 -> weight_g",
        r"(^|\.)parametrizations\.weight\.original0$",
        r"\1weight_g",
        "original0",
    ),
    _rename(
        "parametrizations.weight.original1 -> weight_v",
        r"(^|\.)parametrizations\.weight\.original1$",
        r"\1weight_v",
        "original1",
    ),
    _rename("moving_mean -> running_mean", r"(^|\.)moving_mean$", r"\1running_mean", "moving_mean"),
    _rename(
        "moving_variance -> running_var",
        r"(^|\.)moving_var(iance)?$",
        r"\1running_var",
        "moving_var",
        "moving_variance",
    ),
)


@structure(frozen=True)
class Rules:
    """What ``load_into`` was asked to do; see :func:`torchweights.load_into` for each field."""

    strict: Strictness = True
    container: str = "auto"
    prefix: str | None = "auto"
    rename: tuple[tuple[str, str], ...] = ()
    skip: tuple[str, ...] = ()
    on_mismatch: Literal["error", "skip"] = "error"
    dtype: Literal["model", "checkpoint"] = "model"
    legacy_renames: bool = True
    init_missing: bool = False
    align: str | None = None
    adapt: tuple[str, ...] = ()
    compiled_rename: tuple[tuple[re.Pattern[str], str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        # Rules(...) built directly (not through make) still gets its renames compiled.
        if self.rename and len(self.compiled_rename) != len(self.rename):
            object.__setattr__(self, "compiled_rename", _compile_renames(self.rename))

    @classmethod
    def make(
        cls,
        *,
        strict: Strictness = True,
        container: str = "auto",
        prefix: str | None = "auto",
        rename: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        skip: Iterable[str] | str = (),
        on_mismatch: str = "error",
        dtype: str = "model",
        legacy_renames: bool = True,
        init_missing: bool = False,
        align: str | None = None,
        adapt: Iterable[str] | str = (),
    ) -> Rules:
        """Validate the user's options and compile them.

        Raises:
            RuleError: a value is not one of the documented choices, or a rename regex does not compile.
        """
        if strict not in (True, False, "model"):
            raise RuleError(f"strict={strict!r} is not one of True, False, 'model'", code="bad-strict")
        if on_mismatch not in ("error", "skip"):
            raise RuleError(f"on_mismatch={on_mismatch!r} is not 'error' or 'skip'", code="bad-on-mismatch")
        if dtype not in ("model", "checkpoint"):
            raise RuleError(f"dtype={dtype!r} is not 'model' or 'checkpoint'", code="bad-dtype")
        if not isinstance(container, str):
            raise RuleError(
                f"container={container!r} is not 'auto' or a dotted path such as 'state_dict' or 'ema'",
                code="bad-container",
            )
        if prefix is not None and not isinstance(prefix, str):
            raise RuleError(
                f"prefix={prefix!r} is not 'auto', None, 'module.' (strip), '+model.' (add) or 'a.->b.' (replace)",
                code="bad-prefix",
            )
        pairs = tuple((rename or {}).items()) if isinstance(rename, Mapping) else tuple(rename or ())
        for pair in pairs:
            if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise RuleError(
                    f"rename entry {pair!r} is not a (regex, replacement) pair of strings", code="bad-rename"
                )
        skips = (skip,) if isinstance(skip, str) else tuple(skip)
        bad_skips = [p for p in skips if not isinstance(p, str)]
        if bad_skips:
            raise RuleError(
                f"skip patterns must be strings (globs such as 'head.*'), not {bad_skips[0]!r}", code="bad-skip"
            )
        if align not in (None, "auto"):
            raise RuleError(f"align={align!r} is not None (off) or 'auto'", code="bad-align")
        adapters = _adapters(adapt)
        return cls(
            strict=strict,  # type: ignore[arg-type]
            container=container,
            prefix=prefix,
            rename=pairs,
            skip=skips,
            on_mismatch=on_mismatch,  # type: ignore[arg-type]
            dtype=dtype,  # type: ignore[arg-type]
            legacy_renames=legacy_renames,
            init_missing=bool(init_missing),
            align=align,
            adapt=adapters,
            compiled_rename=_compile_renames(pairs),
        )


def _adapters(adapt: Iterable[str] | str) -> tuple[str, ...]:
    """The adapter names asked for, checked against the table (``"all"`` for every adapter)."""
    asked = (adapt,) if isinstance(adapt, str) else tuple(adapt)
    if not asked:
        return ()
    from ..adapt.registry import names  # (only when adapters are asked for: not on every load's path)

    known = names()
    if "all" in asked:
        return known
    bad = [a for a in asked if a not in known]
    if bad:
        raise RuleError(
            f"adapt={list(asked)!r}: {bad[0]!r} is not an adapter. Known adapters: "
            f"{', '.join(repr(n) for n in known)} (or 'all').",
            code="bad-adapt",
        )
    return tuple(dict.fromkeys(asked))


def _compile_renames(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Compile each rename and check its replacement (group references) once, before any key is touched."""
    compiled = []
    for pattern, replacement in pairs:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise RuleError(
                f"rename pattern '{pattern}' is not a valid regular expression: {exc}", code="bad-rename"
            ) from None
        try:
            regex.sub(replacement, "")  # parses the replacement template (bad group references, stray escapes)
        except (re.error, IndexError) as exc:
            raise RuleError(
                f"rename replacement '{replacement}' for '{pattern}' is not valid: {exc}", code="bad-rename"
            ) from None
        compiled.append((regex, replacement))
    return tuple(compiled)


def matches_any(name: str, patterns: Sequence[str]) -> str | None:
    """The first glob pattern (``head.*``) that matches ``name``, or None. A pattern without wildcards also
    matches everything below it (``head`` matches ``head.weight``)."""
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return pattern
        if not any(c in pattern for c in "*?[") and name.startswith(pattern.rstrip(".") + "."):
            return pattern
    return None


def is_ema(parts: Iterable[str]) -> bool:
    """Whether a path (the dotted parts of a container or a prefix) lies in an EMA copy of the weights: one of its
    parts is in :data:`EMA_NAMES`."""
    return any(part in EMA_NAMES for part in parts)


def is_training_state(parts: Iterable[str]) -> bool:
    """Whether a path lies in training state rather than weights: one of its parts is in :data:`OPTIMIZER_NAMES`."""
    return any(part in OPTIMIZER_NAMES for part in parts)
