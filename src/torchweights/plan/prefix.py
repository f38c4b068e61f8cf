"""Wrapper prefixes: which prefix to strip from a container's keys, and which to add, so they become model keys.

:func:`choose_prefix` scores candidate ``(strip, add)`` transforms with set operations against a
:class:`ModelIndex` (the model's keys, indexed once per reconciliation): the known wrapper prefixes
(:data:`~torchweights.plan.rules.KNOWN_PREFIXES`), prefixes shared by several keys or by all, and prefix pairs that
turn individual keys into model keys. It takes the most exact (name and shape) matches, then name matches, without
collisions, and no change unless a transform is strictly better; a swap of one module's name for another's is a
rename, never inferred (:func:`renames_module`). :func:`choose_prefix_with_renames` does the same when some of the
user's renames apply after the prefix (they are written in the model's names). An explicit ``prefix=`` is parsed
here too.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .model import PrefixChoice
from .renames import apply_rename
from .rules import KNOWN_PREFIXES, WRAPPER_PARTS, Rules, is_ema, is_training_state
from .spec import ModelSpec

__all__ = ["ModelIndex", "choose_prefix", "choose_prefix_with_renames", "renames_module", "supported", "transform"]


def _splits(name: str, depth: int = 3) -> list[tuple[str, str]]:
    """``name`` cut after each of its first ``depth`` dots: ``[("a.", "b.c.d"), ("a.b.", "c.d"), ...]``."""
    out: list[tuple[str, str]] = []
    end = name.find(".")
    while end >= 0 and len(out) < depth:
        out.append((name[: end + 1], name[end + 1 :]))
        end = name.find(".", end + 1)
    return out


def _prefix_counts(
    names: Iterable[str], rests: Mapping[str, list[str]] | None = None, leaves: set[str] | None = None
) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """How many names start with each prefix of one to three dotted parts (``a.``, ``a.b.``, ``a.b.c.``); and, given
    the other side's names by what is left of them after a prefix (``rests``), how many names each
    ``(strip, add)`` pair turns into a name of the other side.

    ``leaves``: the other side's last dotted parts; names ending otherwise can match nothing whatever the prefix
    (an optimizer's ``exp_avg``), and are not counted."""
    counts: dict[str, int] = {}
    support: dict[tuple[str, str], int] = {}
    find = rests.get if rests is not None else None
    for name in names:
        if leaves is not None and name.rpartition(".")[2] not in leaves:
            continue
        parts = name.split(".", 3)
        prefix = ""
        for i in range(len(parts)):
            if i:
                prefix += parts[i - 1] + "."
                counts[prefix] = counts.get(prefix, 0) + 1
            if find is None:
                continue
            rest = name[len(prefix) :]
            adds = find(rest)
            if adds is None or len(adds) > _AMBIGUOUS:
                continue
            for add in adds:
                # When both sides lose a prefix, a bare leaf ('weight') left in common is no evidence.
                if prefix != add and (not prefix or not add or "." in rest):
                    pair = (prefix, add)
                    support[pair] = support.get(pair, 0) + 1
    return Counter(counts), Counter(support)


#: A rest shared by more model keys than this (``0.weight`` in every block) says nothing about the prefix.
_AMBIGUOUS = 4


def _prefix_candidates(names: Mapping[str, Any]) -> tuple[set[str], Counter[str]]:
    """Prefixes worth trying on one side, with how many names have each.

    The known wrapper prefixes present; the 12 most shared prefixes of one to three dotted parts that at least two
    names share (however small a fraction: a root may hold far more optimizer state than weights); and every dotted
    prefix shared by all names. A prefix of a single name is no evidence of a wrapper.
    """
    counts, _ = _prefix_counts(names)
    return _candidate_set(names, counts), counts


def _candidate_set(names: Mapping[str, Any], counts: Counter[str]) -> set[str]:
    """See :func:`_prefix_candidates`; adds the prefixes shared by all names to ``counts`` (up to any depth)."""
    found = {p for p in KNOWN_PREFIXES if counts.get(p)}
    found.update(p for p, n in counts.most_common(12) if n >= 2)
    if names:
        common = os.path.commonprefix([min(names), max(names)])
        end = common.find(".")
        while end >= 0:  # every dotted prefix shared by all names
            prefix = common[: end + 1]
            found.add(prefix)
            counts[prefix] = len(names)
            end = common.find(".", end + 1)
    return found


def transform(key: str, strip: str, add: str) -> str:
    """Strip ``strip`` from a key that starts with it and put ``add`` in its place; without ``strip``, add
    ``add`` to every key."""
    if strip:
        return add + key[len(strip) :] if key.startswith(strip) else key
    return add + key


class ModelIndex:
    """The model's keys, indexed once per reconciliation for every container tried."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.shapes: dict[str, tuple[int, ...]] = {name: e.shape for name, e in spec.entries.items()}
        self.leaves = {name.rpartition(".")[2] for name in self.shapes}
        self.adds, _ = _prefix_candidates(self.shapes)
        self._rests: dict[str, list[str]] | None = None
        self._under: dict[str, dict[str, tuple[int, ...]]] = {"": self.shapes}

    @property
    def rests(self) -> dict[str, list[str]]:
        """What is left of each model key after no prefix or a prefix of up to 3 parts -> those prefixes (at most
        ``_AMBIGUOUS + 1`` of them: more only says the rest is ambiguous)."""
        if self._rests is None:
            self._rests = {}
            for name in self.shapes:
                for prefix, rest in (("", name), *_splits(name)):
                    found = self._rests.setdefault(rest, [])
                    if len(found) <= _AMBIGUOUS:
                        found.append(prefix)
        return self._rests

    def under(self, add: str) -> dict[str, tuple[int, ...]]:
        """Model keys that start with ``add``, without it, with their shapes."""
        found = self._under.get(add)
        if found is None:
            n = len(add)
            found = self._under[add] = {k[n:]: v for k, v in self.shapes.items() if k.startswith(add)}
        return found


def _pair_order(pair: tuple[str, str]) -> tuple[Any, ...]:
    """Transforms in order of preference among equally good ones: not into training state nor an EMA copy, then
    the simplest."""
    strip, add = pair
    parts = strip.split(".")[:-1]
    training = is_training_state(parts)
    return (training, is_ema(parts), bool(strip) + bool(add), len(strip) + len(add), strip, add)


def choose_prefix(shapes: dict[str, tuple[int, ...]], index: ModelIndex, rules: Rules) -> tuple[PrefixChoice, int, int]:
    """The prefix transform for one container's keys (after renames), with its name and exact-shape matches.

    With ``prefix="auto"``: the transform with the most exact (name and shape) matches, then most name matches,
    among those that make no two keys collide; no change unless a transform is strictly better.
    """
    total = len(shapes)
    if rules.prefix != "auto":
        strip, add = _explicit_prefix(rules.prefix)
        names, exact, changed, collisions = _score(shapes, index, strip, add)
        return PrefixChoice(strip, add, changed, total, collisions), names, exact
    model = index.shapes
    matched = shapes.keys() & model.keys()
    exact_matched = {k for k, _ in shapes.items() & model.items()}
    best = (PrefixChoice(total=total), len(matched), len(exact_matched))
    if len(exact_matched) == total or not total:
        return best
    counts, support = _prefix_counts(shapes, index.rests, index.leaves)
    eligible = sum(1 for k in shapes if k.rpartition(".")[2] in index.leaves)
    strips = _candidate_set(shapes, counts)
    # Every usual or shared prefix on one side against every one on the other, and the pairs that explain the
    # most keys one by one (a prefix on a few keys only, as long as what is left is a model key).
    candidates = {(s, a) for s in ["", *strips] for a in ["", *index.adds] if (s or a) and s != a}
    candidates.update(pair for pair, _ in support.most_common(12))
    pairs = sorted(candidates, key=_pair_order)
    # Per strip: identity matches among the keys it changes (they are lost), and those keys without the prefix.
    lost_names: dict[str, int] = {}
    stripped: dict[str, tuple[dict[str, tuple[int, ...]], int]] = {}
    for strip, add in pairs:
        best_exact = best[2]
        target = index.under(add)
        if strip:
            lost = lost_names.get(strip)
            if lost is None:
                lost = lost_names[strip] = sum(1 for k in matched if k.startswith(strip))
            kept = len(matched) - lost  # keys without the prefix stay as they are, and so do their matches
            if renames_module(strip, add, kept):
                continue
            if min(counts.get(strip, 0), len(target)) + kept <= best_exact:
                continue
            cached = stripped.get(strip)
            if cached is None:
                n = len(strip)
                rest = {k[n:]: v for k, v in shapes.items() if k.startswith(strip)}
                cached = stripped[strip] = (rest, sum(1 for k in exact_matched if k.startswith(strip)))
            rest, lost_exact = cached
            names = len(rest.keys() & target.keys()) + kept
            if names <= best_exact:
                continue
            exact = len(rest.items() & target.items()) + len(exact_matched) - lost_exact
        else:
            if min(total, len(target)) <= best_exact:
                continue
            names = len(shapes.keys() & target.keys())
            if names <= best_exact:
                continue
            exact = len(shapes.items() & target.items())
        if (exact, names) <= (best[2], best[1]):
            continue
        if strip:
            moved = stripped[strip][0].keys() & target.keys()
            prefixed = counts.get(strip, 0)
        else:
            moved, prefixed = shapes.keys() & target.keys(), 0
        if not supported(strip, add, moved, names, exact, (prefixed, len(target)), eligible, len(model)):
            continue
        collisions = _collisions(shapes, stripped[strip][0], strip, add) if strip else 0
        if collisions:
            continue
        changed = len(stripped[strip][0]) if strip else total
        best = (PrefixChoice(strip, add, changed, total, 0), names, exact)
    return best


def choose_prefix_with_renames(
    shapes: dict[str, tuple[int, ...]],
    renamed: dict[str, str],
    index: ModelIndex,
    rules: Rules,
    chosen: PrefixChoice,
    later: Sequence[tuple[re.Pattern[str], str]],
) -> tuple[PrefixChoice, dict[str, str], int, int, list[int]]:
    """The prefix transform when some renames apply after it (they matched no stored key): the transform chosen
    without them, no transform, and (``prefix="auto"``) each candidate strip after which a rename matches some
    key, each scored with the renames applied; the most exact matches, then names, without collisions.

    Returns the transform, the final names (container key -> name), names and exact matches, and how many keys
    each rename matched."""
    model = index.shapes
    total = len(shapes)
    options: list[tuple[str, str]] = [(chosen.strip, chosen.add), ("", "")]
    if rules.prefix == "auto":
        counts, _ = _prefix_counts(shapes)
        for strip in sorted(_candidate_set(shapes, counts)):
            n = len(strip)
            if any(p.search(k[n:]) for k in shapes if k.startswith(strip) for p, _ in later):
                options += [(strip, ""), (strip, chosen.add)]
    best: tuple[Any, ...] | None = None
    for strip, add in dict.fromkeys(options):
        final = {k: transform(v, strip, add) for k, v in renamed.items()}
        matched = [apply_rename(final, pattern, replacement) for pattern, replacement in later]
        if len(set(final.values())) < len(final):
            continue
        if (strip, add) != (chosen.strip, chosen.add) and strip and add:
            kept = sum(1 for k, v in renamed.items() if not v.startswith(strip) and final[k] in model)
            if renames_module(strip, add, kept):
                continue
        names = sum(1 for v in final.values() if v in model)
        exact = sum(1 for k, v in final.items() if model.get(v) == shapes[renamed[k]])
        if best is None or (exact, names) > (best[3], best[2]):
            changed = sum(1 for k, v in renamed.items() if transform(v, strip, add) != v)
            best = (PrefixChoice(strip, add, changed, total, 0), final, names, exact, matched)
    if best is None:  # every option collides: keep the transform chosen without the renames
        final = {k: transform(v, chosen.strip, chosen.add) for k, v in renamed.items()}
        matched = [apply_rename(final, pattern, replacement) for pattern, replacement in later]
        best = (chosen, final, 0, 0, matched)
    return best  # type: ignore[return-value]


def renames_module(strip: str, add: str, kept: int) -> bool:
    """Whether the transform ``strip`` -> ``add`` renames a module rather than a wrapper, given ``kept``: how many
    keys it leaves unchanged match a model key as stored.

    A wrapper covers the keys: when some keys already load under their stored names, the container uses the
    model's names, and a swap of one leading name for another on the other keys (``head.`` -> ``classifier.``)
    would load one module's tensors into another. Such a swap is a rename, for the user to ask for (the plan
    suggests it); it is never inferred. Removing or inserting only wrapper levels (``encoder._orig_mod.`` ->
    ``encoder.``, ``module.a.`` -> ``a.``; see :data:`~torchweights.plan.rules.WRAPPER_PARTS`) moves nothing, and
    stripping or adding alone is not a swap."""
    if not (strip and add and kept):
        return False
    return _unwrapped(strip) != _unwrapped(add)


#: A transform that moves keys from one module to another (not only wrapper levels) must make at least this share
#: of the checkpoint's keys, or of the model's, match by name.
_COVERED = 0.5
#: ... and, where it explains no more than leaf names, this share of both.
_NEARLY_ALL = 0.9


def supported(
    strip: str,
    add: str,
    moved: Iterable[str],
    names: int,
    exact: int,
    nested: tuple[int, int],
    checkpoint: int,
    model: int,
) -> bool:
    """Whether the transform ``strip`` -> ``add`` is the evidence of a wrapper that ``prefix="auto"`` may act on.

    ``moved``: the names of the keys it changes that then match a model key, as they are without ``strip`` and
    ``add``; ``names``/``exact``: the container's keys that match a model key by name / by name and shape after it;
    ``nested``: how many keys carry ``strip``, and how many model keys ``add``; ``checkpoint``: how many keys
    could match any model key (their last dotted part is one of the model's); ``model``: how many keys the model
    has.

    Removing or inserting wrapper levels only (``module.``, ``_orig_mod.``,
    :data:`~torchweights.plan.rules.WRAPPER_PARTS`) moves nothing: always supported. Any other transform renames
    keys, and is a wrapper only when the result matches a large share of the checkpoint or of the model by name;
    a replacement of one name by another (``model.`` -> ``backbone.``; wrapper levels aside) also needs the replaced
    prefix on most keys and equal shapes on half the model. When only leaf names (and layer indices) are left in
    common (``bn2.weight`` -> ``ln1.weight``, ``conv.0.weight`` -> ``attn.0.weight``), nothing says the modules
    are the same: only a strip of a prefix on nearly every key (``model.0.weight`` -> ``0.weight``), or an add of
    one that nearly every model key carries (``weight`` -> ``0.weight``), is a wrapper; most keys will do for a
    usual wrapper name (:data:`~torchweights.plan.rules.KNOWN_PREFIXES`: ``encoder.weight`` -> ``weight``). A swap
    of one module's keys onto another module is a rename: for the user to ask for (the plan suggests it), never
    inferred."""
    removed, inserted = _unwrapped(strip), _unwrapped(add)
    prefixed, wrapped = nested
    if removed == inserted:
        return True
    if names < _COVERED * checkpoint and names < _COVERED * model:
        return False
    if removed and inserted and (prefixed < _COVERED * checkpoint or exact < _COVERED * model):
        return False
    if not any(_names_a_module(rest) for rest in moved):  # one module's tensors on another's
        if removed and inserted:
            return False
        share = _COVERED if (strip or add) in KNOWN_PREFIXES else _NEARLY_ALL
        return prefixed >= share * checkpoint if removed else wrapped >= share * model
    return True


def _names_a_module(rest: str) -> bool:
    """Whether what is left of a key after a prefix names a module, not only a layer index and a leaf
    (``bn.weight``, not ``weight`` or ``0.weight``)."""
    return any(not part.isdigit() for part in rest.split(".")[:-1])


def _unwrapped(prefix: str) -> list[str]:
    """The dotted parts of ``prefix`` that are not wrapper levels."""
    return [part for part in prefix.split(".")[:-1] if part not in WRAPPER_PARTS]


def _collisions(shapes: Mapping[str, Any], rest: Iterable[str], strip: str, add: str) -> int:
    """How many stripped keys land on a key that was left as it is."""
    count = 0
    for r in rest:
        new = add + r
        if new in shapes and not new.startswith(strip):
            count += 1
    return count


def _score(shapes: Mapping[str, tuple[int, ...]], index: ModelIndex, strip: str, add: str) -> tuple[int, int, int, int]:
    """(names matched, exact matches, keys changed, collisions) for one transform."""
    model = index.shapes
    seen: set[str] = set()
    names = exact = changed = collisions = 0
    for key, shape in shapes.items():
        new = transform(key, strip, add)
        changed += new != key
        if new in seen:
            collisions += 1
        seen.add(new)
        target = model.get(new)
        if target is not None:
            names += 1
            exact += target == shape
    return names, exact, changed, collisions


def _explicit_prefix(prefix: str | None) -> tuple[str, str]:
    """``prefix=None``/``""``: no change; ``"module."``: strip it; ``"+model."``: add it; ``"a.->b."``: replace."""
    if not prefix:
        return "", ""
    if "->" in prefix:
        strip, add = (p.strip() for p in prefix.split("->", 1))
        return strip, add
    if prefix.startswith("+"):
        return "", prefix[1:]
    return prefix, ""
