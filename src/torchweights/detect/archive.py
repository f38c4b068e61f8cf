"""Zip and tar classification, from the very parse the readers make: detection and reading never disagree.

A zip's members are listed by :func:`torchweights.formats._zip.read_directory` (the end records, zip64, an
archive shifted by leading data, the central directory entries: the reader's own code, without the local headers
it checks afterwards), and a tar's by :func:`torchweights.formats._tar.walk` (checksums, pax and GNU long names,
members inside the file). Detection decides the format from those names only; what is wrong with an archive it
classified as a checkpoint is the reader's to refuse, every problem named. An archive detection cannot list at
all is refused here with the reader's diagnosis.
"""

from __future__ import annotations

from dataclasses import field

from ..errors import CorruptCheckpointError, NotACheckpointError, ResourceLimitError, TorchWeightsError
from ..fold import human_bytes
from ..formats._tar import MEMBERS, header_name, normalize, walk
from ..formats._zip import ZipDirectory, ZipProblem, read_directory
from ..structs import structure
from ..text import quote, shorten_list
from .sample import Sample, read_at, read_failed

__all__ = ["classify_tar", "classify_zip"]

#: Directory problems that leave the member list incomplete: a zip whose names say nothing is refused with them.
_UNREADABLE = frozenset({"truncated", "bad-zip", "limit-zip-entries"})
_TAR_NAMES = 5  # member names looked at (the first four decide)
_TAR_HEADERS = 4 * _TAR_NAMES  # bounded even when every header is a pax / GNU long-name header


# ----------------------------------------------------------------------------------------------------------- zip


def classify_zip(s: Sample) -> str:
    """A zip archive: torch.save, TorchScript, torch.package, .npz, or something else (raised as an error).

    Raises:
        NotACheckpointError: a zip of something else (``zip-not-checkpoint``), its first members named.
        CorruptCheckpointError: the central directory cannot be read (``truncated``, ``bad-zip``).
        ResourceLimitError: more members than any reader accepts (``limit-zip-entries``).
    """
    try:
        with open(s.path, "rb") as fh:
            directory = read_directory(fh, s.path, s.size, local_headers=False)
    except OSError as exc:
        raise read_failed(s.path, exc) from exc
    summary = _ZipSummary()
    for name in directory.names():
        summary.add(name)
    return _classify(s, summary, directory)


@structure
class _ZipSummary:
    """What the member names of the central directory say about the archive."""

    count: int = 0
    first: list[str] = field(default_factory=list)
    data_pkl_roots: set[str] = field(default_factory=set)
    script_roots: set[str] = field(default_factory=set)
    model_json_roots: set[str] = field(default_factory=set)  # TorchScript of torch 1.0-1.2
    constants_roots: set[str] = field(default_factory=set)
    nested_data_pkl: str | None = None
    torch_package: bool = False
    all_npy: bool = True
    #: root -> the torch.save/torch.jit.save records seen there (an archive that lost its data.pkl still has them)
    torch_marks: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str) -> None:
        """Fold one member name in."""
        self.count += 1
        if len(self.first) < 8:
            self.first.append(name)
        parts = name.split("/")
        self.all_npy = self.all_npy and name.endswith(".npy")
        self.torch_package = self.torch_package or name.endswith(".data/extern_modules")
        if parts[-1] == "data.pkl":
            if len(parts) == 2:
                self.data_pkl_roots.add(parts[0])
            else:
                self.nested_data_pkl = self.nested_data_pkl or name
        if (len(parts) > 2 and parts[1] == "code") or (len(parts) == 2 and parts[1] == "constants.pkl"):
            self.script_roots.add(parts[0])
        if len(parts) == 2 and parts[1] in ("model.json", "constants.pkl"):
            (self.model_json_roots if parts[1] == "model.json" else self.constants_roots).add(parts[0])
        mark = "/".join(parts[1:-1] + [parts[-1] if not parts[-1].isdigit() else "N"]) if len(parts) > 1 else ""
        if mark in _TORCH_MARKS:
            self.torch_marks.setdefault(parts[0], set()).add(mark)


#: Members only torch's archive writer produces (``data/N``: a storage). Two of them under one root make a zip a
#: torch archive even without its ``data.pkl``, which is then reported as missing (a damaged archive), not as
#: "not a checkpoint".
_TORCH_MARKS = frozenset(
    {
        "version",
        ".data/version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
        "data/N",
    }
)


def _classify(s: Sample, z: _ZipSummary, directory: ZipDirectory) -> str:
    """Turn a central-directory summary into a format id, or explain what the zip is."""
    if z.torch_package:
        return "torch-package"
    if (z.data_pkl_roots | z.model_json_roots) & z.script_roots:
        return "torchscript"
    if z.data_pkl_roots:
        return "torch-zip"
    if z.constants_roots:
        return "torchscript"  # without its data.pkl: the reader names the missing member
    if any(len(marks) >= 2 for marks in z.torch_marks.values()):
        # a torch archive without its data.pkl: the reader names the missing member
        return "torchscript" if z.script_roots & set(z.torch_marks) else "torch-zip"
    if z.count and z.all_npy:
        return "npz"
    broken = [p for p in directory.problems if p.code in _UNREADABLE]
    if broken:
        raise _unreadable(s, broken)
    members = shorten_list(z.first, 5) + (f" ({z.count} members)" if z.count > 5 else "")
    hint = (
        f" It holds {z.nested_data_pkl!r}, which suggests a checkpoint re-zipped inside a folder; torch.save "
        "archives keep data.pkl one level deep (<root>/data.pkl)."
        if z.nested_data_pkl
        else ""
    )
    raise NotACheckpointError(
        f"{quote(s.path)} is a zip archive but not a PyTorch checkpoint (no <root>/data.pkl member); it contains "
        f"{members or 'no members'}.{hint} Fix: extract it and pass the checkpoint inside, or pass the file "
        "torch.save wrote.",
        code="zip-not-checkpoint",
        path=s.path,
    )


def _unreadable(s: Sample, problems: list[ZipProblem]) -> TorchWeightsError:
    """The error for a zip whose central directory cannot be listed, in the words of the zip reader."""
    listed = "; ".join(p.message for p in problems[:3])
    cls = ResourceLimitError if problems[0].code.startswith("limit-") else CorruptCheckpointError
    return cls(
        f"{quote(s.path)} is a zip archive without a readable central directory ({human_bytes(s.size)}): {listed}. "
        "Fix: re-download it (or save it again).",
        code=problems[0].code,
        path=s.path,
    )


# ----------------------------------------------------------------------------------------------------------- tar


def classify_tar(s: Sample) -> str:
    """A tar archive: the torch < 0.4 layout (its first members are torch's), or an archive to extract first.

    An archive whose first members are torch's is walked to its end as :mod:`torchweights.formats.legacy_tar`
    walks it, so a header the reader would refuse (a bad checksum, a member past the end of the file) is refused
    here with the reader's error.

    Raises:
        NotACheckpointError: any other tar (``tar``), its first members named.
        CorruptCheckpointError, ResourceLimitError: a torch tar whose headers the reader refuses.
    """

    def read(at: int, n: int) -> bytes:
        return s.head[at : at + n] if at + n <= len(s.head) else read_at(s.path, at, n)

    names: list[str] = []
    error: TorchWeightsError | None = None
    try:
        for entry in walk(read, s.size, s.path, max_headers=_TAR_HEADERS):
            names.append(entry.name)
            if len(names) >= _TAR_NAMES:
                break
    except (CorruptCheckpointError, ResourceLimitError) as exc:
        error = exc
        names = names or [normalize(header_name(s.head[:512]))]  # the header that broke, for the message
    if names and all(n in MEMBERS for n in names[:4]):
        if error is not None:
            raise error
        for _ in walk(read, s.size, s.path):
            pass  # the reader's whole walk: what it refuses, detection refuses with the same error
        return "legacy-tar"
    raise NotACheckpointError(
        f"{quote(s.path)} is a tar archive, not a checkpoint; it starts with {shorten_list(names, 5) or 'no members'}. "
        f"Fix: extract it (`tar xf {s.path}`) and pass the checkpoint inside.",
        code="tar",
        path=s.path,
    )
