"""All-or-nothing output: every file is written to a temporary file in its destination folder, flushed to disk, and
renamed into place only when every output is complete (and verified).

>>> with Outputs(force=False) as out:            # doctest: +SKIP
...     out.reserve(["out/model.safetensors"])   # refuses existing outputs (all named at once)
...     with out.write("out/model.safetensors") as fh:
...         fh.write(b"...")
...     out.commit()                             # the only step that touches the final names

Leaving the ``with`` block by any exception (``KeyboardInterrupt`` included) before or during :meth:`commit`
removes every temporary file, every output already renamed into place and every folder this transaction created.
Without ``force``, a final name is claimed with a hard link, which fails if the name appeared meanwhile, so an
existing file is never replaced; with ``force``, :func:`os.replace` replaces it atomically.

Outputs get the mode any new file gets (``0o666`` less the process umask: ``0644`` under umask ``022``), as
``open(path, "w")`` would give them; :func:`tempfile.mkstemp` creates its file ``0600``, so the temporary file is
given that mode before anything is written into it. An output that replaces a file (``force``) keeps that file's
permission bits, as ``open(path, "w")`` over it would: a private ``0600`` file stays private. The umask is read
from ``/proc/self/status`` (Linux 4.7 and later); elsewhere :func:`os.umask` is set and put back, which another
thread creating a file in that instant could observe (see :func:`current_umask`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import IO

from ..errors import TorchWeightsError, WriteError
from ..text import quote, quote_list

__all__ = ["TEMP_SUFFIX", "OutputFolder", "Outputs", "current_umask", "new_file_mode"]

#: Suffix of the temporary files (hidden, in the destination folder) while an output is being written.
TEMP_SUFFIX = ".tw-partial"

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (``Umask:`` in
    ``/proc/self/status``, Linux 4.7 and later).

    Elsewhere the only way to read it is to set it and set it back (:func:`os.umask` twice): the calls are
    serialised here, but a file another thread creates between them gets mode bits under umask ``0o077``
    (stricter, never looser) for that instant.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a newly created file gets: ``0o666`` less the umask (``0o644`` under umask ``022``)."""
    return 0o666 & ~current_umask()


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (not possible, and not needed, on Windows)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Outputs:
    """One transaction of output files (see the module docstring)."""

    def __init__(self, *, force: bool = False) -> None:
        self.force = force
        self.temps: dict[str, str] = {}  # final path -> temporary path, in the order written
        self.committed: list[str] = []
        self.created_dirs: list[str] = []
        self.reserved: list[str] = []
        self.done = False
        self.mode = new_file_mode()  # read once per transaction: every output gets the same mode

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None or not self.done:
            self.abort()

    def reserve(self, finals: Sequence[str]) -> None:
        """Check that no output exists yet (unless ``force``) and create missing destination folders.

        Raises:
            WriteError: ``output-exists`` naming every existing output, or ``write-failed`` if a folder cannot be
                created.
        """
        self.reserved = list(finals)
        existing = [p for p in finals if os.path.lexists(p)]
        if not self.force and existing:
            raise WriteError(
                f"{quote_list(existing)} already exist{'s' if len(existing) == 1 else ''}; nothing was written. "
                "Outputs are never overwritten by default: pass force=True (CLI: --force) to replace them, or "
                "choose another destination.",
                code="output-exists",
                path=existing[0],
            )
        blocked = [p for p in existing if os.path.isdir(p)]
        if blocked:
            raise WriteError(
                f"{quote_list(blocked)} {'is a folder' if len(blocked) == 1 else 'are folders'}, so the output "
                "cannot be written there, even with force. Remove it or choose another destination.",
                code="output-exists",
                path=blocked[0],
            )
        for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in finals}):
            self._make_dirs(folder)

    def _make_dirs(self, folder: str) -> None:
        missing: list[str] = []
        here = folder
        while not os.path.isdir(here):
            missing.append(here)
            parent = os.path.dirname(here)
            if parent == here:
                break
            here = parent
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except OSError as exc:
                raise WriteError(
                    f"cannot create the folder {quote(path)}: {exc.strerror or exc}. Nothing was written; choose "
                    "a destination you can write to.",
                    path=path,
                ) from None
            self.created_dirs.append(path)

    @contextlib.contextmanager
    def write(self, final: str) -> Iterator[IO[bytes]]:
        """A binary file to write ``final``'s content to; flushed and fsynced when the block ends normally."""
        folder = os.path.dirname(os.path.abspath(final))
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=TEMP_SUFFIX, dir=folder)
        except OSError as exc:
            raise self._failed(final, exc) from None
        self.temps[final] = temp
        try:
            with os.fdopen(fd, "wb") as fh:
                if hasattr(os, "fchmod"):  # not on Windows, where mkstemp's file is not private anyway
                    os.fchmod(fh.fileno(), self._mode_for(final))
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if isinstance(exc, TorchWeightsError):  # a source that cannot be read, or our own WriteError
                raise
            raise self._failed(final, exc) from None

    def _mode_for(self, final: str) -> int:
        """The mode of the file replaced at ``final`` (its permission bits), or a new file's."""
        import stat

        try:
            st = os.stat(final)
        except OSError:
            return self.mode
        return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else self.mode

    def temp_path(self, final: str) -> str:
        """Where ``final``'s content is while the transaction is open (to verify it before commit)."""
        return self.temps[final]

    def commit(self) -> None:
        """Rename every temporary file to its final name, in the order written, then make the renames durable.

        Raises:
            WriteError: ``output-exists`` if, without ``force``, an output appeared since :meth:`reserve`;
                ``write-failed`` if a rename fails. Everything already renamed is removed again.
        """
        for final, temp in self.temps.items():
            try:
                if self.force:
                    os.replace(temp, final)
                else:
                    self._claim(temp, final)
            except FileExistsError:
                raise WriteError(
                    f"{quote(final)} appeared while the conversion ran; nothing was kept. Pass force=True (CLI: "
                    "--force) to replace it, or choose another destination.",
                    code="output-exists",
                    path=final,
                ) from None
            except OSError as exc:
                raise self._failed(final, exc) from None
            self.committed.append(final)
        for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in self.committed}):
            _fsync_dir(folder)
        self.temps.clear()
        self.done = True

    @staticmethod
    def _claim(temp: str, final: str) -> None:
        """Give ``temp`` the name ``final`` unless that name exists (a hard link cannot replace a file)."""
        try:
            os.link(temp, final)
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: check, then rename
            if os.path.lexists(final):
                raise FileExistsError(final) from None
            os.replace(temp, final)
            return
        os.unlink(temp)

    def abort(self) -> None:
        """Remove every temporary file, every committed output and every folder created; never raises."""
        for temp in self.temps.values():
            with contextlib.suppress(OSError):
                os.unlink(temp)
        for final in self.committed:
            with contextlib.suppress(OSError):
                os.unlink(final)
        for folder in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty
        self.temps.clear()
        self.committed.clear()
        self.created_dirs.clear()
        self.done = True

    @staticmethod
    def _failed(final: str, exc: OSError) -> WriteError:
        return WriteError(
            f"cannot write {quote(final)}: {exc.strerror or exc}. Nothing was kept (every partial output was "
            "removed); free some space or choose a destination you can write to, then run again.",
            path=final,
        )


class OutputFolder:
    """One all-or-nothing output folder: its files are written into a hidden temporary folder beside it, which is
    renamed to the final name by :meth:`commit` (with ``force``, an existing folder of that name is moved aside
    first and removed once the new one is in place). Leaving the ``with`` block before :meth:`commit` completes
    removes the temporary folder and every parent folder this transaction created.

    Without ``force`` the final name is checked to be free just before the rename; a folder created there in that
    instant, if empty, would be replaced (a rename over a non-empty one fails).
    """

    def __init__(self, final: str, *, force: bool = False) -> None:
        self.final = os.path.abspath(final)
        self.force = force
        self.temp = ""
        self.created_dirs: list[str] = []
        self.done = False
        self.mode = new_file_mode()

    def __enter__(self) -> OutputFolder:
        if os.path.lexists(self.final) and not (self.force and os.path.isdir(self.final)):
            if self.force:
                raise WriteError(
                    f"{quote(self.final)} is a file, so the output folder cannot be written there, even with force. "
                    "Remove it or choose another destination.",
                    code="output-exists",
                    path=self.final,
                )
            raise WriteError(
                f"{quote(self.final)} already exists; nothing was written. Outputs are never overwritten by default: "
                "pass force=True (CLI: --force) to replace it, or choose another destination.",
                code="output-exists",
                path=self.final,
            )
        parent = os.path.dirname(self.final)
        helper = Outputs()
        helper._make_dirs(parent)
        self.created_dirs = helper.created_dirs
        try:
            self.temp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.final)}.", suffix=TEMP_SUFFIX, dir=parent)
            os.chmod(self.temp, 0o777 & ~current_umask())
        except OSError as exc:
            self.abort()
            raise Outputs._failed(self.final, exc) from None
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None or not self.done:
            self.abort()

    def path(self, name: str) -> str:
        """Where file ``name`` of the folder is while the transaction is open."""
        return os.path.join(self.temp, name)

    @contextlib.contextmanager
    def write(self, name: str) -> Iterator[IO[bytes]]:
        """A binary file for ``name`` inside the folder; flushed and fsynced when the block ends normally."""
        try:
            with open(self.path(name), "xb") as fh:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), self.mode)
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if isinstance(exc, TorchWeightsError):
                raise
            raise Outputs._failed(os.path.join(self.final, name), exc) from None

    def commit(self) -> None:
        """Rename the temporary folder to the final name (replacing an existing one with ``force``).

        Raises:
            WriteError: ``output-exists`` if, without ``force``, the name was taken since the start;
                ``write-failed`` if a rename fails. The temporary folder is then removed.
        """
        _fsync_dir(self.temp)
        old = ""
        try:
            if os.path.lexists(self.final):
                if not self.force:
                    raise WriteError(
                        f"{quote(self.final)} appeared while the conversion ran; nothing was kept. Pass force=True "
                        "(CLI: --force) to replace it, or choose another destination.",
                        code="output-exists",
                        path=self.final,
                    )
                old = tempfile.mkdtemp(
                    prefix=f".{os.path.basename(self.final)}.", suffix=".tw-old", dir=os.path.dirname(self.final)
                )
                os.replace(self.final, old)  # rename over the empty placeholder
            os.rename(self.temp, self.final)
        except OSError as exc:
            if old:
                with contextlib.suppress(OSError):
                    os.replace(old, self.final)  # put the old folder back
            raise Outputs._failed(self.final, exc) from None
        _fsync_dir(os.path.dirname(self.final))
        self.temp = ""
        self.done = True
        if old:
            import shutil

            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Remove the temporary folder and every folder created; never raises."""
        if self.temp:
            import shutil

            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = ""
        for folder in reversed(self.created_dirs):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self.created_dirs = []
        self.done = True
