"""Text for a :class:`~torchweights.report.load.LoadReport`: the terminal report and the :class:`LoadError` message.

:func:`render` is what ``print(report)`` and ``torchweights check`` show: a header (source, model, result, the
container and prefix chosen and why, the rules applied, totals), then one section per kind of action, problems
first, with layer indices folded (``blocks.{0..11}.mlp.fc1.weight``) so that a 300-key model reads in a screen.

:func:`problem_summary` is the error text: every problem at once, why it may have happened, and the exact option
that loads the rest (``tw.load_into(..., skip=["head.*"])``), as :func:`~torchweights.report.advice.advise` decides it.

Both only read the plan and word the advice: they decide nothing. Text that comes from the file (names, the path)
is escaped with :func:`~torchweights.text.printable`.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..fold import fold_names, format_indices, human_bytes, human_count, is_index
from ..text import plural, printable, quote, table
from .advice import Advice, Hint, HintKind, advise

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.reconcile import Action, Plan
    from .load import LoadReport

__all__ = ["headline", "log_line", "problem_summary", "render"]

#: Width the report aims to stay within.
WIDTH = 100
#: Longest name shown in a table cell; longer ones keep their start and end.
NAME_LIMIT = 72
#: Most rows shown per section of the report (problems) and per list in the error message.
PROBLEM_ROWS = 20
#: Most rows shown per section for actions that are not problems.
OTHER_ROWS = 10
#: Most error-message rows per kind of problem.
MESSAGE_ROWS = 10
#: Loaded keys are listed row by row only when they fold into at most this many rows.
LOAD_ROWS = 6


# --------------------------------------------------------------------------------------------------- cells


def _name(text: str) -> str:
    """A name for a table cell: escaped, and cut in the middle past :data:`NAME_LIMIT` characters."""
    text = printable(text)
    if len(text) <= NAME_LIMIT:
        return text
    keep = NAME_LIMIT - 3
    return text[: keep - keep // 3] + "..." + text[-(keep // 3) :]


def _shape(shape: tuple[int, ...] | None) -> str:
    return "?" if shape is None else str(tuple(shape))


def _numel(shape: tuple[int, ...] | None) -> int:
    n = 1
    for d in shape or ():
        n *= d
    return n


def _more(count: int, indent: str = "  ") -> str:
    return f"{indent}... and {count} more"


def _fold_rows(items: Iterable[tuple[str, tuple[str, ...]]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """Fold names whose other columns are identical: ``(name, columns)`` -> ``(pattern, count, columns)``.

    Rows come in the order of their first member.
    """
    groups: dict[tuple[str, ...], list[str]] = {}
    order: dict[str, int] = {}
    for name, cols in items:
        order.setdefault(name, len(order))
        groups.setdefault(cols, []).append(name)
    rows: list[tuple[int, str, int, tuple[str, ...]]] = []
    for cols, names in groups.items():
        for pattern, members in fold_names(names):
            rows.append((order[members[0]], pattern, len(members), cols))
    rows.sort(key=lambda r: r[0])
    return [(pattern, count, cols) for _, pattern, count, cols in rows]


def _wrap(text: str, indent: str = "  ", width: int = WIDTH) -> list[str]:
    return textwrap.wrap(
        text, width=width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    ) or [indent.rstrip()]


def _and(parts: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _strict(value: object) -> str:
    return repr(value)


# --------------------------------------------------------------------------------------------------- render


def render(report: LoadReport) -> str:
    """The terminal report: header, then one section per kind of action, problems first (ends with a newline)."""
    plan = report.plan
    lines = _table(_header(report), indent="", sep="  ")
    for section in (
        _meta_section,
        _mismatch_section,
        _missing_section,
        _unexpected_section,
        _skip_section,
        _default_section,
        _init_section,
        _tied_section,
        _extra_section,
        _cast_section,
        _rename_section,
        _load_section,
        _ignored_section,
    ):
        body = section(report)
        if body:
            lines += ["", *body]
    if report.problems or report.left_on_meta or plan.suggestion is not None:
        advice = advise(plan)
        if advice.hints or advice.changes:
            lines += ["", "to fix"]
            for hint in advice.hints:
                lines += _wrap(_hint_text(hint, plan))
            if advice.changes:
                lines += _wrap(_sentence(advice, call=False) + ":")
                lines += _wrap(_call(advice), indent="    ")
                lines += _wrap("CLI: " + " ".join(_flags(advice)), indent="    ")
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[Sequence[str]], indent: str = "  ", sep: str = "  ", right: Iterable[int] = ()) -> list[str]:
    return table(rows, right=right, indent=indent, sep=sep)


def _header(report: LoadReport) -> list[list[str]]:
    plan = report.plan
    rows: list[list[str]] = [["source", printable(plan.source)], ["model", printable(plan.model)]]
    rows += _multiline("result", headline(report))
    options = _options(plan)
    if options:
        rows.append(["options", options])
    rows += _multiline("container", plan.container.reason)
    rows.append(["prefix", plan.prefix.evidence])
    applied = [a for a in plan.applied if a != plan.prefix.evidence]
    for i, item in enumerate(applied):
        rows += _multiline("rules" if i == 0 else "", item)
    rows.append(["keys", _keys(plan)])
    rows.append(["totals", _totals(report)])
    fallback = _fallback(report)
    if fallback:
        rows += _multiline("fallback", fallback)
    for i, note in enumerate(report.notes):
        rows += _multiline("notes" if i == 0 else "", printable(str(note)))
    return rows


def _multiline(label: str, text: str) -> list[list[str]]:
    """A header row whose value wraps onto continuation rows (values start after an 11-column label)."""
    parts = textwrap.wrap(text, width=WIDTH - 11, break_on_hyphens=False) or [""]
    return [[label if i == 0 else "", part] for i, part in enumerate(parts)]


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
    strict = f"strict={_strict(plan.rules.strict)}"
    total, loaded, fates = _fates(report)
    outside = [a for a in plan.actions if a.target is None and a.kind in ("unexpected", "skip")]
    if problems:
        counts = Counter[str](a.kind for a in problems)
        words = {"mismatch": "mismatched", "missing": "missing", "unexpected": "unexpected"}
        parts = [f"{counts[k]} {words[k]}" for k in words if counts[k]]
        meta = set(report.left_on_meta)
        stays = sum(1 for a in problems if a.target in meta)
        if stays:
            parts.append(f"{stays} would stay on the meta device")
        return f"FAILED: {', '.join(parts)} ({strict}); the model was not changed"
    loads = f"loaded {loaded} of {total}" if report.applied else f"would load {loaded} of {total}"
    parts = [loads, *_fate_text(fates)]
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
    text = "; ".join(parts)
    if not report.applied:
        return f"DRY RUN ({strict}): {text}; the model was not changed"
    if report.left_on_meta:
        n = len(report.left_on_meta)
        return f"INCOMPLETE: {text}; the model cannot run until {_these(n)} on the meta device {_has(n)} values"
    lenient = plan.rules.strict is not True and any(
        a.kind in ("missing", "mismatch", "unexpected") for a in plan.actions
    )
    return f"OK ({strict}): {text}" if lenient else f"OK: {text}"


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
    if plan.suggestion is not None:
        pairs = plan.suggestion.rules.rename[len(plan.rules.rename) :]
        parts.append("rename={" + ", ".join(f"{_py(p)}: {_py(r)}" for p, r in pairs) + "} would load more")
    return "; ".join(parts) + ". print(report) lists every key."


def _few(names: Sequence[str], limit: int = 3) -> str:
    folded = [pattern for pattern, _ in fold_names(names)]
    shown = ", ".join(printable(n) for n in folded[:limit])
    return shown + (f" and {len(folded) - limit} more" if len(folded) > limit else "")


def _options(plan: Plan) -> str:
    """The rules the caller set that differ from the defaults, as keyword arguments."""
    rules = plan.rules
    parts = []
    if rules.strict is not True:
        parts.append(f"strict={_strict(rules.strict)}")
    if rules.container != "auto":
        parts.append(f"container={quote(rules.container)}")
    if rules.prefix != "auto":
        parts.append(f"prefix={'None' if rules.prefix is None else quote(rules.prefix)}")
    if rules.rename:
        parts.append("rename={" + ", ".join(f"{p!r}: {r!r}" for p, r in rules.rename) + "}")
    if rules.skip:
        parts.append("skip=[" + ", ".join(quote(s) for s in rules.skip) + "]")
    if rules.on_mismatch != "error":
        parts.append(f"on_mismatch={quote(rules.on_mismatch)}")
    if rules.dtype != "model":
        parts.append(f"dtype={quote(rules.dtype)}")
    if not rules.legacy_renames:
        parts.append("legacy_renames=False")
    return ", ".join(parts)


def _keys(plan: Plan) -> str:
    model = sum(1 for a in plan.actions if a.target is not None)
    ckpt = sum(1 for a in plan.actions if a.source is not None)
    counts = plan.counts()
    kinds = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    return f"{model} in the model, {ckpt} in the checkpoint: {kinds or 'nothing'}"


def _totals(report: LoadReport) -> str:
    loaded = report.loaded
    params = sum(_numel(a.dst_shape) for a in loaded)
    text = f"{plural(len(loaded), 'tensor')}, {human_count(params)} parameters"
    if report.applied:
        return f"{text}, {human_bytes(report.bytes_read)} read in {report.seconds:.2f} s"
    return f"{text}, {human_bytes(_planned_bytes(loaded))} to read; planned in {report.seconds:.2f} s"


def _planned_bytes(loaded: Sequence[Action]) -> int:
    from .. import dtypes

    total = 0
    for a in loaded:
        try:
            total += _numel(a.src_shape) * dtypes.itemsize(a.src_dtype or "float32")
        except KeyError:  # a dtype this version does not know: counted as unknown size
            continue
    return total


def _fallback(report: LoadReport) -> str:
    if report.fallback_modules:
        names = ", ".join(quote(m or "<root>") for m in report.fallback_modules)
        return f"loaded through torch's load_state_dict (custom loading code): {names}"
    n = sum(1 for a in report.plan.actions if a.fallback and a.kind == "load")
    if n:
        return f"{plural(n, 'key')} load through torch's load_state_dict (modules with custom loading code)"
    return ""


def _section(title: str, rows: list[list[str]], limit: int, right: Iterable[int] = ()) -> list[str]:
    lines = [title, *_table(rows[:limit], right=right)]
    if len(rows) > limit:
        lines.append(_more(len(rows) - limit))
    return lines


def _hoist(actions: Sequence[Action], reason: Callable[[Action], str]) -> str | None:
    """The reason shared by every action, or None when they differ."""
    reasons = {reason(a) for a in actions}
    return reasons.pop() if len(reasons) == 1 else None


def _title(label: str, count: int, note: str = "") -> str:
    return f"{label} ({count})" + (f": {note}" if note else "")


def _meta_section(report: LoadReport) -> list[str]:
    names = report.left_on_meta
    if not names:
        return []
    plan = report.plan
    by_target = {a.target: a for a in plan.actions if a.target is not None}
    method = {name: init.method for init in plan.initialise for name in init.tensors}
    items = []
    for name in names:
        action = by_target.get(name)
        if action is None:
            why = "not saved by state_dict() (persistent=False)"
        else:
            why = {"skip": "skipped", "missing": "missing", "mismatch": "shape mismatch"}.get(action.kind, action.kind)
        if name in method:
            how = f"{method[name]}() can initialise it" if method[name] else "its module has no reset_parameters()"
        elif action is None:
            how = "no checkpoint holds it: compute it after loading, or build it off the meta device"
        else:
            how = ""
        items.append((name, (why, how) if how else (why,)))
    rows = [[_name(p), *cols] for p, _, cols in _fold_rows(items)]
    verb = "left" if report.applied else "would stay"
    note = "no values: the model cannot run until they have some"
    return _section(_title(f"{verb} on the meta device", len(names), note), rows, PROBLEM_ROWS)


def _init_section(report: LoadReport) -> list[str]:
    plan = report.plan
    if not plan.rules.init_missing:
        return []
    inits = [i for i in plan.initialise if i.method]
    if not inits:
        return []
    items = [(name, (f"{i.method}() of {quote(i.module or '<root>')}",)) for i in inits for name in i.tensors]
    rows = [[_name(p), *cols] for p, _, cols in _fold_rows(items)]
    verb = "initialised" if report.applied else "to initialise"
    return _section(_title(verb, len(items), "no tensor in the checkpoint (init_missing=True)"), rows, OTHER_ROWS)


def _mismatch_section(report: LoadReport) -> list[str]:
    actions = report.plan.by_kind("mismatch")
    if not actions:
        return []
    note = "" if any(a.kind == "mismatch" for a in report.problems) else "not loaded (strict=False)"
    rows = _mismatch_rows(actions)
    return _section(_title("shape mismatch", len(actions), note), rows, PROBLEM_ROWS)


def _mismatch_rows(actions: Sequence[Action]) -> list[list[str]]:
    items = [(a.target or "", (f"checkpoint {_shape(a.src_shape)}", f"model {_shape(a.dst_shape)}")) for a in actions]
    return [[_name(p), *cols] for p, _, cols in _fold_rows(items)]


def _missing_section(report: LoadReport) -> list[str]:
    actions = report.plan.by_kind("missing")
    if not actions:
        return []
    note = "no tensor in the checkpoint"
    meta = set(report.left_on_meta) | set(report.plan.initialised)
    if not any(a.kind == "missing" for a in report.problems) and not any(a.target in meta for a in actions):
        note += f"; kept as initialised (strict={_strict(report.plan.rules.strict)})"
    return _section(_title("missing", len(actions), note), _missing_rows(actions), PROBLEM_ROWS)


def _missing_rows(actions: Sequence[Action]) -> list[list[str]]:
    items = [
        (a.target or "", (f"model {_shape(a.dst_shape)}" if a.dst_shape is not None else "extra state",))
        for a in actions
    ]
    return [[_name(p), *cols] for p, _, cols in _fold_rows(items)]


def _unexpected_section(report: LoadReport) -> list[str]:
    actions = report.plan.by_kind("unexpected")
    if not actions:
        return []
    note = "no model key matches"
    if not any(a.kind == "unexpected" for a in report.problems):
        note += f"; not loaded (strict={_strict(report.plan.rules.strict)})"
    return _section(_title("unexpected", len(actions), note), _unexpected_rows(actions), PROBLEM_ROWS)


def _unexpected_rows(actions: Sequence[Action]) -> list[list[str]]:
    items = [(a.key or a.source or "", (f"checkpoint {_shape(a.src_shape)}",)) for a in actions]
    return [[_name(p), *cols] for p, _, cols in _fold_rows(items)]


def _reasoned_section(label: str, actions: Sequence[Action], note: str = "") -> list[str]:
    """Rows of ``name  reason [shapes]``; a reason shared by every row moves into the title."""
    if not actions:
        return []
    shared = _hoist(actions, lambda a: a.reason)
    items = []
    for a in actions:
        cols: tuple[str, ...] = () if shared is not None else (printable(a.reason),)
        if a.src_shape is not None and a.dst_shape is not None and a.src_shape != a.dst_shape:
            cols += (f"checkpoint {_shape(a.src_shape)}", f"model {_shape(a.dst_shape)}")
        items.append((a.target or a.key or a.source or "", cols))
    rows = [[_name(p), *cols] for p, _, cols in _fold_rows(items)]
    title_note = "; ".join(x for x in (note, printable(shared) if shared else "") if x)
    return _section(_title(label, len(actions), title_note), rows, OTHER_ROWS)


def _skip_section(report: LoadReport) -> list[str]:
    return _reasoned_section("skipped", report.plan.by_kind("skip"))


def _default_section(report: LoadReport) -> list[str]:
    return _reasoned_section("default", report.plan.by_kind("default"))


def _tied_section(report: LoadReport) -> list[str]:
    return _reasoned_section("tied", report.plan.by_kind("tied"))


def _extra_section(report: LoadReport) -> list[str]:
    return _reasoned_section("extra state restored", report.plan.by_kind("extra"))


def _cast_section(report: LoadReport) -> list[str]:
    casts = [a for a in report.loaded if a.cast]
    if not casts:
        return []
    counts = Counter((a.src_dtype or "?", a.dst_dtype or "?") for a in casts)
    rows = [[f"{src} -> {dst}", plural(n, "tensor")] for (src, dst), n in counts.items()]
    return _section(_title("cast", len(casts)), rows, OTHER_ROWS)


def _rename_label(a: Action) -> str:
    labels = [v for v in a.via if v not in ("prefix", "reshape")]
    return "; ".join("user rename" if v == "rename" else v.replace("legacy rename: ", "legacy: ") for v in labels)


def _rename_section(report: LoadReport) -> list[str]:
    renamed = [a for a in report.plan.actions if a.target and a.key and _rename_label(a)]
    if not renamed:
        return []
    shared = _hoist(renamed, _rename_label)
    # Fold the model names, then check that the checkpoint names of each folded row fold into one pattern too.
    by_cols: dict[str, list[Action]] = {}
    for a in renamed:
        by_cols.setdefault("" if shared is not None else _rename_label(a), []).append(a)
    rows: list[tuple[int, list[str]]] = []
    order = {id(a): i for i, a in enumerate(renamed)}
    for label, group in by_cols.items():
        key_of = {a.target: a.key for a in group}
        first = {a.target: order[id(a)] for a in group}
        for pattern, members in fold_names(a.target or "" for a in group):
            keys = fold_names(key_of[m] or "" for m in members)
            pairs = [(keys[0][0], pattern)] if len(keys) == 1 else [(key_of[m] or "", m) for m in members]
            for key, target in pairs:
                rows.append((first[members[0]], [_name(key), "->", _name(target), *([label] if label else [])]))
    rows.sort(key=lambda r: r[0])
    return _section(_title("renamed", len(renamed), shared or ""), [r for _, r in rows], OTHER_ROWS)


def _load_section(report: LoadReport) -> list[str]:
    loaded = report.loaded
    if not loaded:
        return []
    label = "loaded" if report.applied else "to load"
    items = []
    for a in loaded:
        dtype = a.dst_dtype or "?" if not a.cast else f"{a.src_dtype} -> {a.dst_dtype}"
        items.append((a.target or "", (_shape(a.dst_shape), dtype)))
    folded = _fold_rows(items)
    if len(folded) <= LOAD_ROWS:
        return _section(_title(label, len(loaded)), [[_name(p), *cols] for p, _, cols in folded], LOAD_ROWS)
    lines = [_title(label, len(loaded))]
    wrapped = _wrap(", ".join(_top_groups([a.target or "" for a in loaded])))
    return lines + (wrapped if len(wrapped) <= 4 else [*wrapped[:4], "  ..."])


def _top_groups(names: Sequence[str]) -> list[str]:
    """``blocks.{0..11} (144)``, ``patch_embed (2)``, ``cls_token``: counts per top-level name, with the layer
    indices right below a name folded. A name holding most keys is opened one level (``model.layers.{0..31}``,
    ``model.norm``, ``lm_head`` rather than ``model (290)``, ``lm_head``)."""
    split = [tuple(name.split(".")) for name in names]
    total = len(split)

    def children(prefix: tuple[str, ...]) -> list[str]:
        n = len(prefix)
        return [parts[n] for parts in split if len(parts) > n and parts[:n] == prefix]

    groups: list[tuple[str, ...]] = list(dict.fromkeys(parts[:1] for parts in split))
    for _ in range(3):
        counts = Counter(next(g for g in groups if parts[: len(g)] == g) for parts in split)
        big = max(groups, key=lambda g: counts[g])
        below = children(big)
        if counts[big] * 2 <= total or len(set(below)) < 2 or all(is_index(c) for c in below):
            break
        at = groups.index(big)
        opened = list(dict.fromkeys((*big, c) for c in below))
        if big in split:  # a key named exactly like the group stays a row of its own
            opened.insert(0, big)
        groups[at : at + 1] = opened
    counts = Counter(next(g for g in groups if parts[: len(g)] == g) for parts in split)
    out = []
    for group in groups:
        n = counts[group]
        if n == 1:  # one key: its whole name says more than a count
            out.append(printable(".".join(next(parts for parts in split if parts[: len(group)] == group))))
            continue
        label = printable(".".join(group))
        below = children(group)
        if below and len(below) == n and all(is_index(c) for c in below):
            label += "." + format_indices(int(c) for c in below)
        out.append(f"{label} ({n})")
    return out


def _ignored_section(report: LoadReport) -> list[str]:
    actions = report.plan.by_kind("ignored")
    if not actions:
        return []
    groups: dict[str, list[str]] = {}
    for a in actions:
        name = a.source or ""
        groups.setdefault(name.split(".", 1)[0], []).append(name)
    rows = []
    for members in groups.values():
        if len(members) == 1:
            rows.append([plural(1, "tensor"), quote(_name(members[0]))])
        else:
            rows.append([plural(len(members), "tensor"), f"under {quote(_name(_common_prefix(members)))}"])
    note = _hoist(actions, lambda a: a.reason) or ""
    return _section(_title("ignored", len(actions), printable(note)), rows, OTHER_ROWS, right=[0])


def _common_prefix(names: Sequence[str]) -> str:
    """The dotted components all ``names`` share, index components compared as wildcards and shown folded."""
    split = [n.split(".") for n in names]
    shortest = min(len(parts) for parts in split)
    out: list[str] = []
    for i in range(shortest):
        column = [parts[i] for parts in split]
        if all(is_index(c) for c in column):
            out.append(format_indices(int(c) for c in column))
        elif len(set(column)) == 1:
            out.append(column[0])
        else:
            break
    if len(out) == shortest and len(set(names)) > 1:
        out = out[:-1]  # every name is the prefix of another: show their parent
    return ".".join(out) or names[0].split(".", 1)[0]


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
        shown = _and([f"{quote(p)} -> {quote(r)}" for p, r in hint.pairs])
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
            f"{_and([quote(m) for m in stuck[:4]])}{' and others' if len(stuck) > 4 else ''} "
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
    if advice.new_skips:
        new = advice.new_skips
        shown = _and([quote(p) for p in new]) if len(new) <= 3 else f"the {len(new)} patterns"
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
    if advice.rename is not None:
        text = "To load them under their model names"
    elif advice.strict is False:
        text = "To load whatever fits and keep every other model key as initialised"
    else:
        text = lead or _LEAD
    does = _effects(advice)
    if len(does) == 1:
        text = f"{text} and {does[0]}"
    elif does:
        text = f"{text}, {_and(does)}"
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
            "mismatch": _mismatch_rows,
            "missing": _missing_rows,
            "unexpected": _unexpected_rows,
            "skip": _missing_rows,
        }[kind](actions)
        out = _table(made[:MESSAGE_ROWS], indent=indent, sep="   ")
        if len(made) > MESSAGE_ROWS:
            out.append(_more(len(made) - MESSAGE_ROWS, indent))
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
