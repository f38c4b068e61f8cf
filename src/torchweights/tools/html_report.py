"""``tw.html_report``: one self-contained HTML page about a checkpoint, with plots (``torchweights report --html``).

What the page holds: the file summary (format, files, tensors, bytes, dtypes); with a model, the report of a real
:func:`~torchweights.load_into` into it (``strict=False``, ``check_values=True``, ``init_missing=True``: every key
accounted for and the value findings of the load); the flagged tensors named in the text; plots of the per-layer
statistics (std and abs-max of every floating-point weight matrix and kernel, in file order, log scale, flagged
ones marked), of the bytes per dtype and per top-level module, and with ``against`` the relative change
``||a - b|| / ||b||`` of every common tensor (what fine-tuning moved); then a table of every tensor with its
statistics (folded past :data:`TABLE_ROWS` rows).

Statistics come from :func:`torchweights.stats` (one tensor at a time); the change against a reference reads one
tensor pair at a time, after :func:`torchweights.diff` has paired the tensors (same container and prefix handling)
and found the identical ones, which are not read again. The plots need matplotlib (``pip install
'torchweights[report]'``); without it the call fails first, code ``needs-matplotlib``, before reading anything.
Nothing on the page is fetched from elsewhere (no scripts, fonts or style sheets; a Content Security Policy forbids
it), and every name from the files is escaped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import TYPE_CHECKING, Any

from ..fold import human_bytes, human_count
from ..limits import DEFAULT_LIMITS, Limits
from ..records import Checkpoint
from ..report.html import Table, action_table, details, esc, facts, headline, load_state, page, table
from ..structs import structure
from ..text import plural, printable, quote

if TYPE_CHECKING:  # annotations only: torch and the value statistics are imported by the call
    import torch

    from ..report.load import LoadReport
    from ..values.stats import StatsReport, TensorStats

__all__ = ["CHANGE_ROWS", "HtmlReport", "TABLE_ROWS", "html_report", "relative_change"]

#: Rows of the tensor table shown before the rest folds into a collapsed section.
TABLE_ROWS = 50

#: Tensors the "largest changes" table lists.
CHANGE_ROWS = 20

#: Elements reduced at once when computing a norm (bounds the float64 scratch memory to 64 MB per side).
_NORM_CHUNK = 8 << 20


@structure
class HtmlReport:
    """What :func:`html_report` built.

    Attributes:
        path: the checkpoint described.
        html: the whole page.
        out: where it was written (None when not written).
        load: the report of the load into the model (None without a model).
        stats: the statistics of every tensor.
        flagged: tensor name -> the findings about it, in words: the value findings of the load, and the same
            rules (:mod:`torchweights.values.checks`) on the file's statistics for every other tensor (a file does
            not say which tensors are buffers: every tensor of two or more dimensions counts as a weight there).
        changes: with ``against``: tensor name -> ``||a - b|| / ||b||`` (floating-point tensors of equal shape).
        against: the reference checkpoint, if any.
    """

    path: str
    html: str
    out: str | None = None
    load: LoadReport | None = None
    stats: StatsReport | None = None
    flagged: dict[str, list[str]] = field(default_factory=dict)
    changes: dict[str, float] = field(default_factory=dict)
    against: str | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is flagged and the load (if any) is ``ok``."""
        return not self.flagged and (self.load is None or self.load.ok)

    @property
    def summary(self) -> str:
        """One line: ``report.html: 12 tensors, 2 flagged ('a.weight', 'b.weight')``."""
        where = self.out if self.out is not None else "page"
        count = len(self.stats.tensors) if self.stats is not None else 0
        text = f"{where}: {plural(count, 'tensor')}"
        if self.flagged:
            text += f", {len(self.flagged)} flagged ({', '.join(quote(n) for n in list(self.flagged)[:5])}"
            text += ", ...)" if len(self.flagged) > 5 else ")"
        else:
            text += ", nothing flagged"
        if self.load is not None:
            text += f"; load: {self.load.headline()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: where the page is, the summary, the flagged tensors, the load's report and the
        changes (non-finite ones as the strings ``"inf"`` and ``"nan"``); not the page itself."""
        return {
            "path": self.path,
            "out": self.out,
            "ok": self.ok,
            "summary": self.summary,
            "flagged": {name: list(words) for name, words in self.flagged.items()},
            "load": None if self.load is None else self.load.to_dict(),
            "against": self.against,
            "changes": {k: v if math.isfinite(v) else str(v) for k, v in self.changes.items()},
        }

    def __str__(self) -> str:
        return self.summary + "\n"

    def __repr__(self) -> str:
        return f"<HtmlReport {quote(self.path)}: {self.summary}>"


def html_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    model: torch.nn.Module | None = None,
    against: str | os.PathLike[str] | None = None,
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> HtmlReport:
    """Describe a checkpoint in one self-contained HTML page with plots, and write it to ``out`` if given.

    Args:
        path: the checkpoint (any format :func:`torchweights.open` reads).
        out: the ``.html`` file to write (replaced if it exists, atomically); None: only return the page.
        model: a model to load the checkpoint into: ``load_into(model, path, strict=False, check_values=True,
            init_missing=True)`` runs on it for real (the model is changed: pass a fresh one), and the page has its
            report and value findings.
        against: a reference checkpoint: the page plots the relative change of every common tensor against it.
        allow_globals: pickle globals you trust (see :func:`torchweights.open`).
        limits: resource bounds for hostile files.

    Returns:
        An :class:`HtmlReport`: the page (``.html``), the load report, the statistics, the flagged tensors.

    Raises:
        RuleError: code ``needs-matplotlib`` when matplotlib is missing (``pip install 'torchweights[report]'``).
        TorchWeightsError: a checkpoint cannot be read safely; ``WriteError`` when ``out`` cannot be written.
    """
    from .. import api
    from ..report.plots import pyplot
    from ..values.checks import findings_of, is_weight
    from ..values.file import stats as file_stats

    pyplot()  # refuse early, before reading anything, when the plots cannot be drawn
    ckpt = api.open(path, allow_globals=allow_globals, limits=limits)
    stats = file_stats(ckpt.path, allow_globals=allow_globals, limits=limits)
    report = HtmlReport(path=ckpt.path, html="", stats=stats)
    if model is not None:
        report.load = api.load_into(
            model, ckpt, strict=False, check_values=True, init_missing=True, allow_globals=allow_globals
        )
        # findings name model keys; the page names the checkpoint's tensors (a key loaded from one has its name)
        source = {a.target: a.source for a in report.load.plan.actions if a.target and a.source}
        for finding in report.load.value_findings:
            name = source.get(finding.name, finding.name)
            where = "" if name == finding.name else f" (model key {quote(finding.name)})"
            report.flagged.setdefault(name, []).append(f"{finding.kind}: {finding.detail}{where}")
    for s in stats.tensors:  # the load's rules on the file's own statistics, for tensors the load did not flag
        if s.name not in report.flagged:
            found = findings_of(s, is_weight(s.name, len(s.shape), parameter=True))
            if found:
                report.flagged[s.name] = [f"{f.kind}: {f.detail} (in the file)" for f in found]
    if against is not None:
        report.against = str(against)
        reference = api.open(against, allow_globals=allow_globals, limits=limits)
        report.changes = changes_against(ckpt, reference)
    report.html = render(report, ckpt)
    if out is not None:
        report.out = _write(str(out), report.html)
    return report


def _write(out: str, text: str) -> str:
    from ..writers.atomic import Outputs

    with Outputs(force=True) as outputs:
        outputs.reserve([out])
        with outputs.write(out) as fh:
            fh.write(text.encode("utf-8"))
        outputs.commit()
    return out


# --------------------------------------------------------------------------------------------------- change


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (Frobenius norms, float64, in chunks of elements); ``inf`` when ``b`` is all zero and
    ``a`` is not, 0.0 when both are, NaN when either holds NaN."""
    import torch

    fa, fb = a.reshape(-1), b.reshape(-1)
    num = den = 0.0
    for at in range(0, fa.numel(), _NORM_CHUNK):
        ca = fa[at : at + _NORM_CHUNK].to(torch.float64)
        cb = fb[at : at + _NORM_CHUNK].to(torch.float64)
        num += float(torch.sum((ca - cb) ** 2))
        den += float(torch.sum(cb**2))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return math.sqrt(num) / math.sqrt(den)


def changes_against(ckpt: Checkpoint, reference: Checkpoint) -> dict[str, float]:
    """``{name: ||a - b|| / ||b||}`` for the floating-point tensors ``ckpt`` and ``reference`` have in common
    (paired as :func:`torchweights.diff` pairs them), in ``ckpt``'s order; one tensor pair in memory at a time."""
    from .diff import diff

    out: dict[str, float] = {}
    for t in diff(ckpt, reference).tensors:
        if t.a is None or t.b is None or t.shape_a != t.shape_b or not _floating(t.dtype_a, t.dtype_b):
            continue
        if t.status == "identical":
            out[t.name] = 0.0
            continue
        a, b = ckpt.get_tensor(t.a), reference.get_tensor(t.b)
        out[t.name] = relative_change(a, b)
        del a, b
    return out


def _floating(*dtype_names: str | None) -> bool:
    return all(d is not None and (d.startswith("float") or d == "bfloat16") for d in dtype_names)


# --------------------------------------------------------------------------------------------------- the page


def render(report: HtmlReport, ckpt: Checkpoint) -> str:
    """The page of ``report`` about ``ckpt`` (plots drawn here)."""
    from .. import __version__

    state = "bad" if report.flagged else "ok" if report.load is None else load_state(report.load)
    body = [
        f"<h1>{esc(ckpt.path)}</h1>",
        headline(state, report.summary.split(": ", 1)[1]),
        _file_section(ckpt),
        _findings_section(report),
    ]
    if report.load is not None:
        body.append(_load_section(report.load))
    body.append(_plots_section(report, ckpt))
    if report.changes:
        body.append(_change_section(report))
    body.append(_tensor_section(report, ckpt))
    body.append(
        f'<p class="muted">made by torchweights {esc(__version__)}; nothing here is fetched from elsewhere.</p>'
    )
    return page(f"torchweights report: {printable(ckpt.path)}", "\n".join(body))


def _file_section(ckpt: Checkpoint) -> str:
    dtypes: dict[str, int] = {}
    for r in ckpt.records.values():
        dtypes[r.dtype] = dtypes.get(r.dtype, 0) + 1
    pairs: list[tuple[str, object]] = [
        ("format", ckpt.format),
        ("files", len(ckpt.files)),
        ("tensors", len(ckpt.records)),
        ("values", human_count(ckpt.numel)),
        ("bytes", f"{ckpt.nbytes:,} ({human_bytes(ckpt.nbytes)})"),
        ("dtypes", ", ".join(f"{d} x{n}" for d, n in sorted(dtypes.items(), key=lambda kv: -kv[1]))),
        ("non-tensor entries", len(ckpt.extras)),
    ]
    return "<h2>File</h2>" + facts(pairs)


def _findings_section(report: HtmlReport) -> str:
    if not report.flagged:
        return "<h2>Findings</h2><p>No value findings: no NaN or Inf, no all-zero or constant weights" + (
            ", nothing left as initialised.</p>"
            if report.load is not None
            else " (pass a model to see the tensors a load would leave as initialised).</p>"
        )
    rows = [[name, "; ".join(words)] for name, words in report.flagged.items()]
    return "<h2>Findings</h2>" + table(Table(f"{plural(len(rows), 'flagged tensor')}", ("tensor", "finding"), rows))


def _load_section(load: LoadReport) -> str:
    plan = load.plan
    actions, unusual = action_table(load)  # what is not a plain load shows; the loads fold
    return (
        f"<h2>Load into {esc(plan.model)}</h2>"
        + headline(load_state(load), load.headline())
        + facts([("container", plan.container.name or "the root"), ("prefix", plan.prefix.evidence)])
        + table(actions, max(10, unusual))
        + details("the text report", f"<pre>{esc(str(load))}</pre>", escaped=True)
    )


def _plots_section(report: HtmlReport, ckpt: Checkpoint) -> str:
    from ..report.plots import breakdown_plot, layer_stats_plot

    tensors = report.stats.tensors if report.stats is not None else ()
    described = [s for s in tensors if _floating(s.dtype) and s.numel > 1]
    plotted = [s for s in described if len(s.shape) >= 2] or described  # weight matrices and kernels, if any
    parts = ["<h2>Plots</h2>"]
    if plotted:
        flagged = [i for i, s in enumerate(plotted) if s.name in report.flagged]
        svg = layer_stats_plot(
            [s.name for s in plotted],
            [_number(s.std) for s in plotted],
            [_number(s.abs_max, s.nan_count + s.inf_count) for s in plotted],
            flagged,
        )
        parts.append(f'<div class="plot">{svg}</div>')
    by_dtype: dict[str, int] = {}
    for r in ckpt.records.values():
        by_dtype[r.dtype] = by_dtype.get(r.dtype, 0) + r.nbytes
    parts.append(f'<div class="plot">{breakdown_plot(by_dtype, _groups(ckpt))}</div>')
    if report.changes:
        from ..report.plots import change_plot

        names = list(report.changes)
        svg = change_plot(names, [report.changes[n] for n in names], report.against or "")
        parts.append(f'<div class="plot">{svg}</div>')
    return "\n".join(parts)


def _number(value: float | None, nonfinite: int = 0) -> float:
    """A statistic for a plot: None is 0 (drawn at the floor); a tensor with NaN or Inf is drawn at the ceiling."""
    if nonfinite:
        return math.inf
    return 0.0 if value is None else float(value)


def _groups(ckpt: Checkpoint) -> dict[str, int]:
    """Bytes per top-level module: the first name component after the ones every tensor shares."""
    split = [name.split(".") for name in ckpt.records]
    shared = 0
    if split:
        while all(len(parts) > shared + 1 and parts[shared] == split[0][shared] for parts in split):
            shared += 1
    out: dict[str, int] = {}
    for parts, record in zip(split, ckpt.records.values()):
        key = ".".join(parts[: shared + 1])
        out[key] = out.get(key, 0) + record.nbytes
    return out


def _change_section(report: HtmlReport) -> str:
    ranked = sorted(report.changes.items(), key=lambda kv: -(kv[1] if not math.isnan(kv[1]) else math.inf))
    moved = sum(1 for v in report.changes.values() if v != 0.0)
    rows = [[name, f"{value:.4g}"] for name, value in ranked[:CHANGE_ROWS]]
    return (
        f"<h2>Change against {esc(report.against)}</h2>"
        f"<p>{esc(plural(moved, 'tensor'))} of {len(report.changes)} compared changed.</p>"
        + table(Table("largest relative changes", ("tensor", "||a - b|| / ||b||"), rows, numeric=frozenset({1})))
    )


def _tensor_section(report: HtmlReport, ckpt: Checkpoint) -> str:
    from ..values.stats import STAT_COLUMNS, stat_cell

    by_name: dict[str, TensorStats] = {s.name: s for s in (report.stats.tensors if report.stats is not None else ())}
    headers = ["name", "bytes", *(h for h, _ in STAT_COLUMNS)]
    rows: list[list[Any]] = []
    flagged: set[int] = set()
    for i, (name, record) in enumerate(ckpt.records.items()):
        s = by_name.get(name)
        cells = [_cell(s, attr, stat_cell) for _, attr in STAT_COLUMNS]
        rows.append([name, human_bytes(record.nbytes), *cells])
        if name in report.flagged:
            flagged.add(i)
    numeric = frozenset(range(1, len(headers)))
    t = Table(f"every tensor ({len(rows)})", headers, rows, numeric=numeric, flagged=frozenset(flagged))
    return "<h2>Tensors</h2>" + table(t, TABLE_ROWS)


def _cell(s: TensorStats | None, attr: str, stat_cell: Callable[[object], str]) -> str:
    """One statistic of the tensor table (``-`` without statistics; the zero fraction in percent, as the text
    table has it)."""
    if s is None:
        return "-"
    value = getattr(s, attr)
    return f"{100 * value:.3g}%" if attr == "zero_fraction" and value is not None else stat_cell(value)
