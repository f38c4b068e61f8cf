"""Statistics of one tensor, reduced in bounded chunks: :class:`TensorStats`, :func:`tensor_stats`, and the
:class:`StatsReport` of a whole checkpoint (:func:`torchweights.stats` builds it, :mod:`.file`).

What the numbers are, per dtype:

- floating point (``float16``, ``bfloat16``, ``float32``, ``float64``, the ``float8`` kinds): ``min``, ``max``,
  ``mean``, ``std`` and ``abs_max`` are over the **finite** values only: NaN and +-Inf are counted
  (``nan_count``, ``inf_count``) and left out, so one NaN does not hide the rest (``torch.mean`` would return NaN).
  ``std`` is the sample standard deviation with Bessel's correction, as ``torch.std`` computes it by default
  (``correction=1``); it is None with fewer than two finite values (torch returns NaN there).
- integers: ``min``, ``max`` and ``abs_max`` exactly (Python ints), ``mean`` and ``std`` in float64.
- ``bool``: values count as 0 and 1 (``mean`` is the fraction of ``True``).
- complex: ``abs_max`` is the largest modulus of the finite values; ``min``, ``max``, ``mean``, ``std`` are None.
- quantized tensors are dequantized first; sparse tensors and tensors without data (``meta``) get counts only.

``zero_fraction`` is the fraction of all elements (NaN included) equal to zero (``-0.0`` too). An empty tensor has
every statistic None and counts of zero; a 0-dim tensor is one element.

Accumulation is in float64 (sums, and each chunk's mean and sum of squared deviations combined with Chan's
parallel formula), whatever the tensor's dtype, so the results match ``torch.mean``/``torch.std``/``torch.amin``/
``torch.amax`` of the float64 tensor to rounding. A chunk is at most :data:`CHUNK_BYTES` of scratch memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..structs import structure
from ..text import printable, quote

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["CHUNK_BYTES", "STAT_COLUMNS", "StatsReport", "TensorStats", "stat_cell", "stats_table", "tensor_stats"]

#: Most scratch memory one chunk of a reduction takes (its float64 copies and masks together).
CHUNK_BYTES = 64 << 20
#: Bytes of scratch per element of a chunk: the float64 copy, the finite values, their squared deviations, masks.
_SCRATCH_PER_ELEMENT = 32


@structure(frozen=True)
class TensorStats:
    """The statistics of one tensor (see the module docstring for what each is, per dtype).

    Attributes:
        name: the tensor's dotted name.
        dtype: torch dtype name without prefix (``"bfloat16"``).
        shape: sizes per dimension.
        numel: elements.
        min, max, mean, std, abs_max: over the finite values; None where undefined (no finite value; ``std``
            with fewer than two; non-real dtypes). Integers and booleans give Python ints for min, max, abs_max.
        zero_fraction: elements equal to zero / numel (None for an empty tensor).
        nan_count, inf_count: NaN and +-Inf elements.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    abs_max: float | None = None
    zero_fraction: float | None = None
    nan_count: int = 0
    inf_count: int = 0

    @property
    def finite_count(self) -> int:
        """Elements that are neither NaN nor infinite."""
        return self.numel - self.nan_count - self.inf_count

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready: no NaN, shape as a list)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["shape"] = list(self.shape)
        return out


@structure(eq=False)
class StatsReport:
    """The statistics of every tensor of a checkpoint (:func:`torchweights.stats`).

    Attributes:
        path: the checkpoint, as given.
        format: its format (``torch-zip``, ``safetensors``...).
        tensors: one :class:`TensorStats` per tensor, in file order.
        seconds: wall time.
    """

    path: str
    format: str = ""
    tensors: tuple[TensorStats, ...] = ()
    seconds: float = 0.0

    # A read-only mapping of tensor name -> TensorStats, as a state dict is: ``report["fc.weight"]``,
    # ``"fc.weight" in report``, ``for name in report``, ``len(report)``, ``report.items()``.

    def __getitem__(self, name: str) -> TensorStats:
        for stats in self.tensors:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(stats.name == name for stats in self.tensors)

    def __iter__(self) -> Iterator[str]:
        return (stats.name for stats in self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def items(self) -> Iterator[tuple[str, TensorStats]]:
        """``(name, TensorStats)`` per tensor, in file order."""
        return ((stats.name, stats) for stats in self.tensors)

    @property
    def nonfinite(self) -> tuple[TensorStats, ...]:
        """Tensors with at least one NaN or Inf."""
        return tuple(s for s in self.tensors if s.nan_count or s.inf_count)

    @property
    def summary(self) -> str:
        """One line: ``12 tensors, 1.2M values; 1 with NaN or Inf``."""
        from ..fold import human_count
        from ..text import plural

        text = f"{plural(len(self.tensors), 'tensor')}, {human_count(sum(s.numel for s in self.tensors))} values"
        bad = self.nonfinite
        return text + (f"; {len(bad)} with NaN or Inf" if bad else "; all finite")

    def to_dict(self) -> dict[str, Any]:
        """Plain data: path, format, seconds and every tensor's statistics."""
        return {
            "path": self.path,
            "format": self.format,
            "summary": self.summary,
            "seconds": round(self.seconds, 6),
            "tensors": [s.to_dict() for s in self.tensors],
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def __str__(self) -> str:
        from ..text import table

        head = [["path", printable(self.path)], ["format", self.format], ["summary", self.summary]]
        lines = table(head, indent="")
        if self.tensors:
            lines += ["", *stats_table(self.tensors)]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<StatsReport {quote(self.path)}: {self.summary}>"


#: The columns of :func:`stats_table` after the name: (header, TensorStats attribute).
STAT_COLUMNS = (
    ("dtype", "dtype"),
    ("shape", "shape"),
    ("min", "min"),
    ("max", "max"),
    ("mean", "mean"),
    ("std", "std"),
    ("abs_max", "abs_max"),
    ("zeros", "zero_fraction"),
    ("nan", "nan_count"),
    ("inf", "inf_count"),
)


def stat_cell(value: object) -> str:
    """A statistic for a table cell: ``-`` for None, 4 significant digits for floats, anything else as ``str``
    (ints, the shape, the dtype)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


#: The columns :func:`stats_table` leaves out, in this order, when the table is wider than the text's width (after
#: folding the names): the ones the others imply least first; name, std, abs_max, nan and inf always stay.
DROP_ORDER = ("mean", "zeros", "shape", "min", "max", "dtype")


def stats_table(tensors: tuple[TensorStats, ...] | list[TensorStats], indent: str = "  ") -> list[str]:
    """Aligned lines: one row per tensor, a header row of :data:`STAT_COLUMNS`. Wider than the current style's
    width (the terminal's, or 100 columns), names fold first, then columns leave in :data:`DROP_ORDER` and a last
    line names them (``--json`` has every value)."""
    from .. import style
    from ..text import table, wrap

    limit = style.current().width
    rows = [["name", *(header for header, _ in STAT_COLUMNS)]]
    for s in tensors:
        cells = [printable(s.name)]
        for header, attr in STAT_COLUMNS:
            value = getattr(s, attr)
            if header == "zeros" and value is not None:
                cells.append(f"{100 * value:.3g}%")
            else:
                cells.append(stat_cell(value))
        rows.append(cells)
    dropped: list[str] = []
    while True:
        keep = [i for i, header in enumerate(rows[0]) if header not in dropped]
        shown = [[row[i] for i in keep] for row in rows]
        right = [j for j, i in enumerate(keep) if i >= 3]  # the numbers (min onwards)
        lines = table(shown, right=right, indent=indent, shrink=[0])
        if limit is None or max(map(len, lines)) <= limit or len(dropped) == len(DROP_ORDER):
            break
        dropped.append(DROP_ORDER[len(dropped)])
    if dropped:
        lines += wrap(f"({', '.join(dropped)} left out to fit {limit} columns; --json has every value)", indent)
    return lines


# --------------------------------------------------------------------------------------------------- reduce


@structure
class _Acc:
    """Running totals of a chunked reduction."""

    count: int = 0  # finite values seen
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    low: Any = None
    high: Any = None
    abs_max: Any = None
    zeros: int = 0
    nan: int = 0
    inf: int = 0

    def add_moments(self, n: int, mean: float, m2: float) -> None:
        """Chan et al.'s combination of two (count, mean, M2) triples."""
        if not n:
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    def add_range(self, low: Any, high: Any) -> None:
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)


def _chunks(tensor: torch.Tensor, elements: int) -> Any:
    """Flat pieces of ``tensor`` of at most ``elements`` elements (views where it is contiguous; a non-contiguous
    tensor is cut along its first dimension, so only one piece is ever copied)."""
    if tensor.dim() == 0:
        yield tensor.reshape(1)
        return
    if tensor.is_contiguous():
        flat = tensor.view(-1)
        for start in range(0, flat.numel(), elements):
            yield flat[start : start + elements]
        return
    rows = max(1, elements // max(1, math.prod(tensor.shape[1:])))
    for start in range(0, tensor.shape[0], rows):
        yield tensor[start : start + rows].reshape(-1)


def tensor_stats(
    name: str, tensor: torch.Tensor, *, moments: bool = True, chunk_bytes: int = CHUNK_BYTES
) -> TensorStats:
    """The statistics of ``tensor`` (see the module docstring), reduced in chunks of at most ``chunk_bytes`` of
    scratch memory. ``moments=False`` leaves ``mean`` and ``std`` out (None): cheaper, for the value checks of a
    load, which need ranges and counts only."""
    import torch

    dtype = str(tensor.dtype).removeprefix("torch.")
    shape = tuple(tensor.shape)
    numel = tensor.numel()
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    if not numel or tensor.is_meta or tensor.layout != torch.strided:
        return TensorStats(name, dtype, shape, numel)
    elements = max(1, chunk_bytes // _SCRATCH_PER_ELEMENT)
    acc = _Acc()
    if tensor.is_complex():
        _reduce_complex(tensor, elements, acc)
    elif tensor.is_floating_point():
        _reduce_float(tensor, elements, acc, moments)
    else:
        _reduce_int(tensor, elements, acc, moments)
    real = not tensor.is_complex()
    have = real and acc.count > 0
    low = acc.low if have else None
    high = acc.high if have else None
    if have:
        acc.abs_max = max(abs(acc.low), abs(acc.high))
    return TensorStats(
        name=name,
        dtype=dtype,
        shape=shape,
        numel=numel,
        min=low,
        max=high,
        mean=acc.mean if have and moments else None,
        std=math.sqrt(acc.m2 / (acc.count - 1)) if real and moments and acc.count > 1 else None,
        abs_max=acc.abs_max,
        zero_fraction=acc.zeros / numel,
        nan_count=acc.nan,
        inf_count=acc.inf,
    )


def _reduce_float(tensor: torch.Tensor, elements: int, acc: _Acc, moments: bool) -> None:
    import torch

    for piece in _chunks(tensor, elements):
        chunk = piece.to(torch.float64, copy=True)  # a copy also from float64: it is changed in place below
        acc.zeros += int((chunk == 0).sum())
        finite = torch.isfinite(chunk)
        n = int(finite.sum())
        if n < chunk.numel():
            nan = int(torch.isnan(chunk).sum())
            acc.nan += nan
            acc.inf += chunk.numel() - n - nan
            chunk = chunk[finite]
        del finite
        if not n:
            continue
        acc.add_range(float(chunk.min()), float(chunk.max()))
        if moments:
            mean = chunk.mean()
            acc.add_moments(n, float(mean), float(chunk.sub_(mean).square_().sum()))
        else:
            acc.count += n


def _reduce_int(tensor: torch.Tensor, elements: int, acc: _Acc, moments: bool) -> None:
    import torch

    for piece in _chunks(tensor, elements):
        acc.zeros += int((piece == 0).sum())
        exact = piece.to(torch.int64) if piece.dtype != torch.uint64 else piece
        acc.add_range(int(exact.min()), int(exact.max()))
        if moments:
            chunk = piece.to(torch.float64, copy=True)
            mean = chunk.mean()
            acc.add_moments(chunk.numel(), float(mean), float(chunk.sub_(mean).square_().sum()))
        else:
            acc.count += piece.numel()


def _reduce_complex(tensor: torch.Tensor, elements: int, acc: _Acc) -> None:
    import torch

    for piece in _chunks(tensor, elements):
        chunk = piece.to(torch.complex128)
        acc.zeros += int((chunk == 0).sum())
        nan = int(torch.isnan(chunk).sum())
        finite = torch.isfinite(chunk)
        acc.nan += nan
        acc.inf += chunk.numel() - int(finite.sum()) - nan
        kept = chunk.abs()[finite]
        if kept.numel():
            top = float(kept.max())
            acc.abs_max = top if acc.abs_max is None else max(acc.abs_max, top)
        acc.count += int(kept.numel())
