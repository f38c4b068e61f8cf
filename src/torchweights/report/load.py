"""The account of a load: what happened to every key. Renders decisions, never makes them."""

from __future__ import annotations

import json
import math
from dataclasses import field
from typing import TYPE_CHECKING, Any

from ..structs import structure
from ..text import printable, quote

if TYPE_CHECKING:  # annotations only: importing the planner here would slow every ``tw.open`` (api imports this)
    from ..plan.model import Action, Plan
    from ..values.findings import ValueFinding

__all__ = ["LoadReport"]


@structure
class LoadReport:
    """What :func:`torchweights.load_into` did (or, for a dry run or a failed plan, would do).

    Attributes:
        plan: every decision, per key (:class:`~torchweights.plan.model.Plan`).
        applied: whether the model was changed.
        seconds: wall time of the whole call.
        bytes_read: tensor bytes read from the checkpoint.
        fallback_modules: modules loaded through torch's own path (custom ``_load_from_state_dict`` or hooks).
        notes: anything else worth knowing (checkpoint warnings, ...).
        meta_after: after the load, every parameter and buffer of the model still on the meta device, as found
            on the model (None before a load: :attr:`left_on_meta` then says what the plan leaves there).
        value_findings: what ``load_into(..., check_values=True)`` found in the loaded values (NaN, Inf, all-zero
            or constant weights) and the tensors left at their initial values, by tensor name; warnings only:
            :attr:`ok` does not depend on them (see :mod:`torchweights.values.checks`).
        checked_values: whether the value checks ran.
    """

    plan: Plan
    applied: bool = False
    seconds: float = 0.0
    bytes_read: int = 0
    fallback_modules: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    meta_after: tuple[str, ...] | None = None
    value_findings: tuple[ValueFinding, ...] = ()
    checked_values: bool = False

    @property
    def ok(self) -> bool:
        """True when the load fits under its strictness (nothing mismatched or missing, nothing unexpected under
        ``strict=True``) and leaves no parameter or buffer on the meta device. Under ``strict=False`` a load
        that leaves tensors on meta happens, and is not ``ok``. A plan whose alignment found modules it could
        pair only by guessing (``align="auto"``) is never ``ok``."""
        return not self.problems and not self.left_on_meta and not self.plan.ambiguous

    @property
    def problems(self) -> list[Action]:
        """The actions that make the load fail under its strictness."""
        return self.plan.problems

    @property
    def left_on_meta(self) -> tuple[str, ...]:
        """Parameters and buffers without values after the load (planned ones for a dry run or a failed plan)."""
        return self.plan.left_on_meta if self.meta_after is None else self.meta_after

    @property
    def lossy_casts(self) -> list[Action]:
        """Loaded keys whose cast can lose information (``float32 -> bfloat16``, ``int64 -> int32``...)."""
        return [a for a in self.loaded if a.cast and lossy_cast(a.src_dtype or "", a.dst_dtype or "")]

    @property
    def clean(self) -> bool:
        """True when every model key was loaded (or kept at a default torch also keeps, such as an absent
        ``num_batches_tracked``), nothing was left on meta, no cast lost precision, no tensor of the chosen
        container was left out, every rename and skip pattern matched something and the value checks (when they
        ran) found no NaN, Inf, all-zero or constant weight.
        :func:`~torchweights.load_into` logs a warning for every load that is not clean."""
        plan = self.plan
        unfilled = any(a.kind in ("skip", "missing", "mismatch") and a.target for a in plan.actions)
        return not (
            unfilled
            or self.left_on_meta
            or self.lossy_casts
            or any(a.kind in ("unexpected", "skip") and a.target is None for a in plan.actions)
            or any(use.matched == 0 for use in plan.renames)
            or any(use.matched == 0 for use in plan.skips)
            or any(f.in_values for f in self.value_findings)
        )

    def log_line(self) -> str:
        """The one-line account :func:`~torchweights.load_into` logs when the load is not clean."""
        from .text import log_line

        return log_line(self)

    @property
    def loaded(self) -> list[Action]:
        """Keys loaded (copied or cast)."""
        return self.plan.by_kind("load")

    @property
    def totals(self) -> dict[str, int]:
        """Counts: tensors and elements loaded, bytes read, and actions per kind."""
        loaded = self.loaded
        return {
            "tensors": len(loaded),
            "parameters": sum(math.prod(a.dst_shape or ()) for a in loaded),
            "bytes": self.bytes_read,
            **self.plan.counts(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain data: source, model, container and prefix choices, rules applied, totals and every action."""
        plan = self.plan
        return {
            "source": plan.source,
            "model": plan.model,
            "ok": self.ok,
            "applied": self.applied,
            "strict": plan.rules.strict,
            "result": self.headline(),
            "container": {
                "name": plan.container.name,
                "reason": plan.container.reason,
                "runner_up": None if plan.container.runner_up is None else ".".join(plan.container.runner_up),
            },
            "prefix": {"strip": plan.prefix.strip, "add": plan.prefix.add, "evidence": plan.prefix.evidence},
            "rules_applied": list(plan.applied),
            "renames": [
                {"pattern": u.pattern, "replacement": u.replacement, "matched": u.matched, "phase": u.phase}
                for u in plan.renames
            ],
            "skips": [{"pattern": u.pattern, "matched": u.matched, "names": u.names} for u in plan.skips],
            "left_on_meta": list(self.left_on_meta),
            "initialised": [
                {"module": i.module, "method": i.method, "keys": list(i.tensors)}
                for i in plan.initialise
                if plan.rules.init_missing
            ],
            "suggested_rename": (
                None if plan.suggestion is None else [list(pair) for pair in plan.suggestion.rules.rename]
            ),
            "alignment": None if plan.alignment is None else plan.alignment.to_dict(),
            "adapter_hints": [{"adapter": name, "detail": what} for name, what in plan.adapter_hints],
            "load_error": self.error(),
            "totals": self.totals,
            "seconds": round(self.seconds, 6),
            "fallback_modules": list(self.fallback_modules),
            "notes": list(self.notes),
            "checked_values": self.checked_values,
            "value_findings": [f.to_dict() for f in self.value_findings],
            "actions": [a.to_dict() for a in plan.actions],
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def headline(self) -> str:
        """What happened, in one line: ``OK: loaded 26 of 28; 2 left as initialised (skipped)``."""
        from .text import headline

        return headline(self)

    def raise_if_problems(self) -> None:
        """Raise :class:`~torchweights.errors.LoadError` (carrying this report) when the plan has problems under
        its strictness (:attr:`problems`), or ``align="auto"`` found modules it could pair only by guessing
        (code ``ambiguous-alignment``, whatever ``strict`` says)."""
        from ..errors import LoadError

        if self.plan.ambiguous:
            from .alignment import ambiguity_text

            raise LoadError(ambiguity_text(self), report=self, code="ambiguous-alignment")
        if not self.problems:
            return
        raise LoadError(self.problem_text(), report=self, code=self.error_code())

    def error(self) -> dict[str, Any] | None:
        """The :class:`~torchweights.errors.LoadError` a real load of this plan raises, as plain data
        (``{"code", "type", "message", "fix", ...}``: :meth:`~torchweights.errors.TorchWeightsError.to_dict`), or
        None when it loads. The JSON has it as ``load_error``: a dry run (``torchweights check --json``) names the
        code too."""
        from ..errors import LoadError

        try:
            self.raise_if_problems()
        except LoadError as e:
            return e.to_dict()
        return None

    def error_code(self) -> str:
        """The most specific error code for this report's problems."""
        kinds: set[str] = {a.kind for a in self.problems}
        meta = set(self.left_on_meta)
        if any(a.target in meta for a in self.problems if a.kind == "skip"):
            kinds.add("meta")
        for kind, code in (
            ("mismatch", "shape-mismatch"),
            ("missing", "missing-keys"),
            ("unexpected", "unexpected-keys"),
            ("meta", "left-on-meta"),
        ):
            if kind in kinds:
                return code
        return "load-failed"

    @property
    def missing_keys(self) -> tuple[str, ...]:
        """Model keys whose values did not come from the checkpoint, as torch's ``load_state_dict`` names them:
        no source (``missing``), skipped on request, or a source of another shape (``mismatch``). Keys kept at a
        default torch also keeps (``default``), tied to a loaded key, or restored extra state are loaded."""
        return tuple(
            a.target for a in self.plan.actions if a.target is not None and a.kind in ("missing", "skip", "mismatch")
        )

    @property
    def unexpected_keys(self) -> tuple[str, ...]:
        """Checkpoint keys of the chosen container that filled no model key (``unexpected``, or skipped on
        request), named as in the container (before renames and prefix handling). Tensors outside the container
        (``ignored``) are not part of the state dict torch would see, so they are not listed."""
        return tuple(
            a.key or a.source or ""
            for a in self.plan.actions
            if a.target is None and a.source is not None and a.kind in ("unexpected", "skip")
        )

    @property
    def summary(self) -> str:
        """One line: what happened (:meth:`headline`), e.g. ``OK: loaded 26 of 28; 2 left as initialised
        (skipped)``. :meth:`problem_text` has every problem and the fix."""
        return self.headline()

    def problem_text(self) -> str:
        """The :class:`~torchweights.errors.LoadError` text: every problem, and the exact option that would load
        the rest."""
        from .text import problem_summary

        return problem_summary(self)

    def __str__(self) -> str:
        from .text import render

        return render(self)

    def __repr__(self) -> str:
        return f"<LoadReport {quote(self.plan.source)} into {printable(self.plan.model)}: {self.headline()}>"

    def _repr_html_(self) -> str:
        """The report as a notebook shows it: the result line coloured by outcome, the choices made and every
        action that is not a plain load first (escaped: names come from the file)."""
        from .alignment import alignment_line, html_tables
        from .html import action_table, card, load_state

        plan = self.plan
        aligned = [("align", alignment_line(plan.alignment))] if plan.alignment is not None else []
        return card(
            "LoadReport",
            load_state(self),
            self.headline(),
            [
                ("source", plan.source),
                ("model", plan.model),
                ("container", plan.container.name or "the root"),
                ("prefix", plan.prefix.evidence),
                *aligned,
                ("bytes read", self.bytes_read),
            ],
            [*html_tables(plan), action_table(self)[0]],
            self.notes,
        )


#: Bits of a value each integer dtype holds, and bits of mantissa (with the implicit one) of each float dtype.
_INT_BITS = {"bool": 1, "uint8": 8, "int8": 7, "uint16": 16, "int16": 15, "uint32": 32, "int32": 31}
_INT_BITS.update({"uint64": 64, "int64": 63})
_MANTISSA = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}


def lossy_cast(src: str, dst: str) -> bool:
    """Whether casting ``src`` values to ``dst`` can change them (precision, range or sign). Unknown pairs count
    as lossy; casts to a dtype that holds every value of the source (``float16 -> float32``, ``int8 -> int32``,
    ``bool -> anything``) do not."""
    if src == dst or src == "bool":
        return False
    if src in _INT_BITS and dst in _INT_BITS:
        if dst == "bool":
            return True
        signed_src, signed_dst = not src.startswith("u"), not dst.startswith("u")
        if signed_src and not signed_dst:
            return True
        return _INT_BITS[dst] < _INT_BITS[src]
    if src in _INT_BITS and dst in _MANTISSA:
        return _MANTISSA[dst] < _INT_BITS[src]
    if src in _MANTISSA and dst in _MANTISSA:
        wider = {"float16": ("float32", "float64"), "bfloat16": ("float32", "float64"), "float32": ("float64",)}
        return dst not in wider.get(src, ())
    if src.startswith("complex") and dst.startswith("complex"):
        return src == "complex128" or (src == "complex64" and dst == "complex32")
    return not (src.startswith("float8") and dst in _MANTISSA)
