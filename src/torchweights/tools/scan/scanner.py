"""``tw.scan``: say whether a file is safe to load, before anyone loads it. Static only: nothing is imported or
called, in any format.

Every pickle the file holds is read by the same machine and the same table that loading uses
(:func:`~torchweights.unpickle.stream.scan_stream`), so ``tw.load`` never runs what scan calls safe and never
refuses, for safety or structure, what scan calls clean. (Scan reads no tensor bytes: a weight damaged after
saving, which ``tw.load`` catches by its CRC-32, is not scan's to see.) What is walked:

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
  code that unpickles them later would), only when the bytes really are one (:func:`~.probe.is_pickle`). Storages of
  every other dtype are data and are never read.

A global the pickle calls as a function with arguments that nobody vetted (neither in the reconstructor table nor
one of torch's own classes) is a ``dangerous-call``: see :func:`~torchweights.unpickle.policy.vetted_call`.

The file is opened the way ``tw.load`` opens it first (the members that hold storages, and what ``tw.load`` does
with the file, are then known: :attr:`ScanReport.loads`, :attr:`ScanReport.load_refuses`). The verdict is
``dangerous`` (exit 1), ``unreadable`` (exit 2: something could not be fully read, or loading refuses the file),
or ``clean`` (exit 0, possibly with warnings such as unknown classes, which become inert stubs when loading).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ...errors import TorchWeightsError
from ...formats import ReadOptions, open_path
from ...formats.tree import refuse_unreadable
from ...limits import DEFAULT_LIMITS, Limits
from ...records import Checkpoint, StorageRef, TensorRecord
from ...storage.raw import read_byte_range
from ...text import printable
from ...unpickle.machine import FIRST_OPCODES
from ...unpickle.policy import refuse_dangerous_allowed
from ...unpickle.stream import StreamScan
from .files import FileWalk
from .messages import short_quote
from .probe import BYTE_DTYPES, PROBE_BYTES
from .report import SEVERITIES, Finding, ScanReport, Severity
from .walk import StorageMember

__all__ = ["Scanner", "scan"]


def scan(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, allow_globals: Iterable[str] = ()
) -> ScanReport:
    """Statically analyse every pickle in ``path`` and say whether loading it is safe.

    Args:
        path: a checkpoint file, sharded index or folder, or any file to check.
        limits: resource bounds (the same as loading's).
        allow_globals: ``module.qualname`` names you trust, as ``tw.load(allow_globals=...)`` takes them: their
            calls and references are not reported (verdict ``allowed``). Nothing is imported either way. A name
            that can run code or touch the system by itself (``posix.system``) is never allowed, here as in
            ``tw.load``: ``RuleError`` code ``dangerous-allowed``.

    Returns:
        A :class:`ScanReport`; it never raises for a bad file: unreadable parts make the verdict ``unreadable``.
    """
    allow_globals = frozenset(allow_globals)
    refuse_dangerous_allowed(allow_globals)
    started = time.perf_counter()
    scanner = Scanner(os.fspath(path), limits, frozenset(allow_globals))
    scanner.run()
    report = scanner.report
    report.findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.file, f.member or "", f.offset or 0))
    report.seconds = time.perf_counter() - started
    return report


class Scanner(FileWalk):
    """One scan: the checkpoint opened as ``tw.load`` opens it, the structural walk, then the reader's own pickles
    and the byte tensors it found."""

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
                    f"resource {short_quote(resource)} embeds TorchScript code (module {', '.join(ids)} under "
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
        self.report.files = list(checkpoint.files)
        for record in _stored(checkpoint):
            ref = record.storage
            if ref is not None and ref.member is not None:
                storage = self.storage_members.setdefault((ref.file, ref.member), StorageMember(record.name, set()))
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
        if checkpoint.format == "dcp":
            return  # its .distcp files hold archives at offsets, each walked by FileWalk.directory
        if checkpoint.format.startswith("sharded") or len(checkpoint.files) > 1:
            for shard in checkpoint.files[1:]:
                if shard != self.path:
                    self.guarded(self.file, shard)

    def tensors(self, checkpoint: Checkpoint) -> None:
        """uint8 and int8 tensors whose bytes are a pickle or a zip (latent), probed where each tensor starts (its
        storage offset: a view into a bigger storage) as well as where its storage starts, in every format (zip
        storage members were probed from their start already). Tensors of every other dtype are never read."""
        probed: set[tuple[str, str | None, int, int]] = set()
        for record in _stored(checkpoint):
            ref = record.storage
            if ref is None or record.dtype not in BYTE_DTYPES:
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
                where = f"{record.dtype} tensor {short_quote(record.name)}"
                self.probe(ref, start, where + (f" (at byte {start} of its storage)" if start else ""))

    def probe(self, ref: StorageRef, start: int, where: str) -> None:
        """The bytes of storage ``ref`` from ``start`` on, read only as far as they may be a pickle or a zip."""
        nbytes = ref.nbytes - start
        if nbytes > self.limits.max_pickle_bytes:
            return
        try:
            probe = bytes(read_byte_range(ref, start, start + min(nbytes, PROBE_BYTES)))
            if not probe[:1] or (probe[0] not in FIRST_OPCODES and not probe.startswith(b"PK\x03\x04")):
                return
            if nbytes > PROBE_BYTES and not probe.startswith(b"PK\x03\x04"):
                if not self.worth_reading(probe):
                    return
            blob = probe if nbytes <= PROBE_BYTES else bytes(read_byte_range(ref, start, ref.nbytes))
        except TorchWeightsError:
            return  # the storage cannot be read: loading it would fail the same way
        self.latent(blob, ref.file, where, 1)


def _stored(checkpoint: Checkpoint) -> Iterator[TensorRecord]:
    """The records whose storages hold the checkpoint's bytes: each tensor's, or each of its pieces' for a tensor
    stored in pieces (:attr:`TensorRecord.chunks`)."""
    for record in checkpoint.records.values():
        if record.chunks is None:
            yield record
        else:
            yield from (piece for _, piece in record.chunks)
