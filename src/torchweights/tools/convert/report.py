"""The :class:`ConvertReport`: what :func:`~torchweights.tools.convert.run.convert` wrote and why."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from ...structs import structure
from ...text import format_bytes, plural, quote, shorten_list, wrap

__all__ = ["ConvertReport"]


@structure
class ConvertReport:
    """What :func:`convert` wrote and why.

    Attributes:
        source: the source path.
        source_format: its format id.
        source_sha256: sha256 of the source file (for a sharded set, of its index).
        to: ``"safetensors"``, ``"torch"`` or ``"dcp"``.
        files: every output file, final paths, in the order written (shards, index, extras; for a DCP folder its
            ``.metadata`` and ``.distcp`` files).
        container: the container the weights were taken from (``""`` for the root), and ``container_reason``.
        tensors: tensors written (each once).
        nbytes: bytes of tensor data written.
        aliases: ``{alias: kept}`` for tied tensors written once.
        cast: number of tensors cast to ``dtype``.
        extras_file: the JSON file holding the non-tensor extras, if any were written.
        notes: everything left out, and why (tensors outside the container, extras that are not plain data...).
        verified: whether every output was re-read and compared bit for bit with the source.
        seconds: wall time.
    """

    source: str
    source_format: str
    source_sha256: str
    to: str
    files: list[str] = field(default_factory=list)
    container: str = ""
    container_reason: str = ""
    tensors: int = 0
    nbytes: int = 0
    aliases: dict[str, str] = field(default_factory=dict)
    cast: int = 0
    extras_file: str | None = None
    notes: list[str] = field(default_factory=list)
    verified: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "source": self.source,
            "source_format": self.source_format,
            "source_sha256": self.source_sha256,
            "to": self.to,
            "files": list(self.files),
            "container": self.container,
            "container_reason": self.container_reason,
            "tensors": self.tensors,
            "nbytes": self.nbytes,
            "aliases": dict(self.aliases),
            "cast": self.cast,
            "extras_file": self.extras_file,
            "notes": list(self.notes),
            "verified": self.verified,
            "seconds": round(self.seconds, 3),
        }

    @property
    def summary(self) -> str:
        """One line: ``safetensors: 12 tensors, 4.2 MB, verified bit for bit, 0.31 s``."""
        verified = "verified bit for bit" if self.verified else "not verified"
        return (
            f"{self.to}: {plural(self.tensors, 'tensor')}, {format_bytes(self.nbytes)}, {verified}, "
            f"{self.seconds:.2f} s"
        )

    def __repr__(self) -> str:
        return f"<ConvertReport {quote(self.source)} ({self.source_format}): {self.summary}>"

    def _repr_html_(self) -> str:
        """The report as a notebook shows it: the summary, the files written and the notes (escaped)."""
        from ...report.html import Table, card

        return card(
            "ConvertReport",
            "ok" if self.verified else "warn",
            self.summary,
            [
                ("source", f"{self.source} ({self.source_format})"),
                ("container", self.container or "the root"),
                ("sha256", self.source_sha256),
                ("tied tensors written once", len(self.aliases)),
            ],
            [Table("files written", ("file",), [[f] for f in self.files])],
            self.notes,
        )

    def __str__(self) -> str:
        lines = wrap(f"{quote(self.source)} ({self.source_format}) -> {self.summary}", indent="", hang="  ")
        lines += wrap(f"container: {self.container_reason}", hang="             ")
        lines.extend(f"  wrote {quote(path)}" for path in self.files)
        if self.aliases:
            shown = shorten_list(f"{quote(a)} = {quote(k)}" for a, k in self.aliases.items())
            how = "aliases in __metadata__" if self.to == "safetensors" else "one storage"
            lines += wrap(f"tied, written once ({how}): {shown}", hang="    ")
        if self.cast:
            lines.append(f"  cast {plural(self.cast, 'tensor')}")
        for note in self.notes:
            lines += wrap(f"note: {note}", hang="        ")
        lines.append(f"  source sha256 {self.source_sha256}")
        return "\n".join(lines) + "\n"
