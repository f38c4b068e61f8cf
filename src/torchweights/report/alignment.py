"""The words for ``align="auto"`` and adapters (``adapt=[...]``) in the load report: the header line, the
``aligned``, ``ambiguous`` and ``adapted`` sections, the headline's phrase, the ``ambiguous-alignment`` error text
and the notebook card's tables.

Only reads the plan (:attr:`~torchweights.plan.model.Plan.alignment`, :attr:`~torchweights.plan.model.Action.adapt`)
and words it; decides nothing. Names from the file are escaped (:func:`~torchweights.text.printable`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..fold import fold_names
from ..text import plural, printable, quote, wrap
from .cells import more, name_cell, table_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..plan.model import Action, AlignedPair, Alignment, AmbiguousGroup, Plan
    from .html import Table
    from .load import LoadReport

__all__ = [
    "adapted",
    "adapted_section",
    "aligned_keys",
    "aligned_section",
    "alignment_line",
    "ambiguity_fix",
    "ambiguity_text",
    "ambiguous_section",
    "headline_phrase",
    "html_tables",
    "is_adapted",
    "is_aligned",
    "settling_rename",
    "unequal_lines",
]


def is_aligned(action: Action) -> bool:
    """Whether ``align="auto"`` paired this key (its ``via`` says ``align``)."""
    return "align" in action.via


def is_adapted(via: str) -> bool:
    """Whether a ``via`` label names an adapter (``adapt: input_conv``)."""
    return via.startswith("adapt")


def aligned_keys(plan: Plan) -> list[Action]:
    """The model keys loaded (or tied) through a pair that ``align="auto"`` made."""
    return [a for a in plan.actions if a.kind in ("load", "tied") and a.target is not None and is_aligned(a)]


def adapted(plan: Plan) -> list[Action]:
    """The model keys loaded through an adapter, in plan order."""
    return [a for a in plan.actions if a.adapt is not None and a.target is not None and a.kind == "load"]


def headline_phrase(plan: Plan) -> str:
    """What the result line adds after ``loaded X of Y``: ``(122 aligned, confidence 0.86; 1 adapted)``, or ``""``."""
    parts = []
    alignment = plan.alignment
    n = len(aligned_keys(plan))
    if alignment is not None and n:
        parts.append(f"{n} aligned, confidence {alignment.confidence:.2f}")
    m = len(adapted(plan))
    if m:
        parts.append(f"{m} adapted")
    return f"({'; '.join(parts)})" if parts else ""


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def alignment_line(alignment: Alignment) -> str:
    """The header row of the report: what ``align="auto"`` did, in one sentence."""
    src, dst = alignment.considered
    if alignment.note:
        return printable(alignment.note)
    if not alignment.pairs and not alignment.ambiguous:
        return f"nothing to align ({src} checkpoint and {dst} model keys left unmatched by name)"
    text = (
        f"paired {alignment.aligned} of {dst} unmatched model keys "
        f"({plural(len(alignment.pairs), 'pair')}, confidence {alignment.confidence:.2f}) in "
        f"{_seconds(alignment.seconds)}"
    )
    if alignment.ambiguous:
        text += f"; {plural(len(alignment.ambiguous), 'group')} only a guess could pair (not loaded)"
    if alignment.unequal:
        text += f"; {plural(len(alignment.unequal), 'group')} of other numbers on each side (not paired)"
    return text


def unequal_lines(alignment: Alignment) -> list[str]:
    """One paragraph per group of modules of the same shapes left unpaired because their numbers differ."""
    lines: list[str] = []
    for sources, targets in alignment.unequal:
        lines += wrap(
            f"not paired: {plural(len(sources), 'checkpoint module')} {_names(sources)} and "
            f"{plural(len(targets), 'model module')} {_names(targets)} have the same shapes but not the same "
            "number (a block added or removed?): which correspond cannot be told, so none is loaded. Pair them "
            "with rename={...} if you know.",
            indent="  ",
            hang="    ",
        )
    return lines


def _fold_pairs(pairs: Sequence[AlignedPair]) -> list[tuple[str, str, int, AlignedPair]]:
    """``(source pattern, target pattern, tensors, first pair)``: pairs with the same confidence and evidence whose
    sources and targets both fold into one pattern (``blocks.{0..11}.fc -> layers.{0..11}.linear``) are one row."""
    groups: dict[tuple[float, str, bool], list[AlignedPair]] = {}
    for pair in pairs:
        groups.setdefault((pair.confidence, pair.evidence, pair.tensor), []).append(pair)
    order = {id(p): i for i, p in enumerate(pairs)}
    rows: list[tuple[int, tuple[str, str, int, AlignedPair]]] = []
    for group in groups.values():
        by_source = {p.source: p for p in group}
        for pattern, members in fold_names(by_source):
            chosen = [by_source[m] for m in members]
            targets = fold_names(p.target for p in chosen)
            if len(targets) == 1:
                keys = sum(p.keys for p in chosen)
                rows.append((order[id(chosen[0])], (pattern, targets[0][0], keys, chosen[0])))
            else:
                rows += [(order[id(p)], (p.source, p.target, p.keys, p)) for p in chosen]
    rows.sort(key=lambda r: r[0])
    return [row for _, row in rows]


def aligned_section(plan: Plan, limit: int | None) -> list[str]:
    """``aligned (N pairs)``: every pair, checkpoint module -> model module, with its tensors, confidence and
    evidence (folded over layer indices); or why nothing was aligned."""
    alignment = plan.alignment
    if alignment is None:
        return []
    if not alignment.pairs:
        if alignment.note:
            return [f"aligned (0): {alignment_line(alignment)}"]
        return ["aligned (0)", *unequal_lines(alignment)] if alignment.unequal else []
    rows = [
        [
            name_cell(source),
            "->",
            name_cell(target),
            plural(keys, "tensor"),
            f"{pair.confidence:.2f}",
            printable(pair.evidence),
        ]
        for source, target, keys, pair in _fold_pairs(alignment.pairs)
    ]
    title = (
        f"aligned ({plural(len(alignment.pairs), 'pair')}): checkpoint -> model, by structure; confidence "
        f"{alignment.confidence:.2f} overall"
    )
    lines = _unfolded(rows, limit, lambda r: (f"{r[0]} -> {r[2]}", f"{r[3]}, confidence {r[4]}: {r[5]}"), [3])
    return [title, *lines, *unequal_lines(alignment)]


def _cut(rows: list[list[str]], limit: int | None, right: Sequence[int] = ()) -> list[str]:
    shown = rows if limit is None else rows[:limit]
    lines = table_rows(shown, right=right)
    if len(rows) > len(shown):
        lines.append(more(len(rows) - len(shown)))
    return lines


def _names(paths: Sequence[str]) -> str:
    return ", ".join(quote(pattern) for pattern, _ in fold_names(paths))


def ambiguous_section(plan: Plan, limit: int | None) -> list[str]:
    """``ambiguous (N groups)``: each group of modules only declaration order could pair, with why."""
    groups = plan.ambiguous
    if not groups:
        return []
    rows: list[list[str]] = []
    for group in groups:
        rows += [["checkpoint", _names(group.sources)], ["model", _names(group.targets)], ["", printable(group.reason)]]
    title = (
        f"ambiguous ({plural(len(groups), 'group')}): only declaration order could pair them; nothing of them loaded"
    )
    return [title, *_cut(rows, None if limit is None else 3 * limit)]


def adapted_section(plan: Plan, limit: int | None) -> list[str]:
    """``adapted (N)``: each key loaded through an adapter (folded over layer indices), with the adapter, what it
    did and the checkpoint tensors it was made from."""
    actions = adapted(plan)
    if not actions:
        return []
    groups: dict[tuple[str, str], list[Action]] = {}
    for a in actions:
        step = a.adapt
        assert step is not None
        groups.setdefault((step.adapter, step.detail), []).append(a)
    order = {id(a): i for i, a in enumerate(actions)}
    rows: list[tuple[int, list[str]]] = []
    for (adapter, detail), group in groups.items():
        by_target = {a.target or "": a for a in group}
        for pattern, members in fold_names(by_target):
            chosen = [by_target[m] for m in members]
            sources = _fold_sources(chosen)
            if sources is None:
                items = [(a.target or "", list(a.adapt.sources if a.adapt else ())) for a in chosen]
            else:
                items = [(pattern, sources)]
            for target, srcs in items:
                row = [name_cell(target), adapter, printable(detail), "from " + ", ".join(name_cell(s) for s in srcs)]
                rows.append((order[id(chosen[0])], row))
    rows.sort(key=lambda r: r[0])
    title = f"adapted ({len(actions)}): loaded through adapters (adapt=[...])"
    return [title, *_unfolded([r for _, r in rows], limit, lambda r: (f"{r[0]} <- {r[3][5:]}", f"{r[1]}: {r[2]}"))]


def _unfolded(
    rows: list[list[str]], limit: int | None, split: Callable[[list[str]], tuple[str, str]], right: Sequence[int] = ()
) -> list[str]:
    """Rows as a table whose names are never folded (which is which is the point); when that is wider than the
    style's width, each row as two lines (``split``: its names, then the rest under them)."""
    from .. import style  # (laying text out is not on the load path)

    shown = rows if limit is None else rows[:limit]
    lines = table_rows(shown, right=right, shrink=())
    width = style.current().width
    if width is not None and any(len(line) > width for line in lines):
        lines = []
        for row in shown:
            names, rest = split(row)
            lines += wrap(names, indent="  ", hang="      ")
            lines += wrap(rest, indent="      ", hang="      ")
    if len(rows) > len(shown):
        lines.append(more(len(rows) - len(shown)))
    return lines


def _fold_sources(actions: Sequence[Action]) -> list[str] | None:
    """The sources of ``actions`` folded position by position, or None when one position does not fold into one
    pattern."""
    steps = [a.adapt for a in actions if a.adapt is not None]
    if len(steps) != len(actions) or len({len(s.sources) for s in steps}) != 1:
        return None
    out = []
    for i in range(len(steps[0].sources)):
        folded = fold_names(s.sources[i] for s in steps)
        if len(folded) != 1:
            return None
        out.append(folded[0][0])
    return out


def settling_rename(groups: Sequence[AmbiguousGroup]) -> dict[str, str]:
    """The ``rename`` that would settle every ambiguous group (declaration order: to check before passing it);
    empty when a group has none (its order is unknown, or it is too long to check by eye)."""
    rename: dict[str, str] = {}
    for group in groups:
        if not group.rename:
            return {}
        rename.update(group.rename)
    return rename


def ambiguity_text(report: LoadReport) -> str:
    """The ``ambiguous-alignment`` error text: each group ``align="auto"`` could pair only by guessing, and the
    ``rename`` that would settle them all."""
    plan = report.plan
    groups = plan.ambiguous
    lines = [
        f"{quote(plan.source)} does not fit {printable(plan.model)} without a guess: align='auto' found "
        f"{plural(len(groups), 'group')} of modules of the same shapes that only declaration order could pair. "
        "Nothing was loaded; the model was not changed."
    ]
    for i, group in enumerate(groups, 1):
        lines.append(f"  {i}. checkpoint {_names(group.sources)}")
        lines.append(f"     model      {_names(group.targets)}")
        lines.append(f"     ({printable(group.reason)})")
    lines.append("Fix: " + ambiguity_fix(plan))
    return "\n".join(lines)


def ambiguity_fix(plan: Plan) -> str:
    """What settles the ambiguous groups: the ``rename`` in declaration order, to check, or (when the file's order
    is lost or a group is too long) a rename to write."""
    rename = settling_rename(plan.ambiguous)
    if rename:
        return (
            "check that these renames pair them as you mean (they follow declaration order), then pass them with "
            f"align='auto': rename={printable(repr(rename))}"
        )
    return (
        "write rename={...} for these modules yourself (checkpoint name -> model name; nothing here tells their "
        "order) and pass it with align='auto'."
    )


def html_tables(plan: Plan) -> list[Table]:
    """The notebook card's tables: the aligned pairs, the ambiguous groups and the adapted keys (empty ones left
    out; the card escapes every cell)."""
    from .html import Table

    tables = []
    alignment = plan.alignment
    if alignment is not None and alignment.pairs:
        rows = [[p.source, p.target, p.keys, f"{p.confidence:.2f}", p.evidence] for p in alignment.pairs]
        caption = f"aligned ({len(alignment.pairs)} pairs, confidence {alignment.confidence:.2f})"
        headers = ("checkpoint", "model", "tensors", "confidence", "evidence")
        tables.append(Table(caption, headers, rows, numeric=frozenset({2, 3})))
    if plan.ambiguous:
        rows = [[", ".join(g.sources), ", ".join(g.targets), g.reason] for g in plan.ambiguous]
        tables.append(Table("ambiguous (not loaded)", ("checkpoint", "model", "why"), rows))
    steps = [(a, a.adapt) for a in adapted(plan)]
    if steps:
        rows = [[a.target or "", s.adapter, s.detail, ", ".join(s.sources)] for a, s in steps if s is not None]
        tables.append(Table("adapted", ("model key", "adapter", "detail", "from"), rows))
    return tables
