"""Zip archives as scan walks them (:class:`ArchiveWalk`): the structural problems of the directory, then every
member that holds a pickle, a zip or a ``.npy`` whatever its name, storage members probed as latent data, and
TorchScript source handed to :mod:`~torchweights.tools.scan.tscode`.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Callable
from typing import IO

from ...errors import ResourceLimitError, TorchWeightsError
from ...formats._zip import ZipDirectory, ZipMember, check_member_inflation, inflate, read_directory
from ...unpickle.machine import FIRST_OPCODES
from .messages import short_quote, within
from .probe import MAX_LATENT_DEPTH, PROBE_BYTES, is_pickle_head
from .report import Finding, Severity
from .tscode import analyse as analyse_torchscript
from .tscode import is_code_member
from .walk import Walk

__all__ = ["ArchiveWalk"]


#: Structural zip problems that mean part of the archive could not be read at all.
_ZIP_UNREADABLE = frozenset({"truncated", "bad-zip", "limit-zip-entries", "zip-encrypted", "zip-compression"})
_PICKLE_NAMES = (".pkl", ".pickle", ".pk", ".pt", ".pth", ".bin", ".ckpt", ".dat", ".metadata")


class ArchiveWalk(Walk):
    """The zip part of the walk."""

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
                Finding(severity, problem.code, f"{problem.message}{within(where)}", file, problem.member or where)
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
            label = f"member {short_quote(member.name)}" + (f" of {where}" if where else "")
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
                    kind != "pickle" or is_pickle_head(head) or member.name.endswith((".pkl", ".pickle"))
                )
                if not required and member.size > PROBE_BYTES and not self.might_be_pickle(fh, member):
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
                what = f"tensor {short_quote(storage.tensor)}" if storage is not None else "a storage no tensor uses"
                self.latent(data, file, f"{member.name} (bytes of {what})", member_latent)
            elif kind == "pickle":
                self.stream(data, file, member_label, latent=latent, required=required)
            elif kind == "zip" and latent < MAX_LATENT_DEPTH:
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
            self.add(
                Finding(severity, exc.code, f"TorchScript source {short_quote(label)}: {exc.message}", file, label)
            )
            return
        for found in analyse_torchscript(source):
            message = f"TorchScript source {short_quote(label)}, line {found.line}: {found.message}"
            if found.severity == "dangerous":
                message += ". torch.jit.load and calls of the loaded model run this code; torchweights never does"
            self.add(Finding(Severity(found.severity), found.code, message, file, label, None, found.name, found.line))

    def might_be_pickle(self, fh: IO[bytes], member: ZipMember) -> bool:
        """Whether a member that only starts like a pickle (or a zip) is worth reading whole: see
        :func:`~.probe.worth_reading`. Tensor bytes fail at once, and are never read whole."""
        probe = inflate(fh, member, PROBE_BYTES)
        if probe.startswith(b"PK\x03\x04"):
            return True  # a zip's directory is at its end
        return self.worth_reading(probe)

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


def _member_kind(member: ZipMember, head: bytes) -> str | None:
    if is_pickle_head(head):
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
