"""The whole exception tree of torchweights.

Every error torchweights raises on purpose derives from :class:`TorchWeightsError` and carries a stable short
``code`` (for scripts, exit codes and docs). Each concrete error is also a builtin exception, so code that already
catches ``ValueError`` or ``OSError`` around ``torch.load`` keeps working::

    TorchWeightsError                      base; never raised itself
    ├── CheckpointNotFoundError            FileNotFoundError   [not-found]
    ├── CheckpointReadError                OSError             [read-failed, not-a-file]
    ├── NotACheckpointError                ValueError          [lfs-pointer, html-page, json-document, empty-file,
    │                                                           gzip, tar, gguf, onnx, hdf5,
    │                                                           text-file, directory, zip-not-checkpoint,
    │                                                           unknown-format]
    ├── CorruptCheckpointError             ValueError          [truncated, bad-zip, bad-pickle, bad-header,
    │                                                           bad-record, bad-member, bad-crc, missing-storage,
    │                                                           missing-member (a member the format requires),
    │                                                           storage-size, safetensors-*, tar-*, zip-overlap,
    │                                                           zip-duplicate-member, zip-name-mismatch,
    │                                                           zip-encrypted, zip-flags, zip-compression,
    │                                                           zip-leading-data, zip-trailing-data,
    │                                                           zip-hidden-data, zip-unsafe-name,
    │                                                           bad-sparse (sparse indices torch would refuse),
    │                                                           pickle-trailing-data (bytes after a plain pickle),
    │                                                           file-changed (the file was rewritten, resized or
    │                                                           replaced since tw.open read it), ...]
    │   ├── ShardIndexError                                    [shard-*]
    │   └── ResourceLimitError                                 [limit-* (limit-inflate: zip bombs;
    │                                                           limit-pickle-opcodes: a pickle asking for more
    │                                                           CPU than Limits.max_pickle_opcodes)]
    ├── UnsafeCheckpointError              ValueError          [unsafe-global]
    ├── UnsupportedCheckpointError         ValueError          [unsupported-* (unsupported-tensor: tensors tw.load
    │                                                           cannot rebuild, named; unsupported-tensor-flag: a
    │                                                           rebuild argument or metadata key not known;
    │                                                           unsupported-tensor-state: a saved attribute that
    │                                                           would shadow torch's; unsupported-sparse: a sparse
    │                                                           tensor into a dense destination;
    │                                                           unsupported-embedded-storage; unsupported-npz-member)]
    ├── RuleError                          ValueError          [bad-rule, bad-container, rename-collision,
    │                                                           bad-model (a ModelSpec outside a dry run),
    │                                                           bad-map-location (a map_location callable that
    │                                                           fails or returns no device), ...]
    ├── LoadError                          ValueError          [shape-mismatch, missing-keys, unexpected-keys,
    │                                                           left-on-meta: a meta-device tensor nothing fills]
    │                                                          carries the full LoadReport as .report
    └── WriteError                         OSError             [output-exists, write-failed, verify-failed]

Messages say what happened, why, and what to do, in that order.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "CorruptCheckpointError",
    "LoadError",
    "NotACheckpointError",
    "ResourceLimitError",
    "RuleError",
    "ShardIndexError",
    "TorchWeightsError",
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "WriteError",
    "pass_through",
]


_E = TypeVar("_E", bound="TorchWeightsError")


class TorchWeightsError(Exception):
    """Base class of every error torchweights raises on purpose.

    Attributes:
        code: a stable short identifier such as ``"lfs-pointer"``; documented and safe to match on.
        message: the human explanation (what, why, what to do).
        path: the file the error is about, when there is one.
    """

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None) -> None:
        self.code = code or self.default_code
        self.message = message
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def in_context(self: _E, context: str, *, path: str | None = None) -> _E:
        """A copy of this error whose message starts with ``context`` (``"shard 'a.bin' of 'index.json'"``), for
        re-raising ``from`` this one where the error is seen from further out.

        The copy is of the same class and keeps every attribute (``code``, ``names``, ``report``...); ``path`` is
        filled in only where the error had none. ``__init__`` is not called again, so no attribute is lost to a
        subclass's signature.
        """
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.message = f"{context}: {self.message}"
        copy.args = (copy.message,)
        if copy.path is None:
            copy.path = path
        return copy


def pass_through(exc: BaseException) -> None:
    """Re-raise ``exc`` unchanged when it is a torchweights error.

    Call it first in an ``except (ValueError, ...)`` block whose body can raise one of ours (each is also a
    ``ValueError`` or ``OSError``): the error keeps its class, code and message instead of being wrapped into
    another whose message would nest the first one's code.
    """
    if isinstance(exc, TorchWeightsError):
        raise exc


class CheckpointNotFoundError(TorchWeightsError, FileNotFoundError):
    """The path does not exist (or names nothing readable)."""

    default_code = "not-found"


class CheckpointReadError(TorchWeightsError, OSError):
    """The operating system refused to read the file (permissions, I/O error)."""

    default_code = "read-failed"


class NotACheckpointError(TorchWeightsError, ValueError):
    """The file is readable but is not a checkpoint (LFS pointer, HTML page, ONNX model, ...)."""

    default_code = "unknown-format"


class CorruptCheckpointError(TorchWeightsError, ValueError):
    """The file claims to be a checkpoint format but its content is broken or inconsistent."""

    default_code = "corrupt"


class ShardIndexError(CorruptCheckpointError):
    """A sharded checkpoint's index is invalid, unsafe, or disagrees with its shards."""

    default_code = "shard-index"


class ResourceLimitError(CorruptCheckpointError):
    """The file asks for more memory, depth or size than a bounded reader allows."""

    default_code = "limit"


class UnsafeCheckpointError(TorchWeightsError, ValueError):
    """The file references code that torchweights will not call (pickle globals not allowed).

    Attributes:
        names: every dangerous global the file references, as ``module.qualname``.
    """

    default_code = "unsafe-global"

    def __init__(
        self, message: str, *, names: tuple[str, ...] = (), code: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message, code=code, path=path)
        #: the dangerous globals (and attribute-laundering BUILDs) the file references, as ``module.qualname``
        self.names = names


class UnsupportedCheckpointError(TorchWeightsError, ValueError):
    """The file is a valid checkpoint using a feature torchweights does not read yet."""

    default_code = "unsupported"


class RuleError(TorchWeightsError, ValueError):
    """A loading rule the caller passed cannot be followed (bad regex, unknown container, colliding renames)."""

    default_code = "bad-rule"


class LoadError(TorchWeightsError, ValueError):
    """A checkpoint does not fit the model under the chosen strictness; the model was left untouched.

    Attributes:
        report: the full :class:`~torchweights.report.load.LoadReport`, every key accounted for.
    """

    default_code = "load-failed"

    def __init__(
        self, message: str, *, report: object = None, code: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(message, code=code, path=path)
        self.report = report


# --- convert: writing outputs -----------------------------------------------------------------------------------


class WriteError(TorchWeightsError, OSError):
    """An output could not be written safely (it exists, the disk refused, or re-reading it found a difference);
    nothing partial was left behind."""

    default_code = "write-failed"
