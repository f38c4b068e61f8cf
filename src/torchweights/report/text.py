"""Text for a :class:`~torchweights.report.load.LoadReport`: the terminal report and the :class:`LoadError` message.

:func:`render` is what ``print(report)`` and ``torchweights check`` show: a header (source, model, result, the
container and prefix chosen and why, the rules applied, totals), then the sections of
:mod:`~torchweights.report.sections` (one per kind of action, problems first, layer indices folded) and the fix.

:func:`problem_summary` is the error text: every problem at once, why it may have happened, and the exact option
that loads the rest (``tw.load_into(..., skip=["head.*"])``), as :func:`~torchweights.report.advice.advise` decides it.

Both only read the plan and word the advice: they decide nothing. Text that comes from the file (names, the path)
is escaped with :func:`~torchweights.text.printable`.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..fold import fold_names, human_bytes, human_count
from ..style import marked
from ..text import plural, printable, quote, wrap
from .advice import Advice, Hint, HintKind, advise
from .alignment import alignment_line, headline_phrase
from .cells import and_list, more, numel, strict_text, table_rows
from .sections import mismatch_rows, missing_rows, sections, unexpected_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.model import Action, Plan
    from .load import LoadReport

__all__ = ["headline", "log_line", "problem_summary", "render"]

#: Most error-message rows per kind of problem.
MESSAGE_ROWS = 10


# --------------------------------------------------------------------------------------------------- render


def render(report: LoadReport, *, full: bool = False) -> str:
    """The terminal report: header, then one section per kind of action, problems first (ends with a newline);
    ``full`` (the CLI's ``-v``) cuts no section short."""
    plan = report.plan
    lines = table_rows(_header(report), indent="", sep="  ", shrink=())
    lines += sections(report, full=full)
    if report.checked_values:
        from .values import values_section

        lines += ["", *values_section(report.value_findings)]
    if report.problems or report.left_on_meta or plan.suggestion is not None or plan.ambiguous:
        advice = advise(plan)
        if advice.hints or advice.changes or plan.ambiguous:
            lines += ["", "to fix"]
            if plan.ambiguous:
                from .alignment import ambiguity_fix

                lines += wrap("Ambiguous groups (align='auto'): " + ambiguity_fix(plan))
            for hint in advice.hints:
                lines += wrap(_hint_text(hint, plan))
            if advice.changes:
                lines += wrap(_sentence(advice, call=False) + ":")
                lines += wrap(_call(advice), indent="    ")
                lines += wrap("CLI: " + " ".join(_flags(advice)), indent="    ")
    return "\n".join(lines) + "\n"


def _header(report: LoadReport) -> list[list[str]]:
    plan = report.plan
    rows: list[list[str]] = [["source", printable(plan.source)], ["model", printable(plan.model)]]
    result = headline(report)
    rows.append(["result", marked(result, result.split(":")[0].split(" (")[0])])
    options = _options(plan)
    if options:
        rows.append(["options", options])
    rows.append(["container", plan.container.reason])
    rows.append(["prefix", plan.prefix.evidence])
    applied = [a for a in plan.applied if a != plan.prefix.evidence]
    for i, item in enumerate(applied):
        rows.append(["rules" if i == 0 else "", item])
    if plan.alignment is not None:
        rows.append(["align", alignment_line(plan.alignment)])
    rows.append(["keys", _keys(plan)])
    rows.append(["totals", _totals(report)])
    fallback = _fallback(report)
    if fallback:
        rows.append(["fallback", fallback])
    for i, note in enumerate(report.notes):
        rows.append(["notes" if i == 0 else "", printable(str(note))])
    return rows


def _fates(report: LoadReport) -> tuple[int, int, list[tuple[str, Counter[str]]]]:
    """``(model keys, keys loaded, [(what happened to the others, Counter of why)])``: loaded means loaded from the
    file or tied to a loaded key; the others are left on the meta device, initialised by ``init_missing``, left as
    initialised, or kept at their default. Why: skipped, missing, mismatched."""
    plan = report.plan
    meta = set(report.left_on_meta)
    initialised = set(plan.initialised)
    targets = [a for a in plan.actions if a.target is not None]
    loaded = sum(1 for a in targets if a.kind in ("load", "tied", "extra"))
    groups: dict[str, Counter[str]] = {}
    why = {"skip": "skipped", "missing": "missing", "mismatch": "mismatched", "default": "default"}
    for a in targets:
        if a.kind in ("load", "tied", "extra"):
            continue
        cause = "mismatched" if a.kind == "skip" and "mismatch" in a.reason else why.get(a.kind, a.kind)
        if a.target in meta:
            fate = "left on the meta device"
            if plan.rules.init_missing:
                cause += "; init_missing=True cannot help: no reset_parameters()"
        elif a.target in initialised:
            fate = "initialised by init_missing"
        elif a.kind == "default":
            fate = "kept at its default (absent from old checkpoints)"
            cause = ""
        else:
            fate = "left as initialised"
        groups.setdefault(fate, Counter())[cause] += 1
    order = ["left on the meta device", "initialised by init_missing", "left as initialised"]
    ranked = sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return len(targets), loaded, ranked


def _fate_text(fates: list[tuple[str, Counter[str]]]) -> list[str]:
    out = []
    for fate, causes in fates:
        n = sum(causes.values())
        named = [c for c in causes if c]
        if len(named) == 1:
            out.append(f"{n} {fate} ({named[0]})")
        elif named:
            out.append(f"{n} {fate} ({', '.join(f'{causes[c]} {c}' for c in named)})")
        else:
            out.append(f"{n} {fate}")
    return out


def headline(report: LoadReport) -> str:
    """The result line: what happened, e.g. ``OK: loaded 26 of 28; 2 left as initialised (skipped)``."""
    plan = report.plan
    problems = report.problems
    strict = f"strict={strict_text(plan.rules.strict)}"
    total, loaded, fates = _fates(report)
    outside = [a for a in plan.actions if a.target is None and a.kind in ("unexpected", "skip")]
    if problems or plan.ambiguous:
        counts = Counter[str](a.kind for a in problems)
        words = {"mismatch": "mismatched", "missing": "missing", "unexpected": "unexpected"}
        parts = [f"{counts[k]} {words[k]}" for k in words if counts[k]]
        if plan.ambiguous:
            parts.insert(0, f"{plural(len(plan.ambiguous), 'ambiguous group')} (align='auto')")
        meta = set(report.left_on_meta)
        stays = sum(1 for a in problems if a.target in meta)
        if stays:
            parts.append(f"{stays} would stay on the meta device")
        return f"FAILED: {', '.join(parts)} ({strict}); the model was not changed"
    loads = f"loaded {loaded} of {total}" if report.applied else f"would load {loaded} of {total}"
    phrase = headline_phrase(plan)
    parts = [f"{loads} {phrase}" if phrase else loads, *_fate_text(fates)]
    targets = {a.target for a in plan.actions if a.target is not None}
    unsaved = [name for name in report.left_on_meta if name not in targets]
    if unsaved:
        one = len(unsaved) == 1
        verb = "left" if report.applied else "would stay"
        why = f"not persistent: no checkpoint fills {'it' if one else 'them'}"
        if plan.rules.init_missing:
            why += f", init_missing=True cannot compute {'it' if one else 'them'}"
        parts.append(f"{plural(len(unsaved), 'buffer')} {verb} on the meta device ({why})")
    if outside:
        parts.append(f"{plural(len(outside), 'checkpoint tensor')} not loaded")
    if report.value_findings:
        from .values import values_phrase

        parts.append(values_phrase(report.value_findings))
    text = "; ".join(p for p in parts if p)
    if not report.applied:
        return f"DRY RUN ({strict}): {text}; the model was not changed"
    if report.left_on_meta:
        n = len(report.left_on_meta)
        return f"INCOMPLETE: {text}; the model cannot run until {_these(n)} on the meta device {_has(n)} values"
    lenient = plan.rules.strict is not True and any(
        a.kind in ("missing", "mismatch", "unexpected") for a in plan.actions
    )
    verdict = "WARN" if any(f.in_values for f in report.value_findings) else "OK"  # loaded, values suspicious
    if total and not loaded:  # allowed by strict=False, but nothing of the checkpoint is in the model: never "OK"
        verdict = "NOTHING LOADED"
    return f"{verdict} ({strict}): {text}" if lenient else f"{verdict}: {text}"


def log_line(report: LoadReport) -> str:
    """One line for the ``torchweights`` logger: the headline, the first names behind each kind of trouble, and
    where the full account is."""
    plan = report.plan
    parts = [f"{quote(plan.source)} into {printable(plan.model)}: {headline(report)}"]
    meta = list(report.left_on_meta)
    if meta:
        parts.append(f"on meta: {_few(meta)}")
    for kind, label in (("missing", "missing"), ("skip", "skipped"), ("mismatch", "not loaded (shape)")):
        names = [a.target for a in plan.by_kind(kind) if a.target and a.target not in meta]
        if names:
            parts.append(f"{label}: {_few(names)}")
    unexpected = [a.key or a.source or "" for a in plan.by_kind("unexpected")]
    if unexpected:
        parts.append(f"unexpected, not loaded: {_few(unexpected)}")
    lossy = Counter((a.src_dtype, a.dst_dtype) for a in report.lossy_casts)
    if lossy:
        casts = ", ".join(f"{n} {src} -> {dst}" for (src, dst), n in lossy.items())
        parts.append(f"cast with precision loss: {casts}")
    parts += [use.describe() for use in plan.renames if use.matched == 0]
    parts += [use.describe() for use in plan.skips if use.matched == 0]
    if report.value_findings:
        from .values import values_log

        parts += [f"{label}: {_few(names)}" for label, names in values_log(report.value_findings)]
    if plan.suggestion is not None:
        pairs = plan.suggestion.rules.rename[len(plan.rules.rename) :]
        parts.append("rename={" + ", ".join(f"{_py(p)}: {_py(r)}" for p, r in pairs) + "} would load more")
    return "; ".join(parts) + ". print(report) lists every key."


def _few(names: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` folded names, and how many names (not patterns) the rest stand for."""
    folded = fold_names(names)
    shown = ", ".join(printable(pattern) for pattern, _ in folded[:limit])
    rest = sum(len(members) for _, members in folded[limit:])
    return shown + (f" and {rest} more" if rest else "")


def _options(plan: Plan) -> str:
    """The rules the caller set that differ from the defaults, as keyword arguments."""
    rules = plan.rules
    parts = []
    if rules.strict is not True:
        parts.append(f"strict={strict_text(rules.strict)}")
    if rules.container != "auto":
        parts.append(f"container={quote(rules.container)}")
    if rules.prefix != "auto":
        parts.append(f"prefix={'None' if rules.prefix is None else quote(rules.prefix)}")
    if rules.rename:
        parts.append("rename={" + ", ".join(f"{p!r}: {r!r}" for p, r in rules.rename) + "}")
    if rules.skip:
        parts.append("skip=[" + ", ".join(quote(s) for s in rules.skip) + "]")
    if rules.align is not None:
        parts.append(f"align={quote(rules.align)}")
    if rules.adapt:
        parts.append("adapt=[" + ", ".join(quote(a) for a in rules.adapt) + "]")
    if rules.on_mismatch != "error":
        parts.append(f"on_mismatch={quote(rules.on_mismatch)}")
    if rules.dtype != "model":
        parts.append(f"dtype={quote(rules.dtype)}")
    if not rules.legacy_renames:
        parts.append("legacy_renames=False")
    return ", ".join(parts)


def _keys(plan: Plan) -> str:
    model = sum(1 for a in plan.actions if a.target is not None)
    sources = {a.source for a in plan.actions if a.source is not None}  # (a split qkv feeds three keys)
    sources.update(name for a in plan.actions if a.adapt is not None for name in a.adapt.sources)
    ckpt = len(sources)
    counts = plan.counts()
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    return f"{model} in the model, {ckpt} in the checkpoint: {kinds or 'nothing'}"


def _totals(report: LoadReport) -> str:
    loaded = report.loaded
    params = sum(numel(a.dst_shape) for a in loaded)
    text = f"{plural(len(loaded), 'tensor')}, {human_count(params)} parameters"
    if report.applied:
        return f"{text}, {human_bytes(report.bytes_read)} read in {report.seconds:.2f} s"
    return f"{text}, {human_bytes(report.bytes_read)} to read; planned in {report.seconds:.2f} s"


def _fallback(report: LoadReport) -> str:
    if report.fallback_modules:
        names = ", ".join(quote(m or "<root>") for m in report.fallback_modules)
        return f"loaded through torch's load_state_dict (custom loading code): {names}"
    n = sum(1 for a in report.plan.actions if a.fallback and a.kind == "load")
    if n:
        return f"{plural(n, 'key')} load through torch's load_state_dict (modules with custom loading code)"
    return ""


# --------------------------------------------------------------------------------------------------- advice
# The decisions are :func:`~torchweights.report.advice.advise`'s; what follows only words them.

#: The lead of the fix sentence when no option changes what "the rest" means.
_LEAD = "To load the rest"


def _py(text: str) -> str:
    """A Python string literal in double quotes (ASCII, escaped)."""
    return json.dumps(text)


def _hint_text(hint: Hint, plan: Plan) -> str:
    """One hint as a sentence (``plan`` names the source and the model)."""
    kind, n = hint.kind, hint.count
    are = "is" if n == 1 else "are"
    if kind is HintKind.RENAME:
        shown = and_list([f"{quote(p)} -> {quote(r)}" for p, r in hint.pairs])
        return (
            f"{plural(n, 'missing key')} and as many unexpected tensors pair up one to one (same names below "
            f"their module, same shapes): rename {shown} loads them."
        )
    if kind is HintKind.STRIP_PREFIX:
        return (
            f"{plural(n, 'missing key')} {are} in the checkpoint as {quote(hint.name + '<key>')}: "
            f"prefix={_py(hint.name)} strips it."
        )
    if kind is HintKind.ADD_PREFIX:
        return (
            f"{plural(n, 'missing key')} {are} in the checkpoint without {quote(hint.name)}: "
            f"prefix={_py('+' + hint.name)} adds it."
        )
    if kind is HintKind.OTHER_CONTAINER:
        return (
            f"{plural(n, 'missing key')} {are} in the file under {quote(hint.name)}, "
            f"outside the chosen container {quote(hint.current)}: "
            f"container={_py(hint.option)} loads that part instead."
        )
    if kind is HintKind.RUNNER_UP:
        return (
            f"{quote(hint.name)} in the same file also matches {plural(n, 'model key')}: "
            f"container={_py(hint.name)} loads it instead."
        )
    if kind is HintKind.ADAPTER:
        shown = "; ".join(printable(w) for w in hint.names[:3]) + (" ..." if len(hint.names) > 3 else "")
        # a group's line names every key it fills before " from " (plan/adapters.py); a reshape's names one
        keys = sum(w.partition(" from ")[0].count(", ") + 1 if " from " in w else 1 for w in hint.names)
        return (
            f"The adapter {quote(hint.name)} would load {plural(keys, 'key')} that "
            f"{'does' if keys == 1 else 'do'} not fit as stored "
            f"({shown}): adapt=[{_py(hint.name)}] (CLI: --adapt {hint.name}) applies it."
        )
    if kind is HintKind.ALIGN:
        return (
            f"{hint.count} of the {plural(hint.total, 'missing key')} pair with unexpected tensors of their shapes by "
            f"structure (layer indices, order, names; confidence {hint.confidence:.2f}): align=\"auto\" loads them. "
            "Review the pairs first with `torchweights check --align auto`, and keep them with --write-rename."
        )
    if kind is HintKind.AUTO_CONTAINER:
        return 'container="auto" lets torchweights pick the part of the file that fits best.'
    if kind is HintKind.AUTO_PREFIX:
        return 'prefix="auto" infers the prefix to strip or add from the keys.'
    inspect = f"`torchweights inspect {shlex.quote(printable(plan.source))}` lists what it holds."
    if kind is HintKind.NO_TENSORS:
        return f"{quote(plan.source)} holds no tensors. {inspect}"
    if kind is HintKind.NOT_FOR_MODEL:
        return (
            f"{n} of {plural(hint.total, 'model key')} have no tensor: is this checkpoint "
            f"for {printable(plan.model)}? {inspect}"
        )
    if kind is HintKind.ALL_MISMATCHED:
        return (
            f"None of the {plural(n, 'tensor')} matched by name has the model's shape: is this checkpoint for "
            f"this configuration of {printable(plan.model)}?"
        )
    if kind is HintKind.NO_RESET:
        stuck = hint.names
        return (
            f"{and_list([quote(m) for m in stuck[:4]])}{' and others' if len(stuck) > 4 else ''} "
            f"{'has' if len(stuck) == 1 else 'have'} no reset_parameters() (nor _reset_parameters(), "
            "reset_running_stats()): init_missing=True cannot give their tensors values. Load them from a checkpoint "
            "that has them, or build the model off the meta device."
        )
    unsaved = hint.names  # HintKind.UNSAVED_BUFFERS
    one = len(unsaved) == 1
    return (
        f"{plural(len(unsaved), 'buffer')} on the meta device ({_few(unsaved)}) {'is' if one else 'are'}"
        " not saved by state_dict() (persistent=False), so no checkpoint fills "
        f"{'it' if one else 'them'}: compute {'it' if one else 'them'} after "
        "loading, or keep buffers off the meta device when building the model (as accelerate's "
        "init_empty_weights() does)."
    )


def _kwargs(advice: Advice) -> list[str]:
    """The advised options as keyword arguments, in the order of the call."""
    out = []
    if advice.align is not None:
        out.append(f"align={_py(advice.align)}")
    if advice.adapt:
        out.append("adapt=[" + ", ".join(_py(a) for a in advice.adapt) + "]")
    if advice.rename is not None:
        out.append("rename={" + ", ".join(f"{_py(p)}: {_py(r)}" for p, r in advice.rename) + "}")
    if advice.skip:
        out.append("skip=[" + ", ".join(_py(p) for p in advice.skip) + "]")
    if advice.on_mismatch is not None:
        out.append(f"on_mismatch={_py(advice.on_mismatch)}")
    if advice.strict is not None:
        out.append(f"strict={_py(advice.strict)}" if advice.strict else "strict=False")
    if advice.init_missing:
        out.append("init_missing=True")
    return out


def _flags(advice: Advice) -> list[str]:
    """The advised options as command-line flags, in the same order."""
    out = []
    if advice.align is not None:
        out.append(f"--align {advice.align}")
    out += [f"--adapt {shlex.quote(a)}" for a in advice.adapt]
    if advice.rename is not None:
        out += [f"--rename {shlex.quote(f'{p}={r}')}" for p, r in advice.rename]
    out += [f"--skip {shlex.quote(p)}" for p in advice.skip]
    if advice.on_mismatch is not None:
        out.append(f"--on-mismatch {advice.on_mismatch}")
    if advice.strict is not None:
        out.append(f"--strict {advice.strict or 'false'}")
    if advice.init_missing:
        out.append("--init-missing")
    return out


def _effects(advice: Advice) -> list[str]:
    """What the advised options do, e.g. ``keep 'head.*' as initialised``."""
    out = []
    if advice.adapt:
        out.append(f"adapt what does not fit with {and_list([quote(a) for a in advice.adapt])}")
    if advice.new_skips:
        new = advice.new_skips
        shown = and_list([quote(p) for p in new]) if len(new) <= 3 else f"the {len(new)} patterns"
        out.append(f"keep {shown} as initialised")
    if advice.on_mismatch is not None:
        out.append(f"keep the {advice.mismatched} mismatched keys as initialised")
    if advice.strict == "model":
        n = advice.unexpected
        out.append(f"leave out the {plural(n, 'unexpected tensor')}" if n > 1 else "leave out the unexpected tensor")
    if advice.init_missing:
        out.append(
            f"initialise the {plural(advice.init_missing, 'key')} on the meta device with their modules' "
            "reset_parameters()"
        )
    return out


def _call(advice: Advice) -> str:
    return f"tw.load_into(..., {', '.join(_kwargs(advice))})"


def _sentence(advice: Advice, call: bool = True, lead: str | None = None) -> str:
    """The fix as a sentence: its lead (``lead`` replaces the plain one), what it does, then the call."""
    if advice.align is not None:
        text = "To pair them by structure and load them"
    elif advice.rename is not None:
        text = "To load them under their model names"
    elif advice.strict is False:
        text = "To load whatever fits and keep every other model key as initialised"
    else:
        text = lead or _LEAD
    does = _effects(advice)
    if len(does) == 1:
        text = f"{text} and {does[0]}"
    elif does:
        text = f"{text}, {and_list(does)}"
    return f"{text}: {_call(advice)}" if call else text


# --------------------------------------------------------------------------------------------------- message


def problem_summary(report: LoadReport) -> str:
    """The :class:`~torchweights.errors.LoadError` message: what does not fit, why it may be, and the exact option
    that loads the rest. Every problem is listed (long lists folded and cut with ``... and N more``)."""
    plan = report.plan
    problems = plan.problems
    if not problems:
        return f"{quote(plan.source)} fits {printable(plan.model)}: nothing to report."
    source, model = quote(plan.source), printable(plan.model)
    kinds = [k for k in ("mismatch", "missing", "unexpected", "skip") if any(a.kind == k for a in problems)]
    by_kind = {k: [a for a in problems if a.kind == k] for k in kinds}
    advice = advise(plan)
    paired = sum(1 for a in plan.actions if a.source is not None and a.target is not None)
    model_keys = sum(1 for a in plan.actions if a.target is not None)
    lines: list[str] = []

    def rows(actions: list[Action], indent: str) -> list[str]:
        kind = actions[0].kind
        made = {
            "mismatch": mismatch_rows,
            "missing": missing_rows,
            "unexpected": unexpected_rows,
            "skip": missing_rows,
        }[kind](actions)
        out = table_rows(made[:MESSAGE_ROWS], indent=indent, sep="   ")
        if len(made) > MESSAGE_ROWS:
            out.append(more(len(made) - MESSAGE_ROWS, indent))
        return out

    tail: list[str] = [_hint_text(hint, plan) for hint in advice.hints]
    if len(kinds) == 1:
        kind = kinds[0]
        actions = by_kind[kind]
        n = len(actions)
        if kind == "mismatch":
            lines.append(f"{n} of {plural(paired, 'tensor')} in {source} {_does(n)} not fit {model}:")
            lines += rows(actions, "  ")
            others = paired - n
            if advice.changes:
                lead = f"The other {others} fit. To load them" if others != 1 else "The other one fits. To load it"
                tail.append(_sentence(advice, lead=lead))
        elif kind == "missing":
            lines.append(f"{n} of {plural(model_keys, 'key')} of {model} {_has(n)} no tensor in {source}:")
            lines += rows(actions, "  ")
            if advice.changes:
                tail.append(_sentence(advice, lead="To load the others"))
        elif kind == "unexpected":
            lines.append(f"{plural(n, 'tensor')} in {source} {_match(n)} no key of {model}:")
            lines += rows(actions, "  ")
            lines.append(f"  Every key of {model} has a tensor.")
            if advice.changes:
                tail.append(_sentence(advice, lead="To load it"))
        else:
            lines.append(f"{n} of {plural(model_keys, 'key')} of {model} would stay on the meta device, skipped:")
            lines += rows(actions, "  ")
            lines.append("  A tensor on the meta device has no values: skipping it leaves nothing to keep.")
            if advice.changes:
                tail.append(_sentence(advice, lead="To load the others"))
    else:
        parts = {
            "mismatch": lambda n: f"{plural(n, 'tensor')} with other shapes",
            "missing": lambda n: f"{plural(n, 'missing key')}",
            "unexpected": lambda n: f"{plural(n, 'unexpected tensor')}",
            "skip": lambda n: f"{plural(n, 'skipped key')} on the meta device",
        }
        lines.append(f"{source} does not fit {model}: " + ", ".join(parts[k](len(by_kind[k])) for k in kinds) + ".")
        for kind in kinds:
            actions = by_kind[kind]
            n = len(actions)
            if kind == "mismatch":
                lines.append(f"  {n} of {plural(paired, 'tensor')} {_does(n)} not fit:")
            elif kind == "missing":
                lines.append(f"  {n} of {plural(model_keys, 'model key')} {_has(n)} no tensor:")
            elif kind == "unexpected":
                lines.append(f"  {plural(n, 'tensor')} {_match(n)} no model key:")
            else:
                lines.append(
                    f"  {n} skipped {'key stays' if n == 1 else 'keys stay'} on the meta device, without values:"
                )
            lines += rows(actions, "    ")
        if advice.changes:  # the call on a line of its own: this sentence is long
            tail += [_sentence(advice, call=False) + ":", f"  {_call(advice)}"]
    meta = set(plan.left_on_meta)
    on_meta = sum(1 for a in problems if a.kind != "skip" and a.target in meta)
    if on_meta:
        one = on_meta == 1
        lines.append(
            f"  {on_meta} of these keys {'is' if one else 'are'} on the meta device: without a tensor from the "
            f"file, {'it has' if one else 'they have'} no values at all."
        )
    unused = [use.describe() for use in plan.renames if use.matched == 0]
    unused += [use.describe() for use in plan.skips if use.matched == 0]
    lines += [f"  {text}: check its pattern." for text in unused]
    alignment = plan.alignment
    if alignment is not None and (alignment.note or alignment.unequal):
        from .alignment import unequal_lines

        lines += [f"  {printable(alignment.note)}."] if alignment.note else unequal_lines(alignment)
    lines += [f"  {sentence}" for sentence in tail]
    return "\n".join(lines)


def _does(n: int) -> str:
    return "does" if n == 1 else "do"


def _these(n: int) -> str:
    return "the tensor" if n == 1 else f"the {n} tensors"


def _has(n: int) -> str:
    return "has" if n == 1 else "have"


def _match(n: int) -> str:
    return "matches" if n == 1 else "match"
