"""torch zip files (``torch.save`` since 1.6): ``<root>/data.pkl`` plus one member per storage.

All three generations of format records are read: ``version`` only; ``byteorder`` and
``.data/serialization_id``; ``.format_version`` and ``.storage_alignment``. Any archive root name works.
Storages are located by their zip member's data offset, so nothing but the pickle is read.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from .. import dtypes
from ..errors import CheckpointReadError, CorruptCheckpointError, ResourceLimitError
from ..limits import DEFAULT_LIMITS, Limits
from ..records import Checkpoint, StorageRef
from ..structs import structure
from ..text import plural, quote, shorten_list
from ..unpickle.values import PickledStorage, PickledTensor, StorageType
from ._pickled import assemble, run_pickle
from ._zip import DEFLATE_MAX_RATIO, ZipDirectory, ZipMember, check, check_member_inflation, inflate, read_directory
from .tree import short_repr

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = [
    "Archive",
    "ZipStorages",
    "check_byteorder",
    "check_version",
    "model_pickle",
    "missing_storage",
    "open_archive",
    "read",
    "read_archive",
    "read_text_members",
]

_RECORDS = ("version", ".data/version", "byteorder", ".format_version", ".storage_alignment", ".data/serialization_id")
_RECORD_MAX_BYTES = 4096


def _find_root(names: list[str], path: str) -> str:
    """The archive's root prefix (``"archive/"``): the folder holding ``data.pkl``."""
    candidates = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1 and n.split("/")[1] == "data.pkl"]
    if not candidates:
        candidates = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if not candidates:
        root = names[0].split("/")[0] if names and "/" in names[0] else "archive"
        raise CorruptCheckpointError(
            f"'{path}' is a torch zip archive without its pickle, member '{root}/data.pkl' "
            f"(members: {', '.join(names[:5])}{'...' if len(names) > 5 else ''}): the archive is incomplete or was "
            "modified, and its tensors cannot be named without it. Fix: re-download the file or re-save it with "
            "torch.save.",
            code="missing-member",
            path=path,
        )
    first = min(candidates, key=lambda n: (n.count("/"), names.index(n)))
    return first[: -len("data.pkl")]


def missing_storage(path: str, referrer: str, member: str) -> CorruptCheckpointError:
    """The error for tensor data that ``referrer`` (a clause: "the pickle refers to storage '0'") names but the
    archive lacks as ``member`` (code ``missing-storage``)."""
    return CorruptCheckpointError(
        f"{quote(path)}: {referrer} but member {quote(member)} is missing. The archive is incomplete or was "
        "modified; re-download or re-save it.",
        code="missing-storage",
        path=path,
    )


def _bad_member(path: str, m: ZipMember, why: str, code: str = "bad-member") -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"'{path}': zip member '{m.name}' cannot be read: {why}. The file is corrupt or truncated; "
        "re-download or re-save it.",
        code=code,
        path=path,
    )


@structure
class Archive:
    """An open zip checkpoint whose directory passed every check of :mod:`._zip`: members by name, and their bytes.

    Attributes:
        path: the file.
        fh: its open handle (valid inside :func:`open_archive` only).
        directory: the checked directory (no duplicate names, every member inside the file).
        limits: the reader's bounds (the per-member inflation rule of :meth:`read`).
    """

    path: str
    fh: IO[bytes]
    directory: ZipDirectory
    limits: Limits = DEFAULT_LIMITS

    def names(self) -> list[str]:
        """Member names in directory order."""
        return self.directory.names()

    def members(self) -> list[ZipMember]:
        """Members in directory order."""
        return self.directory.members

    def get(self, name: str) -> ZipMember | None:
        """The member called ``name``, or None."""
        return self.directory.find(name)

    def read(self, m: ZipMember, nbytes: int | None = None) -> bytes:
        """The bytes of member ``m`` (the first ``nbytes``, or all; CRC-32 checked when all).

        The directory was checked against the file first (:func:`open_archive`): every member lies inside the file,
        its sizes agree with its local header, and a compressed one claims no more than deflate can produce, so no
        read runs past the end of the file or asks for memory the file cannot fill. A compressed member that would
        inflate past ``limits.max_inflate_ratio`` is refused before inflating (:func:`._zip.check_member_inflation`).
        Damaged members raise :class:`CorruptCheckpointError`, never a :mod:`zlib` or :mod:`struct` exception.
        """
        want = m.size if nbytes is None else min(nbytes, m.size)
        check_member_inflation(m, self.path, self.limits, want)
        try:
            data = inflate(self.fh, m, want)
        except CorruptCheckpointError as exc:
            raise _bad_member(self.path, m, exc.message, exc.code) from None
        if want == m.size and zlib.crc32(data) != m.crc32:
            raise _bad_member(self.path, m, "its bytes do not match their CRC-32 checksum", "bad-crc")
        return data

    def read_parsed(self, m: ZipMember, what: str) -> bytes:
        """The whole bytes of member ``m``, which the caller parses whole (a pickle, ``model.json``): refused over
        ``limits.max_pickle_bytes`` before anything is read. ``what`` names the member in the message
        (``"data.pkl"``, ``"pickle resource 'x'"``)."""
        limit = self.limits.max_pickle_bytes
        if m.size > limit:
            raise ResourceLimitError(
                f"{quote(self.path)}: {what} is {m.size} bytes, over the {limit}-byte limit. If you trust the file: "
                "tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                code="limit-pickle-size",
                path=self.path,
            )
        return self.read(m)


class ZipStorages:
    """persistent_load for torch zip files: ``('storage', type, key, location, numel)`` -> PickledStorage.

    The bytes of storage ``key`` are member ``<root><folder>/<key>`` (``data`` for ``torch.save``; TorchScript keeps
    its constants under ``constants``); storages outside ``data`` are keyed ``<folder>/<key>``, so they never meet
    the ``data`` storage of the same key.
    """

    def __init__(self, archive: Archive, root: str, byteorder: str, folder: str = "data") -> None:
        self.folder = folder
        self.archive = archive
        self.path = archive.path
        self.root = root
        self.byteorder = byteorder
        self.seen: dict[str, PickledStorage] = {}
        self.unchecked: list[str] = []  # members longer than their storage: CRC-32 not checked
        self.odd_locations: list[str] = []  # storages whose location is not a string: read as 'cpu'

    def __call__(self, pid: Any) -> PickledStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptCheckpointError(
                f"'{self.path}': unexpected persistent id "
                f"{short_repr(pid, 80)} (expected ('storage', type, key, location, "
                "numel))",
                code="bad-record",
                path=self.path,
            )
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise CorruptCheckpointError(
                f"'{self.path}': storage "
                f"{short_repr(key, 80)} has type {short_repr(storage_type, 80)}, which is not a torch storage class",
                code="bad-record",
                path=self.path,
            )
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CorruptCheckpointError(
                f"'{self.path}': malformed storage record "
                f"{short_repr(pid, 80)} (expected a string key and a non-negative "
                "integer element count). The file is corrupt; re-download or re-save it.",
                code="bad-record",
                path=self.path,
            )
        dtype = storage_type.dtype or "uint8"
        nbytes = numel * dtypes.itemsize(dtype)
        previous = self.seen.get(key)
        if previous is not None:
            if previous.dtype != dtype and previous.ref.nbytes == nbytes == 0:
                return PickledStorage(previous.ref, dtype)  # an empty storage seen under two dtypes: torch allows it
            if previous.dtype != dtype or previous.ref.nbytes != nbytes:
                raise CorruptCheckpointError(
                    f"'{self.path}': storage '{key}' is declared twice with different types or sizes",
                    code="bad-record",
                    path=self.path,
                )
            return previous
        member = f"{self.root}{self.folder}/{key}"
        info = self.archive.get(member)
        if info is None:
            raise missing_storage(self.path, f"the pickle refers to storage {quote(key)}", member)
        if info.size < nbytes:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' should hold {nbytes} bytes ({numel} x {dtype}) but member "
                f"'{member}' has {info.size}. The file is corrupt; re-download or re-save it.",
                code="storage-size",
                path=self.path,
            )
        if info.compress_type and nbytes > info.compressed_size * DEFLATE_MAX_RATIO:
            raise CorruptCheckpointError(
                f"'{self.path}': storage '{key}' should inflate to {nbytes} bytes from {info.compressed_size} "
                f"compressed bytes of member '{member}', more than deflate can produce. The file is corrupt or "
                "crafted; re-download or re-save it.",
                code="storage-size",
                path=self.path,
            )
        # The checked directory guarantees that the member's bytes lie inside the file.
        crc: int | None = info.crc32
        if info.size != nbytes:  # the CRC covers bytes past the storage, which reads stop before: not checkable
            crc = None
            self.unchecked.append(f"{quote(member)} ({info.size} bytes, storage {nbytes})")
        if not isinstance(location, str):
            self.odd_locations.append(f"{quote(key)} ({short_repr(location, 40)})")
            location = "cpu"
        ref = StorageRef(
            key=key if self.folder == "data" else f"{self.folder}/{key}",
            file=self.path,
            offset=info.data_offset,
            nbytes=nbytes,
            byteorder=self.byteorder,
            member=member,
            compression=info.compress_type,
            compressed_size=info.compressed_size,
            crc32=crc,
            location=location,
        )
        storage = PickledStorage(ref, dtype)
        self.seen[key] = storage
        return storage

    @property
    def warnings(self) -> list[str]:
        """What reading the storages could not check or had to assume, for ``Checkpoint.warnings``."""
        out = []
        if self.unchecked:
            out.append(
                f"the CRC-32 of {plural(len(self.unchecked), 'member')} is not checked: each holds more bytes than "
                f"its storage, and the checksum covers them all: {shorten_list(self.unchecked)}. torch.save writes "
                "members of exactly their storage's size; re-save the file to have them checked."
            )
        if self.odd_locations:
            out.append(
                f"{plural(len(self.odd_locations), 'storage')} record a location that is not a device name such as "
                f"'cpu' or 'cuda:0'; read as saved from 'cpu' (map_location sees 'cpu'): "
                f"{shorten_list(self.odd_locations)}"
            )
        return out


@contextmanager
def open_archive(path: str, options: ReadOptions) -> Iterator[Archive]:
    """The :class:`Archive` of a zip checkpoint, its directory checked before anything is read.

    Our own reading of the directory decides (duplicates, mismatched headers, overlaps, polyglots...: see
    :mod:`._zip`); an archive with any problem is refused, every problem named.

    Args:
        path: the file.
        options: the reader's options (the inflate budget).
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CheckpointReadError(f"cannot read '{path}': {exc.strerror or exc}", path=path) from None
    with fh:
        fh.seek(0, 2)
        directory = read_directory(fh, path, fh.tell(), max_inflated=options.limits.max_inflated_bytes)
        check(directory)
        yield Archive(path, fh, directory, options.limits)


def read_text_members(archive: Archive, root: str, names: tuple[str, ...]) -> dict[str, str]:
    """The small text records of an archive (``version``, ``byteorder``...) that exist, keyed by name."""
    out: dict[str, str] = {}
    for name in names:
        info = archive.get(root + name)
        if info is not None and info.size <= _RECORD_MAX_BYTES:
            out[name] = archive.read(info).decode("utf-8", "replace").strip()
    return out


def check_byteorder(records: dict[str, str], path: str) -> str:
    """The archive's ``byteorder`` record (``"little"`` when absent), refused when it is anything else."""
    byteorder = records.get("byteorder", "little")
    if byteorder not in ("little", "big"):
        raise CorruptCheckpointError(
            f"'{path}': the byteorder record says {byteorder[:40]!r}, not 'little' or 'big'. The file is corrupt; "
            "re-download or re-save it.",
            code="bad-record",
            path=path,
        )
    return byteorder


def check_version(archive: Archive, root: str, records: dict[str, str], path: str) -> str:
    """The archive's format version record (``.data/version``, else ``version``), which must be there and be a
    number: torch's archive writer writes it last, when the archive is complete (``torch.load`` refuses an archive
    without it too).

    Raises:
        CorruptCheckpointError: ``missing-member`` when it is absent, ``bad-record`` when it is not a number.
    """
    version = records.get(".data/version", records.get("version"))
    if version is None:
        present = archive.get(root + ".data/version") or archive.get(root + "version")
        why = (
            f"member '{present.name}' is {present.size} bytes, not a version number"
            if present is not None
            else f"member '{root}version' is missing"
        )
        raise CorruptCheckpointError(
            f"'{path}': {why}. torch writes it last, once the archive is complete, so the file was cut short or put "
            "together by another tool (torch.load refuses it too). Fix: re-download the file or re-save it with "
            "torch.save.",
            code="missing-member" if present is None else "bad-record",
            path=path,
        )
    if not version.isdigit():
        raise CorruptCheckpointError(
            f"'{path}': the version record says {version[:40]!r}, not a number. The file is corrupt; re-download or "
            "re-save it.",
            code="bad-record",
            path=path,
        )
    return version


def _data_pkl(archive: Archive, root: str, path: str, options: ReadOptions) -> tuple[bytes, str]:
    """``<root>/data.pkl`` read whole (CRC-checked by the archive), within ``limits.max_pickle_bytes``, and how
    messages name it."""
    pkl = archive.get(root + "data.pkl")
    assert pkl is not None  # _find_root found it
    return archive.read_parsed(pkl, "data.pkl"), f"'{path}' member '{pkl.name}'"


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read a torch zip checkpoint's pickle and locate every storage; no tensor bytes are read."""
    with open_archive(path, options) as archive:
        return read_archive(archive, options)


def read_archive(
    archive: Archive,
    options: ReadOptions,
    *,
    where: str | None = None,
    resolve: Callable[[PickledTensor], tuple[StorageRef, int]] | None = None,
) -> Checkpoint:
    """The :class:`Checkpoint` of an open, checked archive (a file, or one embedded in a larger file such as a
    torch.distributed.checkpoint item): its pickle run, every storage located; no tensor bytes are read.

    Args:
        archive: the archive (:func:`open_archive`, or an :class:`Archive` over any checked directory).
        options: the reader's options.
        where: how messages name the archive (default: its path and ``data.pkl`` member).
        resolve: where a tensor's storage really is (``(ref, element offset)``), for an archive whose offsets are not
            the file's (default: the storage as located in the archive).
    """
    path = archive.path
    root = _find_root(archive.names(), path)
    records = read_text_members(archive, root, _RECORDS)
    byteorder = check_byteorder(records, path)
    check_version(archive, root, records, path)
    data, named = _data_pkl(archive, root, path, options)
    where = where or named
    storages = ZipStorages(archive, root, byteorder)
    result = run_pickle(data, options, where, persistent_load=storages)
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **records}
    ckpt = assemble(path, "torch-zip", result, options, where=where, files=(path,), metadata=metadata, resolve=resolve)
    ckpt.warnings.extend(storages.warnings)
    return ckpt


def model_pickle(path: str, options: ReadOptions) -> tuple[bytes, dict[str, PickledStorage]]:
    """The bytes of a torch zip checkpoint's ``data.pkl`` (CRC-32 checked, within ``limits.max_pickle_bytes``) and
    every storage it uses, by key (each checked against its member as :func:`read` checks it), for a loader that
    runs that pickle itself (:func:`torchweights.load_model`, after :func:`read` accepted the file)."""
    with open_archive(path, options) as archive:
        root = _find_root(archive.names(), path)
        byteorder = check_byteorder(read_text_members(archive, root, ("byteorder",)), path)
        data, where = _data_pkl(archive, root, path, options)
        storages = ZipStorages(archive, root, byteorder)
        run_pickle(data, options, where, persistent_load=storages)
        return data, dict(storages.seen)
