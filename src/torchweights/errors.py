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
    ├── UnsafeCheckpointError              ValueError          [unsafe-global, untrusted-global, unsafe-call]
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

Messages say what happened, why, and what to do, in that order. Where to read more: :data:`CODES` gives every code's
meaning, common causes and fix, the errors reference of the docs is written from it, and each error's ``docs_url``
is its entry there (added to tracebacks as a note, printed by the command line after the message).
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
    "CODES",
    "DOCS_URL",
    "ErrorCode",
    "describe",
    "docs_url",
    "pass_through",
]


_E = TypeVar("_E", bound="TorchWeightsError")

#: Where the errors reference lives: one entry per code, at ``DOCS_URL + "#" + code`` (the heading anchors of
#: docs/errors.md). The same site is the ``Documentation`` URL of pyproject.toml's ``project.urls``.
DOCS_URL = "https://torchweights.readthedocs.io/en/latest/errors/"


def docs_url(code: str) -> str:
    """The errors reference entry of ``code``: what it means, common causes, the fix."""
    return f"{DOCS_URL}#{code}"


class TorchWeightsError(Exception):
    """Base class of every error torchweights raises on purpose.

    Attributes:
        code: a stable short identifier such as ``"lfs-pointer"``; documented and safe to match on.
        message: the human explanation (what, why, what to do).
        path: the file the error is about, when there is one.

    Where to read more: :attr:`docs_url` is the code's entry in the errors reference. It is added to the error as a
    PEP 678 note (``more: <url>``, Python 3.11+), so a traceback ends with it while ``str(e)`` and ``message`` stay
    the message alone; the command line prints it after the message.
    """

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None) -> None:
        self.code = code or self.default_code
        self.message = message
        self.path = path
        super().__init__(message)
        if hasattr(self, "add_note"):  # Python 3.11+: the traceback ends with where to read more
            self.add_note(f"more: {docs_url(self.code)}")

    @property
    def docs_url(self) -> str:
        """The errors reference entry of this error's code (what it means, common causes, the fix)."""
        return docs_url(self.code)

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    @property
    def fix(self) -> str | None:
        """The exact fix the message names (its text after ``Fix:``), or None when the message names none."""
        return _split_fix(self.message)[1]

    def to_dict(self) -> dict[str, str | None]:
        """``{"code", "type", "message", "fix", "docs_url"}``: the error as plain data (``torchweights CMD --json``
        prints it under ``"error"``); ``message`` is what happened and why, without the fix, which is ``fix``;
        ``docs_url`` is the code's errors reference entry."""
        what, fix = _split_fix(self.message)
        return {"code": self.code, "type": type(self).__name__, "message": what, "fix": fix, "docs_url": self.docs_url}

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
        notes = copy.__dict__.get("__notes__")
        if notes is not None:  # its own list: a note added to the copy must not appear on the original
            copy.__dict__["__notes__"] = list(notes)
        if copy.path is None:
            copy.path = path
        return copy


#: Where a message names its fix, after a space or a line break: ``"... Nothing was loaded. Fix: run ..."``.
_FIX_MARK = "Fix: "


def _split_fix(message: str) -> tuple[str, str | None]:
    """``(what happened and why, the fix)`` of a message; the fix is None when the message names none."""
    at = message.find(_FIX_MARK)
    while at > 0 and not message[at - 1].isspace():
        at = message.find(_FIX_MARK, at + 1)
    if at <= 0 or not message[at + len(_FIX_MARK) :].strip():
        return message, None
    return message[:at].rstrip(), message[at + len(_FIX_MARK) :].strip()


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


# --- the registry: every code, the class that carries it, what it means, its common causes and the fix -----------


class ErrorCode:
    """One entry of :data:`CODES`: the class that carries a code and the text of its errors reference entry.

    A plain class rather than a ``@structure`` record: this module is imported by ``import torchweights``, which
    imports nothing else of the package (tests/test_startup.py).

    Attributes:
        cls: the error class raised with the code (or a subclass of it).
        meaning: one line, no final full stop: what the code says happened.
        causes: the common reasons it happens, ``;``-separated.
        fix: what to do about it.
    """

    __slots__ = ("causes", "cls", "fix", "meaning")

    def __init__(self, cls: type[TorchWeightsError], meaning: str, *, causes: str, fix: str) -> None:
        self.cls = cls
        self.meaning = meaning
        self.causes = causes
        self.fix = fix

    def __repr__(self) -> str:
        return f"ErrorCode({self.cls.__name__}, {self.meaning!r})"


#: Shared fixes of the registry below.
_DOWNLOAD_AGAIN = "download or copy the file again from its source (compare its size and sha256 with the source's)"
_RESAVE = (
    "if you still have the process or an older torch that wrote it, load it there and save it again with torch.save"
)

#: Every error code torchweights raises: ``code -> ErrorCode(class, meaning, causes=..., fix=...)``. The one place
#: codes are documented: ``describe(code)``, the errors reference of the docs (docs/errors.md, written by
#: tools/make_error_table.py) and each error's ``docs_url`` anchor come from it. The test suite fails on any error
#: raised with a code that is not here, or carried by a class other than the registered one (or a subclass of it).
CODES: dict[str, ErrorCode] = {
    # the file system
    "not-found": ErrorCode(
        CheckpointNotFoundError,
        "the path does not exist, or a shard or member it names does not",
        causes="a typo in the path; a relative path run from another folder; a shard or member the index names was not"
        " downloaded",
        fix="check the path (`ls -l`), pass an absolute path, or download the missing shard next to its index",
    ),
    "read-failed": ErrorCode(
        CheckpointReadError,
        "the operating system refused or failed a read (permissions, I/O error)",
        causes="no read permission; a network or FUSE mount that dropped; a failing disk (I/O error)",
        fix="check permissions (`ls -l`) and that the mount is up; copy the file to a local disk and retry",
    ),
    "not-a-file": ErrorCode(
        CheckpointReadError,
        "the path is a device, FIFO or socket, not a regular file",
        causes="the path is a FIFO, a socket or a device such as /dev/stdin, which cannot be read at offsets",
        fix="write the stream to a regular file first, then read that file",
    ),
    # not a checkpoint at all
    "unknown-format": ErrorCode(
        NotACheckpointError,
        "the content matches no checkpoint format torchweights knows",
        causes="a file of another kind (an image, an archive, a model of another framework); a download that is "
        "damaged from its first bytes",
        fix="check what the file is (`file PATH`, `head -c 64 PATH | xxd`); download it again; export it to a PyTorch"
        " format with the tool that made it",
    ),
    "directory": ErrorCode(
        NotACheckpointError,
        "a folder that holds no recognisable checkpoint (no index, no single file)",
        causes="a folder without a shard index and with no single checkpoint file in it; the wrong folder of a "
        "repository",
        fix="pass the checkpoint file itself, or the `*.index.json` of a sharded set",
    ),
    "empty-file": ErrorCode(
        NotACheckpointError,
        "the file is empty (an interrupted download or copy)",
        causes="an interrupted download or copy; a disk that filled while the file was written; `touch` or a failed "
        "`torch.save`",
        fix=_DOWNLOAD_AGAIN,
    ),
    "lfs-pointer": ErrorCode(
        NotACheckpointError,
        "a Git LFS pointer file, not the weights: run `git lfs pull`",
        causes="a repository cloned without Git LFS, or with `GIT_LFS_SKIP_SMUDGE=1`: the 130-byte pointer file stands"
        " in for the weights",
        fix="run `git lfs install && git lfs pull` in the repository, or download the file through the hub's resolve "
        "URL",
    ),
    "html-page": ErrorCode(
        NotACheckpointError,
        "an HTML page (a login or error page saved instead of the file)",
        causes="a download that needed a login, a token or a licence acceptance; a `wget` of a page URL instead of the"
        " raw or resolve URL; an expired signed URL",
        fix="open the file in a text editor to read the page, accept or authenticate, and download the raw file (e.g."
        " `/resolve/main/` instead of `/blob/main/`)",
    ),
    "json-document": ErrorCode(
        NotACheckpointError,
        "a JSON document that is not a shard index (a config file?)",
        causes="a config.json or an API error document saved in place of the weights; a JSON file that is not a shard "
        "index",
        fix="pass the weights file, or the `*.index.json` that has a `weight_map`; read the JSON to see what went "
        "wrong with the download",
    ),
    "text-file": ErrorCode(
        NotACheckpointError,
        "plain text, not a checkpoint",
        causes="a README, a script, a log or an error message saved under a checkpoint's name",
        fix="read the file: it often says what happened; then fetch the real checkpoint",
    ),
    "gzip": ErrorCode(
        NotACheckpointError,
        "a gzip stream: decompress it first",
        causes="a `.pt.gz` or `.tar.gz` as published; a server that stored the file compressed",
        fix="decompress it first (`gunzip -k FILE`), then read the result",
    ),
    "tar": ErrorCode(
        NotACheckpointError,
        "a tar archive that is not a torch checkpoint: extract it first",
        causes="a release archive (`.tar`) of several files rather than a checkpoint",
        fix="extract it (`tar -xf FILE`) and read the checkpoint inside",
    ),
    "zip-not-checkpoint": ErrorCode(
        NotACheckpointError,
        "a zip archive that holds no torch checkpoint",
        causes="a zip of several files (a release bundle) rather than a torch.save archive",
        fix="unzip it and read the checkpoint inside",
    ),
    "gguf": ErrorCode(
        NotACheckpointError,
        "a GGUF model (llama.cpp), not a PyTorch checkpoint",
        causes="a llama.cpp / GGUF export of a model, which holds quantized tensors in its own layout",
        fix="use the original PyTorch or safetensors weights, or the `gguf` Python package to read it",
    ),
    "onnx": ErrorCode(
        NotACheckpointError,
        "an ONNX model, not a PyTorch checkpoint",
        causes="an ONNX export of a model (`torch.onnx.export`)",
        fix="use the PyTorch weights the export was made from, or the `onnx` package to read it",
    ),
    "hdf5": ErrorCode(
        NotACheckpointError,
        "an HDF5 file (Keras, TensorFlow), not a PyTorch checkpoint",
        causes="Keras or TensorFlow weights (`.h5`)",
        fix="convert them with the framework that wrote them, or use the PyTorch release of the model",
    ),
    # damaged or inconsistent files
    "corrupt": ErrorCode(
        CorruptCheckpointError,
        "the content is broken or inconsistent (generic)",
        causes="a damaged file whose problem has no more precise code",
        fix=_DOWNLOAD_AGAIN,
    ),
    "truncated": ErrorCode(
        CorruptCheckpointError,
        "the file or a member ends early (an interrupted download or copy)",
        causes="an interrupted download or copy; a full disk while saving; a file still being written",
        fix=_DOWNLOAD_AGAIN + "; if a process is still writing it, wait for it to finish",
    ),
    "bad-zip": ErrorCode(
        CorruptCheckpointError,
        "the zip structure cannot be read",
        causes="damaged bytes in the zip directory; a truncated or edited archive",
        fix=_DOWNLOAD_AGAIN,
    ),
    "bad-pickle": ErrorCode(
        CorruptCheckpointError,
        "a pickle stream is malformed",
        causes="damaged bytes in a pickle stream; a file edited by hand; a crafted file",
        fix=_DOWNLOAD_AGAIN + "; " + _RESAVE,
    ),
    "bad-header": ErrorCode(
        CorruptCheckpointError,
        "a format header is malformed",
        causes="damaged bytes at the start of a format's header; a file from a writer that does not follow the format",
        fix=_DOWNLOAD_AGAIN,
    ),
    "bad-record": ErrorCode(
        CorruptCheckpointError,
        "a tensor's description (dtype, shape, strides, offset) is inconsistent",
        causes="a tensor whose shape, strides or offset reach outside its storage; damaged or crafted metadata",
        fix=_DOWNLOAD_AGAIN + "; " + _RESAVE,
    ),
    "bad-dcp-metadata": ErrorCode(
        CorruptCheckpointError,
        "a torch.distributed.checkpoint folder whose .metadata does not describe its items",
        causes="a `.metadata` that is not DCP's `Metadata` (hand-written, another tool's), an item placed outside the "
        "folder or outside its `.distcp` file, a chunk whose dtype or shape disagrees with `.metadata`, chunks of a "
        "tensor that do not tile its shape exactly (overlapping, leaving a gap, reaching past it)",
        fix="copy the whole folder again from where it was saved (every `.distcp` file with its `.metadata`), or "
        "save it again",
    ),
    "bad-member": ErrorCode(
        CorruptCheckpointError,
        "an archive member is not what the format requires there",
        causes="a member that is not what its name says (a storage that is not bytes, a compressed member that cannot "
        "be inflated); the file changed while it was read",
        fix=_DOWNLOAD_AGAIN,
    ),
    "bad-crc": ErrorCode(
        CorruptCheckpointError,
        "stored bytes do not match their CRC-32: the file was damaged",
        causes="a download or copy that changed bytes; a failing disk or memory; a file patched in place",
        fix=_DOWNLOAD_AGAIN + "; `torchweights verify FILE` checks every member",
    ),
    "bad-sparse": ErrorCode(
        CorruptCheckpointError,
        "a sparse tensor's indices are ones torch would refuse",
        causes="sparse indices out of range or not sorted as the layout requires: a damaged or crafted file (torch "
        "would read or write outside the tensor)",
        fix=_DOWNLOAD_AGAIN + "; " + _RESAVE + " after `torch.sparse.check_sparse_tensor_invariants`",
    ),
    "missing-storage": ErrorCode(
        CorruptCheckpointError,
        "a tensor's storage is not in the file",
        causes="a tensor refers to a storage the file does not contain: a truncated legacy file or a hand-assembled "
        "archive",
        fix=_DOWNLOAD_AGAIN,
    ),
    "missing-member": ErrorCode(
        CorruptCheckpointError,
        "a member the format requires is not in the archive",
        causes="an archive without a member its format requires (`data.pkl`, `constants.pkl`, `version`...): a "
        "repacked or truncated archive",
        fix=_DOWNLOAD_AGAIN + "; " + _RESAVE,
    ),
    "storage-size": ErrorCode(
        CorruptCheckpointError,
        "a storage's bytes are fewer than its tensors need",
        causes="a storage member shorter than the tensors over it need: a truncated or edited archive",
        fix=_DOWNLOAD_AGAIN,
    ),
    "no-data": ErrorCode(
        CorruptCheckpointError,
        "tensors saved from the meta device: they hold no values to load",
        causes="a checkpoint saved from a model built on the meta device (`torch.device('meta')`, "
        "`init_empty_weights()`) before its weights were loaded",
        fix="save the checkpoint from real tensors, or `skip=[...]` the tensors the message names",
    ),
    "file-changed": ErrorCode(
        CorruptCheckpointError,
        "the file was rewritten, resized or replaced since tw.open read it",
        causes="the file was rewritten, resized or replaced (a new download, a training run saving again) between "
        "`tw.open` and reading the bytes",
        fix="open it again with `tw.open(path)` and read from the new Checkpoint; wait until the writer is done",
    ),
    "pickle-trailing-data": ErrorCode(
        CorruptCheckpointError,
        "bytes follow the end of a plain pickle",
        causes="a plain pickle followed by other bytes: two files concatenated, or data hidden after the pickle",
        fix="re-save the object on its own; if you did not write the file, do not trust it",
    ),
    "zip-overlap": ErrorCode(
        CorruptCheckpointError,
        "two zip members claim the same bytes",
        causes="two members whose byte ranges overlap: a crafted archive (a zip bomb or a hidden payload); torch.save "
        "never writes it",
        fix="do not load it; get the checkpoint from a trusted source",
    ),
    "zip-duplicate-member": ErrorCode(
        CorruptCheckpointError,
        "two zip members have the same name",
        causes="two members with one name: an archive appended to, or crafted so that readers disagree on which is "
        "used",
        fix="do not load it; get the checkpoint from a trusted source, or rewrite it with one member per name",
    ),
    "zip-name-mismatch": ErrorCode(
        CorruptCheckpointError,
        "a member's local header and central directory disagree",
        causes="a member's local header and the central directory name different files: a crafted or damaged archive",
        fix=_DOWNLOAD_AGAIN,
    ),
    "zip-encrypted": ErrorCode(
        CorruptCheckpointError,
        "a zip member is encrypted",
        causes="an archive zipped with a password; torch never writes encrypted members",
        fix="decrypt it with the tool and password it was made with, then read the result",
    ),
    "zip-flags": ErrorCode(
        CorruptCheckpointError,
        "a zip member uses flags torch never writes",
        causes="a zip written by a tool other than torch.save with flags torch never sets",
        fix="re-save the checkpoint with torch.save, or re-zip it without those options (`zip -0`)",
    ),
    "zip-compression": ErrorCode(
        CorruptCheckpointError,
        "a zip member uses a compression method torchweights cannot read",
        causes="members compressed with a method other than stored or deflate (bzip2, lzma, zstd)",
        fix="re-zip it stored or deflated (`zip -0` or `zip -6`), or re-save it with torch.save",
    ),
    "zip-leading-data": ErrorCode(
        CorruptCheckpointError,
        "bytes precede the first zip member",
        causes="bytes before the first member: a self-extracting stub, another file prepended, or a crafted polyglot",
        fix="strip the leading bytes or re-save the checkpoint; if you did not write it, do not trust it",
    ),
    "zip-trailing-data": ErrorCode(
        CorruptCheckpointError,
        "bytes follow the end of the zip directory",
        causes="bytes after the end of the zip directory: files concatenated, or data appended to hide it",
        fix="re-save the checkpoint; if you did not write it, do not trust it",
    ),
    "zip-hidden-data": ErrorCode(
        CorruptCheckpointError,
        "bytes between zip members that no member accounts for",
        causes="bytes between members that no member accounts for: data hidden from zip readers",
        fix="do not load it; re-save the checkpoint from a trusted copy",
    ),
    "zip-unsafe-name": ErrorCode(
        CorruptCheckpointError,
        "a member name is absolute, has '..' or is not valid text",
        causes="a member named with an absolute path, `..` or invalid text: an archive crafted to escape an extraction"
        " folder",
        fix="do not extract or load it; get the checkpoint from a trusted source",
    ),
    "zip-no-data-pkl": ErrorCode(
        CorruptCheckpointError,
        "a torch zip without its data.pkl",
        causes="a zip with TorchScript members (`constants.pkl`, `code/`) but no `data.pkl`: a truncated or repacked "
        "archive",
        fix="re-save the module with torch.jit.save",
    ),
    "tar-bad-header": ErrorCode(
        CorruptCheckpointError,
        "a tar member header is malformed (checksum, size, type)",
        causes="a damaged tar header (checksum, size or type): a truncated or edited legacy tar checkpoint",
        fix=_DOWNLOAD_AGAIN,
    ),
    "tar-bad-member": ErrorCode(
        CorruptCheckpointError,
        "a tar member's content is not what the torch tar layout needs",
        causes="a member of a legacy tar checkpoint whose content is not what the layout needs",
        fix=_DOWNLOAD_AGAIN + "; " + _RESAVE,
    ),
    "tar-duplicate-member": ErrorCode(
        CorruptCheckpointError,
        "two tar members have the same name",
        causes="two members with one name in a legacy tar checkpoint: an appended or crafted archive",
        fix="do not load it; get the checkpoint from a trusted source",
    ),
    "tar-missing-member": ErrorCode(
        CorruptCheckpointError,
        "a member the torch tar layout requires is missing",
        causes="a legacy tar checkpoint without `sys_info`, `storages`, `tensors` or `pickle`",
        fix=_DOWNLOAD_AGAIN,
    ),
    "safetensors-bad-header": ErrorCode(
        CorruptCheckpointError,
        "the safetensors JSON header is malformed",
        causes="damaged bytes in the JSON header; a writer that did not follow the format; a truncated file",
        fix=_DOWNLOAD_AGAIN,
    ),
    "safetensors-not-utf8": ErrorCode(
        CorruptCheckpointError,
        "the safetensors header is not UTF-8",
        causes="a header with bytes that are not UTF-8: damage, or a writer that encoded names wrongly",
        fix=_DOWNLOAD_AGAIN + "; re-save with the safetensors library",
    ),
    "safetensors-bad-entry": ErrorCode(
        CorruptCheckpointError,
        "a safetensors tensor entry is malformed",
        causes="a tensor entry without `dtype`, `shape` or `data_offsets`, or with values of the wrong type",
        fix="re-save with the safetensors library",
    ),
    "safetensors-bad-dtype": ErrorCode(
        CorruptCheckpointError,
        "a safetensors entry names an unknown dtype",
        causes="a dtype name the format does not define (a typo, or a writer's private extension)",
        fix="re-save with the safetensors library using one of its dtypes",
    ),
    "safetensors-bad-shape": ErrorCode(
        CorruptCheckpointError,
        "a safetensors entry has an invalid shape",
        causes="a shape with negative or non-integer dimensions",
        fix="re-save with the safetensors library",
    ),
    "safetensors-bad-offsets": ErrorCode(
        CorruptCheckpointError,
        "a safetensors entry's byte range is invalid",
        causes="a byte range that is reversed or reaches past the end of the file: truncation or a broken writer",
        fix=_DOWNLOAD_AGAIN,
    ),
    "safetensors-bad-metadata": ErrorCode(
        CorruptCheckpointError,
        "the safetensors __metadata__ is not a string map",
        causes="`__metadata__` holding numbers, lists or nested objects; the format allows only string values",
        fix="re-save with string metadata values (`json.dumps` them)",
    ),
    "safetensors-duplicate-key": ErrorCode(
        CorruptCheckpointError,
        "a tensor name appears twice in the header",
        causes="a header naming one tensor twice: the official library keeps the last silently, so readers may "
        "disagree",
        fix="re-save with unique names; if you did not write it, do not trust it",
    ),
    "safetensors-overlap": ErrorCode(
        CorruptCheckpointError,
        "two tensors claim the same bytes",
        causes="two tensors sharing bytes, which the format forbids (tied weights must be saved once)",
        fix="re-save with `safetensors.torch.save_model` or `torchweights convert`, which write tied tensors once",
    ),
    "safetensors-gap": ErrorCode(
        CorruptCheckpointError,
        "bytes between tensors that no tensor accounts for",
        causes="bytes between tensors that no tensor covers: a broken writer, or data hidden in the file",
        fix="re-save with the safetensors library or `torchweights convert`",
    ),
    "safetensors-size-mismatch": ErrorCode(
        CorruptCheckpointError,
        "a byte range's length does not match dtype x shape",
        causes="a byte range whose length is not dtype size x the product of the shape",
        fix="re-save with the safetensors library",
    ),
    "safetensors-trailing-bytes": ErrorCode(
        CorruptCheckpointError,
        "the file is longer than its tensors need",
        causes="bytes after the last tensor: files concatenated, or data appended",
        fix=_DOWNLOAD_AGAIN + "; re-save it with the safetensors library",
    ),
    # sharded sets
    "shard-index": ErrorCode(
        ShardIndexError,
        "a shard index is invalid (generic)",
        causes="a sharded checkpoint's index is invalid in a way that has no more precise code",
        fix="download the index again with its shards",
    ),
    "shard-bad-index": ErrorCode(
        ShardIndexError,
        "the index is not a JSON object with a weight_map of names to files",
        causes="an index that is not a JSON object with a `weight_map` of tensor names to file names (a config.json "
        "passed as the index)",
        fix="pass the `*.index.json` that came with the shards, or download it again",
    ),
    "shard-no-index": ErrorCode(
        ShardIndexError,
        "a shard file without the index that lists its set",
        causes="one shard (`model-00001-of-00003.safetensors`) read without the index that lists the set",
        fix="pass the `*.index.json` or the folder, or download the index next to the shards",
    ),
    "shard-many-indexes": ErrorCode(
        ShardIndexError,
        "a folder with several shard indexes: name the one to read",
        causes="a folder with several shard indexes (e.g. `model.safetensors.index.json` and "
        "`pytorch_model.bin.index.json`)",
        fix="pass the index you want to read",
    ),
    "shard-nested-index": ErrorCode(
        ShardIndexError,
        "the index names another index as a shard",
        causes="a `weight_map` that maps tensors to another index file",
        fix="fix the index so that it names the shard files themselves",
    ),
    "shard-missing": ErrorCode(
        ShardIndexError,
        "a shard the index names is not there",
        causes="a shard not downloaded (an interrupted download, an `allow_patterns` that left it out)",
        fix="download the missing shard next to its index",
    ),
    "shard-path-escape": ErrorCode(
        ShardIndexError,
        "a shard path leaves the index's folder (absolute, '..' or a link)",
        causes="an index naming a shard by an absolute path, with `..`, or through a link out of its folder: a crafted"
        " index",
        fix="do not load it; an index should name shards by file name only",
    ),
    "shard-tensor-missing": ErrorCode(
        ShardIndexError,
        "a tensor the index maps to a shard is not in that shard",
        causes="an index that disagrees with its shards: shards from another revision, or an index edited by hand",
        fix="download the index and the shards again from one revision",
    ),
    "shard-duplicate-tensor": ErrorCode(
        ShardIndexError,
        "a tensor is stored in more than one shard",
        causes="one tensor stored in two shards: shards from two revisions mixed in one folder",
        fix="download the index and the shards again from one revision",
    ),
    "shard-unindexed": ErrorCode(
        ShardIndexError,
        "a shard holds tensors the index does not list",
        causes="a shard holding tensors the index does not list: shards from another revision, or a stale index",
        fix="download the index and the shards again from one revision",
    ),
    "shard-total-size": ErrorCode(
        ShardIndexError,
        "the index's metadata.total_size disagrees with the shards",
        causes="`metadata.total_size` in the index disagrees with the shards' sizes: a stale index or a damaged shard",
        fix="download the index and the shards again; `torchweights verify INDEX` says which part differs",
    ),
    # resource bounds (Limits)
    "limit": ErrorCode(
        ResourceLimitError,
        "the file asks for more than a bounded reader allows (generic)",
        causes="the file asks for more than a bounded reader allows, in a way that has no more precise code",
        fix="if you trust the file, raise the limit named in the message: `tw.Limits(...)`",
    ),
    "limit-depth": ErrorCode(
        ResourceLimitError,
        "nesting deeper than Limits.max_depth",
        causes="containers nested deeper than `Limits.max_depth`: a crafted pickle (real checkpoints nest a few "
        "levels)",
        fix="if you trust the file, pass `limits=tw.Limits(max_depth=...)`",
    ),
    "limit-expansion": ErrorCode(
        ResourceLimitError,
        "a pickle expands to more objects than the limits allow",
        causes="a pickle that reuses shared sub-trees so often that naming its tensors would not end (a 'billion "
        "laughs' file)",
        fix="do not load it: the file is malformed or hostile",
    ),
    "limit-header-size": ErrorCode(
        ResourceLimitError,
        "a header larger than Limits.max_header_bytes",
        causes="a header (safetensors JSON, npy) larger than `Limits.max_header_bytes`: a crafted or damaged file",
        fix="if you trust the file, pass `limits=tw.Limits(max_header_bytes=...)`",
    ),
    "limit-index-size": ErrorCode(
        ResourceLimitError,
        "a shard index larger than the limit",
        causes="a file passed as a shard index that is far larger than real indexes (`Limits.max_index_bytes`)",
        fix="check that the file is an index; if you trust it, pass `limits=tw.Limits(max_index_bytes=...)`",
    ),
    "limit-inflate": ErrorCode(
        ResourceLimitError,
        "a compressed member inflates past its budget (a zip bomb)",
        causes="a compressed member that inflates past its declared size or `Limits.max_inflated_bytes`: a zip bomb",
        fix="do not load it; if you trust it, pass `limits=tw.Limits(max_inflated_bytes=...)`",
    ),
    "limit-memory": ErrorCode(
        ResourceLimitError,
        "reading would need more memory than the limits allow",
        causes="a pickle or header asking for more memory than this machine has (a crafted size, or a truly huge "
        "object)",
        fix="check the file's source; read it on a machine with more memory if you trust it",
    ),
    "limit-pickle-opcodes": ErrorCode(
        ResourceLimitError,
        "a pickle runs more opcodes than Limits.max_pickle_opcodes",
        causes="a pickle that runs more opcodes than `Limits.max_pickle_opcodes`: a CPU bomb, or a very large pickle "
        "of Python objects",
        fix="if you trust the file, pass `limits=tw.Limits(max_pickle_opcodes=...)`",
    ),
    "limit-pickle-size": ErrorCode(
        ResourceLimitError,
        "a pickle larger than Limits.max_pickle_bytes",
        causes="a pickle member larger than `Limits.max_pickle_bytes`: large Python data saved next to the tensors, or"
        " a crafted file",
        fix="if you trust the file, pass `limits=tw.Limits(max_pickle_bytes=...)`",
    ),
    "limit-source-size": ErrorCode(
        ResourceLimitError,
        "TorchScript source larger than the limit",
        causes="TorchScript source files larger than `Limits.max_source_bytes` (scan): many module types, or a crafted"
        " archive",
        fix="if you expect that much code, `tw.scan(path, limits=tw.Limits(max_source_bytes=...))`",
    ),
    "limit-tar-header": ErrorCode(
        ResourceLimitError,
        "a tar header field larger than the limit",
        causes="a tar extended header far larger than torch ever writes: not a torch checkpoint, or a crafted one",
        fix="do not load it; extract it with `tar` if it is an ordinary archive",
    ),
    "limit-tar-members": ErrorCode(
        ResourceLimitError,
        "more tar members than the limit",
        causes="a tar archive with more members than the limit: not a legacy torch checkpoint, or a crafted one",
        fix="extract it with `tar` if it is an ordinary archive",
    ),
    "limit-tensor-dims": ErrorCode(
        ResourceLimitError,
        "a tensor with more dimensions than the limit",
        causes="a tensor with more dimensions than `Limits.max_tensor_dims` (64): damaged or crafted metadata",
        fix=_DOWNLOAD_AGAIN + "; if you trust the file, pass `limits=tw.Limits(max_tensor_dims=...)`",
    ),
    "limit-zip-entries": ErrorCode(
        ResourceLimitError,
        "more zip members than any reader accepts (a million)",
        causes="an archive claiming more than a million members: not a checkpoint (torch writes a few per tensor), or "
        "a crafted or damaged directory",
        fix="unzip it with another tool if it is an ordinary archive; torchweights does not read such archives",
    ),
    # code torchweights will not run
    "unsafe-global": ErrorCode(
        UnsafeCheckpointError,
        "the file names globals that can run code; nothing was executed",
        causes="a pickle naming functions that can run code or touch the system (`os.system`, `eval`, `subprocess`, "
        "`builtins.getattr`): a malicious file, or a pickle of objects that are not weights",
        fix="do not load it with `torch.load(weights_only=False)` or `pickle`; `torchweights scan FILE` lists every "
        "finding; get the weights as safetensors from a trusted source",
    ),
    "untrusted-global": ErrorCode(
        UnsafeCheckpointError,
        "load_model: globals of packages not in trust=; nothing was imported",
        causes="`load_model` of a file whose classes come from packages not named in `trust=`",
        fix="if you trust those packages, pass `trust=[...]` as the message spells it; or build the model in code and"
        " `tw.load_into(model, path)`",
    ),
    "unsafe-call": ErrorCode(
        UnsafeCheckpointError,
        "load_model: the pickle calls what it may only reference (a function)",
        causes="a pickle that calls what `load_model` only references (a function via REDUCE, a `getattr` chain that "
        "ends in a call, BUILD of a dunder attribute): a crafted file",
        fix="do not load it with torch.load or pickle; `tw.load(path)` reads the weights without calling anything",
    ),
    # valid files torchweights does not read (yet)
    "unsupported": ErrorCode(
        UnsupportedCheckpointError,
        "a valid checkpoint using a feature torchweights cannot read",
        causes="a valid checkpoint using a feature torchweights does not read, with no more precise code",
        fix="read it with `torch.load(path, weights_only=True)` if you trust it, and open an issue with the message",
    ),
    "unsupported-dcp-item": ErrorCode(
        UnsupportedCheckpointError,
        "a torch.distributed.checkpoint item stored in a way torchweights does not read",
        causes="an item of a `torch.distributed.checkpoint` folder written through storage transforms (compression "
        "extensions) or not as a `torch.save` archive (`serialization_format=SAFETENSORS`, old torch)",
        fix="save the checkpoint with the default storage writer, or convert it with `dcp_to_torch_save` (trusted "
        "folders only)",
    ),
    "unsupported-dtype": ErrorCode(
        UnsupportedCheckpointError,
        "a dtype torchweights (or this torch) cannot build",
        causes="a dtype the installed torch does not have (a float8 or uint variant of a newer release), or one "
        "torchweights does not know",
        fix="upgrade torch, or read the tensors as records with `tw.open(path)`",
    ),
    "unsupported-embedded-storage": ErrorCode(
        UnsupportedCheckpointError,
        "a storage embedded in a way torchweights cannot read",
        causes="storages pickled with plain `pickle` at protocol 2, whose bytes are spelled as text",
        fix="load it where it was made and re-save it with `torch.save`",
    ),
    "unsupported-legacy-tar-platform": ErrorCode(
        UnsupportedCheckpointError,
        "a tar checkpoint of a big-endian or 32-bit host",
        causes="a tar checkpoint saved on a big-endian or 32-bit host by the first torch releases",
        fix="load it with an old torch on such a machine and re-save it with torch.save",
    ),
    "unsupported-npz-member": ErrorCode(
        UnsupportedCheckpointError,
        "an .npz member that is not a plain array",
        causes="an `.npz` member that is not a plain `.npy` array (a nested archive, another file type)",
        fix="re-save the arrays with `numpy.savez`, one array per member",
    ),
    "unsupported-quantized": ErrorCode(
        UnsupportedCheckpointError,
        "a quantization scheme torchweights cannot rebuild",
        causes="a quantized tensor with a scheme torchweights cannot rebuild (per-channel float qparams, a packing it "
        "does not know)",
        fix="dequantize before saving, or read it with `torch.load` if you trust the file",
    ),
    "unsupported-sparse": ErrorCode(
        UnsupportedCheckpointError,
        "a sparse tensor for a dense destination",
        causes="a sparse tensor in the file for a dense parameter in the model",
        fix="densify it in the checkpoint (`t.to_dense()`), or skip that key",
    ),
    "unsupported-tensor": ErrorCode(
        UnsupportedCheckpointError,
        "tensors tw.load cannot rebuild (named in the message)",
        causes="nested tensors, wrapper subclasses, tensors rebuilt from NumPy arrays, XLA/MPS/MTIA device tensors",
        fix='`tw.load(path, unsupported="skip")` to load the rest; or move those tensors to the CPU as plain tensors '
        "before saving",
    ),
    "unsupported-tensor-flag": ErrorCode(
        UnsupportedCheckpointError,
        "a tensor rebuild argument or metadata key not known",
        causes="a tensor rebuild argument or metadata key from a newer torch than torchweights knows",
        fix="upgrade torchweights; open an issue with the message if the newest release still refuses it",
    ),
    "unsupported-tensor-state": ErrorCode(
        UnsupportedCheckpointError,
        "a saved tensor attribute that would shadow torch's",
        causes="a Python attribute saved on a tensor whose name would shadow torch's own (`shape`, a method name)",
        fix="delete that attribute before saving (`del t.shape_hint`...), or rename it",
    ),
    "allowed-global-missing": ErrorCode(
        UnsupportedCheckpointError,
        "a global the caller allowed cannot be imported here",
        causes="`allow_globals=[...]` names a class whose package is not installed, or a name that does not exist "
        "there",
        fix="install the package that defines it, or leave it out of `allow_globals` to load it as an inert stub",
    ),
    "missing-class": ErrorCode(
        UnsupportedCheckpointError,
        "load_model: a trusted class cannot be imported here",
        causes="`load_model` of a file whose trusted class was moved or renamed since it was saved, or whose package "
        "is not installed",
        fix='install the package; or `rename_classes={"old.mod.Cls": "new.mod.Cls"}`; or build the model in code and '
        "`tw.load_into(model, path)`",
    ),
    "unsupported-model-format": ErrorCode(
        UnsupportedCheckpointError,
        "load_model: TorchScript, torch.package or plain-pickle files are not rebuilt",
        causes="`load_model` of a TorchScript or torch.package archive, or a plain `pickle.dump` file",
        fix="`torch.jit.load` for trusted TorchScript files; `tw.load(path)` for the weights",
    ),
    # the caller's options
    "bad-rule": ErrorCode(
        RuleError,
        "an option passed to torchweights cannot be followed",
        causes="an option that cannot be followed, with no more precise code",
        fix="read the message: it names the option and the values it takes",
    ),
    "bad-container": ErrorCode(
        RuleError,
        "the container= named is not in the checkpoint",
        causes="`container=` names a key that is not a dict of tensors in this checkpoint (a typo, or a file saved "
        "differently)",
        fix='pass one of the containers the message lists, or `container="auto"`',
    ),
    "bad-dtype": ErrorCode(
        RuleError,
        "a dtype option names no dtype",
        causes='`dtype=` is not `"model"` or `"checkpoint"` (load_into), or not a floating dtype name (convert)',
        fix="pass one of the values the message lists",
    ),
    "bad-align": ErrorCode(
        RuleError,
        "an align option that is not one of the choices",
        causes='`align=` is not None or `"auto"`',
        fix='pass `align="auto"` to pair renamed keys by structure, or leave it out',
    ),
    "bad-adapt": ErrorCode(
        RuleError,
        "an adapter name that is not in the adapter table",
        causes="a typo in `adapt=[...]` (or `--adapt`); an adapter of a newer torchweights",
        fix='pass names from the table the message lists (README, "Across refactors"), or `"all"`',
    ),
    "bad-format": ErrorCode(
        RuleError,
        "an output format that convert cannot write",
        causes='`to=` (`--to`) is not `"safetensors"`, `"torch"` or `"dcp"`',
        fix='pass `to="safetensors"`, `to="torch"` or `to="dcp"`',
    ),
    "bad-fail-on": ErrorCode(
        RuleError,
        "scan's fail_on names a condition other than dangerous, unknown, unreadable",
        causes="`--fail-on` (or `TreeScan.exit_code(fail_on)`) given a word other than dangerous, unknown, unreadable",
        fix="pass one or more of `dangerous`, `unknown`, `unreadable` (repeat the option or separate them with commas)",
    ),
    "bad-map-location": ErrorCode(
        RuleError,
        "a map_location that fails or returns no device",
        causes="a `map_location` callable that raises, or that returns something that is not a device",
        fix='pass a device (`"cpu"`, `"cuda:0"`), a dict of device names, or a callable that returns one',
    ),
    "bad-model": ErrorCode(
        RuleError,
        "a ModelSpec where a real model is needed (outside a dry run)",
        causes="a `ModelSpec` (a model described without tensors) passed where tensors will be written: outside "
        "`dry_run=True`",
        fix="pass a real `nn.Module`, or add `dry_run=True`",
    ),
    "bad-on-mismatch": ErrorCode(
        RuleError,
        "on_mismatch= is not one of its values",
        causes='`on_mismatch=` is not `"error"` or `"skip"`',
        fix='pass `on_mismatch="error"` or `on_mismatch="skip"`',
    ),
    "bad-prefix": ErrorCode(
        RuleError,
        "a prefix option is not a string",
        causes='`prefix=` is not `"auto"`, None, a prefix to strip, `"+x."` to add or `"a.->b."` to replace',
        fix="pass one of those forms",
    ),
    "bad-rename": ErrorCode(
        RuleError,
        "a rename rule is not a valid pattern and replacement",
        causes="a rename regex that does not compile, a replacement that refers to a missing group, or a "
        "`rename_classes` entry the file does not need",
        fix="fix the pattern (test it with `re.sub`), or drop the rename the message names",
    ),
    "bad-size": ErrorCode(
        RuleError,
        "a size option is not a positive number of bytes",
        causes='`max_shard_size=` is not a positive number of bytes or a size such as `"5GB"`',
        fix='pass bytes (`5000000000`) or a number with a unit: `"5GB"`, `"500MB"`, `"10GiB"`',
    ),
    "bad-skip": ErrorCode(
        RuleError,
        "a skip pattern is not valid",
        causes="a skip pattern that is not a string (a list inside the list, a compiled regex)",
        fix='pass globs as strings: `skip=["head.*"]`',
    ),
    "bad-strict": ErrorCode(
        RuleError,
        "strict= is not one of its values",
        causes='`strict=` is not True, False or `"model"`',
        fix='pass `strict=True`, `strict=False` or `strict="model"`',
    ),
    "bad-tolerance": ErrorCode(
        RuleError,
        "a diff tolerance is not a non-negative number",
        causes="`rtol`/`atol` that are negative or not numbers",
        fix="pass numbers >= 0",
    ),
    "needs-torch": ErrorCode(
        RuleError,
        "the request needs torch, which is not installed",
        causes="an option that builds tensors (`dtype=` in convert, `tw.load`) without torch installed",
        fix="`pip install torchweights[torch]`, or leave out the option that needs it",
    ),
    "needs-matplotlib": ErrorCode(
        RuleError,
        "the HTML report's plots need matplotlib, which is not installed",
        causes="`torchweights report --html` or `tw.html_report` where only `pip install torchweights` was installed",
        fix="`pip install 'torchweights[report]'` (matplotlib), then run the report again",
    ),
    "nothing-selected": ErrorCode(
        RuleError,
        "the options (or a select= pattern) select no tensor at all",
        causes="`select=` patterns (or other options) that match no tensor: a typo, or names with a prefix the pattern"
        " lacks",
        fix="list the names with `torchweights inspect FILE` and fix the pattern",
    ),
    "dangerous-allowed": ErrorCode(
        RuleError,
        "an allow list names a global that can run code by itself: never allowed",
        causes="`allow_globals=[...]` (`--allow-global`) names something that can run code by itself (`os.system`, "
        "`builtins.eval`...)",
        fix="remove it: such globals are never allowed; if the file needs it, do not load the file",
    ),
    "bad-select": ErrorCode(
        RuleError,
        "select= is not a list of glob patterns",
        causes="`select=` given a string or non-string items instead of a list of globs",
        fix='pass a list of strings: `select=["encoder.*"]`',
    ),
    "no-such-tensor": ErrorCode(
        RuleError,
        "Checkpoint.get_tensor of a name the checkpoint does not hold",
        causes="`Checkpoint.get_tensor(name)` with a name the checkpoint does not hold (a typo, or the dotted name of "
        "a nested container)",
        fix="list the names with `ckpt.records` or `torchweights inspect FILE`",
    ),
    "nested-select": ErrorCode(
        RuleError,
        "tw.load(nested=True) was also given select=",
        causes="`tw.load(path, nested=True, select=[...])`: the nested object cannot be filtered by tensor name",
        fix="drop `select=` and index the result instead",
    ),
    "rename-collision": ErrorCode(
        RuleError,
        "renames map two keys onto one name",
        causes="renames (yours or the built-in legacy ones) that map two checkpoint keys onto one name",
        fix="make the patterns more specific (anchor them with `^` and `$`) so each key gets its own name",
    ),
    "usage": ErrorCode(
        RuleError,
        "the command line is invalid: an unknown command or option, a missing or bad argument",
        causes="a mistyped command or option; a missing FILE argument; an option value outside its choices",
        fix="run `torchweights COMMAND --help` for the options and examples; the message names the word it refused",
    ),
    "bad-factory": ErrorCode(
        RuleError,
        "check --model: the factory cannot be imported or called, or builds no nn.Module",
        causes="a `--model module:function` whose module is not importable from the current folder or PYTHONPATH; a"
        " function that needs arguments; one that returns something other than an `nn.Module`",
        fix="pass `--model package.module:factory` naming a function that takes no arguments and returns the model;"
        " run from the folder that holds the module, or add it to PYTHONPATH",
    ),
    "no-rename-mapping": ErrorCode(
        RuleError,
        "check --write-rename: the alignment has nothing a rename mapping can express",
        causes="`--write-rename` without `--align auto`; an alignment that paired nothing (every key matched by name, "
        "or another architecture); groups only a guess could pair; pairs that swap names, which no order of regex "
        "renames expresses; keys an adapter fills through the aligned modules, which the renames alone do not load",
        fix="add `--align auto`; settle ambiguous groups with the `--rename` the report gives; where names swap or "
        'adapters need the alignment, keep `align="auto"` in code',
    ),
    "not-a-model": ErrorCode(
        RuleError,
        "load_model: the file holds no pickled nn.Module",
        causes="`load_model` of a file that holds tensors or a state dict, not a pickled `nn.Module`",
        fix="build the model in code and `tw.load_into(model, path)`, or `tw.load(path)` for the tensors",
    ),
    "module-allowed": ErrorCode(
        RuleError,
        "tw.load allowed a module class: whole models come from load_model",
        causes="`tw.load(path, allow_globals=[a module class])` to rebuild a whole model through tw.load",
        fix="use `tw.load_model(path, trust=[...])` for whole models; `tw.load` returns tensors",
    ),
    "unsupported-output-dtype": ErrorCode(
        RuleError,
        "a dtype the output format cannot store",
        causes="converting tensors whose dtype the output format cannot store (complex128, complex32, fp8 fnuz "
        "variants, quantized to safetensors)",
        fix='pass `select=` to leave them out, or `to="torch"`',
    ),
    # the checkpoint does not fit the model
    "load-failed": ErrorCode(
        LoadError,
        "the checkpoint does not fit the model (generic); the model is untouched",
        causes="the checkpoint does not fit the model, with no more precise code",
        fix="read `e.report` (or `print(e)`): it lists every key and the options that would load the rest",
    ),
    "ambiguous-alignment": ErrorCode(
        LoadError,
        'align="auto" found modules it could pair only by guessing',
        causes="identical sibling modules (same shapes) renamed without a layer index or a name tying each to one "
        "counterpart, so only declaration order could decide",
        fix="check the `rename={...}` the message gives (it pairs them in declaration order) and pass it with "
        '`align="auto"`; the model was not touched',
    ),
    "ranks-disagree": ErrorCode(
        LoadError,
        "the ranks of a sharded (FSDP2/DTensor) load planned different loads; nothing was read on any rank",
        causes="another copy of the checkpoint (or another version) on some nodes: plans, file sizes or a sample "
        "of each file's bytes differ; `load_into` called on some ranks with options that change what is loaded",
        fix="give every rank the same checkpoint bytes and the same arguments",
    ),
    "rank-failed": ErrorCode(
        LoadError,
        "another rank of a sharded load failed with an error that is not torchweights' own; every rank raises it",
        causes="an unexpected error on that rank (out of memory, a bug); the message names the rank and the error",
        fix="read the failing rank's message; fix what it names there and load again on every rank",
    ),
    "shape-mismatch": ErrorCode(
        LoadError,
        "a key's shape differs between checkpoint and model",
        causes="a model built with another config (vocabulary size, number of classes, hidden size) than the "
        "checkpoint's; a new head",
        fix="build the model with the checkpoint's config; or `skip=[...]` the keys (a new head), or "
        '`on_mismatch="skip"`',
    ),
    "missing-keys": ErrorCode(
        LoadError,
        "model keys the checkpoint does not provide",
        causes="a checkpoint of another model or version; keys renamed since it was saved; a wrapper prefix the "
        "planner could not match",
        fix="pass the `rename={...}` the message suggests; `skip=[...]` keys you want to keep as initialised; or "
        "`strict=False` to load the rest",
    ),
    "unexpected-keys": ErrorCode(
        LoadError,
        "checkpoint keys the model has no place for",
        causes="a checkpoint of a larger model, or one with a head your model lacks; tensors under names the model "
        "does not use",
        fix='`strict="model"` loads every model key and ignores the rest; or `rename={...}` the keys onto the model\'s'
        " names",
    ),
    "left-on-meta": ErrorCode(
        LoadError,
        "a meta-device parameter or buffer nothing fills",
        causes="a model built on the meta device whose keys the checkpoint does not fill (skipped, missing, "
        "non-persistent buffers)",
        fix="pass `init_missing=True` to initialise them, load a checkpoint that has them, or build those modules on "
        "a real device",
    ),
    # writing outputs
    "write-failed": ErrorCode(
        WriteError,
        "an output could not be written; nothing partial was left",
        causes="a full disk, no write permission in the output folder, a read-only file system",
        fix="free space or pick another output folder; nothing partial was left behind",
    ),
    "output-exists": ErrorCode(
        WriteError,
        "the output exists and overwrite was not asked for",
        causes="the output file or folder exists from an earlier run",
        fix="pass `force=True` (`--force`) to overwrite it, or choose another output",
    ),
    "verify-failed": ErrorCode(
        WriteError,
        "re-reading the output found a difference; it was removed",
        causes="a disk or file system that returned other bytes than written (failing hardware, a network mount), or a"
        " source changed while converting",
        fix="check the disk and convert again; `--no-verify` skips the check, which you should not need",
    ),
}


def describe(code: str) -> str:
    """The one-line meaning of an error code (``"bad-crc"`` -> ``"stored bytes do not match ..."``); the causes and
    the fix are ``CODES[code].causes`` and ``.fix``, the whole entry is at :func:`docs_url`.

    Raises:
        KeyError: the code is not one torchweights raises.
    """
    return CODES[code].meaning
