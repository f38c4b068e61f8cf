"""The sections of the load report (:func:`~torchweights.report.text.render`), one per kind of action: names folded
(``blocks.{0..11}.mlp.fc1.weight``), a reason shared by every row moved into the title, long sections cut.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..fold import fold_names, format_indices, is_index
from ..text import plural, printable, quote, wrap

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.model import Action
    from .load import LoadReport
from .alignment import adapted_section, aligned_section, ambiguous_section, is_adapted
from .cells import fold_rows, more, name_cell, shape_cell, strict_text, table_rows

__all__ = ["OTHER_ROWS", "PROBLEM_ROWS", "mismatch_rows", "missing_rows", "sections", "unexpected_rows"]

#: Most rows shown per section of the report (problems) and per list in the error message.
PROBLEM_ROWS = 20
#: Most rows shown per section for actions that are not problems.
OTHER_ROWS = 10
#: Loaded keys are listed row by row only when they fold into at most this many rows.
LOAD_ROWS = 6


def sections(report: LoadReport, *, full: bool = False) -> list[str]:
    """Every section of the report after its header, in order (problems first), each after a blank line; ``full``
    (the CLI's ``-v``) cuts no section short."""
    lines: list[str] = []
    for section in (
        _meta_section,
        _ambiguous_section,
        _mismatch_section,
        _missing_section,
        _unexpected_section,
        _skip_section,
        _default_section,
        _init_section,
        _tied_section,
        _extra_section,
        _cast_section,
        _aligned_section,
        _adapted_section,
        _rename_section,
        _load_section,
        _ignored_section,
    ):
        body = section(report, full)
        if body:
            lines += ["", *body]
    return lines


def _limit(rows: int, full: bool) -> int | None:
    """Most rows a section shows: ``rows``, or all of them (None) under ``full``."""
    return None if full else rows


def _section(title: str, rows: list[list[str]], limit: int | None, right: Iterable[int] = ()) -> list[str]:
    # a title with a hoisted reason can be long: it wraps with its continuation under the reason
    label, colon, _ = title.partition(": ")
    head = wrap(title, "", " " * (len(label) + len(colon))) if colon else [title]
    shown = rows if limit is None else rows[:limit]
    lines = [*head, *table_rows(shown, right=right)]
    if len(rows) > len(shown):
        lines.append(more(len(rows) - len(shown)))
    return lines


def _hoist(actions: Sequence[Action], reason: Callable[[Action], str]) -> str | None:
    """The reason shared by every action, or None when they differ."""
    reasons = {reason(a) for a in actions}
    return reasons.pop() if len(reasons) == 1 else None


def _title(label: str, count: int, note: str = "") -> str:
    return f"{label} ({count})" + (f": {note}" if note else "")


def _meta_section(report: LoadReport, full: bool = False) -> list[str]:
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
    rows = [[name_cell(p), *cols] for p, _, cols in fold_rows(items)]
    verb = "left" if report.applied else "would stay"
    note = "no values: the model cannot run until they have some"
    return _section(_title(f"{verb} on the meta device", len(names), note), rows, _limit(PROBLEM_ROWS, full))


def _init_section(report: LoadReport, full: bool = False) -> list[str]:
    plan = report.plan
    if not plan.rules.init_missing:
        return []
    inits = [i for i in plan.initialise if i.method]
    if not inits:
        return []
    items = [(name, (f"{i.method}() of {quote(i.module or '<root>')}",)) for i in inits for name in i.tensors]
    rows = [[name_cell(p), *cols] for p, _, cols in fold_rows(items)]
    verb = "initialised" if report.applied else "to initialise"
    return _section(
        _title(verb, len(items), "no tensor in the checkpoint (init_missing=True)"), rows, _limit(OTHER_ROWS, full)
    )


def _mismatch_section(report: LoadReport, full: bool = False) -> list[str]:
    actions = report.plan.by_kind("mismatch")
    if not actions:
        return []
    note = "" if any(a.kind == "mismatch" for a in report.problems) else "not loaded (strict=False)"
    rows = mismatch_rows(actions)
    return _section(_title("shape mismatch", len(actions), note), rows, _limit(PROBLEM_ROWS, full))


def mismatch_rows(actions: Sequence[Action]) -> list[list[str]]:
    """Rows ``name  checkpoint (shape)  model (shape)``, folded."""
    items = [
        (a.target or "", (f"checkpoint {shape_cell(a.src_shape)}", f"model {shape_cell(a.dst_shape)}")) for a in actions
    ]
    return [[name_cell(p), *cols] for p, _, cols in fold_rows(items)]


def _missing_section(report: LoadReport, full: bool = False) -> list[str]:
    actions = report.plan.by_kind("missing")
    if not actions:
        return []
    note = "no tensor in the checkpoint"
    meta = set(report.left_on_meta) | set(report.plan.initialised)
    if not any(a.kind == "missing" for a in report.problems) and not any(a.target in meta for a in actions):
        note += f"; kept as initialised (strict={strict_text(report.plan.rules.strict)})"
    return _section(_title("missing", len(actions), note), missing_rows(actions), _limit(PROBLEM_ROWS, full))


def missing_rows(actions: Sequence[Action]) -> list[list[str]]:
    """Rows ``name  model (shape)`` (or ``extra state``), folded."""
    items = [
        (a.target or "", (f"model {shape_cell(a.dst_shape)}" if a.dst_shape is not None else "extra state",))
        for a in actions
    ]
    return [[name_cell(p), *cols] for p, _, cols in fold_rows(items)]


def _unexpected_section(report: LoadReport, full: bool = False) -> list[str]:
    actions = report.plan.by_kind("unexpected")
    if not actions:
        return []
    note = "no model key matches"
    if not any(a.kind == "unexpected" for a in report.problems):
        note += f"; not loaded (strict={strict_text(report.plan.rules.strict)})"
    return _section(_title("unexpected", len(actions), note), unexpected_rows(actions), _limit(PROBLEM_ROWS, full))


def unexpected_rows(actions: Sequence[Action]) -> list[list[str]]:
    """Rows ``checkpoint name  checkpoint (shape)``, folded."""
    items = [(a.key or a.source or "", (f"checkpoint {shape_cell(a.src_shape)}",)) for a in actions]
    return [[name_cell(p), *cols] for p, _, cols in fold_rows(items)]


def _reasoned_section(label: str, actions: Sequence[Action], note: str = "", *, full: bool = False) -> list[str]:
    """Rows of ``name  reason [shapes]``; a reason shared by every row moves into the title."""
    if not actions:
        return []
    shared = _hoist(actions, lambda a: a.reason)
    items = []
    for a in actions:
        cols: tuple[str, ...] = () if shared is not None else (printable(a.reason),)
        if a.src_shape is not None and a.dst_shape is not None and a.src_shape != a.dst_shape:
            cols += (f"checkpoint {shape_cell(a.src_shape)}", f"model {shape_cell(a.dst_shape)}")
        items.append((a.target or a.key or a.source or "", cols))
    rows = [[name_cell(p), *cols] for p, _, cols in fold_rows(items)]
    title_note = "; ".join(x for x in (note, printable(shared) if shared else "") if x)
    return _section(_title(label, len(actions), title_note), rows, _limit(OTHER_ROWS, full))


def _skip_section(report: LoadReport, full: bool = False) -> list[str]:
    return _reasoned_section("skipped", report.plan.by_kind("skip"), full=full)


def _default_section(report: LoadReport, full: bool = False) -> list[str]:
    return _reasoned_section("default", report.plan.by_kind("default"), full=full)


def _tied_section(report: LoadReport, full: bool = False) -> list[str]:
    return _reasoned_section("tied", report.plan.by_kind("tied"), full=full)


def _extra_section(report: LoadReport, full: bool = False) -> list[str]:
    return _reasoned_section("extra state restored", report.plan.by_kind("extra"), full=full)


def _cast_section(report: LoadReport, full: bool = False) -> list[str]:
    casts = [a for a in report.loaded if a.cast]
    if not casts:
        return []
    counts = Counter((a.src_dtype or "?", a.dst_dtype or "?") for a in casts)
    rows = [[f"{src} -> {dst}", plural(n, "tensor")] for (src, dst), n in counts.items()]
    return _section(_title("cast", len(casts)), rows, _limit(OTHER_ROWS, full))


def _rename_label(a: Action) -> str:
    """The renames of a key in words; alignment and adapters are left out (their own sections list them)."""
    labels = [v for v in a.via if v not in ("prefix", "reshape", "align") and not is_adapted(v)]
    return "; ".join("user rename" if v == "rename" else v.replace("legacy rename: ", "legacy: ") for v in labels)


def _rename_section(report: LoadReport, full: bool = False) -> list[str]:
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
                rows.append((first[members[0]], [name_cell(key), "->", name_cell(target), *([label] if label else [])]))
    rows.sort(key=lambda r: r[0])
    return _section(_title("renamed", len(renamed), shared or ""), [r for _, r in rows], _limit(OTHER_ROWS, full))


def _aligned_section(report: LoadReport, full: bool = False) -> list[str]:
    return aligned_section(report.plan, _limit(PROBLEM_ROWS, full))


def _ambiguous_section(report: LoadReport, full: bool = False) -> list[str]:
    return ambiguous_section(report.plan, _limit(PROBLEM_ROWS, full))


def _adapted_section(report: LoadReport, full: bool = False) -> list[str]:
    return adapted_section(report.plan, _limit(OTHER_ROWS, full))


def _load_section(report: LoadReport, full: bool = False) -> list[str]:
    loaded = report.loaded
    if not loaded:
        return []
    label = "loaded" if report.applied else "to load"
    items = []
    for a in loaded:
        dtype = a.dst_dtype or "?" if not a.cast else f"{a.src_dtype} -> {a.dst_dtype}"
        items.append((a.target or "", (shape_cell(a.dst_shape), dtype)))
    folded = fold_rows(items)
    if full or len(folded) <= LOAD_ROWS:
        return _section(_title(label, len(loaded)), [[name_cell(p), *cols] for p, _, cols in folded], None)
    lines = [_title(label, len(loaded))]
    wrapped = wrap(", ".join(_top_groups([a.target or "" for a in loaded])))
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


def _ignored_section(report: LoadReport, full: bool = False) -> list[str]:
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
            rows.append([plural(1, "tensor"), quote(name_cell(members[0]))])
        else:
            rows.append([plural(len(members), "tensor"), f"under {quote(name_cell(_common_prefix(members)))}"])
    note = _hoist(actions, lambda a: a.reason) or ""
    return _section(_title("ignored", len(actions), printable(note)), rows, _limit(OTHER_ROWS, full), right=[0])


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
