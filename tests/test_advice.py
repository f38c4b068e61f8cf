"""``torchweights.report.advice``: the fix decided from a plan, as data, with no text rendered.

Plans are built with :func:`torchweights.plan.reconcile.reconcile` over plain ``SourceKey`` tuples and
``ModelSpec`` entries (no torch). Besides what the advice says, the tests check what it is for: the options it
advises, passed back to ``reconcile``, give a plan without problems that loads at least what loaded before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from torchweights.plan.model import Plan
from torchweights.plan.reconcile import reconcile
from torchweights.plan.rules import Rules
from torchweights.plan.sources import SourceKey
from torchweights.plan.spec import ModelSpec
from torchweights.report.advice import SKIP_PATTERNS, Advice, Hint, HintKind, advise, prefix_evidence, skip_patterns

Entry = tuple[str, tuple[int, ...], str]


def vit(depth: int = 2, classes: int = 10, dim: int = 8, layer_scale: bool = False) -> list[Entry]:
    """A small ViT-shaped state dict: ``(name, shape, dtype)`` in ``state_dict()`` order."""
    entries: list[Entry] = [
        ("cls_token", (1, 1, dim), "float32"),
        ("patch_embed.proj.weight", (dim, 3, 4, 4), "float32"),
    ]
    for i in range(depth):
        entries += [
            (f"blocks.{i}.attn.qkv.weight", (3 * dim, dim), "float32"),
            (f"blocks.{i}.mlp.fc1.weight", (4 * dim, dim), "float32"),
            (f"blocks.{i}.mlp.fc1.bias", (4 * dim,), "float32"),
        ]
        if layer_scale:
            entries.append((f"blocks.{i}.ls1.gamma", (dim,), "float32"))
    entries += [("head.weight", (classes, dim), "float32"), ("head.bias", (classes,), "float32")]
    return entries


def keys(entries: Iterable[Entry], container: str = "", prefix: str = "") -> list[SourceKey]:
    """Checkpoint keys for ``entries``: ``{container: {prefix + name: tensor}}`` (or the file's root)."""
    out = []
    for name, shape, dtype in entries:
        path = (container, prefix + name) if container else (prefix + name,)
        out.append(SourceKey(".".join(path), path, shape, dtype))
    return out


def plan_for(ckpt: Sequence[SourceKey], model: Iterable[Entry], **rules: object) -> Plan:
    spec = ModelSpec.from_tuples(model, class_name="Net")
    return reconcile(ckpt, spec, Rules.make(**rules), source="a.pt")  # type: ignore[arg-type]


def follow(ckpt: Sequence[SourceKey], model: list[Entry], advice: Advice, **rules: object) -> Plan:
    """The plan with the advised options added to ``rules``."""
    options: dict[str, object] = dict(rules)
    if advice.rename is not None:
        options["rename"] = list(advice.rename)
    if advice.skip:
        options["skip"] = list(advice.skip)
    if advice.on_mismatch is not None:
        options["on_mismatch"] = advice.on_mismatch
    if advice.strict is not None:
        options["strict"] = advice.strict
    if advice.init_missing:
        options["init_missing"] = True
    return plan_for(ckpt, model, **options)


def loaded(plan: Plan) -> set[str]:
    return {a.target for a in plan.actions if a.kind in ("load", "tied") and a.target}


def test_a_plan_without_problems_gets_no_advice() -> None:
    advice = advise(plan_for(keys(vit()), vit()))
    assert advice == Advice() and not advice.changes


def test_a_mismatched_head_is_skipped_as_a_whole_and_the_rest_loads() -> None:
    ckpt, model = keys(vit(classes=1000)), vit(classes=10)
    plan = plan_for(ckpt, model)
    advice = advise(plan)
    assert advice.skip == ("head.*",) and advice.new_skips == ("head.*",)
    assert (advice.rename, advice.on_mismatch, advice.strict, advice.init_missing) == (None, None, None, 0)
    assert advice.hints == [] and advice.changes
    fixed = follow(ckpt, model, advice)
    assert fixed.ok and loaded(fixed) == loaded(plan) and "head.weight" not in loaded(fixed)


def test_missing_layer_scales_fold_into_one_glob_and_a_missing_subtree_collapses() -> None:
    model = vit(depth=12, layer_scale=True) + [(f"decoder.layers.{i}.w", (8,), "float32") for i in range(4)]
    ckpt = keys(vit(depth=12))
    advice = advise(plan_for(ckpt, model))
    assert advice.skip == ("blocks.*.ls1.*", "decoder.*")
    assert follow(ckpt, model, advice).ok


def test_skips_the_caller_passed_and_that_matched_are_kept_first() -> None:
    model = [*vit(classes=10), ("aux.w", (2,), "float32")]
    ckpt = keys(vit(classes=1000))
    plan = plan_for(ckpt, model, skip=["aux.*", "nothing.*"])
    advice = advise(plan)
    assert advice.skip == ("aux.*", "head.*") and advice.new_skips == ("head.*",)  # the unmatched one is dropped
    assert follow(ckpt, model, advice).ok


def test_more_mismatched_modules_than_patterns_advise_on_mismatch_skip() -> None:
    model = [(f"m{i}.weight", (2,), "float32") for i in range(SKIP_PATTERNS + 4)] + [("fits", (2,), "float32")]
    ckpt = keys([(n, (3,), d) for n, _, d in model[:-1]] + [("fits", (2,), "float32")])
    advice = advise(plan_for(ckpt, model))
    assert advice.on_mismatch == "skip" and advice.mismatched == SKIP_PATTERNS + 4 and advice.skip == ()
    assert follow(ckpt, model, advice).ok


def test_unexpected_tensors_advise_strict_model_with_their_count() -> None:
    extra: list[Entry] = [("fc_norm.weight", (8,), "float32"), ("fc_norm.bias", (8,), "float32")]
    ckpt = keys(vit() + extra)
    advice = advise(plan_for(ckpt, vit()))
    assert advice.strict == "model" and advice.unexpected == 2 and advice.skip == ()
    assert follow(ckpt, vit(), advice).ok


def test_missing_keys_under_a_forced_prefix_get_evidence_not_a_skip() -> None:
    ckpt = keys(vit(), prefix="net.")
    advice = advise(plan_for(ckpt, vit(), prefix=None))
    assert advice.hints == [Hint(HintKind.STRIP_PREFIX, count=len(vit()), name="net.")]
    assert not advice.changes  # skipping every key would load nothing: align the names first


def test_missing_keys_in_another_container_name_it() -> None:
    ckpt = keys(vit()[:2], "model") + keys(vit(), "ema")
    advice = advise(plan_for(ckpt, vit(), container="model"))
    other = [h for h in advice.hints if h.kind is HintKind.OTHER_CONTAINER]
    assert other == [Hint(HintKind.OTHER_CONTAINER, count=len(vit()) - 2, name="ema", option="ema", current="model")]
    assert plan_for(ckpt, vit(), container=other[0].option).ok


def test_every_tensor_with_another_shape_is_a_hint_about_the_configuration() -> None:
    advice = advise(plan_for(keys(vit(dim=16, classes=20)), vit(dim=8)))
    assert advice.hints == [Hint(HintKind.ALL_MISMATCHED, count=len(vit()))] and not advice.changes


def test_a_checkpoint_without_tensors_says_so() -> None:
    advice = advise(plan_for([], vit()))
    assert [h.kind for h in advice.hints] == [HintKind.NO_TENSORS] and not advice.changes


def test_a_rename_that_pairs_missing_and_unexpected_keys_comes_first() -> None:
    ckpt = keys([(n.replace("head.", "fc."), s, d) for n, s, d in vit()] + [("extra.w", (3,), "float32")])
    plan = plan_for(ckpt, vit(), prefix=None)
    advice = advise(plan)
    assert plan.suggestion is not None
    assert advice.rename == (("^fc\\.", "head."),)
    assert advice.hints[0] == Hint(HintKind.RENAME, count=2, pairs=(("^fc\\.", "head."),))
    assert advice.strict == "model" and advice.unexpected == 1  # what the renamed plan still needs
    fixed = follow(ckpt, vit(), advice, prefix=None)
    assert fixed.ok and {"head.weight", "head.bias"} <= loaded(fixed)


@pytest.mark.parametrize(
    ("names", "universe", "expected"),
    [
        (["head.weight"], ["head.weight", "head.fc.weight"], ["head.weight"]),  # head.* would catch head.fc too
        (["a[0].weight"], ["a[0].weight", "a0.weight"], ["a[[]0].*"]),  # glob characters escaped
        ([f"b.{i}.x.w" for i in range(3)], [f"b.{i}.{m}.w" for i in range(3) for m in "xy"], ["b.*.x.*"]),
        ([f"b.{i}.x.w" for i in (0, 2)], [f"b.{i}.x.w" for i in range(3)], ["b.0.*", "b.2.*"]),
    ],
)
def test_skip_patterns_catch_the_keys_and_only_their_modules(
    names: list[str], universe: list[str], expected: list[str]
) -> None:
    assert skip_patterns(names, universe) == expected


def test_prefix_evidence_needs_half_of_the_missing_keys() -> None:
    missing = ["a.w", "b.w", "c.w"]
    assert prefix_evidence(missing, ["net.a.w", "net.b.w"]) == (("net.", 2), None)
    assert prefix_evidence(missing, ["net.a.w"]) == (None, None)
    assert prefix_evidence(["m.a.w", "m.b.w"], ["a.w", "b.w"]) == (None, ("m.", 2))
