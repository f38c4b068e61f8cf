"""``tw.diff``: how two checkpoints differ, tensor by tensor, after the same container and prefix handling as
``load_into``.

B is the reference. Its weights are chosen as ``convert`` chooses them (:mod:`torchweights.plan.selection`); then A is
reconciled against B's keys exactly as ``load_into`` reconciles a checkpoint against a model
(:func:`torchweights.plan.reconcile.reconcile`: the container of A that fits best, wrapper prefixes stripped or added by
evidence, no legacy renames), so a DataParallel checkpoint (``module.*``) and its clean twin, or a Lightning
``.ckpt`` and the ``.safetensors`` exported from it, compare as identical.

Values are compared streaming: both tensors are read in aligned blocks of elements (never two whole checkpoints,
never even two whole tensors), and equal bytes are accepted without torch. The CRC-32 of every zip member read is
checked as ``tw.load`` checks it (``bad-crc``). Where bytes differ, torch computes per
block, in float64 (complex128 for complex dtypes): the largest absolute difference, the largest difference relative
to the larger magnitude of the two values, whether every element satisfies ``|a - b| <= atol + rtol * |b|``
(NaN equals NaN), and how many elements changed their bits (for a dtype change: their value).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import field
from typing import Any

from .. import dtypes, style
from ..limits import DEFAULT_LIMITS, Limits
from ..plan.reconcile import reconcile
from ..plan.rules import Rules
from ..plan.selection import select_weights
from ..plan.spec import ModelSpec
from ..progress import ProgressCallback, current, metered
from ..records import Checkpoint, TensorRecord
from ..storage.contents import CHUNK_BYTES, logical_chunks
from ..structs import structure
from ..text import StrEnum, format_shape, plural, quote, table, wrap

__all__ = ["DiffReport", "Status", "TensorDiff", "diff"]


#: Statuses of one tensor, in the order reports list them.
class Status(StrEnum):
    """How one tensor differs (:attr:`TensorDiff.status`); members are strings (``Status.CLOSE == "close"``)."""

    ONLY_A = "only-a"
    ONLY_B = "only-b"
    SHAPE = "shape"
    DTYPE = "dtype"
    DIFFERENT = "different"
    CLOSE = "close"
    IDENTICAL = "identical"


STATUSES: tuple[Status, ...] = tuple(Status)
_LAYOUT = frozenset({Status.ONLY_A, Status.ONLY_B, Status.SHAPE, Status.DTYPE})
#: Most rows the text report lists; the rest are counted.
TEXT_ROW_LIMIT = 60


@structure(frozen=True)
class TensorDiff:
    """How one tensor differs.

    Attributes:
        name: the key compared (B's key for common tensors and B-only ones, A's key for A-only ones).
        status: ``identical`` (same bits), ``close`` (bits differ, values within tolerance), ``different``,
            ``shape`` or ``dtype`` (layout changed), ``only-a`` / ``only-b``
            (a :class:`Status`: a string).
        a / b: record names in each checkpoint (None on the side that lacks it).
        shape_a / shape_b, dtype_a / dtype_b: each side's layout.
        max_abs: largest ``|a - b|`` (None when not computed: identical, layout change, no torch).
        max_rel: largest ``|a - b| / max(|a|, |b|)``.
        changed: elements whose bits (for a dtype change: values) differ.
        numel: elements compared.
    """

    name: str
    status: Status
    a: str | None = None
    b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    changed: int | None = None
    numel: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # a plain string names the same status

    @property
    def fraction_changed(self) -> float | None:
        """``changed / numel`` (0.0 for empty tensors), or None when not computed."""
        if self.changed is None:
            return None
        return self.changed / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (non-finite differences as strings ``"inf"``/``"nan"``)."""
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        for key in ("a", "b", "dtype_a", "dtype_b"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        for key in ("shape_a", "shape_b"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        for key in ("max_abs", "max_rel"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value if math.isfinite(value) else str(value)
        if self.changed is not None:
            out["changed"] = self.changed
            out["fraction_changed"] = self.fraction_changed
        out["numel"] = self.numel
        return out


@structure
class DiffReport:
    """Everything :func:`diff` found.

    Attributes:
        a / b: the two checkpoints (B is the reference).
        container_a / container_b: where the weights were taken from in each (``""``: the root).
        prefix: the prefix handling applied to A's keys, in words.
        rtol / atol: the tolerances.
        tensors: one :class:`TensorDiff` per key, A's order for common keys, then A-only, then B-only.
        ignored_a / ignored_b: tensors outside the chosen containers (optimizer state...), not compared.
        notes: anything else worth knowing.
    """

    a: str
    b: str
    container_a: str = ""
    container_b: str = ""
    prefix: str = "no prefix change"
    rtol: float = 0.0
    atol: float = 0.0
    tensors: list[TensorDiff] = field(default_factory=list)
    ignored_a: int = 0
    ignored_b: int = 0
    notes: list[str] = field(default_factory=list)

    def by_status(self, status: str) -> list[TensorDiff]:
        """The tensors with one status, in report order."""
        return [t for t in self.tensors if t.status == status]

    def counts(self) -> dict[str, int]:
        """Tensors per status (every status present)."""
        return {s: len(self.by_status(s)) for s in STATUSES}

    @property
    def same_layout(self) -> bool:
        """Same names (after container and prefix handling), shapes and dtypes on both sides."""
        return not any(t.status in _LAYOUT for t in self.tensors)

    @property
    def identical(self) -> bool:
        """Same layout and every tensor bit for bit the same."""
        return all(t.status == "identical" for t in self.tensors)

    @property
    def equal(self) -> bool:
        """Same layout and every tensor identical or within tolerance (what the CLI's exit code 0 means)."""
        return all(t.status in ("identical", "close") for t in self.tensors)

    @property
    def largest(self) -> TensorDiff | None:
        """The differing tensor with the largest absolute difference."""
        differing = [t for t in self.tensors if t.status in ("different", "dtype", "close")]
        if not differing:
            return None
        return max(differing, key=lambda t: (_order(t.max_abs), t.status == "different"))

    @property
    def summary(self) -> str:
        """One line at a glance: ``identical``, ``same layout, values differ in N tensors (largest: ...)``, or
        ``different layouts: ...``."""
        counts = self.counts()
        different = counts["different"]
        if self.identical:
            return "identical"
        largest = self.largest
        if self.same_layout:
            if not different:
                return (
                    f"same layout, values equal within tolerance (rtol={self.rtol:g}, atol={self.atol:g}; "
                    f"{plural(counts['close'], 'tensor')} not bit-identical)"
                )
            biggest = max(self.by_status("different"), key=lambda t: _order(t.max_abs))
            return f"same layout, values differ in {plural(different, 'tensor')} (largest: {_describe(biggest)})"
        parts = [
            f"{counts['only-a']} only in A",
            f"{counts['only-b']} only in B",
            plural(counts["shape"], "shape change"),
            plural(counts["dtype"], "dtype change"),
        ]
        text = "different layouts: " + ", ".join(parts)
        if different:
            text += f"; values differ in {plural(different, 'common tensor')}"
        if largest is not None and largest.max_abs is not None and largest.status != "close":
            text += f" (largest: {_describe(largest)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "a": self.a,
            "b": self.b,
            "summary": self.summary,
            "identical": self.identical,
            "same_layout": self.same_layout,
            "equal": self.equal,
            "container_a": self.container_a,
            "container_b": self.container_b,
            "prefix": self.prefix,
            "rtol": self.rtol,
            "atol": self.atol,
            "counts": self.counts(),
            "ignored_a": self.ignored_a,
            "ignored_b": self.ignored_b,
            "notes": list(self.notes),
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def __repr__(self) -> str:
        return f"<DiffReport {quote(self.a)} vs {quote(self.b)}: {self.summary}>"

    def _repr_html_(self) -> str:
        """The report as a notebook shows it: the summary and every tensor that is not identical (escaped)."""
        from ..report.html import Table, card

        rows = [_row(t) for t in self.tensors if t.status != "identical"]
        return card(
            "DiffReport",
            "ok" if self.identical else "warn" if self.equal else "bad",
            self.summary,
            [("A", self.a), ("B (reference)", self.b), ("prefix", self.prefix)]
            + [(status, n) for status, n in self.counts().items() if n],
            [Table("tensors that differ", ("status", "name", "detail"), rows)],
            self.notes,
        )

    def __str__(self) -> str:
        lines = [
            f"A {quote(self.a)}  ({_container(self.container_a)}; {self.prefix})",
            f"B {quote(self.b)}  ({_container(self.container_b)})",
        ]
        lines += wrap(self.summary, indent="")
        counts = self.counts()
        lines += wrap(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        rows = [_row(t) for t in self.tensors if t.status != "identical"]
        if rows:
            lines.append("")
            lines.extend(table(rows[:TEXT_ROW_LIMIT], shrink=(1,), wrap_last=True))
            if len(rows) > TEXT_ROW_LIMIT:
                lines.append(f"  ... and {len(rows) - TEXT_ROW_LIMIT} more (--json lists every tensor)")
        if self.ignored_a or self.ignored_b:
            lines += wrap(
                f"not compared: {plural(self.ignored_a, 'tensor')} of A and {plural(self.ignored_b, 'tensor')} of B "
                "outside the weights (optimizer state...)",
                indent="",
                hang="  ",
            )
        for note in self.notes:
            lines += wrap(f"note: {note}", indent="", hang="      ")
        return "\n".join(lines) + "\n"


def _order(value: float | None) -> float:
    if value is None:
        return -1.0
    return math.inf if math.isnan(value) else value


def _container(name: str) -> str:
    return f"container {quote(name)}" if name else "the root"


def _describe(t: TensorDiff) -> str:
    text = quote(t.name)
    if t.max_abs is not None:
        text += f" max abs {t.max_abs:.3g}"
    if t.max_rel is not None:
        text += f", max rel {t.max_rel:.3g}"
    fraction = t.fraction_changed
    if fraction is not None:
        text += f", {fraction:.1%} of elements changed"
    return text


def _row(t: TensorDiff) -> list[str]:
    detail = ""
    if t.status == "shape":
        detail = f"{format_shape(t.shape_a or ())} -> {format_shape(t.shape_b or ())}"
    elif t.status == "dtype":
        detail = f"{t.dtype_a} -> {t.dtype_b}"
    elif t.status in ("only-a", "only-b"):
        shape, dtype = (t.shape_a, t.dtype_a) if t.status == "only-a" else (t.shape_b, t.dtype_b)
        detail = f"{dtype} {format_shape(shape or ())}"
    if t.max_abs is not None:
        detail += ("; " if detail else "") + _describe(t).split(" ", 1)[1]
    elif t.status in ("different", "dtype") and t.changed is None:
        detail += ("; " if detail else "") + "values differ (install torch for statistics)"
    name = t.name if t.a is None or t.b is None or t.a == t.b else f"{t.name} (A: {t.a})"
    return [style.status(t.status), name, detail]


# ---------------------------------------------------------------------------------------------------------- diff


def diff(
    a: str | os.PathLike[str] | Checkpoint,
    b: str | os.PathLike[str] | Checkpoint,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    container: str = "auto",
    allow_globals: Iterable[str] = (),
    limits: Limits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> DiffReport:
    """Compare two checkpoints of any readable formats, tensor by tensor.

    Args:
        a: the checkpoint to compare (path or opened :class:`Checkpoint`).
        b: the reference.
        rtol: relative tolerance: values with ``|a - b| <= atol + rtol * |b|`` count as equal (``close``).
        atol: absolute tolerance, in the same rule.
        container: ``"auto"`` (weights found in each), or a dotted path used on both sides.
        allow_globals: pickle globals you trust (see :func:`torchweights.open`).
        limits: resource bounds for hostile files.
        progress: ``progress(done_bytes, total_bytes)`` for the tensor bytes compared (both sides); see
            :mod:`torchweights.progress`.

    Returns:
        A :class:`DiffReport`; ``report.summary`` says it at a glance.

    Raises:
        TorchWeightsError: either checkpoint cannot be read; ``RuleError`` for a bad tolerance or container.
    """
    from ..api import open as open_checkpoint
    from ..errors import RuleError

    if not (isinstance(rtol, (int, float)) and isinstance(atol, (int, float)) and rtol >= 0 and atol >= 0):
        raise RuleError(f"rtol={rtol!r} and atol={atol!r} must be numbers >= 0.", code="bad-tolerance")
    ca = a if isinstance(a, Checkpoint) else open_checkpoint(a, allow_globals=allow_globals, limits=limits)
    cb = b if isinstance(b, Checkpoint) else open_checkpoint(b, allow_globals=allow_globals, limits=limits)
    weights_b = select_weights(cb, container)
    spec = ModelSpec.from_tuples(
        ((key, r.shape, r.dtype, "parameter") for key, r in weights_b.tensors.items()), class_name="B"
    )
    rules = Rules.make(strict=False, container=container, prefix="auto", dtype="checkpoint", legacy_renames=False)
    plan = reconcile(ca, spec, rules, source=ca.path)
    report = DiffReport(
        a=ca.path,
        b=cb.path,
        container_a=plan.container.name,
        container_b=weights_b.name,
        prefix=plan.prefix.evidence,
        rtol=float(rtol),
        atol=float(atol),
        ignored_b=len(weights_b.left_out),
    )
    pairs: list[tuple[TensorRecord, TensorRecord, str]] = []
    only_a: list[TensorDiff] = []
    only_b: list[TensorDiff] = []
    for action in plan.actions:
        if action.kind == "ignored":
            report.ignored_a += 1
        elif action.kind == "unexpected" and action.source is not None:
            ra = ca.records[action.source]
            only_a.append(
                TensorDiff(action.key or ra.name, Status.ONLY_A, a=ra.name, shape_a=ra.shape, dtype_a=ra.dtype)
            )
        elif action.kind in ("missing", "default") and action.target is not None:
            rb = weights_b.tensors[action.target]
            only_b.append(TensorDiff(action.target, Status.ONLY_B, b=rb.name, shape_b=rb.shape, dtype_b=rb.dtype))
        elif action.kind in ("load", "mismatch") and action.source is not None and action.target is not None:
            pairs.append((ca.records[action.source], weights_b.tensors[action.target], action.target))
    total = sum(
        ra.nbytes + rb.nbytes for ra, rb, _ in pairs if ra.shape == rb.shape and _readable(ra) and _readable(rb)
    )
    with metered(progress, total):
        common = [_compare(ra, rb, name, report) for ra, rb, name in pairs]
    report.tensors = [*common, *only_a, *only_b]
    return report


def _compare(ra: TensorRecord, rb: TensorRecord, name: str, report: DiffReport) -> TensorDiff:
    layout: dict[str, Any] = {
        "a": ra.name,
        "b": rb.name,
        "shape_a": ra.shape,
        "shape_b": rb.shape,
        "dtype_a": ra.dtype,
        "dtype_b": rb.dtype,
        "numel": rb.numel,
    }
    if ra.shape != rb.shape:
        return TensorDiff(name, Status.SHAPE, **layout)
    if not _readable(ra) or not _readable(rb):
        if not _readable(ra) and not _readable(rb):
            return TensorDiff(name, Status.IDENTICAL if ra.dtype == rb.dtype else Status.DTYPE, **layout)
        report.notes.append(f"{quote(name)} has no data (meta device) in {'A' if not _readable(ra) else 'B'}")
        return TensorDiff(name, Status.DIFFERENT if ra.dtype == rb.dtype else Status.DTYPE, **layout)
    stats = _Stats(report.rtol, report.atol)
    same_dtype = ra.dtype == rb.dtype
    meter = current()
    for block_a, block_b in zip(_blocks(ra), _blocks(rb)):
        if meter is not None:
            meter.advance(len(block_a) + len(block_b))
        if same_dtype and block_a == block_b:
            continue
        stats.add(block_a, ra.dtype, block_b, rb.dtype, same_dtype)
    if not same_dtype:
        return TensorDiff(
            name, Status.DTYPE, max_abs=stats.max_abs, max_rel=stats.max_rel, changed=stats.changed, **layout
        )
    if not stats.seen:
        return TensorDiff(name, Status.IDENTICAL, changed=0, **layout)
    status = Status.CLOSE if stats.close else Status.DIFFERENT
    return TensorDiff(name, status, max_abs=stats.max_abs, max_rel=stats.max_rel, changed=stats.changed, **layout)


def _readable(record: TensorRecord) -> bool:
    """Whether ``record`` has logical bytes to compare: data of its own or in pieces (a sparse tensor's are not
    compared, as before; a tensor saved without data has none)."""
    return record.has_data and not record.sparse


def _blocks(record: TensorRecord) -> Iterator[bytearray]:
    """The logical bytes of ``record`` in blocks of a fixed number of elements (the same for both sides)."""
    per_block = max(1, CHUNK_BYTES // 16)
    want = per_block * record.itemsize
    buf = bytearray()
    for piece in logical_chunks(record):
        if buf:
            buf += piece
            piece, buf = buf, bytearray()
        whole = len(piece) - len(piece) % want
        for at in range(0, whole, want):
            yield piece if want == len(piece) else piece[at : at + want]
        if whole < len(piece):
            buf = piece[whole:] if whole else piece
    if buf:
        yield buf


#: Integer dtypes of each element size, to count elements whose bits differ with one comparison.
_INT_NAMES = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


class _Stats:
    """Running statistics over the blocks that differ."""

    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol = rtol
        self.atol = atol
        self.seen = False
        self.close = True
        self.changed: int | None = 0
        self.max_abs: float | None = None
        self.max_rel: float | None = None

    def add(self, block_a: bytearray, dtype_a: str, block_b: bytearray, dtype_b: str, same_dtype: bool) -> None:
        self.seen = True
        try:
            import torch
        except ImportError:  # pragma: no cover - exercised only without torch
            self.close = False
            self.changed = None
            return
        ta = torch.frombuffer(block_a, dtype=torch.uint8).view(dtypes.to_torch(dtype_a))
        tb = torch.frombuffer(block_b, dtype=torch.uint8).view(dtypes.to_torch(dtype_b))
        complex_ = dtypes.get(dtype_a).kind == "complex" or dtypes.get(dtype_b).kind == "complex"
        wide = torch.complex128 if complex_ else torch.float64
        fa, fb = ta.to(wide), tb.to(wide)
        delta = (fa - fb).abs()
        if complex_:
            delta = delta.double()
        if bool(delta.isnan().any()):  # NaN inputs (NaN == NaN here), or inf - inf
            equal = (fa == fb) | (torch.isnan(fa) & torch.isnan(fb))
            zero = torch.zeros((), dtype=torch.float64)
            delta = torch.where(equal, zero, delta).nan_to_num_(nan=math.inf, posinf=math.inf)
        block_abs = float(delta.max())
        scale = torch.maximum(fa.abs(), fb.abs())
        rel = (delta / (scale.double() if complex_ else scale)).nan_to_num_(nan=0.0, posinf=math.inf)  # 0 / 0: zeros
        block_rel = float(rel.max()) if math.isfinite(block_abs) else math.inf
        size = ta.element_size()
        if same_dtype and size in _INT_NAMES:
            as_int = dtypes.to_torch(_INT_NAMES[size])
            changed = int((ta.view(as_int) != tb.view(as_int)).sum())
        elif same_dtype:  # 16-byte elements: compare as pairs of 8-byte words
            words_a, words_b = ta.view(torch.int64).view(-1, size // 8), tb.view(torch.int64).view(-1, size // 8)
            changed = int((words_a != words_b).any(1).sum())
        else:
            changed = int((delta != 0).sum())
        if self.changed is not None:
            self.changed += changed
        if self.rtol == 0:
            close = block_abs <= self.atol
        else:
            close = bool((delta <= self.atol + self.rtol * (fb.abs().double() if complex_ else fb.abs())).all())
        self.close = self.close and close
        self.max_abs = block_abs if self.max_abs is None else max(self.max_abs, block_abs)
        self.max_rel = block_rel if self.max_rel is None else max(self.max_rel, block_rel)
