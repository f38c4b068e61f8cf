"""The planner on plain (name, shape, dtype) tuples: one or more tests per rule of reconciliation.

Checkpoints are built as nested dicts whose leaves are shapes (or ``(shape, dtype)`` pairs) and turned into
:class:`~torchweights.plan.sources.SourceKey` items, the way a reader names them (``path`` = the dict keys leading
to the tensor, ``record`` = those keys joined by dots). Models are :meth:`ModelSpec.from_tuples`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from torchweights.errors import RuleError
from torchweights.plan.model import KINDS, Action, Plan
from torchweights.plan.prefix import renames_module
from torchweights.plan.reconcile import reconcile
from torchweights.plan.rules import Rules, matches_any
from torchweights.plan.sources import SourceKey
from torchweights.plan.spec import ModelSpec

F32 = "float32"


def ckpt(tree: dict[str, Any], path: tuple[str, ...] = ()) -> list[SourceKey]:
    """SourceKeys for a nested dict; a leaf is a shape, or a ``(shape, dtype)`` pair."""
    out: list[SourceKey] = []
    for name, value in tree.items():
        here = (*path, name)
        if isinstance(value, dict):
            out += ckpt(value, here)
        else:
            shape, dtype = value if len(value) == 2 and isinstance(value[0], tuple) else (value, F32)
            out.append(SourceKey(".".join(here), here, tuple(shape), dtype))
    return out


def model(*items: tuple[Any, ...], **kwargs: Any) -> ModelSpec:
    return ModelSpec.from_tuples(items, **kwargs)


def state(spec: ModelSpec, prefix: str = "") -> dict[str, Any]:
    """The model's own state dict as a checkpoint tree (same shapes and dtypes), optionally prefixed."""
    return {prefix + name: (entry.shape, entry.dtype) for name, entry in spec.entries.items()}


def kinds(plan: Plan) -> dict[str, str]:
    """Model key (or, for keys without a target, record name) -> action kind."""
    return {(a.target or a.source or ""): a.kind for a in plan.actions}


def assert_accounted(plan: Plan, spec: ModelSpec, keys: list[SourceKey]) -> None:
    """Every model key is the target of exactly one action; every record the source of exactly one."""
    targets = Counter(a.target for a in plan.actions if a.target is not None)
    assert targets == Counter(list(spec.entries)), targets
    sources = Counter(a.source for a in plan.actions if a.source is not None)
    assert sources == Counter(k.record for k in keys)
    assert all(a.kind in KINDS for a in plan.actions)


NET = model(
    ("encoder.conv.weight", (8, 3, 3, 3), F32),
    ("encoder.conv.bias", (8,), F32),
    ("encoder.bn.weight", (8,), F32),
    ("encoder.bn.bias", (8,), F32),
    ("encoder.bn.running_mean", (8,), F32),
    ("encoder.bn.running_var", (8,), F32),
    ("encoder.bn.num_batches_tracked", (), "int64"),
    ("head.weight", (10, 8), F32),
    ("head.bias", (10,), F32),
)


def optimizer_state(spec: ModelSpec, moments: tuple[str, ...] = ("exp_avg", "exp_avg_sq")) -> dict[str, Any]:
    """torch.optim layout: state keyed by parameter index, each with its moments (more tensors than the model)."""
    params = [e for e in spec.entries.values() if e.dtype == F32]
    return {"state": {str(i): {m: e.shape for m in moments} | {"step": ()} for i, e in enumerate(params)}}


# --------------------------------------------------------------------------------------------------------------
# 2. Container
# --------------------------------------------------------------------------------------------------------------


def test_lightning_like_checkpoint_takes_state_dict_and_ignores_the_rest() -> None:
    keys = ckpt({"state_dict": state(NET), "optimizer_states": {"0": optimizer_state(NET)}, "lr": ((), F32)})
    plan = reconcile(keys, NET)
    assert plan.ok
    assert plan.container.path == ("state_dict",) and plan.container.name == "state_dict"
    assert "'state_dict' matches 9 of its 9 keys" in plan.container.reason
    assert plan.counts()["load"] == 9
    assert {a.source for a in plan.by_kind("ignored")} == {k.record for k in keys if k.path[0] != "state_dict"}
    assert all("outside the chosen container 'state_dict'" in a.reason for a in plan.by_kind("ignored"))
    assert_accounted(plan, NET, keys)


@pytest.mark.parametrize("name", ["state_dict", "model", "model_state_dict", "module", "net", "params", "weights"])
def test_usual_container_names(name: str) -> None:
    keys = ckpt({name: state(NET), "epoch_tensor": ((), "int64")})
    plan = reconcile(keys, NET)
    assert plan.container.path == (name,) and plan.ok


def test_optimizer_with_more_tensors_than_the_model_does_not_win() -> None:
    opt = optimizer_state(NET)
    keys = ckpt({"optimizer": opt, "model": state(NET)})
    assert sum(1 for k in keys if k.path[0] == "optimizer") > 2 * len(NET)
    plan = reconcile(keys, NET)
    assert plan.container.path == ("model",) and plan.ok
    assert plan.container.runner_up is None  # nothing else matches anything


def test_optimizer_moments_keyed_like_the_model_lose_the_tie() -> None:
    # Some optimizers keep one dict of moments per kind, keyed by parameter name: an exact name and shape fit.
    moments = {m: {n: e.shape for n, e in NET.entries.items()} for m in ("exp_avg", "exp_avg_sq")}
    for layout in ({"optimizer": moments, "model": state(NET)}, {"model": state(NET), "optimizer": moments}):
        plan = reconcile(ckpt(layout), NET)
        assert plan.container.path == ("model",)
        assert plan.container.runner_up is not None and plan.container.runner_up[0] == "optimizer"


def test_root_when_the_file_is_the_state_dict() -> None:
    keys = ckpt(state(NET))
    plan = reconcile(keys, NET)
    assert plan.container.path == () and plan.container.name == ""
    assert "'<root>' matches 9" in plan.container.reason
    assert plan.ok and not plan.by_kind("ignored")


def test_full_pickled_module_named_per_submodule() -> None:
    # A pickled nn.Module is walked module by module: each submodule is one level of the path.
    tree: dict[str, Any] = {}
    for name, entry in NET.entries.items():
        node = tree.setdefault("model", {})
        *mods, leaf = name.split(".")
        for mod in mods:
            node = node.setdefault(mod, {})
        node[leaf] = (entry.shape, entry.dtype)
    keys = ckpt({**tree, "epoch": ((), "int64")})
    plan = reconcile(keys, NET)
    assert plan.container.path == ("model",) and plan.prefix.evidence == "no prefix change" and plan.ok
    assert_accounted(plan, NET, keys)


def test_same_tensors_nested_deeper_prefer_the_deepest_dict() -> None:
    plan = reconcile(ckpt({"checkpoint": {"state_dict": state(NET)}}), NET)
    assert plan.container.path == ("checkpoint", "state_dict")
    assert plan.prefix.strip == plan.prefix.add == ""


@pytest.mark.parametrize("ema", ["ema", "model_ema", "state_dict_ema", "ema_model"])
@pytest.mark.parametrize("ema_first", [True, False])
def test_equal_fit_prefers_the_non_ema_copy(ema: str, ema_first: bool) -> None:
    parts = [(ema, state(NET)), ("model", state(NET))]
    keys = ckpt(dict(parts if ema_first else parts[::-1]))
    plan = reconcile(keys, NET)
    assert plan.container.path == ("model",)
    assert plan.container.runner_up == (ema,) and plan.container.runner_up_matched == len(NET)
    assert f"runner-up {ema!r}" in plan.container.reason


def test_equal_fit_non_ema_wins_even_when_the_ema_dict_is_smaller() -> None:
    live = state(NET) | {"extra.buffer": (3,)}
    plan = reconcile(ckpt({"model_ema": state(NET), "model": live}), NET, Rules.make(strict="model"))
    assert plan.container.path == ("model",)


def test_ema_wins_only_when_strictly_better() -> None:
    partial = {k: v for k, v in state(NET).items() if not k.startswith("head.")}
    plan = reconcile(ckpt({"model": partial, "ema": state(NET)}), NET)
    assert plan.container.path == ("ema",)
    assert "EMA copy" in plan.container.reason and plan.ok


def test_flat_file_with_model_and_ema_prefixes_takes_the_model() -> None:
    flat = {f"model.{k}": v for k, v in state(NET).items()} | {f"ema.{k}": v for k, v in state(NET).items()}
    keys = [SourceKey(name, (name,), shape, dtype) for name, (shape, dtype) in flat.items()]
    plan = reconcile(keys, NET, Rules.make(strict="model"))
    assert plan.container.path == () and plan.prefix.strip == "model."
    loads = plan.by_kind("load")
    assert len(loads) == len(NET) and all(a.source and a.source.startswith("model.") for a in loads)
    assert len(plan.by_kind("unexpected")) == len(NET)


@pytest.mark.parametrize("container", ["ema", "ema.", "train.ema"])
def test_container_can_be_forced(container: str) -> None:
    other = {k: ((s[0] + 1, *s[1:]) if s else s, d) for k, (s, d) in state(NET).items()}  # fits worse
    tree = {"model": state(NET), "ema": other, "train": {"ema": other}}
    plan = reconcile(ckpt(tree), NET, Rules.make(container=container))
    assert plan.container.name == container.strip(".")
    assert "as requested" in plan.container.reason and plan.container.runner_up is None
    assert not plan.ok and plan.by_kind("mismatch")


def test_container_forced_by_dotted_prefix_of_flat_names() -> None:
    flat = {f"model.{k}": v for k, v in state(NET).items()} | {f"ema.{k}": v for k, v in state(NET).items()}
    keys = [SourceKey(name, (name,), shape, dtype) for name, (shape, dtype) in flat.items()]
    plan = reconcile(keys, NET, Rules.make(container="ema"))
    assert plan.ok and all(a.source and a.source.startswith("ema.") for a in plan.by_kind("load"))
    assert len(plan.by_kind("ignored")) == len(NET)


def test_root_container_can_be_forced() -> None:
    keys = ckpt({"model": state(NET)})
    plan = reconcile(keys, NET, Rules.make(container="", prefix=None))
    assert plan.container.path == () and len(plan.by_kind("missing")) == len(NET)  # the counter too


def test_unknown_container_lists_the_candidates() -> None:
    keys = ckpt({"model": state(NET), "optimizer": optimizer_state(NET)})
    with pytest.raises(RuleError) as info:
        reconcile(keys, NET, Rules.make(container="ema"))
    assert info.value.code == "bad-container"
    message = info.value.message
    assert "container='ema'" in message and "'model' (9 tensors)" in message and "'optimizer'" in message
    assert "'<root>'" in message


def test_forced_container_on_an_empty_checkpoint_is_an_error() -> None:
    with pytest.raises(RuleError):
        reconcile([], NET, Rules.make(container="model"))


# --------------------------------------------------------------------------------------------------------------
# 3. Prefixes
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", ["module.", "_orig_mod.", "_orig_mod.module.", "model.", "net.", "base_model.model.", "my_wrapper.x."]
)
def test_prefix_is_stripped(prefix: str) -> None:
    keys = ckpt({"state_dict": state(NET, prefix)})
    plan = reconcile(keys, NET)
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == (prefix, "")
    assert plan.prefix.evidence == f"stripped {prefix!r} on 9/9 keys; 0 collisions"
    assert all(a.renamed and a.via == ("prefix",) for a in plan.by_kind("load"))
    assert plan.prefix.evidence in plan.applied


def test_deep_common_prefix_is_stripped() -> None:
    prefix = "a.b.c.d.e."
    plan = reconcile(ckpt(state(NET, prefix)), NET)
    assert plan.ok and plan.prefix.strip == prefix


@pytest.mark.parametrize("prefix", ["model.", "backbone.", "module.", "encoder.body."])
def test_prefix_is_added(prefix: str) -> None:
    wrapped = ModelSpec.from_tuples((prefix + n, e.shape, e.dtype) for n, e in NET.entries.items())
    plan = reconcile(ckpt(state(NET)), wrapped)
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == ("", prefix)
    assert plan.prefix.evidence == f"added {prefix!r} on 9/9 keys; 0 collisions"


def test_prefix_is_replaced() -> None:
    backbone = ModelSpec.from_tuples(("backbone." + n, e.shape, e.dtype) for n, e in NET.entries.items())
    plan = reconcile(ckpt(state(NET, "model.")), backbone)
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == ("model.", "backbone.")
    assert plan.prefix.evidence == "stripped 'model.' and added 'backbone.' on 9/9 keys; 0 collisions"


def test_partial_prefix_is_stripped_where_present() -> None:
    tree = state(NET)
    tree = {(f"module.{k}" if i % 2 else k): v for i, (k, v) in enumerate(tree.items())}
    plan = reconcile(ckpt(tree), NET)
    assert plan.ok and plan.prefix.strip == "module."
    assert plan.prefix.changed == 4 and plan.prefix.total == 9
    via = {a.target: a.via for a in plan.by_kind("load")}
    assert via["encoder.conv.bias"] == ("prefix",) and via["encoder.conv.weight"] == ()


def test_partial_prefix_on_a_model_side_subtree() -> None:
    # The checkpoint of a bare encoder, loaded into a model whose encoder lives under 'encoder.'.
    enc = {k.removeprefix("encoder."): v for k, v in state(NET).items() if k.startswith("encoder.")}
    plan = reconcile(ckpt(enc), NET, Rules.make(strict="model"))
    assert plan.prefix.add == "encoder." and plan.prefix.strip == ""
    assert {a.target for a in plan.by_kind("missing")} == {"head.weight", "head.bias"}


def test_a_transform_that_would_collide_is_refused() -> None:
    spec = ModelSpec.from_tuples((f"layer{i}.w", (2,), F32) for i in range(8))
    # Stripping 'module.' would match every key exactly, but each would land on a stale copy kept at the root.
    keys = ckpt({f"module.layer{i}.w": (2,) for i in range(8)} | {f"layer{i}.w": (3,) for i in range(8)})
    plan = reconcile(keys, spec, Rules.make(strict=False))
    assert plan.prefix.evidence == "no prefix change"
    assert plan.counts()["mismatch"] == 8 and plan.counts()["unexpected"] == 8
    assert_accounted(plan, spec, keys)


def test_a_narrower_transform_avoids_the_collision() -> None:
    spec = model(("a.w", (2,), F32), ("a.v", (2,), F32), ("b.w", (3,), F32))
    # 'module.' would collide on 'b.w'; 'module.a.' -> 'a.' fixes 'a.*' and leaves 'b.w' alone.
    keys = ckpt({"module.a.w": (2,), "module.a.v": (2,), "module.b.w": (3,), "b.w": (3,)})
    plan = reconcile(keys, spec, Rules.make(strict="model"))
    assert (plan.prefix.strip, plan.prefix.add) == ("module.a.", "a.") and plan.prefix.collisions == 0
    assert plan.ok and kinds(plan)["module.b.w"] == "unexpected"


def test_a_prefix_of_a_single_key_is_no_evidence() -> None:
    # Replacing 'extra.' by 'dec.' would match one more key exactly, but that is a rename, not a wrapper prefix.
    spec = model(("enc.weight", (), F32), ("enc.bias", (), F32), ("dec.weight", (), F32))
    plan = reconcile(ckpt({"enc.weight": (), "extra.weight": ()}), spec, Rules.make(strict=False))
    assert plan.prefix.evidence == "no prefix change"
    assert kinds(plan)["extra.weight"] == "unexpected"


def test_a_swap_on_some_keys_is_a_rename_to_suggest_not_a_prefix() -> None:
    # The head renamed 'classifier' in the model: 'head.' -> 'classifier.' would match 2 more keys, but the other 7
    # keys load under their stored names, so the file uses the model's names: that swap renames a module.
    spec = ModelSpec.from_tuples((n.replace("head.", "classifier."), e.shape, e.dtype) for n, e in NET.entries.items())
    for prefix in ("", "module."):
        keys = ckpt(state(NET, prefix))
        plan = reconcile(keys, spec)
        assert (plan.prefix.strip, plan.prefix.add) == (prefix, ""), plan.prefix.evidence
        assert kinds(plan)["classifier.weight"] == "missing" and not plan.ok
        assert plan.suggestion is not None and plan.suggestion.rules.rename == ((r"^head\.", "classifier."),)
        assert plan.suggestion.ok
        assert_accounted(plan, spec, keys)


def test_a_swap_that_covers_every_matching_key_is_a_prefix() -> None:
    # Nothing matches as stored: every key needs the swap (a wrapper renamed), and 'extra.*' matches nothing.
    spec = ModelSpec.from_tuples(("backbone." + n, e.shape, e.dtype) for n, e in NET.entries.items())
    keys = ckpt(state(NET, "model.") | {"extra.scale": (3,)})
    plan = reconcile(keys, spec, Rules.make(strict="model"))
    assert (plan.prefix.strip, plan.prefix.add) == ("model.", "backbone.") and plan.ok


def test_removing_a_wrapper_level_inside_a_key_is_a_prefix() -> None:
    # torch.compile on the encoder only: 'encoder._orig_mod.' -> 'encoder.' moves nothing to another module.
    tree = {k.replace("encoder.", "encoder._orig_mod."): v for k, v in state(NET).items()}
    plan = reconcile(ckpt(tree), NET)
    assert (plan.prefix.strip, plan.prefix.add) == ("encoder._orig_mod.", "encoder.") and plan.ok


CNN_KEYS = {
    **{f"conv1.{k}": s for k, s in (("weight", (16, 3, 3, 3)), ("bias", (16,)))},
    **{f"bn1.{k}": (16,) for k in ("weight", "bias", "running_mean", "running_var")},
    "bn1.num_batches_tracked": ((), "int64"),
    "conv2.weight": (32, 16, 3, 3),
    **{f"bn2.{k}": (32,) for k in ("weight", "bias", "running_mean", "running_var")},
    "bn2.num_batches_tracked": ((), "int64"),
    "fc.weight": (10, 32),
    "fc.bias": (10,),
}
TINY_LM = model(
    ("position_ids", (16,), "int64"),
    ("emb.weight", (100, 32), F32),
    ("pos.weight", (16, 32), F32),
    *((f"{ln}.{leaf}", (32,), F32) for ln in ("ln1", "ln2", "lnf") for leaf in ("weight", "bias")),
    ("attn.in_proj_weight", (96, 32), F32),
    ("attn.in_proj_bias", (96,), F32),
    ("attn.out_proj.weight", (32, 32), F32),
    ("attn.out_proj.bias", (32,), F32),
    ("mlp.0.weight", (128, 32), F32),
    ("mlp.0.bias", (128,), F32),
    ("mlp.2.weight", (32, 128), F32),
    ("mlp.2.bias", (32,), F32),
    ("lm_head.weight", (100, 32), F32),
)


@pytest.mark.parametrize("wrapper", ["", "module.", "model."])
def test_an_unrelated_model_gets_no_prefix_change(wrapper: str) -> None:
    # A CNN's state dict into a language model: 'bn2.' -> 'ln1.' would match 2 keys with equal shapes (a BatchNorm's
    # weight and bias onto a LayerNorm's), but only leaf names are in common: nothing loads, as with torch.
    keys = ckpt({wrapper + k: v for k, v in CNN_KEYS.items()})
    plan = reconcile(keys, TINY_LM, Rules.make(strict=False))
    assert plan.prefix.evidence == "no prefix change"
    assert plan.counts()["load"] == 0 and plan.counts()["missing"] == len(TINY_LM.entries)
    assert plan.suggestion is None
    assert_accounted(plan, TINY_LM, keys)


def test_one_leaf_module_is_not_swapped_for_another() -> None:
    # The whole checkpoint is one Linear, the whole model another one under another name: a rename, not a wrapper.
    spec = model(("head.weight", (10, 8), F32), ("head.bias", (10,), F32))
    plan = reconcile(ckpt({"fc.weight": (10, 8), "fc.bias": (10,)}), spec)
    assert plan.prefix.evidence == "no prefix change" and not plan.ok
    assert plan.suggestion is not None and plan.suggestion.rules.rename == ((r"^fc\.", "head."),)


def test_a_checkpoint_of_one_module_into_that_module_nested() -> None:
    # Lightning's 'model.' around a bare Linear, and a bare Linear into nn.Sequential(Linear): wrappers, by the
    # whole checkpoint matching the whole model.
    linear = model(("weight", (10, 8), F32), ("bias", (10,), F32))
    plan = reconcile(ckpt({"model.weight": (10, 8), "model.bias": (10,)}), linear)
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == ("model.", "")
    nested = model(("0.weight", (10, 8), F32), ("0.bias", (10,), F32))
    plan = reconcile(ckpt({"weight": (10, 8), "bias": (10,)}), nested)
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == ("", "0.")


def test_a_leaf_module_is_not_taken_out_of_a_larger_checkpoint() -> None:
    # The CNN's 'bn2.' alone fits a bare BatchNorm exactly, but the model is not a part of the CNN by its names:
    # prefix='bn2.' asks for it.
    bn = model(*((leaf, (32,), F32) for leaf in ("weight", "bias", "running_mean", "running_var")))
    keys = ckpt(CNN_KEYS)
    plan = reconcile(keys, bn, Rules.make(strict=False))
    assert plan.prefix.evidence == "no prefix change" and plan.counts()["load"] == 0
    assert reconcile(keys, bn, Rules.make(strict="model", prefix="bn2.")).ok


def test_a_submodule_is_taken_out_of_a_larger_checkpoint() -> None:
    # The encoder of a full model's checkpoint into a bare encoder: its keys' module paths match, not just leaves.
    enc = model(*((k.removeprefix("encoder."), e.shape, e.dtype) for k, e in NET.entries.items() if "encoder." in k))
    plan = reconcile(ckpt(state(NET)), enc, Rules.make(strict="model"))
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == ("encoder.", "")


@pytest.mark.parametrize(
    ("strip", "add", "kept", "renames"),
    [
        ("head.", "classifier.", 11, True),
        ("head.", "classifier.", 0, False),
        ("model.", "", 3, False),
        ("", "model.", 0, False),
        ("module.a.", "a.", 1, False),
        ("a._orig_mod.module.", "a.", 1, False),
        ("a.module.", "b.", 1, True),
        ("a.", "a.b.", 1, True),
    ],
)
def test_renames_module(strip: str, add: str, kept: int, renames: bool) -> None:
    assert renames_module(strip, add, kept) is renames


def test_skip_in_the_checkpoint_names_and_skips_that_match_nothing() -> None:
    keys = ckpt(state(NET, "module."))
    plan = reconcile(keys, NET, Rules.make(skip=["module.head.*", "nothing.*", "encoder.bn.*"]))
    assert plan.prefix.strip == "module."
    assert {a.target for a in plan.by_kind("skip")} == {
        "head.weight",
        "head.bias",
        *[f"encoder.bn.{x}" for x in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")],
    }
    assert [(u.pattern, u.matched, u.names) for u in plan.skips] == [
        ("module.head.*", 2, "checkpoint"),
        ("nothing.*", 0, "none"),
        ("encoder.bn.*", 5, "model"),
    ]
    assert "skip 'module.head.*' matched 2 keys (in the checkpoint's names)" in plan.applied
    assert "skip 'nothing.*' matched 0 keys" in plan.applied
    # A pattern that matches a model key applies to the model's names only: 'head.*' here does not also skip the
    # checkpoint's 'head.*' that loads into 'classifier.*' through an explicit rename.
    spec = ModelSpec.from_tuples((n.replace("head.", "classifier."), e.shape, e.dtype) for n, e in NET.entries.items())
    plan = reconcile(ckpt(state(NET)), spec, Rules.make(rename={r"^head\.": "classifier."}, skip=["classifier.*"]))
    assert {a.target for a in plan.by_kind("skip")} == {"classifier.weight", "classifier.bias"}
    plan = reconcile(ckpt(state(NET)), spec, Rules.make(rename={r"^head\.": "classifier."}, skip=["head.*"]))
    assert {a.target for a in plan.by_kind("skip")} == {"classifier.weight", "classifier.bias"}
    assert plan.skips[0].names == "checkpoint"


def test_collisions_are_counted_for_an_explicit_prefix() -> None:
    spec = model(("w", (2,), F32))
    keys = ckpt({"module.w": (2,), "w": (2,)})
    plan = reconcile(keys, spec, Rules.make(prefix="module."))
    assert plan.prefix.collisions == 1 and plan.prefix.evidence == "stripped 'module.' on 1/2 keys; 1 collisions"
    # The first key that lands on a name takes it; the other is reported, not dropped.
    assert [(a.kind, a.source) for a in plan.actions] == [("load", "module.w"), ("unexpected", "w")]
    assert_accounted(plan, spec, keys)


def test_no_prefix_change_when_names_already_match() -> None:
    spec = model(("module.w", (2,), F32), ("w", (2,), F32))  # a model whose keys look like a wrapper's
    plan = reconcile(ckpt({"module.w": (2,), "w": (2,)}), spec)
    assert plan.ok and plan.prefix.evidence == "no prefix change"


def test_exact_matches_beat_name_matches() -> None:
    spec = model(("a.w", (2,), F32), ("module.a.w", (3,), F32))
    plan = reconcile(ckpt({"module.a.w": (2,)}), spec, Rules.make(strict="model"))
    # The identity matches 'module.a.w' by name only (shape (3,)); stripping matches 'a.w' exactly.
    assert plan.prefix.strip == "module." and kinds(plan)["a.w"] == "load"


def test_explicit_prefix_none_changes_nothing() -> None:
    keys = ckpt(state(NET, "module."))
    plan = reconcile(keys, NET, Rules.make(prefix=None))
    assert plan.prefix.evidence == "no prefix change"
    assert plan.counts()["load"] == 0 and len(plan.by_kind("unexpected")) == 9
    assert not plan.ok


@pytest.mark.parametrize(
    ("prefix", "stored", "spec_prefix", "strip", "add"),
    [
        ("module.", "module.", "", "module.", ""),
        ("+model.", "", "model.", "", "model."),
        ("a.->b.", "a.", "b.", "a.", "b."),
        ("a. -> b.", "a.", "b.", "a.", "b."),
    ],
)
def test_explicit_prefix(prefix: str, stored: str, spec_prefix: str, strip: str, add: str) -> None:
    spec = ModelSpec.from_tuples((spec_prefix + n, e.shape, e.dtype) for n, e in NET.entries.items())
    plan = reconcile(ckpt(state(NET, stored)), spec, Rules.make(prefix=prefix))
    assert plan.ok and (plan.prefix.strip, plan.prefix.add) == (strip, add)


def test_explicit_prefix_is_applied_even_when_auto_would_not() -> None:
    plan = reconcile(ckpt(state(NET)), NET, Rules.make(prefix="+model."))
    assert not plan.ok and len(plan.by_kind("missing")) == 9


# --------------------------------------------------------------------------------------------------------------
# 4. Renames
# --------------------------------------------------------------------------------------------------------------


def test_user_renames_apply_in_order_before_prefix_handling() -> None:
    stored = {k.replace("encoder.", "features."): v for k, v in state(NET, "").items()}
    stored = {f"module.{k}": v for k, v in stored.items()}
    rules = Rules.make(rename={r"^module\.features\.": "module.tmp.", r"\.tmp\.": ".encoder."})
    plan = reconcile(ckpt(stored), NET, rules)
    assert plan.ok and plan.prefix.strip == "module."
    conv = next(a for a in plan.actions if a.target == "encoder.conv.weight")
    assert conv.key == "module.features.conv.weight" and conv.via == ("rename", "prefix")
    assert plan.applied[:2] == (
        "rename '^module\\.features\\.' -> 'module.tmp.' matched 7 keys",
        "rename '\\.tmp\\.' -> '.encoder.' matched 7 keys",
    )
    assert [(u.matched, u.phase) for u in plan.renames] == [(7, "stored"), (7, "stored")]


def test_renames_as_a_list_of_pairs_keep_their_order() -> None:
    spec = model(("c", (1,), F32), ("x", (1,), F32))
    plan = reconcile(ckpt({"a": (1,), "x": (1,)}), spec, Rules.make(rename=[("a", "b"), ("b", "c")]))
    assert plan.ok
    plan = reconcile(ckpt({"a": (1,), "b": (1,)}), spec, Rules.make(rename=[("b", "x"), ("a", "b")]))
    # 'b' -> 'x' first, then 'a' -> 'b': the second rename's output is not renamed again
    assert not plan.ok and {a.key: a.target for a in plan.by_kind("load")} == {"b": "x"}


def test_a_rename_written_in_the_model_names_applies_after_prefix_handling() -> None:
    # The checkpoint's keys carry 'module.'; the rename is written without it, in the model's names.
    spec = model(("backbone.w", (3,), F32), ("head.weight", (10, 3), F32), ("head.bias", (10,), F32))
    stored = {"module.backbone.w": (3,), "module.fc.weight": (10, 3), "module.fc.bias": (10,)}
    plan = reconcile(ckpt(stored), spec, Rules.make(rename={r"^fc\.": "head."}))
    assert plan.ok, plan.problems
    assert plan.prefix.strip == "module."
    assert {a.key: a.target for a in plan.by_kind("load")}["module.fc.weight"] == "head.weight"
    (use,) = plan.renames
    assert (use.matched, use.phase) == (2, "model")
    assert "rename '^fc\\.' -> 'head.' matched 2 keys (in the names after prefix handling)" in plan.applied
    # the same rename written with the stored prefix applies to the stored keys
    plan = reconcile(ckpt(stored), spec, Rules.make(rename={r"^module\.fc\.": "module.head."}))
    assert plan.ok and [(u.matched, u.phase) for u in plan.renames] == [(2, "stored")]


def test_a_rename_that_matches_nothing_says_so() -> None:
    spec = model(("backbone.w", (3,), F32), ("head.weight", (10, 3), F32))
    stored = {"backbone.w": (3,), "fc.weight": (10, 3)}
    plan = reconcile(ckpt(stored), spec, Rules.make(rename={r"^classifier\.": "head."}))
    assert not plan.ok
    assert [(u.matched, u.phase) for u in plan.renames] == [(0, "none")]
    assert "rename '^classifier\\.' -> 'head.' matched 0 keys" in plan.applied


def test_rename_collision_is_an_error() -> None:
    keys = ckpt({"model": {"ln.gamma": (8,), "ln.weight": (8,)}})
    with pytest.raises(RuleError) as info:
        reconcile(keys, model(("ln.weight", (8,), F32)), Rules.make(rename={r"gamma$": "weight"}))
    assert info.value.code == "rename-collision"
    assert "'ln.gamma' and 'ln.weight' -> 'ln.weight'" in info.value.message


def test_rename_collision_in_a_container_not_taken_is_not_an_error() -> None:
    opt = {"exp_avg": {"x": (2,)}, "exp_avg_sq": {"x": (2,)}}
    spec = model(("w", (2,), F32))
    rules = Rules.make(rename={r"^exp_avg(_sq)?\.": ""})
    plan = reconcile(ckpt({"model": {"w": (2,)}, "optimizer": opt}), spec, rules)
    assert plan.container.path == ("model",) and plan.ok


@pytest.mark.parametrize("rename", [{"(": "x"}, {"a": r"\3"}, {"a": "\\q"}])
def test_bad_renames_are_rejected_up_front(rename: dict[str, str]) -> None:
    with pytest.raises(RuleError) as info:
        Rules.make(rename=rename)
    assert info.value.code == "bad-rename"


def test_rules_built_directly_still_compile_their_renames() -> None:
    rules = Rules(rename=(("^old", "new"),))
    plan = reconcile(ckpt({"old.w": (1,)}), model(("new.w", (1,), F32)), rules)
    assert plan.ok


@pytest.mark.parametrize(
    ("stored", "target"),
    [
        ("ln.gamma", "ln.weight"),
        ("ln.beta", "ln.bias"),
        ("gamma", "weight"),
        ("conv.weight_g", "conv.parametrizations.weight.original0"),
        ("conv.weight_v", "conv.parametrizations.weight.original1"),
        ("conv.parametrizations.weight.original0", "conv.weight_g"),
        ("conv.parametrizations.weight.original1", "conv.weight_v"),
        ("bn.moving_mean", "bn.running_mean"),
        ("bn.moving_variance", "bn.running_var"),
        ("bn.moving_var", "bn.running_var"),
    ],
)
def test_legacy_renames_turn_a_mismatch_into_a_match(stored: str, target: str) -> None:
    spec = model((target, (4,), F32), ("other", (2,), F32))
    plan = reconcile(ckpt({"module." + stored: (4,), "module.other": (2,)}), spec)
    assert plan.ok, plan.problems
    action = next(a for a in plan.actions if a.target == target)
    assert action.kind == "load" and action.key == "module." + stored
    assert action.via[0] == "prefix" and action.via[-1].startswith("legacy rename: ")
    assert any(line.startswith("legacy rename ") and line.endswith("on 1 keys") for line in plan.applied)


def test_legacy_renames_only_when_they_make_a_match() -> None:
    # The model uses the old name itself: nothing is renamed.
    plan = reconcile(ckpt({"ln.gamma": (4,)}), model(("ln.gamma", (4,), F32), ("ln.weight", (4,), F32)))
    assert kinds(plan) == {"ln.gamma": "load", "ln.weight": "missing"}
    # A rename that would land on a different shape is not made: the keys stay missing and unexpected.
    plan = reconcile(ckpt({"ln.gamma": (5,)}), model(("ln.weight", (4,), F32)))
    assert kinds(plan) == {"ln.weight": "missing", "ln.gamma": "unexpected"}
    # A key that already has its source is not taken over.
    plan = reconcile(ckpt({"ln.weight": (4,), "ln.gamma": (4,)}), model(("ln.weight", (4,), F32)))
    assert kinds(plan) == {"ln.weight": "load", "ln.gamma": "unexpected"}
    assert plan.by_kind("load")[0].key == "ln.weight"


def test_legacy_renames_can_be_turned_off() -> None:
    plan = reconcile(ckpt({"ln.gamma": (4,)}), model(("ln.weight", (4,), F32)), Rules.make(legacy_renames=False))
    assert kinds(plan) == {"ln.weight": "missing", "ln.gamma": "unexpected"}


@pytest.mark.parametrize(("stored", "wanted"), [((), (1,)), ((1,), ()), ((1, 1), ()), ((), (1, 1))])
def test_scalars_are_reshaped(stored: tuple[int, ...], wanted: tuple[int, ...]) -> None:
    plan = reconcile(ckpt({"temp": stored}), model(("temp", wanted, F32)))
    (action,) = plan.actions
    assert action.kind == "load" and action.via == ("reshape",)
    assert (action.src_shape, action.dst_shape) == (stored, wanted)


def test_scalar_reshape_also_after_a_legacy_rename() -> None:
    plan = reconcile(ckpt({"ln.gamma": ()}), model(("ln.weight", (1,), F32)))
    (action,) = plan.actions
    assert action.kind == "load" and action.via[-1] == "reshape"


def test_non_scalar_shapes_are_not_reshaped() -> None:
    plan = reconcile(ckpt({"w": (2,)}), model(("w", (2, 1), F32)))
    assert kinds(plan) == {"w": "mismatch"}


def test_missing_num_batches_tracked_is_a_default_not_a_problem() -> None:
    stored = {k: v for k, v in state(NET).items() if not k.endswith("num_batches_tracked")}
    plan = reconcile(ckpt(stored), NET)
    assert plan.ok
    (action,) = plan.by_kind("default")
    assert action.target == "encoder.bn.num_batches_tracked" and action.source is None
    assert "0.4.1" in action.reason


def test_num_batches_tracked_stored_as_float_is_cast() -> None:
    stored = state(NET) | {"encoder.bn.num_batches_tracked": ((), F32)}
    for dtype in ("model", "checkpoint"):
        plan = reconcile(ckpt(stored), NET, Rules.make(dtype=dtype))
        action = next(a for a in plan.actions if a.target == "encoder.bn.num_batches_tracked")
        assert action.kind == "load" and action.cast
        assert (action.src_dtype, action.dst_dtype) == ("float32", "int64")


def test_num_batches_tracked_like_names_are_not_defaults() -> None:
    plan = reconcile([], model(("my_num_batches_tracked", (), "int64")))
    assert kinds(plan) == {"my_num_batches_tracked": "missing"}


# --------------------------------------------------------------------------------------------------------------
# 5. Shapes
# --------------------------------------------------------------------------------------------------------------


def _imagenet_head() -> dict[str, Any]:
    return state(NET) | {"head.weight": (1000, 8), "head.bias": (1000,)}


def test_shape_mismatch_is_an_error_listing_every_key_with_both_shapes() -> None:
    plan = reconcile(ckpt({"model": _imagenet_head()}), NET)
    assert not plan.ok
    problems = {a.target: (a.src_shape, a.dst_shape) for a in plan.problems}
    assert problems == {"head.weight": ((1000, 8), (10, 8)), "head.bias": ((1000,), (10,))}
    assert all(a.kind == "mismatch" and a.source for a in plan.problems)
    assert plan.counts()["load"] == 7


@pytest.mark.parametrize("pattern", ["head.*", "head", "head.", "*.bias"])
def test_skip_leaves_parameters_as_initialised(pattern: str) -> None:
    keys = ckpt({"model": _imagenet_head()})
    plan = reconcile(keys, NET, Rules.make(skip=[pattern] if pattern != "*.bias" else ["head.weight", pattern]))
    assert plan.ok
    skipped = {a.target for a in plan.by_kind("skip")}
    assert {"head.weight", "head.bias"} <= skipped
    assert all(a.reason.startswith("skip=") for a in plan.by_kind("skip"))
    assert_accounted(plan, NET, keys)


def test_skip_a_model_key_absent_from_the_checkpoint() -> None:
    stored = {k: v for k, v in state(NET).items() if not k.startswith("head.")}
    plan = reconcile(ckpt(stored), NET, Rules.make(skip="head.*"))
    assert plan.ok and {a.target for a in plan.by_kind("skip")} == {"head.weight", "head.bias"}
    assert all(a.source is None and "kept as initialised" in a.reason for a in plan.by_kind("skip"))


def test_skip_checkpoint_only_keys() -> None:
    stored = state(NET, "module.") | {"module.aux.weight": (3,)}
    plan = reconcile(ckpt(stored), NET, Rules.make(skip=["aux.*"]))
    assert plan.ok  # the extra key is skipped on request, not unexpected
    (action,) = plan.by_kind("skip")
    assert action.source == "module.aux.weight" and action.target is None


def test_on_mismatch_skip_skips_every_mismatch() -> None:
    keys = ckpt({"model": _imagenet_head()})
    plan = reconcile(keys, NET, Rules.make(on_mismatch="skip"))
    assert plan.ok
    skipped = plan.by_kind("skip")
    assert {a.target for a in skipped} == {"head.weight", "head.bias"}
    assert all("on_mismatch='skip'" in a.reason and a.src_shape != a.dst_shape for a in skipped)


def test_rules_validate_their_values() -> None:
    for kwargs in ({"strict": "sometimes"}, {"on_mismatch": "warn"}, {"dtype": "float16"}, {"container": 3}):
        with pytest.raises(RuleError):
            Rules.make(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(RuleError):
        Rules.make(prefix=3)  # type: ignore[arg-type]
    with pytest.raises(RuleError):
        Rules.make(skip=[3])  # type: ignore[list-item]


def test_matches_any() -> None:
    assert matches_any("head.weight", ["head.*"]) == "head.*"
    assert matches_any("head.weight", ["head"]) == "head"
    assert matches_any("header.weight", ["head"]) is None
    assert matches_any("x", []) is None


# --------------------------------------------------------------------------------------------------------------
# 6. dtypes
# --------------------------------------------------------------------------------------------------------------


def test_default_casts_to_the_model_dtype() -> None:
    stored = {k: (s, "float16" if d == F32 else d) for k, (s, d) in state(NET).items()}
    plan = reconcile(ckpt(stored), NET)
    casts = [a for a in plan.by_kind("load") if a.cast]
    assert len(casts) == 8 and all((a.src_dtype, a.dst_dtype) == ("float16", F32) for a in casts)
    counter = next(a for a in plan.actions if a.target == "encoder.bn.num_batches_tracked")
    assert not counter.cast and counter.dst_dtype == "int64"


def test_dtype_checkpoint_keeps_the_checkpoint_dtype() -> None:
    stored = {k: (s, "bfloat16" if d == F32 else d) for k, (s, d) in state(NET).items()}
    plan = reconcile(ckpt(stored), NET, Rules.make(dtype="checkpoint"))
    assert plan.ok and not any(a.cast for a in plan.actions)
    assert all(a.dst_dtype == a.src_dtype for a in plan.by_kind("load"))


# --------------------------------------------------------------------------------------------------------------
# 7. Model side: tied parameters, custom loaders
# --------------------------------------------------------------------------------------------------------------

LM = model(
    ("embed.weight", (50, 16), F32),
    ("block.weight", (16, 16), F32),
    ("lm_head.weight", (50, 16), F32, "parameter", "embed.weight"),
)


@pytest.mark.parametrize(
    "stored",
    [
        {"embed.weight": (50, 16), "block.weight": (16, 16), "lm_head.weight": (50, 16)},
        {"embed.weight": (50, 16), "block.weight": (16, 16)},
        {"block.weight": (16, 16), "lm_head.weight": (50, 16)},
    ],
    ids=["both", "first-only", "second-only"],
)
def test_tied_parameters_are_loaded_once(stored: dict[str, Any]) -> None:
    keys = ckpt(stored)
    plan = reconcile(keys, LM)
    assert plan.ok, plan.problems
    assert kinds(plan)["embed.weight"] == "load" and kinds(plan)["lm_head.weight"] == "tied"
    (tied,) = plan.by_kind("tied")
    assert tied.target == "lm_head.weight" and "'embed.weight'" in tied.reason
    loader = next(a for a in plan.actions if a.target == "embed.weight")
    # The shared storage is always filled through the first key; its source may be the other key's copy.
    assert loader.source == ("embed.weight" if "embed.weight" in stored else "lm_head.weight")
    assert (tied.source is not None) == (len(stored) == 3)
    assert_accounted(plan, LM, keys)


def test_tied_parameters_without_any_source_are_missing() -> None:
    plan = reconcile(ckpt({"block.weight": (16, 16)}), LM)
    assert kinds(plan) == {"embed.weight": "missing", "block.weight": "load", "lm_head.weight": "missing"}


def test_tied_parameter_with_a_mismatched_first_copy_loads_from_the_other() -> None:
    keys = ckpt({"embed.weight": (51, 16), "lm_head.weight": (50, 16), "block.weight": (16, 16)})
    plan = reconcile(keys, LM)
    by_target = {a.target: a for a in plan.actions if a.target}
    assert by_target["embed.weight"].kind == "load" and by_target["lm_head.weight"].kind == "tied"
    assert by_target["embed.weight"].source == "lm_head.weight"
    # The copy that does not fit is not read, and not hidden: strict=True refuses it.
    (stray,) = plan.problems
    assert stray.kind == "unexpected" and stray.source == "embed.weight" and "(51, 16)" in stray.reason
    assert reconcile(keys, LM, Rules.make(strict="model")).ok
    assert_accounted(plan, LM, keys)


def test_custom_modules_load_through_torch() -> None:
    spec = model(("a.w", (2,), F32), ("b.inner.w", (3,), F32), ("bb.w", (1,), F32), custom_modules=["b"])
    plan = reconcile(ckpt({"a.w": (2,), "b.inner.w": (3,), "bb.w": (1,)}), spec)
    assert {a.target: a.fallback for a in plan.actions} == {"a.w": False, "b.inner.w": True, "bb.w": False}


def test_custom_modules_get_the_same_shape_checks() -> None:
    # A module with custom loading (hooks, or a _load_from_state_dict override) is checked like any other: a
    # 131-vs-130 row mismatch is a mismatch in the plan, not a RuntimeError from torch halfway through the load.
    spec = model(("emb.weight", (130, 8), F32), ("t.weight", (3, 5), F32), custom_modules=["emb", "t"])
    plan = reconcile(ckpt({"emb.weight": (131, 8), "t.weight": (3, 5)}), spec)
    assert not plan.ok
    assert [(a.kind, a.target) for a in plan.problems] == [("mismatch", "emb.weight")]
    assert "own loading code" in plan.problems[0].reason
    assert reconcile(ckpt({"emb.weight": (130, 8), "t.weight": (3, 5)}), spec).ok


def test_a_shape_the_module_was_seen_to_convert_loads_through_it() -> None:
    spec = model(("t.weight", (3, 5), F32), custom_modules=["t"])
    spec = replace(spec, converts=frozenset({("t.weight", (5, 3))}))
    plan = reconcile(ckpt({"t.weight": (5, 3)}), spec)
    (action,) = plan.actions
    assert plan.ok and action.kind == "load" and action.fallback and "converts" in action.reason
    assert not reconcile(ckpt({"t.weight": (5, 4)}), spec).ok  # only the shape it was seen to accept


def test_root_custom_module() -> None:
    spec = model(("w", (2,), F32), custom_modules=[""])
    assert all(a.fallback for a in reconcile(ckpt({"w": (2,)}), spec).actions)


# --------------------------------------------------------------------------------------------------------------
# 8. Strictness
# --------------------------------------------------------------------------------------------------------------


def _extra_and_missing() -> list[SourceKey]:
    stored = {k: v for k, v in state(NET).items() if k != "head.bias"} | {"aux.weight": (3,)}
    return ckpt({"model": stored, "optimizer": optimizer_state(NET)})


def test_strict_true_requires_every_key_and_nothing_unexpected() -> None:
    plan = reconcile(_extra_and_missing(), NET)
    assert not plan.ok
    assert {(a.kind, a.target or a.source) for a in plan.problems} == {
        ("missing", "head.bias"),
        ("unexpected", "model.aux.weight"),
    }
    only_extra = ckpt({"model": state(NET) | {"aux.weight": (3,)}})
    assert not reconcile(only_extra, NET).ok
    assert reconcile(only_extra, NET, Rules.make(strict="model")).ok


def test_strict_model_allows_and_reports_extra_keys() -> None:
    keys = _extra_and_missing()
    plan = reconcile(keys, NET, Rules.make(strict="model"))
    assert [(a.kind, a.target) for a in plan.problems] == [("missing", "head.bias")]
    (extra,) = plan.by_kind("unexpected")
    assert extra.source == "model.aux.weight" and extra.key == "aux.weight"
    assert_accounted(plan, NET, keys)


def test_strict_false_loads_what_fits_and_reports_the_rest() -> None:
    keys = ckpt({"model": _imagenet_head() | {"aux.weight": (3,)}})
    plan = reconcile(keys, NET, Rules.make(strict=False))
    assert plan.ok and plan.problems == []
    counts = plan.counts()
    assert counts["mismatch"] == 2 and counts["unexpected"] == 1 and counts["load"] == 7
    assert_accounted(plan, NET, keys)


def test_ignored_tensors_are_never_problems() -> None:
    keys = ckpt({"model": state(NET), "optimizer": optimizer_state(NET)})
    plan = reconcile(keys, NET)
    assert plan.ok and plan.counts()["ignored"] == sum(1 for k in keys if k.path[0] == "optimizer")


def test_every_action_has_a_reason_unless_it_is_a_plain_load() -> None:
    keys = _extra_and_missing()
    plan = reconcile(keys, NET, Rules.make(strict=False, skip=["encoder.bn.*"]))
    for action in plan.actions:
        assert action.kind == "load" or action.reason, action


# --------------------------------------------------------------------------------------------------------------
# Inputs, outputs and edge cases
# --------------------------------------------------------------------------------------------------------------


class _FakeTensor:
    def __init__(self, shape: tuple[int, ...], dtype: str = "torch.float32") -> None:
        self.shape = shape
        self.dtype = dtype


def test_plain_dict_input() -> None:
    flat = {name: _FakeTensor(e.shape, f"torch.{e.dtype}") for name, e in NET.entries.items()}
    plan = reconcile(flat, NET, source="sd")
    assert plan.ok and plan.source == "sd" and all(a.source == a.target for a in plan.by_kind("load"))


def test_nested_plain_dict_input_is_walked_and_non_tensors_are_left_out() -> None:
    flat = {name: _FakeTensor(e.shape, f"torch.{e.dtype}") for name, e in NET.entries.items()}
    plan = reconcile({"epoch": 3, "model": flat, "opt": {"lr": 0.1, "m": _FakeTensor((2,))}}, NET)
    assert plan.ok and plan.container.path == ("model",)
    assert plan.by_kind("load")[0].source == "model.encoder.conv.weight"
    assert [a.source for a in plan.by_kind("ignored")] == ["opt.m"]
    assert plan.source == "<state dict>"


def test_empty_checkpoint_everything_missing() -> None:
    plan = reconcile([], NET)
    assert plan.container.path == () and len(plan.by_kind("missing")) == 9 and not plan.by_kind("default")


def test_empty_model_everything_unexpected() -> None:
    keys = ckpt(state(NET))
    plan = reconcile(keys, ModelSpec())
    assert len(plan.by_kind("unexpected")) == 9 and not plan.ok
    assert reconcile(keys, ModelSpec(), Rules.make(strict="model")).ok


def test_two_tensors_with_the_same_dotted_name() -> None:
    # {"a.b": {"c": t1}, "a": {"b.c": t2}}: both are "a.b.c" at the root; both stay accounted for.
    keys = [SourceKey("a.b.c", ("a.b", "c"), (2,), F32), SourceKey("a.b.c#2", ("a", "b.c"), (2,), F32)]
    spec = model(("a.b.c", (2,), F32))
    plan = reconcile(keys, spec, Rules.make(container=""))
    assert kinds(plan) == {"a.b.c": "load", "a.b.c#2": "unexpected"}
    assert_accounted(plan, spec, keys)


def test_source_keys_without_a_path_use_their_record_name() -> None:
    plan = reconcile([SourceKey("w", (), (2,), F32)], model(("w", (2,), F32)))
    assert plan.ok


def test_plan_to_dict_and_counts() -> None:
    plan = reconcile(ckpt({"model": _imagenet_head()}), NET, Rules.make(skip=["head.bias"]))
    counts = plan.counts()
    assert list(counts) == list(KINDS) and sum(counts.values()) == len(plan.actions)
    data = plan.by_kind("mismatch")[0].to_dict()
    assert data["kind"] == "mismatch" and data["src_shape"] == [1000, 8] and data["dst_shape"] == [10, 8]
    assert Action("load", target="x", key="x").renamed is False


def test_plan_is_deterministic() -> None:
    keys = _extra_and_missing()
    assert reconcile(keys, NET) == reconcile(keys, NET)


def test_from_tuples() -> None:
    spec = model(("bn.running_mean", (2,), F32), ("w", (2,), F32), ("v", (2,), F32, "parameter", "w"))
    assert spec.entries["bn.running_mean"].kind == "buffer" and spec.entries["w"].kind == "parameter"
    assert spec.entries["v"].tied_to == "w" and spec.entries["bn.running_mean"].module == "bn"
    with pytest.raises(ValueError):
        model(("v", (2,), F32, "parameter", "nope"))
    with pytest.raises(ValueError):
        model(("v", (2,)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# ModelSpec.from_module
# --------------------------------------------------------------------------------------------------------------


def test_from_module_reads_buffers_ties_and_custom_loaders() -> None:
    import torch

    class Transposed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(3, 5))

        def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
            super()._load_from_state_dict(*args, **kwargs)

    class MyBN(torch.nn.BatchNorm1d):
        pass

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(5, 3)
            self.bn = MyBN(3)
            self.t = Transposed()
            self.head = torch.nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight
            self.register_buffer("cache", torch.zeros(2), persistent=False)

    net = Net()
    spec = ModelSpec.from_module(net)
    assert list(spec.entries) == list(net.state_dict())
    assert spec.entries["head.weight"].tied_to == "embed.weight"
    assert spec.entries["bn.num_batches_tracked"].kind == "buffer"
    assert spec.entries["bn.num_batches_tracked"].dtype == "int64"
    assert spec.custom_modules == ("t",)  # MyBN inherits torch's loader, which is fine to bypass
    assert spec.class_name == "Net" and not spec.on_meta

    with torch.device("meta"):
        meta = Net()
    meta_spec = ModelSpec.from_module(meta)
    assert meta_spec.on_meta and meta_spec.entries["head.weight"].tied_to == "embed.weight"

    plan = reconcile({k: v for k, v in net.state_dict().items() if k != "head.weight"}, spec)
    assert plan.ok and [a.target for a in plan.by_kind("tied")] == ["head.weight"]


def test_from_module_sees_load_state_dict_hooks() -> None:
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1]._register_load_state_dict_pre_hook(lambda *args, **kwargs: None)
    assert ModelSpec.from_module(net).custom_modules == ("1",)
