"""Integrity checks of checkpoint files: is every byte what the file (or a manifest) says it should be?

:func:`verify` runs every check that applies and collects the results, problems included, into a
:class:`VerifyReport` instead of stopping at the first:

* safetensors: the header is valid and the tensors tile the data exactly up to the end of the file (the strict
  reader: bounds, overlaps, gaps, sizes vs dtype x shape, trailing or missing bytes);
* sharded sets: every shard named by the index is present and passes its own checks, the index's
  ``metadata.total_size`` equals the bytes of the tensors it indexes, every indexed tensor is in its shard, no
  tensor is in two shards, and no shard holds tensors the index does not list;
* torch zip files: the zip structure (our own parser, :mod:`torchweights.formats._zip`) and the CRC-32 of every
  member, recomputed from its bytes, then the records (storage sizes against their members);
* torch.distributed.checkpoint folders: ``.metadata`` and every item read (the records), and the CRC-32 of every
  tensor storage (each chunk is a ``torch.save`` archive embedded in a ``.distcp`` file, whose members record one);
* legacy torch and pickle files carry no checksums: only their records are checked (use a manifest);
* with ``manifest``: the sha256 of every file of the checkpoint against a ``SHA256SUMS`` file
  (``<hex>  <name>`` per line, as ``sha256sum`` writes it).

No tensor is built and torch is never imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import field
from typing import Any

from ..errors import CheckpointNotFoundError, CheckpointReadError, CorruptCheckpointError, TorchWeightsError
from ..limits import DEFAULT_LIMITS, Limits
from ..progress import ProgressCallback, current, metered
from ..records import StorageRef
from ..storage.crc import crc32
from ..structs import structure
from ..style import current as current_style
from ..style import status
from ..text import format_bytes, plural, quote, shorten_list, wrap

__all__ = ["Check", "VerifyReport", "parse_manifest", "sha256_file", "verify"]

_READ_BYTES = 1 << 20
#: Formats stored in zip archives, whose members carry CRC-32 values.
_ZIP_FORMATS = frozenset({"torch-zip", "torchscript", "torch-package"})


@structure(frozen=True)
class Check:
    """One check: what was checked, whether it passed, and the detail (the problem, when it failed)."""

    name: str
    ok: bool
    detail: str = ""
    code: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        out: dict[str, Any] = {"check": self.name, "ok": self.ok}
        if self.detail:
            out["detail"] = self.detail
        if self.code:
            out["code"] = self.code
        return out


@structure
class VerifyReport:
    """Every check :func:`verify` ran on one checkpoint.

    Attributes:
        path: what was verified.
        format: its format id.
        files: every file checked.
        checks: the checks, in the order run.
    """

    path: str
    format: str
    files: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def problems(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.problems

    def add(self, name: str, ok: bool, detail: str = "", code: str = "") -> None:
        """Record one check."""
        self.checks.append(Check(name, ok, detail, code))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "path": self.path,
            "format": self.format,
            "ok": self.ok,
            "files": list(self.files),
            "checks": [c.to_dict() for c in self.checks],
            "problems": len(self.problems),
        }

    @property
    def summary(self) -> str:
        """One line: ``ok`` or how many problems."""
        if self.ok:
            return f"ok: {plural(len(self.checks), 'check')} passed on {plural(len(self.files), 'file')}"
        return f"{plural(len(self.problems), 'problem')} in {plural(len(self.checks), 'check')}"

    def __repr__(self) -> str:
        return f"<VerifyReport {quote(self.path)} ({self.format}): {self.summary}>"

    def _repr_html_(self) -> str:
        """The report as a notebook shows it: the summary and every check, failed ones highlighted."""
        from ..report.html import Table, card

        rows = [["ok" if c.ok else "FAIL", c.name, c.detail] for c in self.checks]
        failed = frozenset(i for i, c in enumerate(self.checks) if not c.ok)
        return card(
            "VerifyReport",
            "ok" if self.ok else "bad",
            self.summary,
            [("path", self.path), ("format", self.format), ("files", len(self.files))],
            [Table("checks", ("result", "check", "detail"), rows, flagged=failed)],
        )

    def __str__(self) -> str:
        look = current_style()
        lines = wrap(f"{self.path} ({self.format}): {self.summary}", indent="", hang="  ")
        for check in self.checks:
            mark = "ok" if check.ok else "FAIL"
            code = f" [{check.code}]" if check.code else ""
            detail = f": {check.detail}" if check.detail else ""
            first, *rest = wrap(f"{mark:4} {check.name}{code}{detail}", indent="  ", hang="       ")
            lines += [look.paint_lead(first, 2, status(mark)), *rest]
        return "\n".join(lines) + "\n"


def sha256_file(path: str) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB pieces.

    Raises:
        CheckpointNotFoundError, CheckpointReadError: the file cannot be read.
    """
    digest = hashlib.sha256()
    meter = current()
    try:
        with open(path, "rb") as fh:
            while True:
                piece = fh.read(_READ_BYTES)
                if not piece:
                    break
                digest.update(piece)
                if meter is not None:
                    meter.advance(len(piece))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{quote(path)} does not exist.", path=path) from None
    except OSError as exc:
        raise CheckpointReadError(f"cannot read {quote(path)}: {exc.strerror or exc}", path=path) from None
    return digest.hexdigest()


_MANIFEST_LINE = re.compile(
    r"^(?:SHA256 \((?P<bsd>.+)\) = (?P<bsdhex>[0-9a-fA-F]{64})|(?P<hex>[0-9a-fA-F]{64}) [ *](?P<name>.+))$"
)


def parse_manifest(path: str) -> tuple[dict[str, str], list[str]]:
    """``{name: hex}`` from a ``sha256sum`` (``<hex>  name``, ``<hex> *name``) or BSD-style manifest, and the
    lines that are neither (blank lines and ``#`` comments are skipped).

    Raises:
        CheckpointNotFoundError, CheckpointReadError: the manifest cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(64 << 20)
    except FileNotFoundError:
        raise CheckpointNotFoundError(
            f"the manifest {quote(path)} does not exist. Pass the SHA256SUMS file that came with the checkpoint.",
            path=path,
        ) from None
    except OSError as exc:
        raise CheckpointReadError(f"cannot read the manifest {quote(path)}: {exc.strerror or exc}", path=path) from None
    entries: dict[str, str] = {}
    bad: list[str] = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _MANIFEST_LINE.match(line)
        if m is None:
            bad.append(line[:80])
            continue
        name = m.group("bsd") or m.group("name")
        digest = m.group("bsdhex") or m.group("hex")
        entries[name.replace("\\", "/").removeprefix("./")] = digest.lower()
    return entries, bad


def verify(
    path: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Check a checkpoint's integrity (see the module docstring); problems are reported, not raised.

    Args:
        path: a checkpoint file, a sharded index or its folder.
        manifest: a ``SHA256SUMS`` file to check every file of the checkpoint against.
        allow_globals: pickle globals you trust, for reading the records of pickle-based files.
        limits: resource bounds for hostile files.
        progress: ``progress(done_bytes, total_bytes)`` for the bytes read (zip members checked against their
            CRC-32, files hashed for the manifest); the total grows as each file is reached. See
            :mod:`torchweights.progress`.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is True when every check passed.

    Raises:
        CheckpointNotFoundError, NotACheckpointError, UnsupportedCheckpointError: there is nothing to verify (no
            file, not a checkpoint, a format torchweights does not read).
    """
    from ..detect.content import detect
    from ..formats import ReadOptions

    name = os.fspath(path)
    fmt = detect(name)
    options = ReadOptions(allow_globals=frozenset(allow_globals), limits=limits)
    report = VerifyReport(name, fmt)
    with metered(progress):
        if fmt == "sharded":
            _verify_sharded(report, name, options)
        else:
            _verify_file(report, name, fmt, options)
        if manifest is not None:
            _verify_manifest(report, os.fspath(manifest))
    return report


def _verify_file(report: VerifyReport, path: str, fmt: str, options: Any, label: str = "") -> int | None:
    """Checks of one file; returns the bytes of its tensors when its records could be read."""
    from ..formats import open_path

    report.files.append(path)
    where = label or os.path.basename(path)
    if fmt in _ZIP_FORMATS:
        _verify_zip(report, path, where)
    try:
        ckpt = open_path(path, options)
    except CorruptCheckpointError as exc:
        report.add(f"{where}: records", False, exc.message, exc.code)
        return None
    if ckpt.format == "safetensors":
        what = "header valid; tensors tile the data up to the end of the file"
    elif ckpt.format == "dcp":
        what = "items readable"
        report.files[report.files.index(path) :] = list(ckpt.files)  # its files, not the folder (manifest, count)
        _verify_storages(report, ckpt, where)
    elif fmt in _ZIP_FORMATS:
        what = "pickles and storages consistent with the members"
    else:
        what = "records readable; this format carries no checksums (use a manifest)"
    report.add(f"{where}: records", True, f"{plural(len(ckpt.records), 'tensor')}, {format_bytes(ckpt.nbytes)}; {what}")
    return ckpt.nbytes


def _verify_storages(report: VerifyReport, ckpt: Any, where: str) -> None:
    """The CRC-32 of every tensor storage whose container records one (the chunks of a DCP folder: zip members of
    archives embedded in its ``.distcp`` files), recomputed from its bytes."""
    from ..storage.raw import storage_crc

    refs: dict[tuple[str, str], StorageRef] = {}
    for record in ckpt.records.values():
        for part in [chunk for _, chunk in record.chunks] if record.chunks else [record]:
            ref = part.storage
            if ref is not None and ref.crc32 is not None:
                refs.setdefault((ref.file, ref.key), ref)
    meter = current()
    if meter is not None:
        meter.grow(sum(ref.nbytes for ref in refs.values()))
    bad = 0
    for ref in refs.values():
        try:
            value = storage_crc(ref)
        except CorruptCheckpointError as exc:
            bad += 1
            report.add(f"{where}: crc {quote(ref.key)}", False, exc.message, exc.code)
            continue
        if meter is not None:
            meter.advance(ref.nbytes)
        if value != ref.crc32:
            bad += 1
            what = f"{quote(os.path.basename(ref.file))} member {quote(ref.member or ref.key)}"
            report.add(
                f"{where}: crc {quote(ref.key)}",
                False,
                f"{what}: CRC-32 is {value:08x}, {ref.crc32:08x} recorded: its bytes changed",
                "bad-crc",
            )
    if refs and not bad:
        report.add(f"{where}: storage CRC-32", True, f"{plural(len(refs), 'storage')} match their recorded CRC-32")


def _verify_zip(report: VerifyReport, path: str, where: str) -> None:
    """The zip structure and the CRC-32 of every member."""
    from ..formats._zip import read_directory

    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise CheckpointReadError(f"cannot read {quote(path)}: {exc.strerror or exc}", path=path) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        directory = read_directory(fh, path, size)
        for problem in directory.problems:
            report.add(f"{where}: zip structure", False, problem.message, problem.code)
        if not directory.problems:
            report.add(f"{where}: zip structure", True, f"{plural(len(directory.members), 'member')}")
        bad: list[str] = []
        checked = 0
        meter = current()
        if meter is not None:
            meter.grow(sum(m.compressed_size for m in directory.members if _checkable(m, size)))
        for member in directory.members:
            if not _checkable(member, size):
                continue  # already reported as a structure problem
            checked += 1
            mismatch = _member_crc_problem(fh, member)
            if mismatch:
                bad.append(mismatch)
                report.add(f"{where}: crc {quote(member.name)}", False, mismatch, "bad-crc")
        if checked and not bad:
            report.add(f"{where}: member CRC-32", True, f"{plural(checked, 'member')} match their recorded CRC-32")


def _checkable(member: Any, size: int) -> bool:
    """Whether a member's bytes lie in the file and are stored or deflated: their CRC-32 can be checked."""
    return member.data_offset >= 0 and member.data_end <= size and member.compress_type in (0, 8)


def _member_crc_problem(fh: Any, member: Any) -> str | None:
    """Why a member's bytes do not match its recorded CRC-32 and size, or None."""
    fh.seek(member.data_offset)
    remaining = member.compressed_size
    crc = 0
    produced = 0
    meter = current()
    inflater = zlib.decompressobj(-15) if member.compress_type == 8 else None
    try:
        while remaining > 0:
            piece = fh.read(min(_READ_BYTES, remaining))
            if not piece:
                return f"cut off after {member.compressed_size - remaining:,} of {member.compressed_size:,} bytes"
            remaining -= len(piece)
            if meter is not None:
                meter.advance(len(piece))
            if inflater is not None:
                piece = inflater.decompress(piece)
                if produced + len(piece) > member.size:
                    return f"inflates to more than the {member.size:,} bytes it declares"
            crc = crc32(memoryview(piece), crc)
            produced += len(piece)
        if inflater is not None:
            tail = inflater.flush()
            crc = crc32(memoryview(tail), crc)
            produced += len(tail)
    except zlib.error as exc:
        return f"does not inflate ({exc})"
    if produced != member.size:
        return f"holds {produced:,} bytes, {member.size:,} recorded"
    if crc != member.crc32:
        return f"CRC-32 is {crc:08x}, {member.crc32:08x} recorded: its bytes changed"
    return None


def _verify_sharded(report: VerifyReport, path: str, options: Any) -> None:
    """The index, every shard on its own, total_size, and the agreement of shards and index."""
    from ..detect.content import detect
    from ..formats import open_path
    from ..formats._files import decode_json, read_prefix

    index_path = path
    if os.path.isdir(path):
        found = sorted(n for n in os.listdir(path) if n.endswith(".index.json"))
        index_path = os.path.join(path, found[0]) if len(found) == 1 else path
    report.files.append(index_path)
    weight_map: dict[str, Any] = {}
    total: Any = None
    try:
        index = decode_json(read_prefix(index_path, options.limits.max_index_bytes))
        weight_map = dict(index.get("weight_map") or {}) if isinstance(index, dict) else {}
        meta = index.get("metadata") if isinstance(index, dict) else None
        total = meta.get("total_size") if isinstance(meta, dict) else None
    except Exception:  # the full reader below names what is wrong with the index
        weight_map = {}
    folder = os.path.dirname(index_path) or "."
    sizes: dict[str, int] = {}
    for shard in sorted({s for s in weight_map.values() if isinstance(s, str)}):
        shard_path = os.path.join(folder, shard)
        if os.path.isabs(shard) or ".." in shard.split("/") or not os.path.isfile(shard_path):
            continue  # missing or unsafe: reported by the agreement check
        try:
            fmt = detect(shard_path)
        except TorchWeightsError as exc:
            report.files.append(shard_path)
            report.add(f"{shard}: format", False, exc.message, exc.code)
            continue
        _verify_file(report, shard_path, fmt, options, label=shard)
    try:
        ckpt = open_path(index_path, options)
    except CorruptCheckpointError as exc:
        report.add("shards vs index", False, exc.message, exc.code)
        return
    unindexed = ckpt.metadata.get("unindexed") or []
    if unindexed:
        report.add(
            "shards vs index",
            False,
            f"{plural(len(unindexed), 'tensor')} in the shards not listed in the index: "
            f"{shorten_list(quote(n) for n in unindexed)}; loaders that follow the index would skip them",
            "shard-unindexed",
        )
    else:
        report.add("shards vs index", True, f"{plural(len(weight_map), 'indexed tensor')}, each in its shard")
    for name, record in ckpt.records.items():
        if name in weight_map:
            sizes[name] = record.nbytes
    indexed = sum(sizes.values())
    if total is None:
        report.add("index total_size", True, "the index records no metadata.total_size (optional)")
    elif not isinstance(total, int) or isinstance(total, bool) or total != indexed:
        report.add(
            "index total_size",
            False,
            f"metadata.total_size is {total!r}, but the indexed tensors hold {format_bytes(indexed)}",
            "shard-total-size",
        )
    else:
        report.add("index total_size", True, f"{format_bytes(total)}, the bytes of the indexed tensors")


def _verify_manifest(report: VerifyReport, manifest: str) -> None:
    entries, bad = parse_manifest(manifest)
    folder = os.path.dirname(os.path.abspath(manifest))
    if bad:
        report.add(
            "manifest",
            False,
            f"{plural(len(bad), 'line')} of {quote(manifest)} {'is' if len(bad) == 1 else 'are'} not "
            f"'<sha256>  <file>': {shorten_list(quote(b) for b in bad[:5])}",
            "bad-manifest",
        )
    for path in report.files:
        rel = os.path.relpath(os.path.abspath(path), folder).replace(os.sep, "/")
        expected = entries.get(rel) or entries.get(os.path.basename(path))
        label = f"sha256 {quote(rel)}"
        if expected is None:
            report.add(label, False, f"not listed in {quote(manifest)}", "not-in-manifest")
            continue
        meter = current()
        if meter is not None and os.path.isfile(path):
            meter.grow(os.path.getsize(path))
        actual = sha256_file(path)
        if actual == expected:
            report.add(label, True, actual)
        else:
            report.add(label, False, f"is {actual}, the manifest says {expected}", "sha256-mismatch")
