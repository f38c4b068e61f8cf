"""HTML building shared by every report: escaping, tables, collapsible sections, notebook cards and whole pages.

Everything that comes from a file (tensor names, dtypes, paths, messages quoting them) is attacker-controlled: every
piece of text goes through :func:`esc` before it is placed in markup, and the markup here never loads anything
from elsewhere (no scripts, fonts, style sheets or images by address), so a page stays one self-contained file.

The notebook representations (``_repr_html_`` of :class:`~torchweights.report.load.LoadReport`, ``ScanReport``,
``DiffReport``, ``VerifyReport`` and ``ConvertReport``) are :func:`card`: a headline coloured by state, a few facts
and tables; :func:`page` wraps sections into a whole document (``torchweights report --html``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..structs import structure
from ..text import printable

if TYPE_CHECKING:  # annotations only
    from .load import LoadReport

__all__ = [
    "CARD_ROWS",
    "STATE_COLOURS",
    "STYLE",
    "Table",
    "card",
    "details",
    "esc",
    "facts",
    "headline",
    "page",
    "table",
]

#: Rows a notebook card shows per table before the rest folds into a collapsed ``<details>``.
CARD_ROWS = 12

#: Colours of the three states (also used by the plots, so that page and plots agree).
STATE_COLOURS = {"ok": "#1a7f37", "warn": "#9a6700", "bad": "#cf222e"}

#: The style of cards and pages, scoped to ``.tw`` so that it cannot restyle the notebook around a card.
STYLE = """
.tw{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:14px;color:#1f2328;line-height:1.45}
.tw h1{font-size:22px;margin:0 0 4px}.tw h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #d0d7de}
.tw .head{font-weight:600;padding:4px 8px;border-left:4px solid;background:#f6f8fa;margin:4px 0}
.tw .ok{border-color:#1a7f37;color:#1a7f37}.tw .warn{border-color:#9a6700;color:#9a6700}
.tw .bad{border-color:#cf222e;color:#cf222e}
.tw table{border-collapse:collapse;margin:4px 0}.tw caption{text-align:left;font-weight:600;padding:2px 0}
.tw th,.tw td{border:1px solid #d0d7de;padding:2px 6px;text-align:left;vertical-align:top}
.tw th{background:#f6f8fa}.tw td.n{text-align:right;font-variant-numeric:tabular-nums}
.tw tr.flag td{background:#ffebe9}.tw code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.tw dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:4px 0}.tw dt{color:#59636e}
.tw dd{margin:0}.tw details{margin:4px 0}.tw summary{cursor:pointer;color:#0969da}
.tw .plot svg{width:100%;max-width:1100px;height:auto}
.tw .plot .half{display:inline-block;vertical-align:top;width:49%}.tw .muted{color:#59636e}
"""


def esc(value: object) -> str:
    """``value`` as text safe inside HTML markup and attribute values: control characters escaped as the text
    reports escape them, then ``& < > " '`` as entities."""
    return html.escape(printable(str(value)), quote=True)


@structure(frozen=True)
class Table:
    """One table of a card or page: a caption, column headers and rows of plain text (escaped when rendered).

    Attributes:
        caption: the title above it.
        headers: the column headers.
        rows: the cells, one sequence per row.
        numeric: indices of columns aligned right (numbers).
        flagged: indices of rows to highlight (a finding is about them).
    """

    caption: str
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]
    numeric: frozenset[int] = frozenset()
    flagged: frozenset[int] = frozenset()


def table(t: Table, limit: int | None = None) -> str:
    """``t`` as an HTML table; past ``limit`` rows the rest follows in a collapsed ``<details>`` (every row is in
    the markup, so the page text names every tensor)."""
    if not t.rows:
        return ""
    head = "".join(f"<th>{esc(h)}</th>" for h in t.headers)

    def rows(start: int, stop: int) -> str:
        out = []
        for i in range(start, stop):
            cells = "".join(
                f'<td class="n">{esc(c)}</td>' if j in t.numeric else f"<td>{esc(c)}</td>"
                for j, c in enumerate(t.rows[i])
            )
            out.append(f'<tr class="flag">{cells}</tr>' if i in t.flagged else f"<tr>{cells}</tr>")
        return "".join(out)

    shown = len(t.rows) if limit is None else min(limit, len(t.rows))
    markup = f"<table><caption>{esc(t.caption)}</caption><tr>{head}</tr>{rows(0, shown)}</table>"
    if shown < len(t.rows):
        rest = len(t.rows) - shown
        markup += details(
            f"{rest} more rows", f"<table><tr>{head}</tr>{rows(shown, len(t.rows))}</table>", escaped=True
        )
    return markup


def details(summary: str, body: str, *, escaped: bool = False, open_: bool = False) -> str:
    """A collapsible section: ``summary`` (plain text) and ``body`` (markup when ``escaped``, else plain text)."""
    content = body if escaped else f"<p>{esc(body)}</p>"
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{content}</details>"


def facts(pairs: Iterable[tuple[str, object]]) -> str:
    """A definition list of ``(label, value)`` pairs (plain text)."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs)
    return f"<dl>{items}</dl>" if items else ""


def headline(state: str, text: str) -> str:
    """The coloured one-line verdict; ``state`` is ``ok``, ``warn`` or ``bad``."""
    return f'<div class="head {esc(state)}">{esc(text)}</div>'


def card(
    kind: str,
    state: str,
    summary: str,
    fact_pairs: Iterable[tuple[str, object]] = (),
    tables: Iterable[Table] = (),
    notes: Iterable[str] = (),
) -> str:
    """A report as a notebook shows it: ``kind`` (``LoadReport``), the summary line coloured by ``state``
    (``ok``, ``warn``, ``bad``), facts, tables (long ones folded) and notes."""
    parts = [
        f"<style>{STYLE}</style>",
        f'<div class="tw"><div class="muted">{esc(kind)}</div>',
        headline(state, summary),
        facts(fact_pairs),
        *(table(t, CARD_ROWS) for t in tables),
        *(f'<div class="muted">note: {esc(n)}</div>' for n in notes),
        "</div>",
    ]
    return "".join(parts)


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` (plain text) and ``body`` (markup). Inline style only; a Content Security
    Policy that forbids loading anything from anywhere, so no part of the page can fetch, run or phone home."""
    policy = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>body{{margin:24px;max-width:1200px}}{STYLE}</style></head>\n"
        f'<body class="tw">\n{body}\n</body></html>\n'
    )


def load_state(report: LoadReport) -> str:
    """The state a load report is shown in: ``bad`` when it does not fit, ``warn`` when it loads but is not
    clean (value findings included), ``ok`` otherwise."""
    return "bad" if not report.ok else "ok" if report.clean else "warn"


def action_table(report: LoadReport) -> tuple[Table, int]:
    """Every action of a load as a table, the ones that are not a plain load first, and how many those are."""
    shown = sorted(report.plan.actions, key=lambda a: a.kind == "load")
    rows = [[a.kind, a.target or "", a.source or "", a.reason or ", ".join(a.via)] for a in shown]
    unusual = sum(1 for a in shown if a.kind != "load")
    return Table("every key", ("kind", "model key", "checkpoint key", "detail"), rows), unusual
