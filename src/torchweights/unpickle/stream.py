"""Reading one pickle stream: :func:`unpickle` for loading (dangerous globals refused) and :func:`scan_stream` for
scan (everything reported, nothing allowed or imported), with the same machine and table, so that they never
disagree.

Every failure is a :class:`~torchweights.errors.CorruptCheckpointError` (``bad-pickle``, ``truncated``) or a
:class:`~torchweights.errors.ResourceLimitError` (``limit-*``). A storage pickled on its own
(``torch.storage._load_from_bytes``, how ``pickle.dumps(tensor)`` saves one) holds a legacy ``torch.save`` stream:
the format reader passes ``read_embedded`` to read it; without it such a call is refused as dangerous.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import field
from typing import Any

from ..errors import CorruptCheckpointError, ResourceLimitError, TorchWeightsError, UnsafeCheckpointError
from ..limits import DEFAULT_LIMITS
from ..structs import structure
from ..text import plural, quote
from .calls import CALL_ERRORS
from .guards import STREAM, EmbeddedReader, StreamState
from .machine import Machine
from .values import Reference, UnpickleResult, bad_pickle, bounded_repr

__all__ = ["StreamScan", "compiled_model_hint", "scan_stream", "unpickle"]


def compiled_model_hint(names: Iterable[str]) -> str:
    """A sentence for refusals of a ``torch.compile``'d model (``torch.save`` of it pickles torch._dynamo's compiler
    state beside the module), or ``""`` when ``names`` are not that."""
    if "torch._dynamo.eval_frame.OptimizedModule" not in names:
        return ""
    return (
        " This is a torch.compile'd model (OptimizedModule): its pickle carries torch._dynamo's compiler state, which "
        "a weights file does not need. Fix: save the original module or its weights from the code that compiled it: "
        "torch.save(model._orig_mod, path), or torch.save(model.state_dict(), path) (tw.load_into strips the "
        "'_orig_mod.' prefix)."
    )


def _execute(
    data: bytes | memoryview,
    start: int,
    end: int | None,
    persistent_load: Callable[[Any], Any] | None,
    allow_globals: frozenset[str],
    max_bytes: int,
    where: str,
    max_opcodes: int = DEFAULT_LIMITS.max_pickle_opcodes,
    read_embedded: EmbeddedReader | None = None,
) -> tuple[Machine, UnpickleResult | None, TorchWeightsError | None]:
    """Run one stream; every failure comes back as a torchweights error, never raised."""
    result: UnpickleResult | None = None
    stop = len(data) if end is None else min(end, len(data))
    if stop - start > max_bytes:
        # A pickle may legitimately be followed by other data (legacy format); only refuse if it runs past.
        stop_limit = start + max_bytes
    else:
        stop_limit = stop
    machine = Machine(persistent_load, allow_globals)
    context = f" {where}" if where else ""
    failure: TorchWeightsError | None = None
    stream = StreamState(max_opcodes, read_embedded)
    token = STREAM.set(stream)
    try:
        result = machine.run(data, start, stop_limit, stream)
        result.references = machine.references
    except CorruptCheckpointError as exc:
        if stop_limit < stop and exc.code == "truncated":
            failure = ResourceLimitError(
                f"pickle stream{context} is longer than the {max_bytes}-byte limit. If you trust the file, raise "
                "the limit: tw.open(path, limits=Limits(max_pickle_bytes=...)).",
                code="limit-pickle-size",
            )
        else:
            exc.message = f"{exc.message} (in {where})" if where else exc.message
            failure = exc
    except TorchWeightsError as exc:  # from persistent_load or an allowed global's import
        failure = exc
    except RecursionError:
        failure = ResourceLimitError(f"pickle stream{context} nests too deeply", code="limit-depth")
    except MemoryError:
        failure = ResourceLimitError(f"pickle stream{context} asks for more memory than available", code="limit-memory")
    except (*CALL_ERRORS, struct.error) as exc:
        # Every opcode validates its operands; this is the backstop that keeps a malformed stream a
        # CorruptCheckpointError whatever slipped through.
        failure = bad_pickle(f"malformed pickle stream{context}: {type(exc).__name__}: {bounded_repr(str(exc), 200)}")
    finally:
        STREAM.reset(token)
    return machine, result, failure


def unpickle(
    data: bytes | memoryview,
    *,
    start: int = 0,
    end: int | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    allow_globals: frozenset[str] = frozenset(),
    max_bytes: int = 1 << 30,
    where: str = "",
    max_opcodes: int = DEFAULT_LIMITS.max_pickle_opcodes,
    read_embedded: EmbeddedReader | None = None,
) -> UnpickleResult:
    """Run one pickle stream from ``data[start:end]`` without calling anything the file names.

    Args:
        data: the buffer (bytes or a memoryview over an mmap).
        start: offset of the first opcode.
        end: end of the readable region (default: end of ``data``).
        persistent_load: the format's resolver for persistent ids (storages); receives the id as unpickled.
        allow_globals: ``module.qualname`` names the user trusts: imported and called for real.
        max_bytes: refuse pickles longer than this.
        where: description of the stream for error messages (``"'model.pt' member 'archive/data.pkl'"``).
        max_opcodes: the CPU budget (:attr:`~torchweights.limits.Limits.max_pickle_opcodes`).
        read_embedded: the format reader's hook for storages pickled on their own
            (``torch.storage._load_from_bytes``); without it such a call is refused as dangerous.

    Returns:
        The root object (with :class:`Stub`, :class:`PickledTensor` ... inside), where the stream ended, and
        every global referenced.

    Raises:
        UnsafeCheckpointError: the stream references known-dangerous globals (all of them are named).
        CorruptCheckpointError: the stream is not a valid pickle.
        ResourceLimitError: the stream is longer than ``max_bytes`` or needs more than ``max_opcodes`` of work.
    """
    machine, result, failure = _execute(
        data, start, end, persistent_load, allow_globals, max_bytes, where, max_opcodes, read_embedded
    )
    if machine.dangerous:
        # Refusing for safety takes precedence over any other problem: it is the one the user must know about.
        names = ", ".join(quote(n) for n in machine.dangerous)
        also = f" (The stream is also malformed: {failure.message})" if failure is not None else ""
        also = compiled_model_hint(machine.dangerous) + also
        raise UnsafeCheckpointError(
            f"{where or 'the pickle'} references {plural(len(machine.dangerous), 'global')} that can run code or "
            f"touch the system: {names}. Nothing was executed. A weights file has no reason to call these; do not "
            "load it with torch.load either. torchweights never runs these, whatever the options say; if you wrote "
            "this file yourself, re-save the weights from the code that made it (model.state_dict() with "
            f"torch.save, or safetensors){also}",
            code="unsafe-global",
            names=tuple(machine.dangerous),
        ) from None
    if failure is not None:
        raise failure from None
    assert result is not None
    return result


@structure
class StreamScan:
    """What :func:`scan_stream` saw in one pickle stream.

    Attributes:
        references: every global named and every attribute-laundering BUILD, with opcode offsets.
        dangerous: the dangerous names among them, as ``unpickle`` would refuse them.
        value: the root object (inert), or None when the stream could not be read to its end.
        end: offset just past ``STOP``, or None.
        opcodes: opcodes executed.
        protocol: the pickle protocol the stream declared (0 when it has no PROTO opcode).
        error: why the stream could not be read to its end, or None.
        calls: the calls ``pickle.load`` would make of dangerous or unvetted callables
            (:meth:`~torchweights.unpickle.record.Recorder.call`), in the order it would make them, each at its
            calling opcode; those the stream reached before any error.
    """

    references: list[Reference]
    dangerous: list[str]
    value: Any = None
    end: int | None = None
    opcodes: int = 0
    protocol: int = 0
    error: TorchWeightsError | None = None
    calls: list[Reference] = field(default_factory=list)


def scan_stream(
    data: bytes | memoryview,
    *,
    start: int = 0,
    end: int | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
    max_bytes: int = 1 << 30,
    where: str = "",
    max_opcodes: int = DEFAULT_LIMITS.max_pickle_opcodes,
    read_embedded: EmbeddedReader | None = None,
) -> StreamScan:
    """Read one pickle stream with the same machine and table as :func:`unpickle`, for ``scan``: nothing is
    imported (no global is allowed), dangerous references are reported instead of refused, and a malformed
    stream returns what was seen before the error together with the error. ``read_embedded`` as for
    :func:`unpickle`."""
    machine, result, failure = _execute(
        data, start, end, persistent_load, frozenset(), max_bytes, where, max_opcodes, read_embedded
    )
    return StreamScan(
        references=machine.references,
        dangerous=list(machine.dangerous),
        value=None if result is None else result.value,
        end=None if result is None else result.end,
        opcodes=0 if result is None else result.opcodes,
        protocol=machine.proto,
        error=failure,
        calls=machine.calls,
    )
