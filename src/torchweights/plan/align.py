"""``align="auto"``: pair the keys still unmatched after containers, prefixes and renames by the model's structure.

Pure data, no torch. The unit of alignment is a module's set of tensors (``weight``, ``bias``, BatchNorm's running
statistics: :data:`LEAVES`) or, for any other tensor (``cls_token``, ``in_proj_weight``), the tensor alone. Each
unit has a **signature** (its leaves and their shapes), a **stem** (its path with every index abstracted:
``layer1.0.conv2`` -> ``layer{}.{}.conv{}``, ``stages.0.blocks.1.conv_b`` -> ``stages.{}.blocks.{}.conv_{}``), its
**indices** (``(1, 0, 2)``, ``(0, 1, 1)``) and its name **tokens** (CamelCase, snake_case and digits split, lower
case). Then, one signature at a time:

1. the units of the signature are grouped into **families** by stem (all the ``conv2`` of every block); families
   pair when they are the only ones on both sides, or when their size (number of members) is unique on both
   sides, or by their distinguishing name tokens (a strict mutual best, with exact tokens, prefixes such as ``q`` /
   ``query``, and near spellings), the last family left by elimination. Families that do not pair at that level
   are split at their in-name indices (``ln_1``, ``ln_2`` as two families) and tried again;
2. inside a family pair, members pair by their indices: the indices that vary, dense-ranked per position
   (``layer1..4`` and ``stages.0..3`` agree), must form the same set on both sides; otherwise, when both sides are
   totally ordered by their indices, by rank (lower confidence). Never by declaration order alone;
3. what remains pairs the same way with shapes ignored (leaves and numbers of dimensions only), so a changed
   head or input layer is paired and then reported as a shape mismatch (or adapted).

Families that could pair with more than one counterpart, with nothing but declaration order to decide, are an
:class:`~torchweights.plan.model.AmbiguousGroup`: nothing of them is paired, and ``load_into`` raises with the
``rename`` that would settle them. When the exact pass pairs less than half of the model's unmatched tensors the
two models are not the same architecture: nothing is aligned (the note says so). Tensors of ambiguous groups count
as paired there: their structure is the same, only their order is unknown.

Every step is a dictionary pass or a sort over one signature's units: thousands of tensors plan in milliseconds,
and an unrelated model is refused without search.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..adapt.names import words
from ..structs import structure
from .model import AlignedPair, Alignment, AmbiguousGroup
from .renames import module_renames, rename_mapping

__all__ = ["LEAVES", "MIN_COVERAGE", "align", "covers", "mean_confidence", "refusal_note", "rename_mapping"]

#: Leaf names of the tensors a module owns as a set; any other tensor is a unit of its own.
LEAVES = frozenset(
    {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "moving_var",
    }
)
#: Old names of leaves (Keras/TF-style normalisation), compared as the new ones.
_SYNONYMS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "moving_var": "running_var",
}
#: The least name similarity (:func:`_weighted_similarity`) that ties two families: ``q`` / ``query`` (0.8) and
#: BERT's ``self.query`` / ``q`` (0.66) do, LLaMA's ``post_attention_layernorm`` / ``attention_norm`` (0.5) does not.
NAME_MATCH = 0.6
#: Ambiguous groups of more modules than this get no suggested rename.
MAX_SUGGESTED = 32
#: Above this many candidate family pairs in one signature, names are not compared (no pairing by name).
MAX_NAME_PAIRS = 4096
#: Below this share of the model's unmatched tensors paired by exact shapes, the models are not aligned at all.
MIN_COVERAGE = 0.5

_TRAILING = re.compile(r"^(.*?[A-Za-z])_?(\d+)$")
_LETTER = re.compile(r"^(.*[A-Za-z0-9])_([a-h])$")

Shape = tuple[int, ...]


@structure
class _Unit:
    """One module's unmatched tensors (or one tensor), as alignment sees it."""

    path: str  # module path, or the tensor's name for a single-tensor unit
    tensor: bool  # a single tensor rather than a module's leaves
    leaves: dict[str, str]  # canonical leaf -> full key ('' for a single tensor)
    shapes: dict[str, Shape]  # canonical leaf -> shape
    order: int  # position of its first tensor on its side
    stem: str = ""
    fine: str = ""  # the stem with in-name indices kept literal (conv1, conv2 as two families)
    indices: tuple[int, ...] = ()
    tokens: tuple[str, ...] = ()

    def signature(self, exact: bool) -> tuple[Any, ...]:
        items = self.shapes.items()
        return (self.tensor, frozenset((leaf, s if exact else len(s)) for leaf, s in items))


def _units(names: Mapping[str, Shape], order: Sequence[str]) -> list[_Unit]:
    """The units of one side, in the order their first tensor comes in ``order``."""
    position = {name: i for i, name in enumerate(order)}
    units: dict[tuple[str, bool], _Unit] = {}
    for name in sorted(names, key=lambda n: position.get(n, len(position))):
        module, _, leaf = name.rpartition(".")
        if leaf in LEAVES:
            canon = _SYNONYMS.get(leaf, leaf)
            unit = units.get((module, False))
            if unit is None:
                unit = units[(module, False)] = _Unit(module, False, {}, {}, position.get(name, len(position)))
            if canon in unit.leaves:  # weight and gamma in one module: keep the names as they are
                canon = leaf
            unit.leaves[canon] = name
            unit.shapes[canon] = names[name]
        else:
            units[(name, True)] = _Unit(name, True, {"": name}, {"": names[name]}, position.get(name, len(position)))
    out = list(units.values())
    letters = _letter_heads(u.path for u in out)
    for unit in out:
        unit.stem, unit.fine, unit.indices, unit.tokens = _describe(unit.path, letters)
    return out


def _letter_heads(paths: Iterable[str]) -> set[str]:
    """Name heads used with letter suffixes ``_a`` and ``_b`` on this side (``conv_a``, ``conv_b``): their letters
    are indices."""
    seen: dict[str, set[str]] = {}
    for path in paths:
        for part in path.split("."):
            m = _LETTER.match(part)
            if m:
                seen.setdefault(m.group(1), set()).add(m.group(2))
    return {head for head, letters in seen.items() if {"a", "b"} <= letters}


def _describe(path: str, letters: set[str]) -> tuple[str, str, tuple[int, ...], tuple[str, ...]]:
    """(stem, fine stem, indices, tokens) of a path."""
    stem: list[str] = []
    fine: list[str] = []
    indices: list[int] = []
    tokens: list[str] = []
    for part in path.split(".") if path else []:
        if part.isdigit():
            stem.append("{}")
            fine.append("{}")
            indices.append(int(part))
            continue
        fine.append(part)
        letter = _LETTER.match(part)
        trailing = _TRAILING.match(part)
        if letter and letter.group(1) in letters:
            stem.append(letter.group(1) + "{}")
            indices.append(ord(letter.group(2)) - ord("a"))
            tokens.extend(words(letter.group(1)))
        elif trailing:
            stem.append(trailing.group(1) + "{}")
            indices.append(int(trailing.group(2)))
            tokens.extend(words(trailing.group(1)))
        else:
            stem.append(part)
            tokens.extend(words(part))
    return ".".join(stem), ".".join(fine), tuple(indices), tuple(tokens)


@functools.lru_cache(maxsize=1 << 16)
def _word_similarity(a: str, b: str) -> float:
    """1 for the same word, 0.8 when one begins the other (``q``/``query``, ``attn``/``attention``), the
    spelling ratio when it is high (typos), else 0."""
    if a == b:
        return 1.0
    if a.startswith(b) or b.startswith(a):
        return 0.8
    if min(len(a), len(b)) == 1 and max(len(a), len(b)) == 2 and a[-1] == b[-1]:
        return 0.7  # Meta's wq, wo against q, o
    if min(len(a), len(b)) >= 4:
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
        if ratio >= 0.8:
            return ratio * 0.9
    return 0.0


def _similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """How alike two token lists are, 0..1: each word's best counterpart, averaged over the longer list."""
    if not a or not b:
        return 0.0
    total = sum(max(_word_similarity(x, y) for y in b) for x in a)
    back = sum(max(_word_similarity(y, x) for x in a) for y in b)
    return min(total, back) / max(len(a), len(b))


def _weighted_similarity(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """How much of each side's informative words the other accounts for (the lesser of the two shares), 0..1:
    ``post_attention`` against ``attention`` is 0.5, not a match, where ``post`` tells families apart."""
    weight_a, weight_b = sum(a.values()), sum(b.values())
    if weight_a <= 0 or weight_b <= 0:
        return 0.0
    cover_a = sum(w * max(_word_similarity(x, y) for y in b) for x, w in a.items()) / weight_a
    cover_b = sum(w * max(_word_similarity(y, x) for x in a) for y, w in b.items()) / weight_b
    return min(cover_a, cover_b)


@structure
class _Family:
    """Units of one signature sharing a stem."""

    stem: str
    members: list[_Unit]
    tokens: tuple[str, ...] = ()


def _families(units: list[_Unit], fine: bool) -> list[_Family]:
    groups: dict[str, list[_Unit]] = {}
    for unit in units:
        groups.setdefault(unit.fine if fine else unit.stem, []).append(unit)
    return [_Family(stem, members, members[0].tokens) for stem, members in groups.items()]


def _distinguishing(families: list[_Family]) -> dict[str, dict[str, float]]:
    """Each family's words with how much they tell families of its side apart: ``log(n / f)`` for a word in ``f``
    of the ``n`` families (0, left out, for a word they all have)."""
    n = len(families)
    counts: dict[str, int] = {}
    for family in families:
        for token in set(family.tokens):
            counts[token] = counts.get(token, 0) + 1
    return {f.stem: {t: math.log(n / counts[t]) for t in dict.fromkeys(f.tokens) if counts[t] < n} for f in families}


class _Aligner:
    """One alignment run; :meth:`run` fills :attr:`pairs` and :attr:`ambiguous`."""

    def __init__(self, src: list[_Unit], dst: list[_Unit]) -> None:
        self.src = src
        self.dst = dst
        self.pairs: list[tuple[_Unit, _Unit, float, str]] = []
        self.ambiguous: list[tuple[list[_Unit], list[_Unit], str]] = []
        self.used: set[int] = set()  # units paired, or in an ambiguous group
        self.exact = True  # the pass: shapes equal (True) or only leaves and numbers of dimensions
        self.unequal: list[tuple[list[_Unit], list[_Unit]]] = []  # same shapes, other counts: left unpaired

    def run(self, exact: bool) -> None:
        self.exact = exact
        by_sig_src: dict[tuple[Any, ...], list[_Unit]] = {}
        by_sig_dst: dict[tuple[Any, ...], list[_Unit]] = {}
        for unit in self.src:
            if id(unit) not in self.used:
                by_sig_src.setdefault(unit.signature(exact), []).append(unit)
        for unit in self.dst:
            if id(unit) not in self.used:
                by_sig_dst.setdefault(unit.signature(exact), []).append(unit)
        for sig, src in by_sig_src.items():
            dst = by_sig_dst.get(sig)
            if dst:
                self._signature(src, dst, 1.0 if exact else 0.6)

    def _signature(self, src: list[_Unit], dst: list[_Unit], scale: float) -> None:
        left_src, left_dst = self._families(_families(src, False), _families(dst, False), scale, final=False)
        if left_src and left_dst:
            self._families(_families(left_src, True), _families(left_dst, True), scale, final=True)

    def _families(
        self, src: list[_Family], dst: list[_Family], scale: float, final: bool
    ) -> tuple[list[_Unit], list[_Unit]]:
        """Pair families; returns the units left unpaired (when not ``final``; at the final level what cannot
        be told apart is recorded as ambiguous)."""
        pairs: list[tuple[_Family, _Family, float, str]] = []
        if len(src) == 1 and len(dst) == 1:
            pairs.append(
                (
                    src[0],
                    dst[0],
                    1.0,
                    "the only modules of their kind" if not self.exact else "the only modules of their shapes",
                )
            )
            src, dst = [], []
        else:
            pairs.extend(self._by_size(src, dst))
            taken = {id(f) for p in pairs for f in p[:2]}
            src = [f for f in src if id(f) not in taken]
            dst = [f for f in dst if id(f) not in taken]
            named, src, dst = self._by_name(src, dst)
            pairs.extend(named)
        left_src: list[_Unit] = []
        left_dst: list[_Unit] = []
        for a, b, confidence, evidence in pairs:
            if len(a.members) != len(b.members):
                left_src.extend(a.members)
                left_dst.extend(b.members)
                continue
            if not self._members(a, b, confidence * scale, evidence):
                left_src.extend(a.members)
                left_dst.extend(b.members)
        left_src.extend(u for f in src for u in f.members)
        left_dst.extend(u for f in dst for u in f.members)
        if final and left_src and left_dst:
            # As many on each side: the same modules, in an order nothing tells. Otherwise some have no counterpart
            # at all and which ones cannot be told: they stay missing and unexpected.
            if len(left_src) == len(left_dst):
                self.ambiguous.append(
                    (left_src, left_dst, "modules of identical shapes, with no layer index or name tying each to one")
                )
                self.used.update(id(u) for u in (*left_src, *left_dst))
            elif self.exact:
                self.unequal.append((left_src, left_dst))
            return [], []
        return left_src, left_dst

    @staticmethod
    def _by_size(src: list[_Family], dst: list[_Family]) -> list[tuple[_Family, _Family, float, str]]:
        """Families whose member count no other family of either side has."""
        sizes_src: dict[int, list[_Family]] = {}
        sizes_dst: dict[int, list[_Family]] = {}
        for f in src:
            sizes_src.setdefault(len(f.members), []).append(f)
        for f in dst:
            sizes_dst.setdefault(len(f.members), []).append(f)
        out = []
        for size, group in sizes_src.items():
            other = sizes_dst.get(size, [])
            if len(group) == 1 and len(other) == 1:
                out.append((group[0], other[0], 0.9, "the only family of its size"))
        return out

    @staticmethod
    def _by_name(
        src: list[_Family], dst: list[_Family]
    ) -> tuple[list[tuple[_Family, _Family, float, str]], list[_Family], list[_Family]]:
        """Families of equal size paired by their distinguishing tokens: strict mutual bests (each the other's
        unique best, above 0), round after round, then the last one left by elimination. Similarities are worked
        out once; beyond :data:`MAX_NAME_PAIRS` candidate pairs names are not compared (nothing pairs by name)."""
        out: list[tuple[_Family, _Family, float, str]] = []
        if len(src) * len(dst) > MAX_NAME_PAIRS:
            return out, src, dst
        words_src = _distinguishing(src)
        words_dst = _distinguishing(dst)
        score = {
            (i, j): _weighted_similarity(words_src[a.stem], words_dst[b.stem])
            for i, a in enumerate(src)
            for j, b in enumerate(dst)
            if len(a.members) == len(b.members)
        }
        left_src, left_dst = set(range(len(src))), set(range(len(dst)))
        while left_src and left_dst:
            if len(left_src) == 1 and len(left_dst) == 1:
                i, j = next(iter(left_src)), next(iter(left_dst))
                if (i, j) in score:
                    out.append((src[i], dst[j], 0.75, "the last family left of its shapes"))
                    left_src.clear()
                    left_dst.clear()
                break
            best_of_src = _unique_best({i: [(score[i, j], j) for j in left_dst if (i, j) in score] for i in left_src})
            best_of_dst = _unique_best({j: [(score[i, j], i) for i in left_src if (i, j) in score] for j in left_dst})
            found = [(i, j) for i, j in best_of_src.items() if best_of_dst.get(j) == i]
            if not found:
                break
            for i, j in found:
                out.append((src[i], dst[j], round(0.6 + 0.4 * score[i, j], 3), "their names"))
                left_src.discard(i)
                left_dst.discard(j)
        return out, [src[i] for i in sorted(left_src)], [dst[j] for j in sorted(left_dst)]

    def _members(self, a: _Family, b: _Family, confidence: float, evidence: str) -> bool:
        """Pair the members of two families of equal size by their indices; False when they cannot be."""
        if len(a.members) == 1:
            self._pair(a.members[0], b.members[0], confidence, evidence)
            return True
        ranked_a = _ranked(a.members)
        ranked_b = _ranked(b.members)
        if ranked_a is not None and ranked_b is not None and set(ranked_a) == set(ranked_b):
            for key, unit in ranked_a.items():
                self._pair(unit, ranked_b[key], confidence, f"{evidence}; layer indices")
            return True
        order_a = _total_order(a.members)
        order_b = _total_order(b.members)
        if order_a is None or order_b is None:
            return False
        for x, y in zip(order_a, order_b, strict=True):
            self._pair(x, y, confidence * 0.85, f"{evidence}; layer indices in the same order")
        return True

    def _pair(self, a: _Unit, b: _Unit, confidence: float, evidence: str) -> None:
        names = 0.8 + 0.2 * _similarity(a.tokens, b.tokens)
        if not self.exact:
            evidence += " (shapes differ)"
        self.pairs.append((a, b, round(min(1.0, confidence * names), 3), evidence))
        self.used.add(id(a))
        self.used.add(id(b))


def _unique_best(options: dict[int, list[tuple[float, int]]]) -> dict[int, int]:
    """For each key, the option with the strictly highest score, when it reaches :data:`NAME_MATCH` (none on a
    tie)."""
    out = {}
    for key, scored in options.items():
        if not scored:
            continue
        scored.sort(reverse=True)
        if scored[0][0] >= NAME_MATCH and (len(scored) == 1 or scored[1][0] < scored[0][0]):
            out[key] = scored[0][1]
    return out


def _varying(units: Sequence[_Unit]) -> list[tuple[int, ...]] | None:
    """Each unit's indices without the positions that are the same in all (None if their counts differ, or if a
    position is not a run of layer numbers: see :func:`_counts_layers`)."""
    lengths = {len(u.indices) for u in units}
    if len(lengths) != 1:
        return None
    n = lengths.pop()
    keep = [i for i in range(n) if len({u.indices[i] for u in units}) > 1]
    if not all(_counts_layers({u.indices[i] for u in units}) for i in keep):
        return None
    return [tuple(u.indices[i] for i in keep) for u in units]


def _counts_layers(values: set[int]) -> bool:
    """Whether numbers look like layer indices (``0..11``, ``1..4``, with at most as many gaps as values) rather
    than identifiers (``conv_83125``, hashes): only then does their order say which is which."""
    return max(values) - min(values) + 1 <= 2 * len(values)


def _ranked(units: Sequence[_Unit]) -> dict[tuple[int, ...], _Unit] | None:
    """Units by their varying indices, each position dense-ranked (1-based and 0-based numbering agree); None
    when two units have the same key."""
    varying = _varying(units)
    if varying is None:
        return None
    width = len(varying[0]) if varying else 0
    ranks = [{v: r for r, v in enumerate(sorted({key[i] for key in varying}))} for i in range(width)]
    out: dict[tuple[int, ...], _Unit] = {}
    for key, unit in zip(varying, units, strict=True):
        ranked = tuple(ranks[i][v] for i, v in enumerate(key))
        if ranked in out:
            return None
        out[ranked] = unit
    return out


def _total_order(units: Sequence[_Unit]) -> list[_Unit] | None:
    """The units sorted by their indices, when no two have the same."""
    keys = [u.indices for u in units]
    if len(set(keys)) != len(keys) or any(not k for k in keys) or _varying(units) is None:
        return None
    return [u for _, u in sorted(zip(keys, units, strict=True), key=lambda p: p[0])]


def _rename_for(src: Sequence[_Unit], dst: Sequence[_Unit]) -> tuple[tuple[str, str], ...]:
    """The rename that pairs an ambiguous group in declaration order (for the user to check, not applied); none
    for a group of more than :data:`MAX_SUGGESTED` modules (no rename of that length is a fix to check by eye)."""
    if len(src) > MAX_SUGGESTED:
        return ()
    ordered = zip(sorted(src, key=lambda u: u.order), sorted(dst, key=lambda u: u.order), strict=False)
    return tuple(
        (pattern, replacement)
        for pattern, replacement, _ in module_renames([(a.path, b.path, a.tensor) for a, b in ordered])
    )


def align(
    src: Mapping[str, Shape],
    dst: Mapping[str, Shape],
    *,
    src_order: Sequence[str] = (),
    dst_order: Sequence[str] = (),
    gate: bool = True,
    loose: bool = True,
) -> tuple[dict[str, str], Alignment]:
    """Pair checkpoint keys (``src``: name after prefix handling -> shape) with model keys (``dst``) by structure.

    Args:
        src: the checkpoint keys left without a target.
        dst: the model keys left without a source.
        src_order / dst_order: the keys in the checkpoint's and the model's order (for suggested renames).
        gate: apply the coverage rule (:data:`MIN_COVERAGE`); off for a second pass over what adapters left,
            once a first pass has shown the two are the same architecture.
        loose: also pair what remains with shapes ignored (reported as mismatches, or adapted); off for a first
            pass that group adapters follow (a fused ``qkv`` is theirs, not a mismatched ``q``).

    Returns:
        ``({checkpoint key: model key}, Alignment)``; the mapping is empty when the alignment was refused or found
        nothing.
    """
    started = time.perf_counter()
    src_units = _units(src, src_order or list(src))
    dst_units = _units(dst, dst_order or list(dst))
    aligner = _Aligner(src_units, dst_units)
    aligner.run(exact=True)
    exact_tensors = sum(len(b.leaves) for _, b, _, _ in aligner.pairs)
    undecided = sum(len(u.leaves) for _, group, _ in aligner.ambiguous for u in group)
    considered = (len(src), len(dst))
    if not dst or (gate and not covers(exact_tensors + undecided, len(dst))):
        note = refusal_note(exact_tensors + undecided, len(dst))
        return {}, Alignment(considered=considered, seconds=time.perf_counter() - started, note=note)
    if loose:
        aligner.run(exact=False)
    mapping: dict[str, str] = {}
    pairs: list[AlignedPair] = []
    for a, b, confidence, evidence in aligner.pairs:
        for leaf, key in a.leaves.items():
            target = b.leaves.get(leaf)
            if target is not None:
                mapping[key] = target
        pairs.append(AlignedPair(a.path, b.path, len(a.leaves), confidence, evidence, tensor=a.tensor))
    # A file that stores its keys sorted (safetensors) has lost its declaration order: no order to suggest.
    stored = list(src_order or src)
    lost = len(stored) > 2 and stored == sorted(stored)
    ambiguous = tuple(
        AmbiguousGroup(
            tuple(u.path for u in sorted(s, key=lambda u: u.order)),
            tuple(u.path for u in sorted(d, key=lambda u: u.order)),
            reason + ("; the file stores its keys sorted, so their declaration order is unknown" if lost else ""),
            () if lost else _rename_for(s, d),
        )
        for s, d, reason in aligner.ambiguous
    )
    paired = {id(u) for a, b, _, _ in aligner.pairs for u in (a, b)}
    unequal = []
    for s_units, d_units in aligner.unequal:
        s_left = tuple(u.path for u in s_units if id(u) not in paired)
        d_left = tuple(u.path for u in d_units if id(u) not in paired)
        if s_left and d_left:
            unequal.append((s_left, d_left))
    alignment = Alignment(
        pairs=tuple(pairs),
        ambiguous=ambiguous,
        confidence=mean_confidence(pairs),
        considered=considered,
        aligned=len(mapping),
        undecided=undecided,
        unequal=tuple(unequal),
        seconds=time.perf_counter() - started,
    )
    return mapping, alignment


def covers(found: int, considered: int) -> bool:
    """The coverage rule: whether ``found`` (paired, adapted or ambiguous) of the model's ``considered``
    unmatched tensors make the two the same architecture (:data:`MIN_COVERAGE`)."""
    return found >= MIN_COVERAGE * considered


def refusal_note(found: int, considered: int) -> str:
    """:attr:`~torchweights.plan.model.Alignment.note` of an alignment refused by the coverage rule."""
    return (
        f"align='auto' found {found} of the model's {considered} unmatched tensors with a counterpart (of the same "
        "shapes, or an adapter's), less than half: the checkpoint is not the same architecture, so nothing was "
        "aligned"
    )


def mean_confidence(pairs: Sequence[AlignedPair]) -> float:
    """The tensor-weighted mean of the pairs' confidences (0 for none)."""
    total = sum(p.keys for p in pairs)
    return round(sum(p.confidence * p.keys for p in pairs) / total, 3) if total else 0.0
