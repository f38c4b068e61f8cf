"""Compact views of many dotted names: folded index patterns, a prefix tree, and human-readable units.

Checkpoints repeat the same structure once per layer (``layers.0.attn.q.weight`` ... ``layers.31.attn.q.weight``).
The helpers here fold those repetitions into patterns such as ``layers.{0..31}.attn.q.weight`` so that reports stay
short. Everything is pure Python over strings and integers: no torch, no I/O.

Only whole dotted components written as canonical non-negative integers (``0``, ``7``, ``123``; not ``01``, ``-1``,
``layer0``) count as indices, so a folded pattern always expands back to exactly the names it came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import field

from .structs import structure

__all__ = [
    "TreeRow",
    "fold_names",
    "format_indices",
    "human_bytes",
    "human_count",
    "is_index",
    "prefix_tree",
]


# --------------------------------------------------------------------------------------------------- indices


def is_index(component: str) -> bool:
    """True when a dotted component is a canonical non-negative integer (``"0"``, ``"12"``; not ``"01"``)."""
    return component.isascii() and component.isdigit() and (component == "0" or component[0] != "0")


def format_indices(values: Iterable[int]) -> str:
    """Write a set of integers compactly: ``{0..11}``, ``{0,2,5}``, ``{0..3,7}``; a single value stays bare (``5``).

    Runs of two or more consecutive values are written as ``first..last``. Duplicates are ignored.

    Raises:
        ValueError: ``values`` is empty.
    """
    ordered = sorted(set(values))
    if not ordered:
        raise ValueError("format_indices needs at least one value")
    if len(ordered) == 1:
        return str(ordered[0])
    parts: list[str] = []
    start = prev = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if value is not None:
            start = prev = value
    return "{" + ",".join(parts) + "}"


# --------------------------------------------------------------------------------------------------- fold_names


def _split_product(tuples: Sequence[tuple[int, ...]]) -> list[tuple[list[set[int]], list[tuple[int, ...]]]]:
    """Cover a set of distinct index tuples exactly by disjoint products of per-position value sets.

    Returns ``(value set per position, member tuples)`` pieces, in no particular order. A full product comes back as
    one piece; otherwise first values whose (recursively folded) tails are identical fold together, so
    ``{(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)}`` becomes ``{0,1} x {0,1}`` and ``{2} x {0}``.
    """
    if not tuples:
        return []
    if len(tuples[0]) == 0:
        return [([], [()])]
    tails: dict[int, list[tuple[int, ...]]] = {}
    for t in tuples:
        tails.setdefault(t[0], []).append(t[1:])
    classes: dict[frozenset[tuple[int, ...]], list[int]] = {}
    for head, rest in tails.items():
        classes.setdefault(frozenset(rest), []).append(head)
    pieces: list[tuple[list[set[int]], list[tuple[int, ...]]]] = []
    for heads in classes.values():
        for rest_sets, rest_members in _split_product(tails[heads[0]]):
            members = [(head, *rest) for head in heads for rest in rest_members]
            pieces.append(([set(heads), *rest_sets], members))
    return pieces


def fold_names(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """Group names that differ only in integer components into patterns with the indices folded.

    ``layers.0.attn.q.weight`` ... ``layers.11.attn.q.weight`` becomes ``layers.{0..11}.attn.q.weight``; sets with
    gaps are written ``{0,2,5}`` or ``{0..3,7}``. Several integer components fold independently when the names form
    a full product (``blocks.{0..1}.experts.{0..7}.w``); when they do not, the names are split into as few exact
    product patterns as the grouping finds (``layers.0.experts.{0..3}.w`` and ``layers.{1..5}.experts.{0..7}.w``).
    Names without integer components, and names alone in their group, come back unchanged as their own pattern.

    Args:
        names: dotted names; duplicates are ignored after their first appearance.

    Returns:
        ``(pattern, member names)`` pairs, ordered by the first appearance of any member; members keep input order.
    """
    # skeleton (components with indices blanked) -> {index tuple: name}
    groups: dict[tuple[str | None, ...], dict[tuple[int, ...], str]] = {}
    first_seen: dict[str, int] = {}
    for name in names:
        if name in first_seen:
            continue
        first_seen[name] = len(first_seen)
        parts = name.split(".")
        skeleton = tuple(None if is_index(p) else p for p in parts)
        index = tuple(int(p) for p in parts if is_index(p))
        groups.setdefault(skeleton, {})[index] = name

    result: list[tuple[int, str, list[str]]] = []
    for skeleton, members in groups.items():
        for sets, tuples in _split_product(list(members)):
            it = iter(sets)
            pattern = ".".join(format_indices(next(it)) if part is None else part for part in skeleton)
            member_names = sorted((members[t] for t in tuples), key=first_seen.__getitem__)
            result.append((first_seen[member_names[0]], pattern, member_names))
    result.sort(key=lambda item: item[0])
    return [(pattern, member_names) for _, pattern, member_names in result]


# --------------------------------------------------------------------------------------------------- prefix tree


@structure(frozen=True)
class TreeRow:
    """One node of a prefix-tree summary.

    Attributes:
        depth: nesting level, 0 for top-level nodes.
        label: the node's dotted components relative to its parent (``self_attn``, ``layers.{0..11}``,
            ``encoder.layer`` for a collapsed single-child chain).
        tensors: number of tensors at or below this node.
        numel: total elements at or below this node.
        nbytes: total bytes at or below this node.
        path: the full dotted prefix of the node, with indices folded (``model.layers.{0..11}.self_attn``).
    """

    depth: int
    label: str
    tensors: int
    numel: int
    nbytes: int
    path: str = ""


@structure
class _Node:
    """Mutable trie node used while building the tree."""

    own_tensors: int = 0
    own_numel: int = 0
    own_nbytes: int = 0
    children: dict[str, _Node] = field(default_factory=dict)
    _shape: frozenset[str] | None = None

    def totals(self) -> tuple[int, int, int]:
        tensors, numel, nbytes = self.own_tensors, self.own_numel, self.own_nbytes
        for child in self.children.values():
            t, n, b = child.totals()
            tensors, numel, nbytes = tensors + t, numel + n, nbytes + b
        return tensors, numel, nbytes

    def shape(self) -> frozenset[str]:
        """Relative leaf names below this node with indices blanked: what "the same structure" means for folding.

        Cached: call only once the subtree is complete.
        """
        if self._shape is None:
            out: set[str] = {""} if self.own_tensors else set()
            for label, child in self.children.items():
                head = "#" if is_index(label) else label
                out.update(f"{head}.{rest}" if rest else head for rest in child.shape())
            self._shape = frozenset(out)
        return self._shape


def _merge(nodes: Sequence[_Node]) -> _Node:
    """Union of several subtrees, summing counts; children keep first-appearance order."""
    merged = _Node()
    grouped: dict[str, list[_Node]] = {}
    for node in nodes:
        merged.own_tensors += node.own_tensors
        merged.own_numel += node.own_numel
        merged.own_nbytes += node.own_nbytes
        for label, child in node.children.items():
            grouped.setdefault(label, []).append(child)
    merged.children = {label: _merge(group) if len(group) > 1 else group[0] for label, group in grouped.items()}
    return merged


def _fold_children(node: _Node) -> list[tuple[str, _Node]]:
    """The node's children with integer siblings of the same structure merged into one ``{a..b}`` child."""
    shapes: dict[frozenset[str], list[str]] = {}
    for label, child in node.children.items():
        if is_index(label):
            shapes.setdefault(child.shape(), []).append(label)
    leader: dict[str, list[str]] = {labels[0]: labels for labels in shapes.values()}
    out: list[tuple[str, _Node]] = []
    for label, child in node.children.items():
        if not is_index(label):
            out.append((label, child))
        elif label in leader:
            labels = leader[label]
            merged = child if len(labels) == 1 else _merge([node.children[x] for x in labels])
            out.append((format_indices(int(x) for x in labels), merged))
    return out


def prefix_tree(items: Iterable[tuple[str, int, int]], max_depth: int = 3) -> list[TreeRow]:
    """Summarise dotted names as a tree of prefixes with per-node tensor, element and byte totals.

    Integer components whose subtrees have the same structure fold into one node (``model.layers.{0..11}``,
    counting all twelve layers); layers with a different structure (say, dense layers before MoE layers) stay
    separate nodes. A chain of nodes that each have a single child and no tensor of their own collapses into one
    row with a dotted label (``encoder.layer``). Rows come depth-first, children in first-appearance order.

    Args:
        items: ``(name, numel, nbytes)`` per tensor.
        max_depth: number of levels to emit (1 = top level only); deeper nodes count in their ancestors' rows.
            0 or less gives no rows.

    Returns:
        Rows in display order; ``depth`` tells the nesting.
    """
    root = _Node()
    for name, numel, nbytes in items:
        node = root
        for part in name.split("."):
            node = node.children.setdefault(part, _Node())
        node.own_tensors += 1
        node.own_numel += numel
        node.own_nbytes += nbytes

    rows: list[TreeRow] = []

    def walk(node: _Node, depth: int, prefix: str) -> None:
        if depth >= max_depth:
            return
        for label, child in _fold_children(node):
            # collapse single-child chains that hold no tensor themselves
            while child.own_tensors == 0:
                folded = _fold_children(child)
                if len(folded) != 1:
                    break
                sub_label, sub_child = folded[0]
                label, child = f"{label}.{sub_label}", sub_child
            path = f"{prefix}.{label}" if prefix else label
            tensors, numel, nbytes = child.totals()
            rows.append(TreeRow(depth, label, tensors, numel, nbytes, path))
            walk(child, depth + 1, path)

    walk(root, 0, "")
    return rows


# --------------------------------------------------------------------------------------------------- units


def _scaled(n: int, base_units: Sequence[str], precision: int, sep: str) -> str:
    """``n`` in steps of 1000 through ``base_units``; a value that would round to 1000 moves up one unit."""
    sign = "-" if n < 0 else ""
    if abs(n) < 1000:
        return f"{sign}{abs(n)}{sep}{base_units[0]}".rstrip()  # no trailing space for a unitless count
    value = float(abs(n))
    for unit in base_units[1:]:
        value /= 1000
        text = f"{value:.{precision}f}"
        if float(text) < 1000 or unit == base_units[-1]:
            return f"{sign}{text}{sep}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_COUNT_UNITS = ("", "K", "M", "B", "T", "P", "E")


def human_bytes(n: int, precision: int = 1) -> str:
    """A byte count in decimal (SI) units: ``"134 B"``, ``"1.5 kB"``, ``"1.5 MB"``, ``"2.1 GB"``.

    Negative values keep their sign (``"-1.5 MB"``), for differences.
    """
    return _scaled(int(n), _BYTE_UNITS, precision, " ")


def human_count(n: int, precision: int = 1) -> str:
    """A count in short decimal units: ``"532"``, ``"1.2K"``, ``"1.2M"``, ``"7.0B"``, ``"1.5T"``.

    Negative values keep their sign (``"-1.2M"``), for differences.
    """
    return _scaled(int(n), _COUNT_UNITS, precision, "")
