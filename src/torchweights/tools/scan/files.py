"""Files as scan walks them (:class:`FileWalk`): a file by its first bytes (zip, ``.npy``, safetensors, pickle),
the pickles of a file back to back as the readers take them (a legacy torch stream's five), what follows them (trailing
data, a zip hidden at the end: a polyglot), a torch.distributed.checkpoint folder, and latent blobs (a pickle or a zip
inside a value or a byte tensor).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

from ...detect.sniff import looks_safetensors
from ...errors import TorchWeightsError
from ...formats._files import mapped
from ...formats._legacy_stream import MAGIC_NUMBER
from ...formats._pickled import read_embedded
from ...formats._zip import read_directory
from ...text import plural
from ...unpickle.machine import FIRST_OPCODES
from ...unpickle.stream import scan_stream
from ...unpickle.values import Stub
from .archives import ArchiveWalk
from .messages import short_quote
from .probe import is_pickle_head, lenient_persistent
from .report import Finding, Severity

__all__ = ["FileWalk"]


#: Pickles a legacy torch stream holds (``torch.serialization._legacy_save``); its storage bytes follow them.
_LEGACY_PICKLES = 5


class FileWalk(ArchiveWalk):
    """Files by their first bytes, pickle sequences, polyglots, folders, and bytes found inside values."""

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
            self.add(
                Finding(Severity.ERROR, "read-failed", f"cannot read {short_quote(path)}: {exc.strerror or exc}", path)
            )
            return
        if looks_safetensors(head):
            self.hidden_zip(path, size)  # no pickle (the reader checks the header), but maybe a zip appended
            return
        if head[:1] and (is_pickle_head(head) or head[0] in FIRST_OPCODES):
            self.pickle_file(path, size, required=is_pickle_head(head))
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
                    f"{short_quote(path)} is also a zip archive of "
                    f"{plural(len(directory.members), 'member')}: pickle readers and zip readers "
                    "(torch.load decides by the first bytes, other tools by the end) see different "
                    "contents. Do not load it; re-save it from a trusted source.",
                    path,
                )
            )
            self.members(fh, directory, path, None, 0)

    def directory(self, path: str) -> None:
        """A torch.distributed.checkpoint folder: ``.metadata``, then every item it locates in the ``.distcp``
        files (each one a ``torch.save`` blob that ``dcp.load`` unpickles). A sharded set's shards are walked once
        its index has been read (see :meth:`~.scanner.Scanner.shards`)."""
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
                persistent_load=lenient_persistent,
                max_opcodes=self.limits.max_pickle_opcodes,
                read_embedded=read_embedded,
            ).value
        covered: set[str] = set()
        for fqn, relative, offset, length in _dcp_items(root):
            item = os.path.join(path, relative)
            where = f"item {short_quote(fqn)} (bytes {offset} to {offset + length})"
            if "/" in relative or "\\" in relative or relative in ("", ".", "..") or not os.path.isfile(item):
                self.add(
                    Finding(
                        Severity.ERROR,
                        "dcp-item",
                        f"{where} is placed in {short_quote(relative)}, which is not a file " "of this folder",
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
                        f"{where} lies outside {short_quote(relative)} or is too large to " "scan",
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
                self.add(
                    Finding(Severity.INFO, "dcp-data", f"{short_quote(name)} holds no item .metadata names", metadata)
                )


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
