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
    "CODES",
    "describe",
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


# --- the registry: every code, the class that carries it, and what it means ------------------------------------

#: Every error code torchweights raises: ``code -> (class, one-line meaning)``. The one place codes are documented
#: (``errors.describe(code)``, the README's error table); the test suite fails on any error raised with a code that
#: is not here, or carried by a class other than the registered one (or a subclass of it).
CODES: dict[str, tuple[type[TorchWeightsError], str]] = {
    # the file system
    "not-found": (CheckpointNotFoundError, "the path does not exist, or a shard or member it names does not"),
    "read-failed": (CheckpointReadError, "the operating system refused or failed a read (permissions, I/O error)"),
    "not-a-file": (CheckpointReadError, "the path is a device, FIFO or socket, not a regular file"),
    # not a checkpoint at all
    "unknown-format": (NotACheckpointError, "the content matches no checkpoint format torchweights knows"),
    "directory": (NotACheckpointError, "a folder that holds no recognisable checkpoint (no index, no single file)"),
    "empty-file": (NotACheckpointError, "the file is empty (an interrupted download or copy)"),
    "lfs-pointer": (NotACheckpointError, "a Git LFS pointer file, not the weights: run `git lfs pull`"),
    "html-page": (NotACheckpointError, "an HTML page (a login or error page saved instead of the file)"),
    "json-document": (NotACheckpointError, "a JSON document that is not a shard index (a config file?)"),
    "text-file": (NotACheckpointError, "plain text, not a checkpoint"),
    "gzip": (NotACheckpointError, "a gzip stream: decompress it first"),
    "tar": (NotACheckpointError, "a tar archive that is not a torch checkpoint: extract it first"),
    "zip-not-checkpoint": (NotACheckpointError, "a zip archive that holds no torch checkpoint"),
    "gguf": (NotACheckpointError, "a GGUF model (llama.cpp), not a PyTorch checkpoint"),
    "onnx": (NotACheckpointError, "an ONNX model, not a PyTorch checkpoint"),
    "hdf5": (NotACheckpointError, "an HDF5 file (Keras, TensorFlow), not a PyTorch checkpoint"),
    # damaged or inconsistent files
    "corrupt": (CorruptCheckpointError, "the content is broken or inconsistent (generic)"),
    "truncated": (CorruptCheckpointError, "the file or a member ends early (an interrupted download or copy)"),
    "bad-zip": (CorruptCheckpointError, "the zip structure cannot be read"),
    "bad-pickle": (CorruptCheckpointError, "a pickle stream is malformed"),
    "bad-header": (CorruptCheckpointError, "a format header is malformed"),
    "bad-record": (CorruptCheckpointError, "a tensor's description (dtype, shape, strides, offset) is inconsistent"),
    "bad-member": (CorruptCheckpointError, "an archive member is not what the format requires there"),
    "bad-crc": (CorruptCheckpointError, "stored bytes do not match their CRC-32: the file was damaged"),
    "bad-sparse": (CorruptCheckpointError, "a sparse tensor's indices are ones torch would refuse"),
    "missing-storage": (CorruptCheckpointError, "a tensor's storage is not in the file"),
    "missing-member": (CorruptCheckpointError, "a member the format requires is not in the archive"),
    "storage-size": (CorruptCheckpointError, "a storage's bytes are fewer than its tensors need"),
    "no-data": (CorruptCheckpointError, "tensors saved from the meta device: they hold no values to load"),
    "file-changed": (CorruptCheckpointError, "the file was rewritten, resized or replaced since tw.open read it"),
    "pickle-trailing-data": (CorruptCheckpointError, "bytes follow the end of a plain pickle"),
    "zip-overlap": (CorruptCheckpointError, "two zip members claim the same bytes"),
    "zip-duplicate-member": (CorruptCheckpointError, "two zip members have the same name"),
    "zip-name-mismatch": (CorruptCheckpointError, "a member's local header and central directory disagree"),
    "zip-encrypted": (CorruptCheckpointError, "a zip member is encrypted"),
    "zip-flags": (CorruptCheckpointError, "a zip member uses flags torch never writes"),
    "zip-compression": (CorruptCheckpointError, "a zip member uses a compression method torchweights cannot read"),
    "zip-leading-data": (CorruptCheckpointError, "bytes precede the first zip member"),
    "zip-trailing-data": (CorruptCheckpointError, "bytes follow the end of the zip directory"),
    "zip-hidden-data": (CorruptCheckpointError, "bytes between zip members that no member accounts for"),
    "zip-unsafe-name": (CorruptCheckpointError, "a member name is absolute, has '..' or is not valid text"),
    "zip-no-data-pkl": (CorruptCheckpointError, "a torch zip without its data.pkl"),
    "tar-bad-header": (CorruptCheckpointError, "a tar member header is malformed (checksum, size, type)"),
    "tar-bad-member": (CorruptCheckpointError, "a tar member's content is not what the torch tar layout needs"),
    "tar-duplicate-member": (CorruptCheckpointError, "two tar members have the same name"),
    "tar-missing-member": (CorruptCheckpointError, "a member the torch tar layout requires is missing"),
    "safetensors-bad-header": (CorruptCheckpointError, "the safetensors JSON header is malformed"),
    "safetensors-not-utf8": (CorruptCheckpointError, "the safetensors header is not UTF-8"),
    "safetensors-bad-entry": (CorruptCheckpointError, "a safetensors tensor entry is malformed"),
    "safetensors-bad-dtype": (CorruptCheckpointError, "a safetensors entry names an unknown dtype"),
    "safetensors-bad-shape": (CorruptCheckpointError, "a safetensors entry has an invalid shape"),
    "safetensors-bad-offsets": (CorruptCheckpointError, "a safetensors entry's byte range is invalid"),
    "safetensors-bad-metadata": (CorruptCheckpointError, "the safetensors __metadata__ is not a string map"),
    "safetensors-duplicate-key": (CorruptCheckpointError, "a tensor name appears twice in the header"),
    "safetensors-overlap": (CorruptCheckpointError, "two tensors claim the same bytes"),
    "safetensors-gap": (CorruptCheckpointError, "bytes between tensors that no tensor accounts for"),
    "safetensors-size-mismatch": (CorruptCheckpointError, "a byte range's length does not match dtype x shape"),
    "safetensors-trailing-bytes": (CorruptCheckpointError, "the file is longer than its tensors need"),
    # sharded sets
    "shard-index": (ShardIndexError, "a shard index is invalid (generic)"),
    "shard-bad-index": (ShardIndexError, "the index is not a JSON object with a weight_map of names to files"),
    "shard-no-index": (ShardIndexError, "a shard file without the index that lists its set"),
    "shard-many-indexes": (ShardIndexError, "a folder with several shard indexes: name the one to read"),
    "shard-nested-index": (ShardIndexError, "the index names another index as a shard"),
    "shard-missing": (ShardIndexError, "a shard the index names is not there"),
    "shard-path-escape": (ShardIndexError, "a shard path leaves the index's folder (absolute, '..' or a link)"),
    "shard-tensor-missing": (ShardIndexError, "a tensor the index maps to a shard is not in that shard"),
    "shard-duplicate-tensor": (ShardIndexError, "a tensor is stored in more than one shard"),
    "shard-unindexed": (ShardIndexError, "a shard holds tensors the index does not list"),
    "shard-total-size": (ShardIndexError, "the index's metadata.total_size disagrees with the shards"),
    # resource bounds (Limits)
    "limit": (ResourceLimitError, "the file asks for more than a bounded reader allows (generic)"),
    "limit-depth": (ResourceLimitError, "nesting deeper than Limits.max_depth"),
    "limit-expansion": (ResourceLimitError, "a pickle expands to more objects than the limits allow"),
    "limit-header-size": (ResourceLimitError, "a header larger than Limits.max_header_bytes"),
    "limit-index-size": (ResourceLimitError, "a shard index larger than the limit"),
    "limit-inflate": (ResourceLimitError, "a compressed member inflates past its budget (a zip bomb)"),
    "limit-memory": (ResourceLimitError, "reading would need more memory than the limits allow"),
    "limit-pickle-opcodes": (ResourceLimitError, "a pickle runs more opcodes than Limits.max_pickle_opcodes"),
    "limit-pickle-size": (ResourceLimitError, "a pickle larger than Limits.max_pickle_bytes"),
    "limit-source-size": (ResourceLimitError, "TorchScript source larger than the limit"),
    "limit-tar-header": (ResourceLimitError, "a tar header field larger than the limit"),
    "limit-tar-members": (ResourceLimitError, "more tar members than the limit"),
    "limit-tensor-dims": (ResourceLimitError, "a tensor with more dimensions than the limit"),
    "limit-zip-entries": (ResourceLimitError, "more zip members than Limits.max_zip_entries"),
    # code torchweights will not run
    "unsafe-global": (UnsafeCheckpointError, "the file names globals that can run code; nothing was executed"),
    "untrusted-global": (UnsafeCheckpointError, "load_model: globals of packages not in trust=; nothing was imported"),
    "unsafe-call": (UnsafeCheckpointError, "load_model: the pickle calls what it may only reference (a function)"),
    # valid files torchweights does not read (yet)
    "unsupported": (UnsupportedCheckpointError, "a valid checkpoint using a feature torchweights cannot read"),
    "unsupported-dcp": (UnsupportedCheckpointError, "a torch.distributed.checkpoint folder (scanned, not loaded)"),
    "unsupported-dtype": (UnsupportedCheckpointError, "a dtype torchweights (or this torch) cannot build"),
    "unsupported-embedded-storage": (
        UnsupportedCheckpointError,
        "a storage embedded in a way torchweights cannot read",
    ),
    "unsupported-legacy-tar-platform": (UnsupportedCheckpointError, "a tar checkpoint of a big-endian or 32-bit host"),
    "unsupported-npz-member": (UnsupportedCheckpointError, "an .npz member that is not a plain array"),
    "unsupported-quantized": (UnsupportedCheckpointError, "a quantization scheme torchweights cannot rebuild"),
    "unsupported-sparse": (UnsupportedCheckpointError, "a sparse tensor for a dense destination"),
    "unsupported-tensor": (UnsupportedCheckpointError, "tensors tw.load cannot rebuild (named in the message)"),
    "unsupported-tensor-flag": (UnsupportedCheckpointError, "a tensor rebuild argument or metadata key not known"),
    "unsupported-tensor-state": (UnsupportedCheckpointError, "a saved tensor attribute that would shadow torch's"),
    "allowed-global-missing": (UnsupportedCheckpointError, "a global the caller allowed cannot be imported here"),
    "missing-class": (UnsupportedCheckpointError, "load_model: a trusted class cannot be imported here"),
    "unsupported-model-format": (
        UnsupportedCheckpointError,
        "load_model: TorchScript, torch.package or plain-pickle files are not rebuilt",
    ),
    # the caller's options
    "bad-rule": (RuleError, "an option passed to torchweights cannot be followed"),
    "bad-container": (RuleError, "the container= named is not in the checkpoint"),
    "bad-dtype": (RuleError, "a dtype option names no dtype"),
    "bad-format": (RuleError, "an output format that convert cannot write"),
    "bad-fail-on": (RuleError, "scan's fail_on names a condition other than dangerous, unknown, unreadable"),
    "bad-map-location": (RuleError, "a map_location that fails or returns no device"),
    "bad-model": (RuleError, "a ModelSpec where a real model is needed (outside a dry run)"),
    "bad-on-mismatch": (RuleError, "on_mismatch= is not one of its values"),
    "bad-prefix": (RuleError, "a prefix option is not a string"),
    "bad-rename": (RuleError, "a rename rule is not a valid pattern and replacement"),
    "bad-size": (RuleError, "a size option is not a positive number of bytes"),
    "bad-skip": (RuleError, "a skip pattern is not valid"),
    "bad-strict": (RuleError, "strict= is not one of its values"),
    "bad-tolerance": (RuleError, "a diff tolerance is not a non-negative number"),
    "needs-torch": (RuleError, "the request needs torch, which is not installed"),
    "nothing-selected": (RuleError, "the options (or a select= pattern) select no tensor at all"),
    "dangerous-allowed": (RuleError, "an allow list names a global that can run code by itself: never allowed"),
    "bad-select": (RuleError, "select= is not a list of glob patterns"),
    "no-such-tensor": (RuleError, "Checkpoint.get_tensor of a name the checkpoint does not hold"),
    "nested-select": (RuleError, "tw.load(nested=True) was also given select="),
    "rename-collision": (RuleError, "renames map two keys onto one name"),
    "not-a-model": (RuleError, "load_model: the file holds no pickled nn.Module"),
    "module-allowed": (RuleError, "tw.load allowed a module class: whole models come from load_model"),
    "unsupported-output-dtype": (RuleError, "a dtype the output format cannot store"),
    # the checkpoint does not fit the model
    "load-failed": (LoadError, "the checkpoint does not fit the model (generic); the model is untouched"),
    "shape-mismatch": (LoadError, "a key's shape differs between checkpoint and model"),
    "missing-keys": (LoadError, "model keys the checkpoint does not provide"),
    "unexpected-keys": (LoadError, "checkpoint keys the model has no place for"),
    "left-on-meta": (LoadError, "a meta-device parameter or buffer nothing fills"),
    # writing outputs
    "write-failed": (WriteError, "an output could not be written; nothing partial was left"),
    "output-exists": (WriteError, "the output exists and overwrite was not asked for"),
    "verify-failed": (WriteError, "re-reading the output found a difference; it was removed"),
}


def describe(code: str) -> str:
    """The one-line meaning of an error code (``"bad-crc"`` -> ``"stored bytes do not match ..."``).

    Raises:
        KeyError: the code is not one torchweights raises.
    """
    return CODES[code][1]
