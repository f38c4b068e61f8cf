"""The state every part of scan's walk shares (:class:`Walk`): the report being filled, findings added once each,
and :meth:`Walk.record`, which turns what one pickle stream references into findings, with their messages. The
families of files are walked by the subclasses: :mod:`~torchweights.tools.scan.archives` (zip members),
:mod:`~torchweights.tools.scan.files` (files by their first bytes, pickle sequences, folders), and
:class:`~torchweights.tools.scan.scanner.Scanner` (the checkpoint as loading opens it).
"""

from __future__ import annotations

from typing import Any

from ...formats._pickled import read_embedded
from ...limits import Limits
from ...structs import structure
from ...unpickle.stream import StreamScan, scan_stream
from .messages import call_text, dangerous_text, unknown_text
from .probe import BYTE_DTYPES, MAX_LATENT_DEPTH, blobs, is_pickle, lenient_persistent, worth_reading
from .report import Finding, PickleStream, ScanReport, Severity

__all__ = ["StorageMember", "Walk"]


#: Findings kept per scan at most.
_MAX_FINDINGS = 1000


@structure
class StorageMember:
    """A zip member that holds the bytes of a storage: the first tensor that uses it and every dtype it is read as."""

    tensor: str
    dtypes: set[str]

    @property
    def bytes_like(self) -> bool:
        """Read as bytes (uint8 / int8) only: the one kind of tensor a serialised blob can live in."""
        return self.dtypes <= BYTE_DTYPES


class Walk:
    """The state of one scan and what every part of the walk shares: the findings (deduplicated, capped), the
    recording of one pickle stream (its globals, their findings, and the blobs inside its value)."""

    def __init__(self, path: str, limits: Limits, allowed: frozenset[str] = frozenset()) -> None:
        self.path = path
        self.limits = limits
        self.allowed = allowed
        self.report = ScanReport(path)
        self.seen_findings: set[tuple[Any, ...]] = set()
        self.reader_streams: list[tuple[str, int, StreamScan]] = []
        self.storage_members: dict[tuple[str, str], StorageMember] = {}  # (file, zip member) -> its storage
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
        a member no reader needs): unless :func:`is_pickle` says they really are one, they are data and the
        stream is forgotten (None), and a real one that fails later is never "unreadable"."""
        seen = scan_stream(
            data,
            start=start,
            end=end,
            persistent_load=lenient_persistent,
            max_bytes=self.limits.max_pickle_bytes,
            where=where,
            max_opcodes=self.limits.max_pickle_opcodes,
            read_embedded=read_embedded,
        )
        if not required and not is_pickle(bytes(data[start : start + 2]), seen):
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
                text = call_text(ref, where, latent)
                self.add(
                    Finding(Severity.DANGEROUS, f"{prefix}dangerous-call", text, file, where, ref.offset, ref.name)
                )
            elif verdict == "dangerous":
                text = dangerous_text(ref.name, ref.how, where, latent, ref.name in self.refused)
                self.add(
                    Finding(Severity.DANGEROUS, f"{prefix}dangerous-global", text, file, where, ref.offset, ref.name)
                )
            elif verdict == "unknown" and ref.name not in called:
                text = unknown_text(ref.name, ref.how, where, latent)
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
        elif seen.value is not None and latent < MAX_LATENT_DEPTH:
            for blob_where, blob in blobs(seen.value, seen.opcodes):
                self.latent(blob, file, f"{where}, {blob_where}", latent + 1)

    def worth_reading(self, probe: bytes) -> bool:
        """Whether bytes that only start like a pickle (their first ``PROBE_BYTES``) are worth reading whole: see
        :func:`~.probe.worth_reading`. Tensor bytes fail at once."""
        seen = scan_stream(
            probe,
            persistent_load=lenient_persistent,
            max_opcodes=self.limits.max_pickle_opcodes,
            read_embedded=read_embedded,
        )
        return worth_reading(probe[:2], seen)

    def latent(self, blob: bytes, file: str, where: str, depth: int) -> None:
        """Bytes inside a value or a byte tensor that may be a pickle or a zip (see
        :meth:`~torchweights.tools.scan.files.FileWalk.latent`)."""
        raise NotImplementedError

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
