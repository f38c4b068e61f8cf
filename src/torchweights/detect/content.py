"""Decide what a path holds from its content alone, before any parser runs: :func:`detect`, the entry point.

:func:`detect` returns a format id (``"torch-zip"``, ``"safetensors"``, ...) or raises a
:class:`~torchweights.errors.TorchWeightsError` subclass whose message says what the file is, why it cannot be
loaded and the exact fix. It never looks at file names or extensions, never reads whole files (only the first
4 KiB, the zip end records and central directory, the tar headers, and a JSON index of at most 64 MiB), and
never imports torch or numpy.

Format ids: ``torch-zip``, ``torchscript``, ``torch-package``, ``torch-legacy``, ``legacy-tar``, ``safetensors``,
``sharded``, ``dcp``, ``pickle``, ``npy``, ``npz`` (NumPy arrays and archives).

Error codes: ``not-found``, ``read-failed``, ``not-a-file``, ``directory``, ``empty-file``, ``lfs-pointer``,
``html-page``, ``json-document``, ``truncated``, ``bad-zip``, ``limit-zip-entries``, ``zip-not-checkpoint``,
``gzip``, ``tar``, ``tar-bad-header``, ``gguf``, ``hdf5``, ``onnx``, ``text-file``, ``unknown-format``.

Folders are decided here; files by the sniffers of :mod:`.sniff`, in order, which hand zip and tar archives to
:mod:`.archive`.
"""

from __future__ import annotations

import os
import stat

from ..errors import CheckpointNotFoundError, NotACheckpointError
from ..text import quote, shorten_list
from .sample import Sample, read_at, read_failed
from .sniff import SNIFFERS, unknown

__all__ = ["FORMATS", "detect"]

#: Every format id :func:`detect` can return.
FORMATS = (
    "torch-zip",
    "torchscript",
    "torch-package",
    "torch-legacy",
    "legacy-tar",
    "safetensors",
    "sharded",
    "dcp",
    "pickle",
    "npy",
    "npz",
)

_HEAD_SIZE = 4096
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def detect(path: str | os.PathLike[str]) -> str:
    """Return the format id of ``path``, decided from its content only.

    Args:
        path: a checkpoint file, a sharded index, or a folder holding one.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        CheckpointNotFoundError: nothing exists at ``path``.
        CheckpointReadError: the operating system refused to read it.
        NotACheckpointError: it is something else (LFS pointer, web page, ONNX model, ...).
        CorruptCheckpointError: it is a checkpoint format but truncated or broken.
    """
    path = os.fspath(path)
    info = _stat(path)
    if stat.S_ISDIR(info.st_mode):
        return _detect_directory(path)
    if not stat.S_ISREG(info.st_mode):
        raise NotACheckpointError(
            f"{quote(path)} is not a regular file (a device, pipe or socket), so it cannot be read as a checkpoint. "
            "Fix: pass the path of the checkpoint file itself.",
            code="not-a-file",
            path=path,
        )
    sample = Sample(path, info.st_size, read_at(path, 0, _HEAD_SIZE))
    for sniff in SNIFFERS:
        found = sniff(sample)
        if found is not None:
            return found
    raise unknown(sample)


def _stat(path: str) -> os.stat_result:
    """``os.stat`` with our errors."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found(path) from None
    except OSError as exc:
        raise read_failed(path, exc) from exc


def _not_found(path: str) -> CheckpointNotFoundError:
    """The error for a missing path, suggesting a similarly named sibling when there is one."""
    if os.path.islink(path):
        return CheckpointNotFoundError(
            f"{quote(path)} is a symbolic link to {quote(os.readlink(path))}, which does not exist (typically an "
            "incomplete download into a cache). Fix: re-download the file, or pass the real file's path.",
            code="not-found",
            path=path,
        )
    parent, name = os.path.split(path.rstrip("/" + os.sep) or path)
    where = "" if os.path.isabs(path) else f" (relative paths start from {os.getcwd()})"
    try:
        siblings = os.listdir(parent or ".")
    except OSError:
        return CheckpointNotFoundError(
            f"No file or folder at {quote(path)}: the folder {quote(parent)} does not exist{where}. "
            "Fix: check the path.",
            code="not-found",
            path=path,
        )
    import difflib  # only on this error path: not worth its import time on every open

    close = difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(quote(os.path.join(parent, c)) for c in close)}?" if close else ""
    return CheckpointNotFoundError(
        f"No file or folder at {quote(path)}{where}.{hint} Fix: check the path and spelling.",
        code="not-found",
        path=path,
    )


def _detect_directory(path: str) -> str:
    """A folder is a sharded checkpoint (``*.index.json``) or a torch.distributed.checkpoint (``.metadata``)."""
    try:
        entries = sorted(os.listdir(path))
    except OSError as exc:
        raise read_failed(path, exc) from exc
    files = [e for e in entries if os.path.isfile(os.path.join(path, e))]
    if ".metadata" in files:
        return "dcp"
    if any(e.endswith(".index.json") for e in files):
        return "sharded"  # several indexes: the sharded reader reports the ambiguity
    candidates = [e for e in files if e.lower().endswith(_CHECKPOINT_SUFFIXES)]
    if candidates:
        listed = shorten_list(candidates)
        fix = f"pass one of them, e.g. {quote(os.path.join(path, candidates[0]))}"
        what = f"It contains these checkpoint files: {listed}."
    else:
        fix = "pass the path of the checkpoint file itself"
        what = "It contains no checkpoint-looking files (*.safetensors, *.bin, *.pt, *.pth, *.ckpt)."
    raise NotACheckpointError(
        f"{quote(path)} is a directory without a sharded index (*.index.json) or a distributed-checkpoint "
        f".metadata file, so there is no single checkpoint to read. {what} Fix: {fix}.",
        code="directory",
        path=path,
    )
