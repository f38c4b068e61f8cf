"""``qkv``: a fused attention projection split into separate q, k, v projections, and back.

**Split.** A checkpoint key ``P.<fused>.weight`` / ``.bias`` (``<fused>`` one of ``qkv``, ``to_qkv``, ``Wqkv``,
``qkv_proj``, ``c_attn``, ``in_proj``; or ``nn.MultiheadAttention``'s ``P.in_proj_weight`` / ``P.in_proj_bias``) left
without a target, whose parent ``P`` is the model's module ``Q`` (``P`` through the alignment's module map, the
longest mapped prefix of ``P`` replaced; else ``P`` itself), and three model keys left without a source:
``Q.<q>.<leaf>``, ``Q.<k>.<leaf>``, ``Q.<v>.<leaf>`` with one naming scheme of :data:`TRIPLES` (``q``/``k``/``v``,
``query``/``key``/``value``, ``q_proj``..., ``to_q``..., ``wq``..., ``q_lin``...; for ``in_proj_weight`` also
``nn.MultiheadAttention``'s own ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``). The fused tensor's rows
(dim 0, ``nn.Linear``'s out-features) are taken in q, k, v order, the sizes read from the model: with grouped-query
attention (k and v narrower than q) the ranges say so (``rows 0:4096 -> q, 4096:5120 -> k, 5120:6144 -> v``). Each
part must have the fused tensor's other dimensions, and the three sizes must add up to its rows.

**Fuse.** The reverse: three checkpoint keys ``P.<q>.<leaf>``... left without a target and the model's fused key
``Q.<fused>.<leaf>`` left without a source: the three concatenated along dim 0.

**All or nothing.** A fused module's leaves (weight and bias) are planned together: when one of them finds no
unique triple with fitting shapes, none is adapted. Two groups that would fill or use the same key are both dropped.
A model leaf with no fused counterpart (a biased q/k/v under a bias-free ``qkv``) is left missing as any other key.

**Refused (no group; the keys stay missing and unexpected, reported as such):**

- sizes that add up along dim 1 only: GPT-2's ``Conv1D`` ``c_attn`` stores ``(in, 3 * out)``; whether the model
  wants the blocks transposed cannot be told from shapes, and a square ``(D, D)`` part would load either way;
- ``query_key_value`` (GPT-NeoX, Falcon, BLOOM): those interleave the heads (``[q0 k0 v0 q1 k1 v1 ...]``), not
  q | k | v blocks; it is deliberately not a fused name here;
- a fused tensor stored in another order (k, q, v): nothing in the shapes shows it; the adapter assumes q, k, v.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .base import Adapter, GroupFit, Step
from .names import module_and_leaf

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ADAPTER", "FUSED_NAMES", "TRIPLES", "apply", "fit_groups", "model_path"]

#: Fused projection modules (compared in lower case). ``query_key_value`` is not one (see the module docstring).
FUSED_NAMES = frozenset({"qkv", "to_qkv", "wqkv", "qkv_proj", "c_attn", "in_proj"})
#: The naming schemes of separate projections, each in q, k, v order.
TRIPLES: tuple[tuple[str, str, str], ...] = (
    ("q", "k", "v"),
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("to_q", "to_k", "to_v"),
    ("wq", "wk", "wv"),
    ("q_lin", "k_lin", "v_lin"),
    ("query_proj", "key_proj", "value_proj"),
)
#: ``nn.MultiheadAttention``'s separate weights (``P.q_proj_weight``), a triple of its own.
MHA_TRIPLE = len(TRIPLES)
ROLES = ("q", "k", "v")
LEAVES = ("weight", "bias")

_PARTS = {name: (index, role) for index, triple in enumerate(TRIPLES) for role, name in enumerate(triple)}
_MHA_PARTS = {f"{name}_proj_weight": role for role, name in enumerate(ROLES)}

Shapes = Mapping[str, tuple[int, ...]]
#: (model module of the q/k/v parent, naming scheme, leaf) -> {role: key}.
Parts = dict[tuple[str, int, str], dict[int, str]]


def model_path(path: str, module_map: Mapping[str, str]) -> str:
    """A checkpoint module path as the model names it: the longest prefix found in ``module_map`` replaced."""
    parts = path.split(".") if path else []
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in module_map:
            return ".".join([module_map[head], *parts[cut:]]).strip(".")
    return path


def _fused(key: str) -> tuple[str, str, str] | None:
    """``(parent, fused module, leaf)`` of a fused projection's key, or None."""
    module, leaf = module_and_leaf(key)
    if leaf in ("in_proj_weight", "in_proj_bias"):
        return module, f"{module}.in_proj" if module else "in_proj", leaf.rpartition("_")[2]
    parent, _, name = module.rpartition(".")
    if leaf in LEAVES and name.lower() in FUSED_NAMES:
        return parent, module, leaf
    return None


def _part(key: str) -> tuple[str, int, int, str] | None:
    """``(parent, naming scheme, role, leaf)`` of a separate projection's key, or None."""
    module, leaf = module_and_leaf(key)
    if leaf in _MHA_PARTS:
        return module, MHA_TRIPLE, _MHA_PARTS[leaf], "weight"
    parent, _, name = module.rpartition(".")
    found = _PARTS.get(name.lower())
    if leaf in LEAVES and found is not None:
        return parent, found[0], found[1], leaf
    return None


def _index_parts(shapes: Shapes, module_map: Mapping[str, str] | None) -> Parts:
    parts: Parts = defaultdict(dict)
    for key in shapes:
        found = _part(key)
        if found is not None:
            parent, scheme, role, leaf = found
            where = model_path(parent, module_map) if module_map is not None else parent
            parts[(where, scheme, leaf)][role] = key
    return parts


def _layout(fused: tuple[int, ...], parts: Sequence[tuple[int, ...]]) -> tuple[tuple[int, int], ...] | None:
    """The row ranges of q, k, v in the fused tensor, or None when the shapes do not stack along dim 0."""
    if not fused or any(len(p) != len(fused) or p[1:] != fused[1:] or p[0] < 1 for p in parts):
        return None
    if sum(p[0] for p in parts) != fused[0]:
        return None
    q, k, _ = (p[0] for p in parts)
    return (0, q), (q, q + k), (q + k, fused[0])


def _rows(layout: tuple[tuple[int, int], ...], arrow: str) -> str:
    if arrow == "->":
        return "rows " + ", ".join(f"{a}:{b} -> {role}" for role, (a, b) in zip(ROLES, layout))
    return ", ".join(f"{role} -> rows {a}:{b}" for role, (a, b) in zip(ROLES, layout))


def _triple(parts: Parts, where: str, leaf: str, fused_leaf: str) -> dict[int, str] | None:
    """The one complete q/k/v triple under ``where`` for ``leaf``, or None (none or several)."""
    schemes = [s for s in range(len(TRIPLES)) if len(parts.get((where, s, leaf), {})) == 3]
    if fused_leaf == "in_proj_weight" and len(parts.get((where, MHA_TRIPLE, leaf), {})) == 3:
        schemes.append(MHA_TRIPLE)
    return parts[(where, schemes[0], leaf)] if len(schemes) == 1 else None


def _fused_modules(keys: Shapes) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The fused projections among ``keys``: ``({module: {leaf: key}}, {module: its parent})``."""
    modules: dict[str, dict[str, str]] = defaultdict(dict)
    parents: dict[str, str] = {}
    for key in keys:
        found = _fused(key)
        if found is not None:
            parents[found[1]] = found[0]
            modules[found[1]][found[2]] = key
    return modules, parents


def _split(missing: Shapes, unexpected: Shapes, module_map: Mapping[str, str]) -> list[GroupFit]:
    parts = _index_parts(missing, None)
    modules, parents = _fused_modules(unexpected)
    fits: list[GroupFit] = []
    for module, leaves in modules.items():
        where = model_path(parents[module], module_map)
        steps: dict[str, Step] = {}
        for leaf, key in leaves.items():
            triple = _triple(parts, where, leaf, module_and_leaf(key)[1])
            layout = None if triple is None else _layout(unexpected[key], [missing[triple[r]] for r in range(3)])
            if triple is None or layout is None:
                break
            detail = f"split along dim 0: {_rows(layout, '->')}"
            for role in range(3):
                params = (("role", ROLES[role]), ("rows", layout[role]), ("layout", layout))
                steps[triple[role]] = Step("qkv", (key,), params, detail)
        else:
            fits.append(GroupFit(steps, tuple(leaves.values())))
    return fits


def _fuse(missing: Shapes, unexpected: Shapes, module_map: Mapping[str, str]) -> list[GroupFit]:
    parts = _index_parts(unexpected, module_map)
    modules, parents = _fused_modules(missing)
    fits: list[GroupFit] = []
    for module, leaves in modules.items():
        steps: dict[str, Step] = {}
        consumed: list[str] = []
        for leaf, key in leaves.items():
            triple = _triple(parts, parents[module], leaf, module_and_leaf(key)[1])
            sources = () if triple is None else tuple(triple[r] for r in range(3))
            layout = None if triple is None else _layout(missing[key], [unexpected[s] for s in sources])
            if layout is None:
                break
            detail = f"concatenated along dim 0: {_rows(layout, '<-')}"
            steps[key] = Step("qkv", sources, (("layout", layout),), detail)
            consumed.extend(sources)
        else:
            fits.append(GroupFit(steps, tuple(consumed)))
    return fits


def fit_groups(missing: Shapes, unexpected: Shapes, module_map: Mapping[str, str]) -> list[GroupFit]:
    """Every split and fuse group (see the module docstring); groups that share a key are all dropped."""
    fits = _split(missing, unexpected, module_map) + _fuse(missing, unexpected, module_map)
    uses: dict[str, int] = defaultdict(int)
    for group in fits:
        for key in (*group.steps, *group.consumed):
            uses[key] += 1
    return [g for g in fits if all(uses[k] == 1 for k in (*g.steps, *g.consumed))]


def apply(step: Step, tensors: Sequence[torch.Tensor], dst_shape: tuple[int, ...]) -> torch.Tensor:
    """One part's rows of the fused tensor (a view), or the three parts concatenated."""
    import torch

    if len(tensors) == 1:
        start, stop = step.param("rows")
        return tensors[0][start:stop]
    return torch.cat(list(tensors), dim=0)


ADAPTER = Adapter(
    name="qkv",
    kind="group",
    summary="fused attention projection (qkv, c_attn, in_proj_weight) <-> separate q, k, v, in q, k, v order "
    "along dim 0, grouped-query row ranges from the model's shapes",
    apply=apply,
    fit_groups=fit_groups,
)
