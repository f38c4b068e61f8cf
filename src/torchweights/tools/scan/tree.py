"""``tw.scan_tree``: scan every checkpoint under folders (``torchweights scan DIR``), with one summary.

What is one checkpoint, and so one :class:`~.report.ScanReport`:

* a file named on its own (any name: it is read by its content, as ``tw.scan`` reads it);
* in a folder walked, every file whose name matches an ``include`` glob (default :data:`DEFAULT_INCLUDE`, the names
  checkpoints are saved under) and no ``exclude`` glob;
* a sharded set, under its index (``*.index.json``): the shards the index names are scanned with it and not again on
  their own (a shard the index does not name, or every shard when the index cannot be read, is scanned on its own);
* a torch.distributed.checkpoint folder (one holding a ``.metadata`` file): the folder is one checkpoint, its
  ``.distcp`` files are not scanned again; other files in it still are.

Globs (``fnmatch``: ``*``, ``?``, ``[abc]``) match case-insensitively; one without ``/`` matches the name of a file
or folder, one with ``/`` its path relative to the folder walked (``sub/*.bin``). ``exclude`` also prunes folders
(``--exclude .git``). ``include`` replaces the default list.

Files that are not checkpoints at all: in a folder walked, a file whose name is none of :data:`DEFAULT_INCLUDE`
(found because ``include`` asks for more, ``include=["*"]``) and whose content detection says is no checkpoint (a
:class:`~torchweights.errors.NotACheckpointError`: ``config.json``, a README, a tokenizer file) is listed in
:attr:`TreeScan.not_checkpoints`, not as ``unreadable``: it does not fail the run. Under a checkpoint's name
(``model.bin`` holding an HTML page or a Git LFS pointer, an empty ``model.pt``) it stays ``unreadable``: the
download is broken. A file named on its own keeps the verdict ``tw.scan`` gives it, and always has a report of its
own (the walk does not report it again).

Links: a symbolic link to a file is scanned (the file a loader would open through that name; a Hugging Face cache
snapshot is links into ``../../blobs``), each real file once, under its real path when the walk finds it there too
(whatever the order of the walk). A link to a folder is never followed: a folder inside the tree is scanned at its
own path (or left out by ``exclude``), one outside is not scanned; such links are listed in :attr:`TreeScan.skipped`
with the reason, and so are broken links (nothing to scan; a missing file named on its own is ``unreadable``,
``not-found``). A folder that cannot be listed is a report of its own, verdict ``unreadable`` (never silently clean).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import Any, NamedTuple

from ...errors import NotACheckpointError, RuleError
from ...limits import DEFAULT_LIMITS, Limits
from ...progress import Meter, ProgressCallback
from ...structs import structure
from ...text import plural, printable, quote
from .report import Finding, ScanReport, Severity, Verdict
from .scanner import scan

__all__ = ["DEFAULT_INCLUDE", "FAIL_ON", "TreeScan", "exit_code", "scan_tree"]

#: The file names a folder walk scans by default: those PyTorch, Hugging Face, NumPy and pickle checkpoints are
#: saved under. ``include=["*"]`` scans every file (each by its content).
DEFAULT_INCLUDE: tuple[str, ...] = (
    "*.pt",
    "*.pth",
    "*.pt2",
    "*.bin",
    "*.ckpt",
    "*.safetensors",
    "*.index.json",
    "*.pkl",
    "*.pickle",
    "*.joblib",
    "*.npy",
    "*.npz",
    "*.tar",
    "*.mar",
)

#: What ``--fail-on`` can name, and the exit code each gives: a dangerous file, a file with unknown classes (an
#: ``unknown-global`` warning: loading makes them inert stubs), a file that could not be fully read.
FAIL_ON: dict[str, int] = {"dangerous": 1, "unknown": 1, "unreadable": 2}

#: ``--fail-on``'s default, which is the exit code of a scan without it: 1 dangerous, else 2 unreadable, else 0.
DEFAULT_FAIL_ON: tuple[str, ...] = ("dangerous", "unreadable")

_DCP_METADATA = ".metadata"


@structure
class TreeScan:
    """Every report of a scan of files and folders, and their summary.

    Attributes:
        reports: one :class:`~.report.ScanReport` per checkpoint, in the order found (folders walked in name order).
        skipped: ``(path, reason)`` for each link not followed or broken, in path order.
        walked: whether a folder was walked (not only files and checkpoint folders named).
        not_checkpoints: the reports of files a walk found that are no checkpoint at all (see the module
            docstring): not in :attr:`reports`, not counted in the verdicts, never a reason to fail.
    """

    reports: list[ScanReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    walked: bool = False
    not_checkpoints: list[ScanReport] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Reports per verdict, every verdict present (``{"clean": 297, "dangerous": 2, "unreadable": 1}``)."""
        counts = dict.fromkeys(Verdict, 0)
        for report in self.reports:
            counts[report.verdict] += 1
        return {str(v): n for v, n in counts.items()}

    @property
    def unknown(self) -> list[ScanReport]:
        """The reports that name a class scan does not know (an ``unknown-global`` finding, latent or not)."""
        return [r for r in self.reports if any(f.code.endswith("unknown-global") for f in r.findings)]

    @property
    def summary(self) -> str:
        """One line: ``300 files: 297 clean, 2 dangerous, 1 unreadable`` (verdicts with no file left out), and
        ``, 3 not checkpoints`` when a walk found some."""
        counts = [f"{n} {verdict}" for verdict, n in self.counts().items() if n]
        if self.not_checkpoints:
            counts.append(plural(len(self.not_checkpoints), "not checkpoint"))
        unknown = len(self.unknown)
        if unknown:
            counts.append(f"{unknown} with unknown classes")
        files = len(self.reports) + len(self.not_checkpoints)
        return f"{plural(files, 'file')}: " + (", ".join(counts) if counts else "nothing to scan")

    def exit_code(self, fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> int:
        """The command line's exit code: see :func:`exit_code`."""
        return exit_code(self, fail_on)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: every report, the summary (its line and the counts), the links skipped, and the
        files that are not checkpoints (``{"path", "code", "message"}``: detection's code and message)."""
        return {
            "reports": [r.to_dict() for r in self.reports],
            "summary": {
                "files": len(self.reports) + len(self.not_checkpoints),
                **self.counts(),
                "not_checkpoints": len(self.not_checkpoints),
                "unknown": len(self.unknown),
                "text": self.summary,
            },
            "skipped": [{"path": p, "reason": why} for p, why in self.skipped],
            "not_checkpoints": [
                {"path": r.path, "code": _why_not(r).code, "message": _why_not(r).message} for r in self.not_checkpoints
            ],
        }

    def __str__(self) -> str:
        """One line per file (``verdict  path  (first finding)``), the files that are not checkpoints, the links
        skipped, then the summary."""
        from ...style import current, status

        paint = current().paint
        rows = []
        for report in self.reports:
            # load-refused restates another finding (the reader's own error) when there is one: show that one
            telling = [f for f in report.findings if f.code != "load-refused"] or report.findings
            first = telling[0] if telling else None
            verdict = str(report.verdict)
            short = _short(first) if first else ""
            if first is not None and first.code == "load-refused" and report.load_error is not None:
                short = report.load_error.code  # the reader's own code (truncated, bad-crc...), as for other formats
            rows.append(
                f"{paint(status(verdict))}{' ' * (10 - len(verdict))}  {printable(report.path)}"
                + (f"  ({short})" if short else "")
            )
        rows += [
            f"{'ignored':<10}  {printable(r.path)}  (not a checkpoint: {_why_not(r).code})"
            for r in self.not_checkpoints
        ]
        rows += [f"{'skipped':<10}  {printable(path)}  ({why})" for path, why in self.skipped]
        return "\n".join([*rows, self.summary]) + "\n"

    def __repr__(self) -> str:
        return f"<TreeScan: {self.summary}>"


def _why_not(report: ScanReport) -> NotACheckpointError:
    """Why a report of :attr:`TreeScan.not_checkpoints` is no checkpoint (detection's error)."""
    assert isinstance(report.load_error, NotACheckpointError)
    return report.load_error


def _not_a_checkpoint(report: ScanReport) -> bool:
    """Detection says the file is no checkpoint at all, and that is all scan found wrong with it (nothing
    dangerous, no other error)."""
    return (
        isinstance(report.load_error, NotACheckpointError)
        and report.verdict == Verdict.UNREADABLE
        and all(f.code == "load-refused" for f in report.findings if f.severity == Severity.ERROR)
    )


def _short(finding: Finding) -> str:
    """A finding in a few words: its code, the global it names, and where."""
    text = finding.code + (f" {printable(finding.name)}" if finding.name else "")
    if finding.member:
        member = printable(finding.member)
        text += f" in {member if len(member) <= 40 else member[:37] + '...'}"
    return text


def exit_code(tree: TreeScan, fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> int:
    """1 when ``dangerous`` (or ``unknown``) is in ``fail_on`` and a file is so, else 2 when ``unreadable`` is and a
    file is, else 0. The default is the exit code of ``torchweights scan`` without ``--fail-on``.

    Raises:
        RuleError: ``fail_on`` names something else (code ``bad-fail-on``).
    """
    wanted = {fail_on} if isinstance(fail_on, str) else set(fail_on)
    wrong = wanted - set(FAIL_ON)
    if wrong:
        raise RuleError(
            f"fail_on={sorted(wrong)!r} names no condition scan reports. Fix: pass some of "
            f"{', '.join(map(repr, FAIL_ON))}.",
            code="bad-fail-on",
        )
    counts = tree.counts()
    if "dangerous" in wanted and counts["dangerous"]:
        return FAIL_ON["dangerous"]
    if "unknown" in wanted and tree.unknown:
        return FAIL_ON["unknown"]
    if "unreadable" in wanted and counts["unreadable"]:
        return FAIL_ON["unreadable"]
    return 0


def scan_tree(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    allow_globals: Iterable[str] = (),
    progress: ProgressCallback | None = None,
) -> TreeScan:
    """Scan files and every checkpoint under folders, recursively (see the module docstring for what one
    checkpoint is, the globs and the links).

    Args:
        paths: one path or several: files (scanned whatever their name), folders (walked; a distributed checkpoint
            folder is one checkpoint).
        include: globs of the files to scan in folders; default :data:`DEFAULT_INCLUDE`.
        exclude: globs of files and folders to leave out.
        limits: resource bounds, as :func:`~.scanner.scan` takes them.
        allow_globals: names you trust, as :func:`~.scanner.scan` takes them.
        progress: ``progress(done_files, total_files)``, see :mod:`torchweights.progress`.

    Returns:
        A :class:`TreeScan`; like :func:`~.scanner.scan` it never raises for a bad file or folder.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    walk = _Walk(tuple(include if include is not None else DEFAULT_INCLUDE), tuple(exclude))
    for path in paths:
        walk.top(os.fspath(path))
    units = walk.finish()
    allowed = frozenset(allow_globals)
    tree = TreeScan(skipped=walk.skipped, walked=walk.walked)
    meter = Meter(progress, len(units))
    meter.advance(0)  # the total, before the first file (which may take a while)
    covered: set[tuple[int, int]] = set()
    # sharded sets and distributed checkpoints first: the files they cover are not scanned again
    order = sorted(range(len(units)), key=lambda i: not units[i].is_set)
    results: dict[int, ScanReport] = {}
    for i in order:
        unit = units[i]
        if unit.failure is not None:
            results[i] = unit.failure
        elif not unit.named and not unit.is_set and _identity(unit.path) in covered:
            meter.advance(1)
            continue
        else:
            results[i] = scan(unit.path, limits=limits, allow_globals=allowed)
            if unit.is_set:
                covered.update(_identity(f) for f in results[i].files)
        meter.advance(1)
    for i in sorted(results):
        report = results[i]
        walked_file = not units[i].named and not units[i].is_set and units[i].failure is None
        if walked_file and _not_a_checkpoint(report) and not _Walk.matches(DEFAULT_INCLUDE, units[i].path):
            tree.not_checkpoints.append(report)
        else:
            tree.reports.append(report)
    meter.finish()
    return tree


def _identity(path: str) -> tuple[int, int]:
    """The real file behind ``path`` (through links), or a value matching nothing when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return (-1, id(path))
    return (info.st_dev, info.st_ino)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` leads to a folder; False for a link that loops or cannot be followed (a broken link)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


class _Unit(NamedTuple):
    """One checkpoint to scan: a file, a sharded index or a distributed-checkpoint folder (``is_set``), or a
    folder that could not be listed (``failure``, its report ready)."""

    path: str
    is_set: bool = False
    failure: ScanReport | None = None
    named: bool = False  # named on its own: always reported, whatever else covers it


class _Walk:
    """Finds the checkpoints under the paths: :meth:`top` for each path, then :meth:`finish` for the units."""

    def __init__(self, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
        self.include = include
        self.exclude = exclude
        self.units: list[_Unit] = []
        self.skipped: list[tuple[str, str]] = []
        self.files: dict[tuple[int, int], list[int]] = {}  # real file -> the units a walk found it as
        self.named: set[tuple[int, int]] = set()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.folder_links: list[tuple[str, str]] = []  # (link, root of the walk that found it)
        self.walked = False

    def top(self, path: str) -> None:
        if not os.path.isdir(path):  # a file, or nothing: scan says what it is
            self.units.append(_Unit(path, path.lower().endswith(".index.json"), named=True))
            self.named.add(_identity(path))
            return
        if os.path.isfile(os.path.join(path, _DCP_METADATA)):
            self.units.append(_Unit(path, True, named=True))
            return
        self.walked = True
        self.directory(path, os.path.realpath(path), "")

    def finish(self) -> list[_Unit]:
        """The units, each real file once (named > found at its real path > first other path in walk order), and
        the folder links in :attr:`skipped` with why, now that every folder was walked (the same whatever the order
        of the paths and of the walk)."""
        for path, root in self.folder_links:
            target = os.path.realpath(path)
            info = os.stat(target)
            inside = os.path.commonpath([root, target]) == root
            if (info.st_dev, info.st_ino) in self.seen_dirs:
                where = "a folder inside the tree," if inside else "a folder"
                why = f"a link to {quote(target)}, {where} scanned at its own path"
            elif inside:
                why = f"a link to {quote(target)}, a folder inside the tree that --exclude leaves out: not followed"
            else:
                why = f"a link to {quote(target)}, outside the folder scanned: not followed"
            self.skipped.append((path, why))
        self.skipped.sort()
        dropped: set[int] = set()
        for key, found in self.files.items():
            at_real_path = (
                i for i in found if os.path.realpath(self.units[i].path) == os.path.abspath(self.units[i].path)
            )
            keep = None if key in self.named else next(at_real_path, found[0]) if len(found) > 1 else found[0]
            dropped.update(i for i in found if i != keep)
        return [unit for i, unit in enumerate(self.units) if i not in dropped]

    def directory(self, path: str, root: str, relative: str) -> None:
        info = os.stat(path)
        self.seen_dirs.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            report = ScanReport(path, complete=False)
            report.findings.append(
                Finding(
                    Severity.ERROR,
                    "scan-failed",
                    f"the folder could not be listed ({exc.strerror or type(exc).__name__}), so what it holds was not "
                    "scanned. Fix: make it readable, or --exclude it.",
                    path,
                )
            )
            self.units.append(_Unit(path, failure=report))
            return
        names = {e.name for e in entries}
        dcp = _DCP_METADATA in names and os.path.isfile(os.path.join(path, _DCP_METADATA))
        if dcp:
            self.units.append(_Unit(path, True))
        for entry in entries:
            child = f"{relative}/{entry.name}" if relative else entry.name
            if self.matches(self.exclude, child):
                continue
            if entry.is_dir(follow_symlinks=False):
                self.directory(entry.path, root, child)
            elif entry.is_symlink() and _is_dir(entry):
                self.folder_links.append((entry.path, root))  # classified once every folder is walked
            elif dcp and (entry.name == _DCP_METADATA or entry.name.endswith(".distcp")):
                continue  # the folder's scan reads them
            elif self.matches(self.include, child):
                self.file(entry)

    def file(self, entry: os.DirEntry[str]) -> None:
        """A file the globs select: a unit, unless it is no regular file or a broken link (:attr:`skipped`)."""
        try:
            info = os.stat(entry.path)
        except OSError as exc:
            if not entry.is_symlink():  # gone since it was listed: scan says so
                self.units.append(_Unit(entry.path))
            else:
                reason = "a link that loops" if exc.errno == errno.ELOOP else f"a link to {quote(os.readlink(entry))}"
                self.skipped.append((entry.path, f"broken link: {reason}, no file to scan"))
            return
        if not stat.S_ISREG(info.st_mode):
            return  # a pipe, device or socket: nothing a checkpoint is saved as
        self.files.setdefault((info.st_dev, info.st_ino), []).append(len(self.units))
        self.units.append(_Unit(entry.path, entry.name.lower().endswith(".index.json")))

    @staticmethod
    def matches(globs: tuple[str, ...], relative: str) -> bool:
        name = relative.rsplit("/", 1)[-1].lower()
        lowered = relative.lower()
        return any(fnmatch.fnmatchcase(lowered if "/" in g else name, g.lower()) for g in globs)
