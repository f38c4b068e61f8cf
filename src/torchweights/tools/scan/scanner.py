"""``tw.scan``: say whether a file is safe to load, before anyone loads it. Static only: nothing is imported or
called, in any format.

Every pickle the file holds is read by the same machine and the same table that loading uses
(:func:`~torchweights.unpickle.stream.scan_stream`), so ``tw.load`` never runs what scan calls safe and never
refuses, for
safety or structure, what scan calls clean. (Scan reads no tensor bytes: a weight damaged after saving, which
``tw.load`` catches by its CRC-32, is not scan's to see.) What is walked:

* zip archives (torch.save, TorchScript, torch.package, .npz, or any zip): every member whose content is a pickle,
  whatever its name, duplicates included, plus the structural problems of :mod:`~torchweights.formats._zip`
  (duplicate names, local/central disagreements, overlaps, encryption, polyglot leading or trailing data);
* pickle files (legacy torch streams: exactly their five pickles, then storage bytes that are data; plain
  pickles, protocol 0 to 5) and what follows them (a zip hidden after a pickle is a polyglot, and its members are
  walked too);
* legacy tar files and every other format a reader understands, through the reader itself (its pickles are handed
  to scan instead of being refused);
* ``.npy`` object arrays (their data is a pickle), torch.distributed.checkpoint ``.metadata``, the shards of a
  sharded set;
* pickles and zips nested in bytes values or uint8/int8 tensors (reported as latent: loading does not run them,
  code that unpickles them later would), only when the bytes really are one (:func:`_is_pickle`). Storages of
  every other dtype are data and are never read.

A global the pickle calls as a function with arguments that nobody vetted (neither in the reconstructor table nor
one of torch's own classes) is a ``dangerous-call``: see :meth:`~torchweights.unpickle.record.Recorder.call`.

The file is opened the way ``tw.load`` opens it first (the members that hold storages, and what ``tw.load`` does
with the file, are then known: :attr:`ScanReport.loads`, :attr:`ScanReport.load_refuses`). The verdict is
``dangerous`` (exit 1), ``unreadable`` (exit 2: something could not be fully read, or loading refuses the file),
or ``clean`` (exit 0, possibly with warnings such as unknown classes, which become inert stubs when loading).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from ... import dtypes
from ...detect.content import looks_safetensors
from ...errors import ResourceLimitError, TorchWeightsError
from ...formats import ReadOptions, open_path
from ...formats._files import mapped
from ...formats._legacy_stream import MAGIC_NUMBER
from ...formats._pickled import read_embedded
from ...formats._zip import ZipDirectory, ZipMember, check_member_inflation, inflate, read_directory
from ...formats.tree import refuse_unreadable
from ...limits import DEFAULT_LIMITS, Limits
from ...records import Checkpoint, StorageRef
from ...storage.read import read_byte_range
from ...text import StrEnum, plural, printable, quote
from ...unpickle.machine import FIRST_OPCODES
from ...unpickle.stream import StreamScan, scan_stream
from ...unpickle.values import Global, PickledStorage, Reference, StorageType, Stub
from .tscode import analyse as analyse_torchscript
from .tscode import is_code_member

__all__ = ["Finding", "PickleStream", "ScanReport", "Severity", "Verdict", "scan"]


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
_MAX_LATENT_DEPTH = 3
_MAX_FINDINGS = 1000
#: Bytes read first from a member that only might be a pickle (by its first byte), to tell tensor bytes from one.
_PROBE_BYTES = 1 << 16
#: The only tensor dtypes whose bytes can hold a serialised blob (a pickle or a zip stored as a tensor).
_BYTE_DTYPES = frozenset({"uint8", "int8"})
#: Structural zip problems that mean part of the archive could not be read at all.
_ZIP_UNREADABLE = frozenset({"truncated", "bad-zip", "limit-zip-entries", "zip-encrypted", "zip-compression"})
#: Pickles a legacy torch stream holds (``torch.serialization._legacy_save``); its storage bytes follow them.
_LEGACY_PICKLES = 5
_PICKLE_NAMES = (".pkl", ".pickle", ".pk", ".pt", ".pth", ".bin", ".ckpt", ".dat", ".metadata")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass
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


def scan(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, allow_globals: Iterable[str] = ()
) -> ScanReport:
    """Statically analyse every pickle in ``path`` and say whether loading it is safe.

    Args:
        path: a checkpoint file, sharded index or folder, or any file to check.
        limits: resource bounds (the same as loading's).
        allow_globals: ``module.qualname`` names you trust, as ``tw.load(allow_globals=...)`` takes them: their
            calls and references are not reported (verdict ``allowed``). Nothing is imported either way. Names
            that can run code or touch the system (``posix.system``) stay dangerous findings.

    Returns:
        A :class:`ScanReport`; it never raises for a bad file: unreadable parts make the verdict ``unreadable``.
    """
    started = time.perf_counter()
    scanner = _Scanner(os.fspath(path), limits, frozenset(allow_globals))
    scanner.run()
    report = scanner.report
    report.findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.file, f.member or "", f.offset or 0))
    report.seconds = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------------------------------- the walk


def _lenient_persistent(pid: Any) -> Any:
    """Persistent ids while scanning: storages become placeholders (so tensor reconstructors see a storage),
    anything else an inert stub. Nothing is read."""
    if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], StorageType):
        dtype = pid[1].dtype or "uint8"
        numel = pid[4] if type(pid[4]) is int and pid[4] >= 0 else 0
        offset = 0
        if len(pid) == 6 and isinstance(pid[5], tuple) and len(pid[5]) == 3 and type(pid[5][1]) is int:
            offset = max(pid[5][1], 0)  # a legacy storage view
        ref = StorageRef(key=printable(str(pid[2]))[:64], file="", offset=-1, nbytes=numel * dtypes.itemsize(dtype))
        return PickledStorage(ref, dtype, offset)
    if isinstance(pid, tuple) and len(pid) >= 2 and pid[0] == "module" and isinstance(pid[1], (Global, Stub)):
        return pid[1]
    return Stub("persistent_id", (pid,))


def _is_pickle_head(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _resolvable(ref: Reference) -> bool:
    """Whether ``pickle.load`` could resolve the global ``ref`` names: its module and attribute parts are
    identifiers (``find_class`` imports the module and fetches the attributes; anything else raises before the
    opcode completes). References derived from others (a call of what a call returned, a BUILD) count as
    resolvable: their own globals are checked."""
    if ref.how in ("BUILD", "EXT") or ref.name.endswith(("(...)", ")")):
        return True
    return all(part.isidentifier() for part in ref.name.split("."))


def _nameable(ref: Reference) -> bool:
    """A dangerous reference pickle could resolve: its module and attributes are identifiers. Text that merely
    starts like a protocol 0 pickle (``import sys\nsys.path...``) names things like ``mport sys.sys.path``."""
    return ref.verdict == "dangerous" and (ref.how in ("BUILD", "EXT") or _resolvable(ref))


def _reached(call: Reference, seen: StreamScan) -> bool:
    """Whether ``pickle.load`` would make ``call``: a dangerous call whose global, and every global named before
    it, resolves (``pickle.loads`` raises at the first one that does not, before anything after it runs)."""
    return _nameable(call) and all(_resolvable(r) for r in seen.references if r.offset <= call.offset)


def _is_pickle(head: bytes, seen: StreamScan) -> bool:
    """Whether bytes that merely might hold a pickle (a bytes value, a byte tensor, a member no reader needs)
    really are one that ``pickle.load`` could load: a ``PROTO`` opcode first and a parse that reaches ``STOP``
    with every global it names resolvable, or a parse that reaches a call of something dangerous before it fails
    (what ``pickle.loads`` would run before raising)."""
    loads = _is_pickle_head(head) and seen.error is None and all(_resolvable(r) for r in seen.references)
    return loads or any(_reached(c, seen) for c in seen.calls)


def _worth_reading(head: bytes, seen: StreamScan) -> bool:
    """Whether the first :data:`_PROBE_BYTES` of bytes that might be a pickle justify reading them whole: a parse
    the probe cut short (a long argument: the call may come later), a PROTO pickle that already reached STOP, or
    one that already called something dangerous. Tensor bytes usually fail on a bad opcode at once, or name a
    global no ``pickle.load`` could resolve."""
    if any(_reached(c, seen) for c in seen.calls):
        return True
    if not all(_resolvable(r) for r in seen.references):
        return False
    return (seen.error is not None and seen.error.code == "truncated") or (_is_pickle_head(head) and seen.error is None)


def _quote(text: str) -> str:
    shown = printable(text)
    return f"'{shown[:160]}...'" if len(shown) > 160 else f"'{shown}'"


@dataclass
class _StorageMember:
    """A zip member that holds the bytes of a storage: the first tensor that uses it and every dtype it is read as."""

    tensor: str
    dtypes: set[str]

    @property
    def bytes_like(self) -> bool:
        """Read as bytes (uint8 / int8) only: the one kind of tensor a serialised blob can live in."""
        return self.dtypes <= _BYTE_DTYPES


class _Scanner:
    def __init__(self, path: str, limits: Limits, allowed: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.limits = limits
        self.allowed = allowed
        self.report = ScanReport(path)
        self.seen_findings: set[tuple[Any, ...]] = set()
        self.reader_streams: list[tuple[str, int, StreamScan]] = []
        self.storage_members: dict[tuple[str, str], _StorageMember] = {}  # (file, zip member) -> its storage
        self.refused: frozenset[str] = frozenset()  # the globals tw.load refuses the file for
        self.source_bytes = 0  # TorchScript source analysed so far (Limits.max_source_bytes)
        self.naming_streams = 0  # streams recorded that name a global (a latent pickle of plain values does not)

    # -- findings -----------------------------------------------------------------------------------------
    def add(self, finding: Finding) -> None:
        key = (finding.code, finding.file, finding.member, finding.offset, finding.name, finding.line)
        if key in self.seen_findings or len(self.report.findings) >= _MAX_FINDINGS:
            return
        self.seen_findings.add(key)
        self.report.findings.append(finding)
        if finding.severity == "error":
            self.report.complete = False

    def stream(
        self,
        data: bytes | memoryview,
        file: str,
        where: str,
        *,
        start: int = 0,
        end: int | None = None,
        latent: int = 0,
        required: bool = True,
    ) -> StreamScan | None:
        """Scan one stream. ``required=False`` for bytes that may not be a pickle at all (a value, a byte tensor,
        a member no reader needs): unless :func:`_is_pickle` says they really are one, they are data and the
        stream is forgotten (None), and a real one that fails later is never "unreadable"."""
        seen = scan_stream(
            data,
            start=start,
            end=end,
            persistent_load=_lenient_persistent,
            max_bytes=self.limits.max_pickle_bytes,
            where=where,
            max_opcodes=self.limits.max_pickle_opcodes,
            read_embedded=read_embedded,
        )
        if not required and not _is_pickle(bytes(data[start : start + 2]), seen):
            return None
        self.record(file, where, start, seen, latent, required=required)
        return seen

    def record(
        self, file: str, where: str, start: int, seen: StreamScan, latent: int, *, required: bool = True
    ) -> None:
        report = self.report
        report.streams.append(PickleStream(file, where, start, seen.end, seen.protocol, seen.opcodes, latent > 0))
        self.naming_streams += bool(seen.references)
        prefix = "latent-" if latent else ""
        called = {r.name for r in seen.references if r.arguments is not None}
        for ref in seen.references:
            verdict = ref.verdict
            if ref.name in self.allowed and (verdict != "dangerous" or ref.arguments is not None):
                verdict = "allowed"  # the user trusts it (a name that can run code by itself stays dangerous)
            previous = report.globals.get(ref.name)
            if previous != "dangerous":
                report.globals[ref.name] = verdict
            if verdict == "dangerous" and ref.arguments is not None:
                text = _call_text(ref, where, latent)
                self.add(
                    Finding(Severity.DANGEROUS, f"{prefix}dangerous-call", text, file, where, ref.offset, ref.name)
                )
            elif verdict == "dangerous":
                text = _dangerous_text(ref.name, ref.how, where, latent, ref.name in self.refused)
                self.add(
                    Finding(Severity.DANGEROUS, f"{prefix}dangerous-global", text, file, where, ref.offset, ref.name)
                )
            elif verdict == "unknown" and ref.name not in called:
                text = _unknown_text(ref.name, ref.how, where, latent)
                self.add(Finding(Severity.WARNING, f"{prefix}unknown-global", text, file, where, ref.offset, ref.name))
        if seen.error is not None and required:
            self.add(
                Finding(
                    Severity.ERROR,
                    "pickle-unreadable",
                    f"the pickle in {where} could not be read to its end: "
                    f"{seen.error.message}. Scan cannot vouch for what it did not read.",
                    file,
                    where,
                    start,
                    None,
                )
            )
        elif seen.value is not None and latent < _MAX_LATENT_DEPTH:
            for blob_where, blob in _blobs(seen.value, seen.opcodes):
                self.latent(blob, file, f"{where}, {blob_where}", latent + 1)

    def latent(self, blob: bytes, file: str, where: str, depth: int) -> None:
        """Bytes inside a value or a byte tensor that may be a pickle or a zip: reported (as latent: loading never
        unpickles them) only when they really are one; anything else is data."""
        if blob.startswith(b"PK\x03\x04"):
            try:
                directory = read_directory(
                    io.BytesIO(blob), file, len(blob), max_inflated=self.limits.max_inflated_bytes
                )
            except TorchWeightsError:
                return  # bytes that start like a zip but are not one
            if not directory.members or any(p.code in ("truncated", "bad-zip") for p in directory.problems):
                return  # no directory a zip reader could use: data
            self.latent_info(file, where, "zip archive", len(blob))
            self.archive(io.BytesIO(blob), directory, file, where, depth)
            return
        before = self.naming_streams
        self.sequence(blob, len(blob), file, where, required=False, latent=depth)
        if self.naming_streams > before:  # a pickle of plain values (random bytes parse as one) runs nothing
            self.latent_info(file, where, "pickle", len(blob))

    def latent_info(self, file: str, where: str, what: str, size: int) -> None:
        self.add(
            Finding(
                Severity.INFO,
                "latent-pickle" if what == "pickle" else "latent-zip",
                f"{where} holds an embedded {what} of {size} bytes; loading never unpickles it, but "
                "code that does would run what it names (scanned)",
                file,
                where,
            )
        )

    # -- the families -------------------------------------------------------------------------------------
    def run(self) -> None:
        path = self.path
        try:
            info = os.stat(path)
        except OSError:
            info = None
        # Open it as tw.load does first (its pickles are handed to the scanner, never refused): which members hold
        # tensor storages is then known. Then walk it structurally, then the reader's own pickles and what it found.
        checkpoint = self.open()
        if info is not None and stat.S_ISDIR(info.st_mode):
            self.guarded(self.directory, path)
        elif info is not None and stat.S_ISREG(info.st_mode):
            self.guarded(self.file, path)
        if checkpoint is not None:
            self.guarded(self.shards, checkpoint)
        self.reader_findings()
        if checkpoint is not None:
            self.guarded(self.tensors, checkpoint)
            self.embedded_torchscript(checkpoint)

    def embedded_torchscript(self, checkpoint: Checkpoint) -> None:
        """torch.package resources that embed TorchScript modules (the reader's ``torchscript_modules``): a warning
        naming each, since ``PackageImporter`` compiles and runs their code; ``tw.load`` only reads their weights."""
        for resource, ids in checkpoint.metadata.get("torchscript_modules", {}).items():
            self.add(
                Finding(
                    Severity.WARNING,
                    "torchscript-code",
                    f"resource {_quote(resource)} embeds TorchScript code (module {', '.join(ids)} under "
                    "'.data/ts_code/'): torch.package's load_pickle compiles and runs it; tw.load reads only its "
                    "weights. Load it with torch.package only if you trust the package.",
                    self.path,
                    resource,
                )
            )

    def guarded(self, step: Any, *args: Any) -> None:
        """Run one step of the walk; whatever goes wrong makes the verdict unreadable, never clean (fail closed)."""
        try:
            step(*args)
        except TorchWeightsError as exc:
            self.add(
                Finding(Severity.ERROR, exc.code, f"scan could not read part of the file: {exc.message}", self.path)
            )
        except (OSError, ValueError, MemoryError, RecursionError) as exc:
            self.add(
                Finding(
                    Severity.ERROR,
                    "scan-failed",
                    f"scan stopped on {type(exc).__name__}: {printable(str(exc))[:200]}; treat the file as untrusted",
                    self.path,
                )
            )

    def file(self, path: str) -> None:
        """Walk one file by its first bytes."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(512)
                size = os.fstat(fh.fileno()).st_size
                if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                    self.zip(fh, size, path, None)
                    return
                if head[257:262] == b"ustar":
                    return  # legacy tar: walked by its reader (see load)
                if head.startswith(b"\x93NUMPY"):
                    fh.seek(0)
                    self.npy(fh.read(min(size, self.limits.max_pickle_bytes + 65536)), path, None)
                    return
        except OSError as exc:
            self.add(Finding(Severity.ERROR, "read-failed", f"cannot read {_quote(path)}: {exc.strerror or exc}", path))
            return
        if looks_safetensors(head):
            self.hidden_zip(path, size)  # no pickle (the reader checks the header), but maybe a zip appended
            return
        if head[:1] and (_is_pickle_head(head) or head[0] in FIRST_OPCODES):
            self.pickle_file(path, size, required=_is_pickle_head(head))
        else:
            self.hidden_zip(path, size)  # other data (a script) placed before an archive

    def pickle_file(self, path: str, size: int, *, required: bool) -> None:
        """A sequence of pickles (a legacy torch stream has five), then whatever follows."""
        with mapped(path) as view:
            position, legacy = self.sequence(view, size, path, None, required=required, latent=0)
        if position is None:
            self.hidden_zip(path, size)  # not a pickle after all (or not one to its end): an archive may follow
            return
        if not legacy and position < size:
            self.trailing(path, size - position, position)
        self.hidden_zip(path, size)

    def sequence(
        self, view: bytes | memoryview, size: int, file: str, where: str | None, *, required: bool, latent: int
    ) -> tuple[int | None, bool]:
        """Pickles back to back from byte 0, exactly as the readers take them: one, or the five of a legacy stream
        (magic number, protocol version, sys_info, the object, the storage keys; the raw storage bytes that follow
        are data, whatever they look like). Returns where the last one ended (None when one could not be read)
        and whether it was a legacy stream."""
        position, count = 0, 0
        while position < size and count < _LEGACY_PICKLES:
            label = f"pickle {count + 1} at byte {position}" if count else "the pickle"
            seen = self.stream(
                view,
                file,
                label if where is None else f"{where}, {label}",
                start=position,
                required=required or (count > 0 and not latent),
                latent=latent,
            )
            if seen is None or seen.end is None:
                return None, False
            position, count = seen.end, count + 1
            if count == 1 and not (type(seen.value) is int and seen.value == MAGIC_NUMBER):
                break  # only a legacy stream continues with more pickles
        return position, count == _LEGACY_PICKLES

    def trailing(self, path: str, nbytes: int, at: int) -> None:
        self.add(
            Finding(
                Severity.WARNING,
                "trailing-data",
                f"{nbytes} bytes follow the last pickle (from byte {at}); "
                "pickle readers ignore them, other tools may not",
                path,
                None,
                at,
            )
        )

    def hidden_zip(self, path: str, size: int) -> None:
        """A zip directory at the end of a file that does not start like a zip: a polyglot."""
        with open(path, "rb") as fh:
            fh.seek(max(0, size - 65557 - 20))
            if b"PK\x05\x06" not in fh.read():
                return
            directory = read_directory(fh, path, size, max_inflated=self.limits.max_inflated_bytes)
            if not any(m.data_offset >= 0 for m in directory.members):
                return
            self.add(
                Finding(
                    Severity.SUSPICIOUS,
                    "polyglot",
                    f"{_quote(path)} is also a zip archive of "
                    f"{plural(len(directory.members), 'member')}: pickle readers and zip readers "
                    "(torch.load decides by the first bytes, other tools by the end) see different "
                    "contents. Do not load it; re-save it from a trusted source.",
                    path,
                )
            )
            self.members(fh, directory, path, None, 0)

    def zip(self, fh: IO[bytes], size: int, file: str, where: str | None, *, latent: int = 0) -> None:
        directory = read_directory(fh, file, size, max_inflated=self.limits.max_inflated_bytes)
        self.archive(fh, directory, file, where, latent)

    def archive(self, fh: IO[bytes], directory: ZipDirectory, file: str, where: str | None, latent: int) -> None:
        for problem in directory.problems:
            unreadable = problem.code in _ZIP_UNREADABLE and problem.code != "zip-encrypted"
            severity = Severity.ERROR if unreadable else Severity.SUSPICIOUS
            if problem.code == "zip-encrypted":
                self.report.complete = False  # an encrypted member cannot be read at all
            self.add(
                Finding(severity, problem.code, f"{problem.message}{_within(where)}", file, problem.member or where)
            )
        self.members(fh, directory, file, where, latent)

    def members(self, fh: IO[bytes], d: ZipDirectory, file: str, where: str | None, latent: int) -> None:
        """Every member that holds a pickle, a zip or a ``.npy``: the pickles of the archive, whatever their names.

        Storage members are data: one the reader's records read as any dtype but uint8/int8 is never opened; a
        byte storage, or a member where the layout keeps storages that no record names, is probed as latent (a
        finding only if it really is a pickle or a zip)."""
        storage_names = _storage_layout(d) if where is None else None
        for member in d.members:
            if member.data_offset < 0 or member.flags & 0x1 or member.compress_type not in (0, 8):
                continue  # reported as a problem already
            label = f"member {_quote(member.name)}" + (f" of {where}" if where else "")
            if _is_code_file(member.name):
                self.report.code_files.append(member.name)
            if is_code_member(member.name):
                self.torchscript_code(fh, member, file, where)
            storage = self.storage_members.get((file, member.name)) if where is None else None
            if storage is not None and not storage.bytes_like:
                continue  # tensor bytes of another dtype: never a serialised blob, never read
            data_like = storage is not None or (storage_names is not None and storage_names(member.name))
            member_latent = max(latent, 1) if data_like else latent
            try:
                head = inflate(fh, member, 16)
                kind = _member_kind(member, head)
                if kind is None:
                    continue
                required = not data_like and (
                    kind != "pickle" or _is_pickle_head(head) or member.name.endswith((".pkl", ".pickle"))
                )
                if not required and member.size > _PROBE_BYTES and not self.might_be_pickle(fh, member):
                    continue  # tensor bytes that merely start like a pickle
                if member.size > self.limits.max_pickle_bytes:
                    if required:
                        self.add(
                            Finding(
                                Severity.ERROR,
                                "limit-pickle-size",
                                f"{label} ({member.size} bytes) is larger than "
                                f"the {self.limits.max_pickle_bytes}-byte pickle limit and was not scanned",
                                file,
                                member.name,
                            )
                        )
                    continue
                check_member_inflation(member, file, self.limits)  # a decompression bomb: refused before inflating
                data = inflate(fh, member, member.size)
                if zlib.crc32(data) != member.crc32 and not data_like:
                    self.add(
                        Finding(
                            Severity.ERROR,
                            "bad-crc",
                            f"{label} does not match its CRC-32: it was changed "
                            "after the archive was written, or is damaged",
                            file,
                            member.name,
                        )
                    )
            except TorchWeightsError as exc:
                if not data_like:
                    severity = Severity.SUSPICIOUS if exc.code == "limit-inflate" else Severity.ERROR
                    self.add(Finding(severity, exc.code, f"{label} cannot be read: {exc.message}", file, member.name))
                continue
            member_label = member.name if where is None else f"{where}: {member.name}"
            if data_like:
                # a storage's bytes: latent if a pickle or a zip, since loading never unpickles storages
                what = f"tensor {_quote(storage.tensor)}" if storage is not None else "a storage no tensor uses"
                self.latent(data, file, f"{member.name} (bytes of {what})", member_latent)
            elif kind == "pickle":
                self.stream(data, file, member_label, latent=latent, required=required)
            elif kind == "zip" and latent < _MAX_LATENT_DEPTH:
                self.zip(io.BytesIO(data), len(data), file, member_label, latent=latent + 1)
            elif kind == "npy":
                self.npy(data, file, member_label)

    # -- TorchScript source ---------------------------------------------------------------------------------
    def torchscript_code(self, fh: IO[bytes], member: ZipMember, file: str, where: str | None) -> None:
        """A TorchScript source file (``<root>/code/``, torch.package's ``.data/ts_code/``), which torch.jit.load
        compiles and runs: analysed statically (:func:`~torchweights.tools.scan.tscode.analyse`), never run."""
        label = member.name if where is None else f"{where}: {member.name}"
        over = self.source_bytes > self.limits.max_source_bytes  # reported once, at the member that went over
        self.source_bytes += member.size
        if over:
            return
        try:
            check_member_inflation(member, file, self.limits)
            if self.source_bytes > self.limits.max_source_bytes:
                raise ResourceLimitError(
                    f"it takes the TorchScript source of this file to {self.source_bytes} bytes, over the "
                    f"{self.limits.max_source_bytes}-byte budget, so neither it nor the source files after it were "
                    "analysed (torch writes tens of kB per module type). If you expect that much code: "
                    "scan(path, limits=Limits(max_source_bytes=...))",
                    code="limit-source-size",
                    path=file,
                )
            source = inflate(fh, member, member.size)
        except TorchWeightsError as exc:
            severity = Severity.SUSPICIOUS if exc.code == "limit-inflate" else Severity.ERROR
            self.add(Finding(severity, exc.code, f"TorchScript source {_quote(label)}: {exc.message}", file, label))
            return
        for found in analyse_torchscript(source):
            message = f"TorchScript source {_quote(label)}, line {found.line}: {found.message}"
            if found.severity == "dangerous":
                message += ". torch.jit.load and calls of the loaded model run this code; torchweights never does"
            self.add(Finding(Severity(found.severity), found.code, message, file, label, None, found.name, found.line))

    def might_be_pickle(self, fh: IO[bytes], member: ZipMember) -> bool:
        """Whether a member that only starts like a pickle (or a zip) is worth reading whole: see
        :func:`_worth_reading`. Tensor bytes fail at once, and are never read whole."""
        probe = inflate(fh, member, _PROBE_BYTES)
        if probe.startswith(b"PK\x03\x04"):
            return True  # a zip's directory is at its end
        return _worth_reading(
            probe[:2],
            scan_stream(
                probe,
                persistent_load=_lenient_persistent,
                max_opcodes=self.limits.max_pickle_opcodes,
                read_embedded=read_embedded,
            ),
        )

    def npy(self, data: bytes, file: str, where: str | None) -> None:
        """A .npy array: an object array's data is a pickle."""
        label = where or "the array"
        if len(data) < 10:
            return
        major = data[6]
        header_len = int.from_bytes(data[8:10], "little") if major == 1 else int.from_bytes(data[8:12], "little")
        start = (10 if major == 1 else 12) + header_len
        header = data[10 if major == 1 else 12 : start].decode("latin-1", "replace")
        if re.search(r"'descr'\s*:\s*'\|?O'", header) or "'O'" in header:
            self.stream(data, file, f"{label} (object array data)", start=start)

    def directory(self, path: str) -> None:
        """A torch.distributed.checkpoint folder: ``.metadata``, then every item it locates in the ``.distcp``
        files (each one a ``torch.save`` blob that ``dcp.load`` unpickles). A sharded set's shards are walked once
        its index has been read (see :meth:`shards`)."""
        try:
            entries = sorted(os.listdir(path))
        except OSError:
            return
        if ".metadata" not in entries:
            return
        metadata = os.path.join(path, ".metadata")
        size = os.path.getsize(metadata)
        self.pickle_file(metadata, size, required=True)
        if size > self.limits.max_pickle_bytes:
            return
        with open(metadata, "rb") as fh:
            root = scan_stream(
                fh.read(),
                persistent_load=_lenient_persistent,
                max_opcodes=self.limits.max_pickle_opcodes,
                read_embedded=read_embedded,
            ).value
        covered: set[str] = set()
        for fqn, relative, offset, length in _dcp_items(root):
            item = os.path.join(path, relative)
            where = f"item {_quote(fqn)} (bytes {offset} to {offset + length})"
            if "/" in relative or "\\" in relative or relative in ("", ".", "..") or not os.path.isfile(item):
                self.add(
                    Finding(
                        Severity.ERROR,
                        "dcp-item",
                        f"{where} is placed in {_quote(relative)}, which is not a file " "of this folder",
                        metadata,
                    )
                )
                continue
            covered.add(relative)
            if (
                offset < 0
                or length < 0
                or offset + length > os.path.getsize(item)
                or length > self.limits.max_pickle_bytes
            ):
                self.add(
                    Finding(
                        Severity.ERROR,
                        "dcp-item",
                        f"{where} lies outside {_quote(relative)} or is too large to " "scan",
                        item,
                    )
                )
                continue
            with open(item, "rb") as fh:
                fh.seek(offset)
                blob = fh.read(length)
            if blob.startswith(b"PK\x03\x04"):
                self.zip(io.BytesIO(blob), len(blob), item, where)
            elif blob[:1] and blob[0] in FIRST_OPCODES:
                self.sequence(blob, len(blob), item, where, required=True, latent=0)
        for name in entries:
            if name.endswith(".distcp") and name not in covered:
                self.add(Finding(Severity.INFO, "dcp-data", f"{_quote(name)} holds no item .metadata names", metadata))

    def open(self) -> Checkpoint | None:
        """The checkpoint as ``tw.load`` opens it, or None (with the reason in ``load_error``)."""
        options = ReadOptions(limits=self.limits, observer=self.observe)
        try:
            checkpoint = open_path(self.path, options)
            refuse_unreadable(checkpoint.path, checkpoint.extras)  # as tw.load refuses it
        except TorchWeightsError as exc:
            self.refusals()
            self.report.load_error = exc
            if exc.code == "not-found":  # nothing to refuse: there is no file
                self.add(Finding(Severity.ERROR, "not-found", exc.message, self.path))
                return None
            message = f"tw.load would refuse this file: {type(exc).__name__} [{exc.code}]: {exc.message}"
            self.add(Finding(Severity.ERROR, "load-refused", message, self.path))
            return None
        except (OSError, ValueError, MemoryError, RecursionError) as exc:
            self.refusals()
            self.add(Finding(Severity.ERROR, "scan-failed", f"opening it failed: {type(exc).__name__}", self.path))
            return None
        self.report.format = checkpoint.format
        for record in checkpoint.records.values():
            ref = record.storage
            if ref is not None and ref.member is not None:
                storage = self.storage_members.setdefault((ref.file, ref.member), _StorageMember(record.name, set()))
                storage.dtypes.add(record.dtype)
        self.refusals()
        return checkpoint

    def refusals(self) -> None:
        """tw.load refuses a file for the dangerous globals of the pickles it reads, as soon as it has read the
        first such pickle (here they were read, not refused): note them."""
        refused = [name for _, _, seen in self.reader_streams for name in seen.dangerous]
        self.refused = frozenset(refused)
        self.report.load_refuses = [n for n in dict.fromkeys(refused) if n not in self.allowed]

    def observe(self, where: str, start: int, seen: StreamScan) -> None:
        self.reader_streams.append((where, start, seen))

    def reader_findings(self) -> None:
        """The pickles the reader ran: for formats the structural walk does not know (legacy tar), they are the
        scan; for the others, a safety net that adds anything the walk missed."""
        walked = bool(self.report.streams) and self.report.format != "legacy-tar"
        for where, start, seen in self.reader_streams:
            missed = [
                r.name
                for r in seen.references
                if r.verdict == "dangerous" and self.report.globals.get(r.name) not in ("dangerous", "allowed")
            ]
            if walked and not missed:
                # already walked structurally; only its globals' verdicts are merged
                for ref in seen.references:
                    self.report.globals.setdefault(ref.name, ref.verdict)
                continue
            self.record(self.path, where, start, seen, 0)

    def shards(self, checkpoint: Checkpoint) -> None:
        if checkpoint.format.startswith("sharded") or len(checkpoint.files) > 1:
            for shard in checkpoint.files[1:]:
                if shard != self.path:
                    self.guarded(self.file, shard)

    def tensors(self, checkpoint: Checkpoint) -> None:
        """uint8 and int8 tensors whose bytes are a pickle or a zip (latent), probed where each tensor starts (its
        storage offset: a view into a bigger storage) as well as where its storage starts, in every format (zip
        storage members were probed from their start already). Tensors of every other dtype are never read."""
        probed: set[tuple[str, str | None, int, int]] = set()
        for record in checkpoint.records.values():
            ref = record.storage
            if ref is None or record.dtype not in _BYTE_DTYPES:
                continue
            if ref.member is not None:
                storage = self.storage_members.get((ref.file, ref.member))
                if storage is not None and not storage.bytes_like:
                    continue  # also read as another dtype: never probed, as in the member walk
            starts = {0, record.storage_offset} - ({0} if ref.member is not None else set())
            for start in sorted(starts):
                key = (ref.file, ref.member, ref.offset, start)
                if key in probed or not 0 <= start <= ref.nbytes - 2:
                    continue
                probed.add(key)
                where = f"{record.dtype} tensor {_quote(record.name)}"
                self.probe(ref, start, where + (f" (at byte {start} of its storage)" if start else ""))

    def probe(self, ref: StorageRef, start: int, where: str) -> None:
        """The bytes of storage ``ref`` from ``start`` on, read only as far as they may be a pickle or a zip."""
        nbytes = ref.nbytes - start
        if nbytes > self.limits.max_pickle_bytes:
            return
        try:
            probe = bytes(read_byte_range(ref, start, start + min(nbytes, _PROBE_BYTES)))
            if not probe[:1] or (probe[0] not in FIRST_OPCODES and not probe.startswith(b"PK\x03\x04")):
                return
            if nbytes > _PROBE_BYTES and not probe.startswith(b"PK\x03\x04"):
                if not _worth_reading(
                    probe[:2],
                    scan_stream(
                        probe,
                        persistent_load=_lenient_persistent,
                        max_opcodes=self.limits.max_pickle_opcodes,
                        read_embedded=read_embedded,
                    ),
                ):
                    return
            blob = probe if nbytes <= _PROBE_BYTES else bytes(read_byte_range(ref, start, ref.nbytes))
        except TorchWeightsError:
            return  # the storage cannot be read: loading it would fail the same way
        self.latent(blob, ref.file, where, 1)


def _within(where: str | None) -> str:
    return f" (in {where})" if where else ""


def _member_kind(member: ZipMember, head: bytes) -> str | None:
    if _is_pickle_head(head):
        return "pickle"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:1] and (head[0] in FIRST_OPCODES or member.name.endswith(_PICKLE_NAMES)):
        return "pickle"
    return None


def _storage_layout(d: ZipDirectory) -> Callable[[str], bool]:
    """Which member names this archive's layout gives to tensor bytes: ``<root>/data/<key>`` beside
    ``<root>/data.pkl`` (torch.save, TorchScript), ``<root>/constants/<key>`` beside ``<root>/constants.pkl``
    (TorchScript), ``<root>/.data/<id>.storage`` (torch.package). Used for storages no record names (or all of
    them, when loading refuses the file): what they hold is data to every loader."""
    folders: set[str] = set()
    for member in d.members:
        for pickle_name, folder in (("data.pkl", "data/"), ("constants.pkl", "constants/")):
            if member.name == pickle_name or member.name.endswith("/" + pickle_name):
                folders.add(member.name[: -len(pickle_name)] + folder)
    prefixes = sorted(folders)

    def is_storage(name: str) -> bool:
        folder, _, base = name.rpartition("/")
        if base.endswith(".storage") and (folder == ".data" or folder.endswith("/.data")):
            return True
        return any(name.startswith(p) and "/" not in name[len(p) :] for p in prefixes)

    return is_storage


def _is_code_file(name: str) -> bool:
    parts = name.split("/")
    return name.endswith(".py") or (len(parts) > 2 and parts[1] == "code")


def _blobs(value: Any, opcodes: int) -> Iterator[tuple[str, bytes]]:
    """Bytes values inside an unpickled tree that are themselves a pickle or a zip, with a short path to each."""
    budget = 4 * opcodes + 10_000
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack and budget > 0:
        obj, path = stack.pop()
        budget -= 1
        if isinstance(obj, (bytes, bytearray)):
            head = bytes(obj[:4])
            if _is_pickle_head(head) or head == b"PK\x03\x04" or (head[:1] and head[0] in FIRST_OPCODES):
                yield f"bytes value at {_quote(path or '<root>')}", bytes(obj)
            continue
        if id(obj) in seen or isinstance(obj, (str, int, float, bool, type(None))):
            continue
        seen.add(id(obj))
        children: list[tuple[str, Any]] = []
        if isinstance(obj, dict):
            children = [(_label(k), v) for k, v in obj.items()]
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            children = [(str(i), v) for i, v in enumerate(obj)]
        elif type(obj).__name__ == "ndarray" and getattr(getattr(obj, "dtype", None), "hasobject", False):
            children = [(str(i), v) for i, v in zip(range(budget), obj.flat)]  # an object array's elements
        elif isinstance(obj, Stub):
            children = [
                ("args", obj.args),
                ("kwargs", obj.kwargs),
                ("state", obj.state),
                ("items", obj.items),
                ("dictitems", obj.dictitems),
            ]
        elif hasattr(obj, "__dict__") and type(obj).__module__ in ("argparse", "types"):
            children = list(vars(obj).items())
        for name, child in reversed(children):
            stack.append((child, f"{path}.{name}" if path else name))


def _dcp_items(root: Any) -> Iterator[tuple[str, str, int, int]]:
    """``(item name, file, offset, length)`` of every item a torch.distributed.checkpoint ``.metadata`` locates
    (its ``storage_data``: ``MetadataIndex`` -> ``_StorageInfo``), read from the inert stubs."""
    storage = root.attributes.get("storage_data") if isinstance(root, Stub) else None
    if not isinstance(storage, dict):
        return
    for index, info in list(storage.items())[:1_000_000]:
        fqn = index.attributes.get("fqn") if isinstance(index, Stub) else None
        where = info.attributes if isinstance(info, Stub) else {}
        relative, offset, length = where.get("relative_path"), where.get("offset"), where.get("length")
        if isinstance(relative, str) and type(offset) is int and type(length) is int:
            yield (fqn if isinstance(fqn, str) else "?"), relative, offset, length


def _label(key: Any) -> str:
    if isinstance(key, str):
        return printable(key[:40])
    if type(key) is int and key.bit_length() <= 64:
        return str(key)
    return "?"


def _dangerous_text(name: str, how: str, where: str, latent: int, refused: bool) -> str:
    via = {"getattr": " (built with builtins.getattr)", "BUILD": "", "EXT": " (through an extension code)"}.get(how, "")
    if name.startswith("copyreg extension code"):
        what = (
            f"{where} uses {name}: pickle.load resolves it through the loading process's copyreg registry, so any "
            "process where a library registered the code calls whatever that names (torch never writes these)"
        )
    elif how == "BUILD":
        what = f"{where} sets attributes that change behaviour under pickle.load: {name}"
    else:
        what = f"{where} references {name}{via}, which can run code or touch the system"
    if latent:
        return (
            f"{what}. It sits in an embedded pickle that loading does not run; code that unpickles it would. "
            "Do not unpickle that value."
        )
    if refused:
        return (
            f"{what}. tw.load refuses the file for it (nothing is executed); torch.load(weights_only=False) or "
            "pickle.load would run it. Do not load this file unless you wrote it yourself."
        )
    return (
        f"{what}. tw.load does not run it (no pickle it reads names it, and it never calls what a file names); "
        "pickle.load of this pickle would. Do not unpickle it unless you wrote the file yourself."
    )


def _call_text(ref: Reference, where: str, latent: int) -> str:
    """The message of a call that ``pickle.load`` would make of a callable nobody vetted."""
    name = ref.name
    what = (
        f"{where} calls {name} with {ref.arguments} ({ref.how}): pickle.load and torch.load(weights_only=False) "
        f"would run it, and {name} is neither a reconstructor torchweights knows nor one of torch's own classes, "
        "so nothing vouches for what it does (many functions of the standard library and of other packages run "
        "commands or read files)"
    )
    if latent:
        return (
            f"{what}. It sits in an embedded pickle that loading does not run; code that unpickles it would. "
            "Do not unpickle that value."
        )
    return (
        f"{what}. tw.load does not run it (it becomes an inert stub). If {name} is a class you trust (an Enum "
        "member, for one, pickles as a call of its class with its value), allow it by name: "
        f"tw.scan(path, allow_globals=[{name!r}]) (CLI: --allow-global {name}); otherwise do not load this file "
        "with torch.load or pickle."
    )


def _unknown_text(name: str, how: str, where: str, latent: int) -> str:
    text = (
        f"{where} references {name}, a class or function torchweights does not know; loading keeps it as an "
        "inert stub and never imports it"
    )
    if latent:
        text += " (in an embedded pickle)"
    return text + ". Allow it only if you trust the package that defines it (allow_globals=[...])."


def to_json(reports: list[ScanReport]) -> str:
    """The reports as one JSON document."""
    return json.dumps({"reports": [r.to_dict() for r in reports]}, indent=None, allow_nan=False)
