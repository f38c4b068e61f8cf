"""The text of a :class:`~torchweights.tools.scan.scanner.ScanReport`, as ``torchweights scan`` prints it and
``str(report)``
returns it: the verdict, every finding (worst first) with where it is, the counts, and a closing line that follows
what ``tw.load`` really does with the file. Renders decisions, never makes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...style import current, status
from ...text import plural, printable, wrap
from ...text import table as _table

if TYPE_CHECKING:
    from .report import Finding, ScanReport

__all__ = ["TEXT_FINDING_LIMIT", "closing_line", "render_text"]

#: Findings listed per file in the text report; the rest are counted (``--json`` has them all).
TEXT_FINDING_LIMIT = 50


def _where(finding: Finding) -> str:
    where = printable(finding.member or "")
    if finding.line is not None:  # TorchScript source: the member's end and the line stay visible
        suffix = f":{finding.line}"
        return (where if len(where) <= 63 - len(suffix) else "..." + where[-(60 - len(suffix)) :]) + suffix
    if finding.offset is not None:
        where = f"{where} @{finding.offset}" if where else f"@{finding.offset}"
    return where[:60] + "..." if len(where) > 63 else where


def render_text(report: ScanReport, *, limit: int | None = TEXT_FINDING_LIMIT) -> str:
    """The human report for one file."""

    verdict = current().paint(status(report.verdict.upper()))
    lines = [f"{printable(report.path)}: {verdict}" + (f"  ({report.format})" if report.format else "")]
    findings = report.findings if limit is None else report.findings[:limit]
    rows = [[status(f.severity), f.code, _where(f), printable(f.name or "")] for f in findings]
    for row, finding in zip(_table(rows, shrink=(3,)), findings):
        lines.append(row)
        lines += wrap(finding.message, indent="      ")
    if limit is not None and len(report.findings) > limit:
        lines.append(f"  ... and {len(report.findings) - limit} more findings (--all or --json lists them)")
    counts = {v: sum(1 for x in report.globals.values() if x == v) for v in _VERDICTS}
    shown = ", ".join(f"{n} {v}" for v, n in counts.items() if n or v in ("safe", "unknown", "dangerous"))
    lines += wrap(
        f"{plural(len(report.globals), 'global')} ({shown}); {plural(len(report.streams), 'pickle stream')} read"
        + (f"; {plural(len(report.code_files), 'source file')} carried, never run" if report.code_files else "")
        + f"; {report.seconds:.3f} s"
    )
    lines += wrap(closing_line(report))
    return "\n".join(lines) + "\n"


#: Verdicts of globals, in the order the summary counts them.
_VERDICTS = ("safe", "known", "allowed", "unknown", "dangerous")


def closing_line(report: ScanReport) -> str:
    """What to do, following the real outcome of ``tw.load`` on the file (read, refused for safety, unreadable)."""

    allowed = [n for n, verdict in report.globals.items() if verdict == "allowed"]
    # globals the caller allowed are imported by tw.load, and called where the file calls them: say so
    named = ", ".join(printable(n) for n in allowed[:3]) + (", ..." if len(allowed) > 3 else "")
    with_allowed = f", except the globals you allowed ({named})" if allowed else ""
    if report.load_refuses:
        load = f"tw.load refuses it ({', '.join(printable(n) for n in report.load_refuses[:3])}), running nothing."
    elif report.load_error is not None:
        load = f"tw.load cannot read it [{report.load_error.code}]."
    else:
        load = f"tw.load reads it as data, running none of it{with_allowed}."
    if report.load_error is not None and report.load_error.code == "not-found":
        return "There is no such file or folder: nothing was scanned."
    if report.verdict == "clean" and allowed:
        return (
            f"Nothing in it runs code except the globals you allowed ({named}): tw.load imports them and calls "
            "them where the file does."
        )
    if report.verdict == "clean":
        return "Nothing in it runs code: tw.load reads it as data."
    if report.verdict == "dangerous":
        alarms = [f for f in report.findings if f.severity in ("dangerous", "suspicious")]
        if all(f.code.startswith("latent-") for f in alarms):
            return f"Never unpickle the embedded values flagged above: that would run code. {load}"
        code = [f for f in alarms if f.line is not None]  # TorchScript source: compiled and run by its loader
        loaders = ["torch.jit.load"] if code else []
        if any(".data/ts_code/" in (f.member or "") for f in code):
            loaders = (
                ["torch.package"]
                if all(".data/ts_code/" in (f.member or "") for f in code)
                else [
                    "torch.jit.load",
                    "torch.package",
                ]
            )
        if len(code) < len(alarms):
            loaders += ["torch.load(weights_only=False)", "pickle"]
        names = ", ".join(loaders[:-1]) + f" or {loaders[-1]}" if len(loaders) > 1 else loaders[0]
        what = "the code flagged above" if len(code) == len(alarms) else "what is flagged"
        return f"Do not load it with {names}: {'it' if len(loaders) == 1 else 'they'} would run {what}. {load}"
    return f"Scan could not vouch for all of it (see the errors above); treat it as untrusted. {load}"
