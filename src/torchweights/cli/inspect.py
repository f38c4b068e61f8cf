"""``torchweights inspect PATH``: what a checkpoint holds, from its records alone.

Prints the format, files, metadata, tensor and parameter totals (tied tensors, the same tensor under two names such as
an embedding and the output layer tied to it, counted once and listed), a dtype breakdown, a prefix tree with layer
indices folded, non-tensor extras, the pickle globals the file references (with a safety verdict each) and reader
warnings. ``--json`` prints the same facts as one JSON object.

Inspect never reads tensor bytes, never prints tensor values and never imports torch: it works from the
:class:`~torchweights.records.Checkpoint` that :func:`torchweights.api.open` returns. The one exception is
``--stats``, which asks for values: it reads every tensor, one at a time (:func:`torchweights.stats`), and adds a
"statistics" table (text) or a ``"stats"`` object per tensor (``--json``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._options import add_allow_global, add_verb

if TYPE_CHECKING:
    from ..records import Checkpoint

# The reader, the unpickler and the report helpers are imported by the functions that use them, not here: every
# subcommand module is imported to build the parser, and ``torchweights --help`` should not pay for them.

__all__ = ["EXAMPLES", "EXIT_CODES", "register", "render_modules", "render_text", "run", "summarize"]

#: What each exit code of ``inspect`` means (its ``--help`` lists them).
EXIT_CODES = {0: "the checkpoint was read and described", 2: "it cannot be read (missing, not a checkpoint, damaged)"}
#: ``(command line, what it does)`` for ``inspect --help``.
EXAMPLES = (
    ("torchweights inspect model.safetensors", "what the file holds: format, tensors, dtypes, name tree"),
    ("torchweights inspect --depth 1 runs/epoch=9.ckpt", "only the top level of the name tree"),
    ("torchweights inspect --modules model.pt", "the module tree of a pickled model, as print(model) shows it"),
    ("torchweights inspect --json model.pt | jq .totals", "the facts as JSON, for scripts"),
)

#: Extras values in ``--json`` that are not JSON scalars become their ``repr``, cut to this many characters.
JSON_REPR_LIMIT = 200
#: Longest value shown on one line of the text report.
TEXT_VALUE_LIMIT = 64
#: Most rows shown per section of the text report (files, metadata, extras); the rest are counted.
TEXT_ROW_LIMIT = 40


# --------------------------------------------------------------------------------------------------- argparse


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"depth must be 0 or more, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``inspect`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "inspect",
        help="describe a checkpoint: format, tensors, dtypes, layout, extras, globals",
        description="Describe a checkpoint without reading tensor data, executing pickle code or importing torch.",
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
    )
    parser.add_argument("path", metavar="PATH", help="checkpoint file, sharded index (*.index.json) or folder")
    add_allow_global(parser)
    parser.add_argument(
        "--depth",
        metavar="N",
        type=_depth,
        default=3,
        help="levels of the name tree to show (default 3; 0 hides the tree)",
    )
    parser.add_argument(
        "--modules",
        action="store_true",
        help="print the module tree of a pickled model the way print(model) does (read from the file, nothing "
        "imported)",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="read every tensor, one at a time, and show min, max, mean, std, abs-max, zero fraction and NaN/Inf "
        'counts per tensor (imports torch; with --json, each tensor gets a "stats" object)',
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Open ``args.path`` and print its report; return the exit code."""
    import json

    from .. import api
    from ..style import render_for

    ckpt = api.open(args.path, allow_globals=args.allow_globals)
    stats = None
    if getattr(args, "stats", False):
        from ..values.file import stats as read_stats

        stats = read_stats(args.path, allow_globals=args.allow_globals)
    if args.json:
        facts = summarize(ckpt)
        if stats is not None:
            by_name = {s.name: s.to_dict() for s in stats.tensors}
            for tensor in facts["tensors"]:
                tensor["stats"] = by_name.get(tensor["name"])
        sys.stdout.write(json.dumps(facts, allow_nan=False) + "\n")
    elif stats is not None:
        from ..values.stats import stats_table

        shown = stats  # (narrowed for the closure)

        def text() -> str:
            lines = stats_table(shown.tensors)
            return render_text(ckpt, depth=args.depth) + f"\nstatistics ({shown.summary})\n" + "\n".join(lines) + "\n"

        sys.stdout.write(render_for(sys.stdout, text))
    elif getattr(args, "modules", False):
        sys.stdout.write(render_modules(ckpt))
    else:
        sys.stdout.write(render_for(sys.stdout, lambda: render_text(ckpt, depth=args.depth)))
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------------------------------- facts


def _classifier() -> Callable[[str], str]:
    """``torchweights.unpickle.policy.classify_global``, or a stand-in answering ``"unknown"`` when it is
    unavailable."""
    try:
        from ..unpickle.policy import classify_global
    except ImportError:  # pragma: no cover - only while the unpickler is missing
        return lambda name: "unknown"
    return classify_global


def _file_sizes(files: Iterable[str]) -> list[tuple[str, int | None]]:
    out: list[tuple[str, int | None]] = []
    for path in files:
        try:
            out.append((path, os.path.getsize(path)))
        except OSError:
            out.append((path, None))
    return out


def _totals(ckpt: Checkpoint) -> dict[str, int]:
    """``{"tensors", "numel", "nbytes", "tied"}``: every name counted, a tied tensor's elements and bytes once."""
    tied = ckpt.tied
    kept = [r for name, r in ckpt.records.items() if name not in tied]
    return {
        "tensors": len(ckpt.records),
        "numel": sum(r.numel for r in kept),
        "nbytes": sum(r.nbytes for r in kept),
        "tied": len(tied),
    }


def _dtype_totals(ckpt: Checkpoint) -> dict[str, dict[str, int]]:
    """``{dtype: {"tensors", "numel", "nbytes"}}``, largest by bytes first; a tied tensor's elements and bytes
    counted once."""
    tied = ckpt.tied
    totals: dict[str, dict[str, int]] = {}
    for name, record in ckpt.records.items():
        entry = totals.setdefault(record.dtype, {"tensors": 0, "numel": 0, "nbytes": 0})
        entry["tensors"] += 1
        if name in tied:
            continue
        entry["numel"] += record.numel
        entry["nbytes"] += record.nbytes
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1]["nbytes"], -kv[1]["tensors"], kv[0])))


def _repr(value: Any) -> str:
    from ..formats.tree import short_repr

    try:
        return short_repr(value, 400)
    except Exception:  # a stub or foreign object with a broken __repr__ must not stop the report
        return f"<{type(value).__name__} object>"


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


_JSON_SCALARS = (str, int, bool, type(None))


def _json_scalar(value: Any) -> bool:
    if type(value) in _JSON_SCALARS:
        return True
    return type(value) is float and math.isfinite(value)


def _json_extra(value: Any) -> Any:
    """An extras value for ``--json``: JSON scalars as they are, anything else as its repr cut to 200 characters."""
    return value if _json_scalar(value) else _truncate(_repr(value), JSON_REPR_LIMIT)


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Metadata as plain JSON: mappings and sequences kept (string keys), other values as their repr."""
    if _json_scalar(value):
        return value
    if depth < 20:
        if isinstance(value, Mapping):
            return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_json_safe(v, depth + 1) for v in value]
    return _truncate(_repr(value), JSON_REPR_LIMIT)


def summarize(ckpt: Checkpoint) -> dict[str, Any]:
    """Everything ``inspect --json`` prints, as one JSON-ready dict (no tensor values, no tensor bytes)."""
    classify = _classifier()
    return {
        "path": ckpt.path,
        "format": ckpt.format,
        "files": [{"path": path, "size": size} for path, size in _file_sizes(ckpt.files)],
        "metadata": _json_safe(ckpt.metadata),
        "tensors": [record.to_dict() for record in ckpt.records.values()],
        "totals": _totals(ckpt),
        "tied": ckpt.tied,
        "dtypes": _dtype_totals(ckpt),
        "extras": {str(key): _json_extra(value) for key, value in ckpt.extras.items()},
        "globals": [{"name": name, "verdict": classify(name)} for name in ckpt.globals],
        "warnings": [str(w) for w in ckpt.warnings],
        "modules": {where: node.to_dict() for where, node in ckpt.modules.items()},
    }


def render_modules(ckpt: Checkpoint) -> str:
    """``inspect --modules``: each pickled model's tree as ``print(model)`` prints it, under where it is in the
    file; one line saying so when the file holds no pickled module."""
    trees = ckpt.modules
    if not trees:
        if ckpt.format.startswith("torchscript"):
            why = "a TorchScript archive keeps its modules as code, which is not read here (torch.jit.load runs it)"
        elif ckpt.format == "torch-package":
            why = "the module trees of torch.package archives are not read yet"
        elif ckpt.structure is None:
            why = f"a {ckpt.format} file stores tensors by name only"
        else:
            why = "it is a state dict (tensors by name), not a pickled nn.Module"
        return f"{ckpt.path}: no module tree: {why}. `torchweights inspect PATH` lists its tensors.\n"
    parts = []
    for where, node in trees.items():
        head = f"{where} = " if where else ""
        parts.append(f"{head}{node}\n")
    return "".join(parts)


# --------------------------------------------------------------------------------------------------- text


def _more(count: int) -> str:
    return f"  ... {count} more"


def _short(value: Any, limit: int = TEXT_VALUE_LIMIT) -> str:
    """One line for a value: strings bare, other values as repr, cut to ``limit`` with the full length noted."""
    from ..text import printable

    text = value if isinstance(value, str) else _repr(value)
    text = printable(text)
    if len(text) > limit:
        suffix = f"... ({len(text)} chars)"
        return text[: max(limit - len(suffix), 0)] + suffix
    return text


def _metadata_rows(metadata: Mapping[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Flatten nested metadata to ``(dotted key, short value)``; deep or large containers are summarised."""
    rows: list[tuple[str, str]] = []
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and depth < 2:
            rows.extend(_metadata_rows(value, f"{name}.", depth + 1))
        elif isinstance(value, Mapping):
            rows.append((name, f"{{{len(value)} keys}}" if value else "{}"))
        elif isinstance(value, (list, tuple)) and len(_repr(value)) > TEXT_VALUE_LIMIT:
            rows.append((name, f"{type(value).__name__} of {len(value)} items"))
        else:
            rows.append((name, _short(value)))
    return rows


def _type_name(value: Any) -> str:
    return type(value).__name__


def _extras_rows(extras: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(key or folded pattern, type, value summary)`` per extras pattern."""
    from ..fold import fold_names

    rows: list[tuple[str, str, str]] = []
    for pattern, members in fold_names(str(k) for k in extras):
        values = [extras[m] for m in members]
        types = {_type_name(v) for v in values}
        if len(values) == 1:
            rows.append((pattern, _type_name(values[0]), _short(values[0])))
            continue
        kind = f"{len(values)} x {types.pop()}" if len(types) == 1 else f"{len(values)} x mixed"
        joined = ", ".join(_short(v, 24) for v in values[:12])
        rows.append((pattern, kind, _short(joined + (", ..." if len(values) > 12 else ""))))
    return rows


def render_text(ckpt: Checkpoint, depth: int = 3) -> str:
    """The terminal report of ``inspect`` (ends with a newline)."""
    from ..fold import human_bytes, human_count, prefix_tree
    from ..style import status
    from ..text import printable, wrap
    from ..text import table as _table

    lines: list[str] = []
    sizes = _file_sizes(ckpt.files)
    known = [s for _, s in sizes if s is not None]
    total_size = sum(known)
    totals = _totals(ckpt)
    numel, nbytes, tied = totals["numel"], totals["nbytes"], ckpt.tied

    head: list[tuple[str, str]] = [("path", printable(ckpt.path)), ("format", printable(ckpt.format))]
    if sizes:
        count = f"{len(sizes)} file" + ("s" if len(sizes) != 1 else "")
        size_text = f"{count}, {human_bytes(total_size)} ({total_size:,} bytes)" if known else f"{count}, size unknown"
        if known and len(known) < len(sizes):
            size_text += f", {len(sizes) - len(known)} unreadable"
        head.append(("files", size_text))
    head += [
        ("tensors", f"{len(ckpt.records):,}" + (f" ({len(tied):,} tied, counted once)" if tied else "")),
        ("params", f"{human_count(numel)} ({numel:,})"),
        ("data", f"{human_bytes(nbytes)} ({nbytes:,} bytes)"),
    ]
    lines += _table(head, indent="")

    if len(sizes) > 1 or (sizes and os.path.abspath(sizes[0][0]) != os.path.abspath(ckpt.path)):
        lines += ["", "files"]
        rows = [[printable(p), human_bytes(s) if s is not None else "?"] for p, s in sizes[:TEXT_ROW_LIMIT]]
        lines += _table(rows, right=[1], shrink=[0])
        if len(sizes) > TEXT_ROW_LIMIT:
            lines.append(_more(len(sizes) - TEXT_ROW_LIMIT))

    if ckpt.metadata:
        meta = _metadata_rows(ckpt.metadata)
        lines += ["", "metadata"]
        lines += _table([[printable(k), v] for k, v in meta[:TEXT_ROW_LIMIT]], shrink=[0], wrap_last=True)
        if len(meta) > TEXT_ROW_LIMIT:
            lines.append(_more(len(meta) - TEXT_ROW_LIMIT))

    if ckpt.records:
        lines += ["", "dtypes"]
        rows = [["dtype", "tensors", "params", "bytes"]]
        rows += [
            [dtype, f"{t['tensors']:,}", human_count(t["numel"]), human_bytes(t["nbytes"])]
            for dtype, t in _dtype_totals(ckpt).items()
        ]
        lines += _table(rows, right=[1, 2, 3])

        tree = prefix_tree(((r.name, r.numel, r.nbytes) for r in ckpt.records.values()), max_depth=depth)
        if tree:
            lines += ["", "tree"]
            rows = [["name", "tensors", "params", "bytes"]]
            rows += [
                [
                    "  " * row.depth + _truncate(printable(row.label), TEXT_VALUE_LIMIT),
                    f"{row.tensors:,}",
                    human_count(row.numel),
                    human_bytes(row.nbytes),
                ]
                for row in tree
            ]
            lines += _table(rows, right=[1, 2, 3], shrink=[0])

    if tied:
        lines += ["", f"tied ({len(tied)}): the same tensor under two names, stored once"]
        rows = [[printable(alias), "=", printable(first)] for alias, first in list(tied.items())[:TEXT_ROW_LIMIT]]
        lines += _table(rows, shrink=[0, 2])
        if len(tied) > TEXT_ROW_LIMIT:
            lines.append(_more(len(tied) - TEXT_ROW_LIMIT))

    if ckpt.extras:
        extras = _extras_rows(ckpt.extras)
        lines += ["", f"extras ({len(ckpt.extras)})"]
        lines += _table([[printable(p), t, v] for p, t, v in extras[:TEXT_ROW_LIMIT]], shrink=[0], wrap_last=True)
        if len(extras) > TEXT_ROW_LIMIT:
            lines.append(_more(len(extras) - TEXT_ROW_LIMIT))

    if ckpt.globals:
        classify = _classifier()
        verdicts = [(classify(name), name) for name in ckpt.globals]
        counts = {v: sum(1 for verdict, _ in verdicts if verdict == v) for v in ("dangerous", "unknown", "safe")}
        summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        lines += ["", f"globals ({len(verdicts)}: {summary})"]
        lines += _table([[status(verdict), printable(name)] for verdict, name in verdicts])

    if ckpt.warnings:
        lines += ["", f"warnings ({len(ckpt.warnings)})"]
        for warning in ckpt.warnings:
            lines += wrap(str(warning), indent="  - ", hang="    ")

    return "\n".join(lines) + "\n"
