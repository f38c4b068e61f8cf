"""What :func:`~torchweights.tools.scan.scanner.scan` reports: :class:`Finding` (one thing found, with its
:class:`Severity`), :class:`PickleStream` (one pickle read), and :class:`ScanReport` (everything found in one path,
and the :class:`Verdict` it comes to). Plain data; the walk that fills them is in
:mod:`~torchweights.tools.scan.scanner`, the text in :mod:`~torchweights.tools.scan.text`.
"""

from __future__ import annotations

import json
from dataclasses import field
from typing import Any

from ...errors import TorchWeightsError
from ...structs import structure
from ...text import StrEnum, plural, quote

__all__ = ["Finding", "PickleStream", "ScanReport", "SEVERITIES", "Severity", "Verdict", "to_json"]


#: Severity of each finding, from worst; ``dangerous`` and ``suspicious`` make the verdict ``dangerous``.
class Severity(StrEnum):
    """How bad one :class:`Finding` is, worst first; members are strings (``Severity.INFO == "info"``)."""

    DANGEROUS = "dangerous"
    SUSPICIOUS = "suspicious"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Verdict(StrEnum):
    """What :attr:`ScanReport.verdict` says of a file; members are strings (``Verdict.CLEAN == "clean"``)."""

    CLEAN = "clean"
    DANGEROUS = "dangerous"
    UNREADABLE = "unreadable"


SEVERITIES: tuple[Severity, ...] = tuple(Severity)
_ALARMS = frozenset({Severity.DANGEROUS, Severity.SUSPICIOUS})


@structure(frozen=True)
class Finding:
    """One thing scan found.

    Attributes:
        severity: ``dangerous`` (would run code), ``suspicious`` (a structure that makes readers disagree, a
            polyglot), ``error`` (could not be read), ``warning`` (worth knowing: an unknown class), ``info``
            (a :class:`Severity`: a string).
        code: stable identifier (``dangerous-global``, ``dangerous-call``, ``unknown-global``,
            ``latent-dangerous-global``, ``latent-dangerous-call``, ``zip-duplicate-member``, ``polyglot``,
            ``code-file``, ``pickle-unreadable``, ``load-refused``, ``not-found`` (no such file or folder)...).
        message: what, why, and what to do.
        file: the file it is about.
        member: the zip or tar member, or a description of where in the file (``bytes value at 'meta.blob'``).
        offset: byte offset of the opcode in the pickle's buffer (the member, or the file).
        name: the global referenced, as ``module.qualname`` (for TorchScript code, the operator or name used).
        line: the 1-based line of a TorchScript source file (``ts-*`` findings, see
            :mod:`~torchweights.tools.scan.tscode`).
    """

    severity: Severity
    code: str
    message: str
    file: str
    member: str | None = None
    offset: int | None = None
    name: str | None = None
    line: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))  # a plain string names the same severity

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.file,
            "member": self.member,
            "offset": self.offset,
            "name": self.name,
            "line": self.line,
        }


@structure(frozen=True)
class PickleStream:
    """One pickle stream that was read.

    Attributes:
        file: the file holding it.
        where: the member or the reader's description of it.
        start: offset of its first byte in that buffer.
        end: offset just past STOP, or None when it could not be read to the end.
        protocol: pickle protocol declared.
        opcodes: opcodes executed.
        latent: found inside a value (bytes, uint8 tensor), not read by loading.
    """

    file: str
    where: str
    start: int
    end: int | None
    protocol: int
    opcodes: int
    latent: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "file": self.file,
            "where": self.where,
            "start": self.start,
            "end": self.end,
            "protocol": self.protocol,
            "opcodes": self.opcodes,
            "latent": self.latent,
        }


@structure
class ScanReport:
    """Everything :func:`scan` found in one path.

    Attributes:
        path: what was scanned.
        format: the format loading would read it as, or None when loading refuses it.
        findings: every finding, worst first.
        streams: every pickle stream read.
        globals: every global referenced, with its verdict (``safe``, ``known``, ``dangerous``, ``unknown``,
            or ``allowed`` for a name passed in ``allow_globals``).
        code_files: source files the archive carries (TorchScript ``code/``, torch.package modules); never run.
        complete: every pickle and member was read to its end.
        load_error: why ``tw.load`` could not read the file (its structure), or None.
        load_refuses: the globals ``tw.load`` refuses the file for (dangerous names in the pickles it reads);
            empty when it reads the file, or when ``load_error`` already says why it cannot.
        seconds: time taken.
        files: the files loading reads for this path (a sharded set's index and shards, a distributed
            checkpoint's ``.distcp`` files); empty when loading refuses it.
    """

    path: str
    format: str | None = None
    findings: list[Finding] = field(default_factory=list)
    streams: list[PickleStream] = field(default_factory=list)
    globals: dict[str, str] = field(default_factory=dict)
    code_files: list[str] = field(default_factory=list)
    complete: bool = True
    load_error: TorchWeightsError | None = None
    load_refuses: list[str] = field(default_factory=list)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def loads(self) -> bool:
        """Whether ``tw.load`` reads the file (as data: it never runs anything, whatever the verdict)."""
        return self.format is not None and self.load_error is None and not self.load_refuses

    @property
    def verdict(self) -> Verdict:
        """``dangerous``, ``unreadable`` or ``clean`` (a :class:`Verdict`, a string)."""
        if any(f.severity in _ALARMS for f in self.findings):
            return Verdict.DANGEROUS
        if not self.complete or self.load_error is not None:
            return Verdict.UNREADABLE
        return Verdict.CLEAN

    @property
    def exit_code(self) -> int:
        """0 clean, 1 dangerous, 2 unreadable (the CLI's exit code)."""
        return {"clean": 0, "dangerous": 1, "unreadable": 2}[self.verdict]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that do not change the verdict."""
        return [f for f in self.findings if f.severity in ("warning", "info")]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict,
            "complete": self.complete,
            "loads": self.loads,
            "load_refuses": self.load_refuses,
            "load_error": None
            if self.load_error is None
            else {
                "code": self.load_error.code,
                "type": type(self.load_error).__name__,
                "message": self.load_error.message,
            },
            "findings": [f.to_dict() for f in self.findings],
            "globals": dict(sorted(self.globals.items())),
            "code_files": self.code_files,
            "streams": [s.to_dict() for s in self.streams],
            "seconds": round(self.seconds, 4),
        }

    @property
    def summary(self) -> str:
        """One line: the verdict and the findings per severity, e.g. ``dangerous: 2 findings (1 dangerous, 1
        warning)`` or ``clean: no findings``."""
        if not self.findings:
            return f"{self.verdict}: no findings"
        counts: dict[str, int] = {}
        for finding in self.findings:  # worst first, so the counts come in order of severity
            counts[finding.severity] = counts.get(finding.severity, 0) + 1
        shown = ", ".join(f"{n} {severity}" for severity, n in counts.items())
        return f"{self.verdict}: {plural(len(self.findings), 'finding')} ({shown})"

    def __str__(self) -> str:
        from .text import render_text  # what the CLI prints: one text report, never two

        return render_text(self)

    def __repr__(self) -> str:
        where = f" ({self.format})" if self.format else ""
        return f"<ScanReport {quote(self.path)}{where}: {self.summary}>"

    def _repr_html_(self) -> str:
        """The report as a notebook shows it: the verdict coloured, every finding and every global (escaped)."""
        from ...report.html import Table, card

        findings = [[f.severity, f.code, f.name or f.member or "", f.message] for f in self.findings]
        globals_ = [[name, verdict] for name, verdict in sorted(self.globals.items())]
        return card(
            "ScanReport",
            {"clean": "ok", "dangerous": "bad"}.get(self.verdict, "warn"),
            self.summary,
            [("path", self.path), ("format", self.format or "not loadable")],
            [
                Table("findings", ("severity", "code", "where", "message"), findings),
                Table("globals", ("global", "verdict"), globals_),
            ],
        )


def to_json(reports: list[ScanReport]) -> str:
    """The reports as one JSON document."""
    return json.dumps({"reports": [r.to_dict() for r in reports]}, indent=None, allow_nan=False)
