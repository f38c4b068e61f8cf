"""Property tests for the planner: random models, checkpoints derived from them by known transforms.

A model is a random set of dotted keys (words and layer indices) with shapes and dtypes, all under an optional
model-side prefix (``backbone.``...). A checkpoint is derived from it: every key put under a checkpoint-side prefix
(``module.``, ``_orig_mod.``, a random word...), some keys dropped, some shapes changed (to sizes no model key has),
some extra keys added, everything nested under a random container, next to an optimizer-like decoy holding more
tensors than the model. The words of prefixes never occur in the model's own keys, so the transform that derived
the checkpoint is the only one that explains it.

Checked for every example: each model key is the target of exactly one action and each checkpoint tensor the
source of exactly one; the container and prefix are recovered; reconciling the transformed keys again changes
nothing; the plan is deterministic. The default run is short and deterministic; set ``TW_PLAN_EXAMPLES`` for a
longer, random one.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from torchweights.plan.model import Plan
from torchweights.plan.reconcile import reconcile
from torchweights.plan.rules import Rules
from torchweights.plan.sources import SourceKey
from torchweights.plan.spec import ModelSpec

EXAMPLES = int(os.environ.get("TW_PLAN_EXAMPLES", "150"))  # e.g. TW_PLAN_EXAMPLES=5000 for a longer hunt
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

VOCAB = ["enc", "dec", "layers", "attn", "mlp", "norm", "proj", "blocks", "conv", "bn", "embed", "head", "fc", "q"]
LEAVES = ["weight", "bias", "running_mean", "running_var", "scale", "pos"]
MODEL_PREFIXES = ["", "", "backbone.", "model.", "wrapper.", "ww.inner."]
CKPT_PREFIXES = ["", "", "module.", "_orig_mod.", "_orig_mod.module.", "model.", "net.", "xq.", "zz.yy.", "ww.inner."]
CONTAINERS: list[tuple[str, ...]] = [
    (),
    ("state_dict",),
    ("model",),
    ("module",),
    ("net",),
    ("params",),
    ("weights",),
    ("a", "b"),
    ("checkpoint", "state_dict"),
]
DTYPES = ["float32", "float16", "bfloat16", "int64"]

shapes = st.lists(st.integers(1, 6), max_size=3).map(tuple)
component = st.one_of(st.sampled_from(VOCAB), st.integers(0, 11).map(str))
core_names = st.builds(
    lambda parts, leaf: ".".join([*parts, leaf]), st.lists(component, min_size=1, max_size=4), st.sampled_from(LEAVES)
)


@dataclass
class Case:
    spec: ModelSpec
    keys: list[SourceKey]
    container: tuple[str, ...]
    strip: str  # the checkpoint's prefix
    add: str  # the model's prefix
    truth: dict[str, str] = field(default_factory=dict)  # record -> model key, for unchanged surviving keys
    changed: dict[str, str] = field(default_factory=dict)  # record -> model key, for surviving keys of another shape
    prefixed: int = 0  # surviving keys stored with the checkpoint's prefix
    bare: int = 0  # keys stored without the checkpoint's prefix (surviving or extra) while others carry it


@st.composite
def cases(draw: st.DrawFn) -> Case:
    cores = draw(st.lists(core_names, min_size=1, max_size=40, unique=True))
    add = draw(st.sampled_from(MODEL_PREFIXES))
    strip = draw(st.sampled_from(CKPT_PREFIXES))
    items = [(add + core, draw(shapes), draw(st.sampled_from(DTYPES))) for core in cores]
    spec = ModelSpec.from_tuples(items)
    container = draw(st.sampled_from(CONTAINERS))
    n = len(items)
    fate = draw(st.lists(st.sampled_from(["keep", "keep", "keep", "drop", "reshape"]), min_size=n, max_size=n))
    # A prefix on some keys only (a stripped prefix can be partial; an added one is added to every key).
    partial = bool(strip) and not add and draw(st.booleans())
    case = Case(spec, [], container, strip, add)
    members: list[tuple[str, tuple[int, ...], str]] = []
    for (name, shape, _), core, what in zip(items, cores, fate):
        if what == "drop":
            continue
        dtype = draw(st.sampled_from(DTYPES))
        stored = (strip if not partial or draw(st.booleans()) else "") + core
        case.prefixed += stored != core
        case.bare += bool(strip) and stored == core
        record = ".".join([*container, stored])
        if what == "reshape":
            members.append((stored, (*shape, 7), dtype))  # no model key has a size of 7
            case.changed[record] = name
        else:
            members.append((stored, shape, dtype))
            case.truth[record] = name
    for i in range(draw(st.integers(0, 4))):
        extra = draw(st.sampled_from([strip, ""]))
        case.bare += bool(strip) and not extra
        members.append((extra + f"zz_extra{i}.weight", draw(shapes), "float32"))
    order = draw(st.permutations(range(len(members))))
    keys = [
        SourceKey(".".join([*container, members[i][0]]), (*container, members[i][0]), *members[i][1:]) for i in order
    ]
    if draw(st.booleans()):  # an optimizer's state: more tensors than the model, none of them weights
        slots = draw(st.integers(n + 1, 2 * n + 2))
        for i in range(slots):
            for moment in ("exp_avg", "exp_avg_sq"):
                path = ("optimizer", "state", str(i), moment)
                keys.append(SourceKey(".".join(path), path, draw(shapes), "float32"))
    if container and draw(st.booleans()):
        keys.insert(draw(st.integers(0, len(keys))), SourceKey("epoch", ("epoch",), (), "int64"))
    case.keys = keys
    return case


def _transformed(plan: Plan, keys: list[SourceKey]) -> list[SourceKey]:
    """The chosen container's keys with the chosen prefix transform applied, as a flat state dict."""
    path, strip, add = plan.container.path, plan.prefix.strip, plan.prefix.add
    out = []
    for key in keys:
        if key.path[: len(path)] != path or len(key.path) <= len(path):
            continue
        name = ".".join(key.path[len(path) :])
        if strip:
            name = add + name[len(strip) :] if name.startswith(strip) else name
        else:
            name = add + name
        out.append(SourceKey(name, (name,), key.shape, key.dtype))
    return out


def _check_accounted(plan: Plan, spec: ModelSpec, keys: list[SourceKey]) -> None:
    targets = Counter(a.target for a in plan.actions if a.target is not None)
    assert targets == Counter(list(spec.entries))
    sources = Counter(a.source for a in plan.actions if a.source is not None)
    assert sources == Counter(k.record for k in keys)


@SETTINGS
@given(cases(), st.sampled_from([True, False, "model"]))
def test_every_key_is_accounted_for_exactly_once(case: Case, strict: bool | str) -> None:
    plan = reconcile(case.keys, case.spec, Rules.make(strict=strict))  # type: ignore[arg-type]
    _check_accounted(plan, case.spec, case.keys)
    kinds = Counter(a.kind for a in plan.actions)
    if strict is True:
        assert plan.ok == (kinds["mismatch"] + kinds["missing"] + kinds["unexpected"] == 0)
    elif strict == "model":
        assert plan.ok == (kinds["mismatch"] + kinds["missing"] == 0)
    else:
        assert plan.ok


@SETTINGS
@given(cases())
def test_container_and_prefix_are_recovered(case: Case) -> None:
    assume(case.truth)  # at least one key survives unchanged
    plan = reconcile(case.keys, case.spec, Rules.make(strict=False))
    assert plan.container.path == case.container, plan.container.reason
    got = (plan.prefix.strip, plan.prefix.add)
    want = ("", "") if case.strip == case.add or (case.strip and not case.prefixed) else (case.strip, case.add)
    loaded = {a.source: a.target for a in plan.actions if a.kind == "load"}
    assert loaded.items() <= case.truth.items()  # never a tensor into another key, whatever the prefix
    # A prefix is inferred on the evidence of a wrapper: every key carries it and half the model matches. On less
    # (a few keys only, most of them reshaped or dropped), keeping the names as stored is as right.
    if not case.bare and 2 * len(case.truth) >= len(case.spec.entries):
        assert got == want, plan.prefix.evidence
    else:
        assert got in (want, ("", "")), plan.prefix.evidence
    if got != want:
        return
    assert loaded == case.truth
    mismatched = {a.source: a.target for a in plan.actions if a.kind == "mismatch"}
    assert mismatched == case.changed
    assert plan.container.runner_up is None or plan.container.runner_up_matched <= plan.container.matched


@SETTINGS
@given(cases())
def test_auto_prefix_twice_changes_nothing(case: Case) -> None:
    rules = Rules.make(strict=False)
    plan = reconcile(case.keys, case.spec, rules)
    again_keys = _transformed(plan, case.keys)
    again = reconcile(again_keys, case.spec, rules)
    assert (again.prefix.strip, again.prefix.add) == ("", ""), again.prefix.evidence
    assert again.container.path == ()
    targets = sorted(a.target for a in plan.actions if a.kind == "load" and a.target)
    assert sorted(a.target for a in again.actions if a.kind == "load" and a.target) == targets


@SETTINGS
@given(cases(), st.booleans())
def test_plan_is_deterministic(case: Case, strict: bool) -> None:
    rules = Rules.make(strict=strict)
    first = reconcile(case.keys, case.spec, rules)
    assert reconcile(list(case.keys), case.spec, rules) == first


def test_twenty_thousand_keys_with_an_optimizer_twice_as_large() -> None:
    """Not a timing assertion: a 20,000-key model, its checkpoint under 'module.' and 40,000 optimizer tensors."""
    items = [(f"encoder.layers.{i // 20}.block{i % 20}.weight", (16, 1 + i % 20), "float32") for i in range(20_000)]
    spec = ModelSpec.from_tuples(items)
    keys = [SourceKey(f"state_dict.module.{n}", ("state_dict", f"module.{n}"), s, "float16") for n, s, _ in items]
    for i, (_, shape, _) in enumerate(items):
        for moment in ("exp_avg", "exp_avg_sq"):
            path = ("optimizer", "state", str(i), moment)
            keys.append(SourceKey(".".join(path), path, shape, "float32"))
    started = time.perf_counter()
    plan = reconcile(keys, spec)
    seconds = time.perf_counter() - started
    assert plan.ok and plan.container.path == ("state_dict",) and plan.prefix.strip == "module."
    assert plan.counts()["load"] == 20_000 and plan.counts()["ignored"] == 40_000
    assert all(a.cast for a in plan.by_kind("load"))
    print(f"reconcile: 20,000 model keys, 60,000 checkpoint tensors: {seconds:.3f} s")


#: Module kinds as their leaves; the shapes come from a small pool, so unrelated modules often agree on them.
KINDS = [("weight", "bias"), ("weight", "bias", "running_mean", "running_var"), ("weight",), ("scale", "pos")]
WORDS_A = ["conv", "bn", "fc", "features", "stem", "down"]
WORDS_B = ["attn", "ln", "mlp", "embed", "blocks", "head"]


@st.composite
def unrelated(draw: st.DrawFn, words: list[str]) -> dict[str, tuple[int, ...]]:
    """A random model of leaf modules named from ``words`` (with indices), each of a random kind."""
    paths = draw(
        st.lists(
            st.lists(st.tuples(st.sampled_from(words), st.sampled_from(["", "0", "1"])), min_size=1, max_size=3),
            min_size=1,
            max_size=8,
        )
    )
    out: dict[str, tuple[int, ...]] = {}
    for parts in paths:
        module = ".".join(w + (f".{i}" if i else "") for w, i in parts)
        size = draw(st.sampled_from([4, 8]))
        for leaf in draw(st.sampled_from(KINDS)):
            out[f"{module}.{leaf}"] = (size,) if leaf != "weight" or draw(st.booleans()) else (size, 4)
    return out


@SETTINGS
@given(unrelated(WORDS_A), unrelated(WORDS_B), st.sampled_from(["", "module.", "model."]))
def test_unrelated_models_load_nothing(
    checkpoint: dict[str, tuple[int, ...]], target: dict[str, tuple[int, ...]], wrapper: str
) -> None:
    # Module names from disjoint words: any tensor that loaded would land in a module its key does not name (a
    # BatchNorm's weight in a LayerNorm of the same size), whatever prefix made the names meet.
    spec = ModelSpec.from_tuples((name, shape, "float32") for name, shape in target.items())
    keys = [SourceKey(wrapper + k, (wrapper + k,), shape, "float32") for k, shape in checkpoint.items()]
    plan = reconcile(keys, spec, Rules.make(strict=False))
    assert not plan.by_kind("load"), plan.prefix.evidence
    assert (
        plan.suggestion is None
        or not plan.suggestion.by_kind("load")
        or 2 * len(plan.suggestion.by_kind("load")) >= len(spec.entries)
    )
