"""The load report's text and JSON: snapshots of ``render`` for typical loads, and the error message's advice.

Plans are built with :func:`torchweights.plan.reconcile.reconcile` over plain ``SourceKey`` tuples and ``ModelSpec``
entries,
so these tests need no torch. Snapshots live in ``tests/snapshots/report_<scenario>.txt``; after an intended change
of format, regenerate them with ``UPDATE_SNAPSHOTS=1 pytest tests/test_report.py`` and read the diff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from torchweights.dtypes import itemsize
from torchweights.errors import LoadError
from torchweights.plan.reconcile import reconcile
from torchweights.plan.rules import Rules
from torchweights.plan.sources import SourceKey
from torchweights.plan.spec import ModelEntry, ModelSpec
from torchweights.report.load import LoadReport
from torchweights.report.text import problem_summary, render

SNAPSHOTS = Path(__file__).parent / "snapshots"

Entry = tuple[str, tuple[int, ...], str]


def check_snapshot(name: str, text: str) -> None:
    """Compare ``text`` with ``snapshots/<name>.txt``; with ``UPDATE_SNAPSHOTS=1`` rewrite the file instead."""
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"no snapshot {path}; run with UPDATE_SNAPSHOTS=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} differs from its snapshot (UPDATE_SNAPSHOTS=1 rewrites it)"


# ------------------------------------------------------------------------------------------------ model and files


def vit(depth: int = 2, classes: int = 10, dim: int = 8, layer_scale: bool = False) -> list[Entry]:
    """A small ViT-shaped state dict: ``(name, shape, dtype)`` in ``state_dict()`` order."""
    entries: list[Entry] = [
        ("cls_token", (1, 1, dim), "float32"),
        ("pos_embed", (1, 5, dim), "float32"),
        ("patch_embed.proj.weight", (dim, 3, 4, 4), "float32"),
        ("patch_embed.proj.bias", (dim,), "float32"),
    ]
    for i in range(depth):
        b = f"blocks.{i}"
        entries += [
            (f"{b}.norm1.weight", (dim,), "float32"),
            (f"{b}.norm1.bias", (dim,), "float32"),
            (f"{b}.attn.qkv.weight", (3 * dim, dim), "float32"),
            (f"{b}.attn.qkv.bias", (3 * dim,), "float32"),
            (f"{b}.attn.proj.weight", (dim, dim), "float32"),
            (f"{b}.attn.proj.bias", (dim,), "float32"),
        ]
        if layer_scale:
            entries.append((f"{b}.ls1.gamma", (dim,), "float32"))
        entries += [
            (f"{b}.norm2.weight", (dim,), "float32"),
            (f"{b}.norm2.bias", (dim,), "float32"),
            (f"{b}.mlp.fc1.weight", (4 * dim, dim), "float32"),
            (f"{b}.mlp.fc1.bias", (4 * dim,), "float32"),
            (f"{b}.mlp.fc2.weight", (dim, 4 * dim), "float32"),
            (f"{b}.mlp.fc2.bias", (dim,), "float32"),
        ]
    entries += [
        ("norm.weight", (dim,), "float32"),
        ("norm.bias", (dim,), "float32"),
        ("head.weight", (classes, dim), "float32"),
        ("head.bias", (classes,), "float32"),
    ]
    return entries


def spec_of(entries: Iterable[Entry], class_name: str = "VisionTransformer") -> ModelSpec:
    return ModelSpec.from_tuples(entries, class_name=class_name)


def keys(entries: Iterable[Entry], container: str = "", prefix: str = "", dtype: str | None = None) -> list[SourceKey]:
    """Checkpoint keys for ``entries``: ``{container: {prefix + name: tensor}}`` (or the file's root)."""
    out = []
    for name, shape, entry_dtype in entries:
        key = prefix + name
        path = (container, key) if container else (key,)
        out.append(SourceKey(".".join(path), path, shape, dtype or entry_dtype))
    return out


def optimizer_keys(params: int) -> list[SourceKey]:
    out = []
    for i in range(params):
        for slot in ("exp_avg", "exp_avg_sq"):
            path = ("optimizer_states", "0", "state", str(i), slot)
            out.append(SourceKey(".".join(path), path, (8,), "float32"))
    return out


def report_for(
    ckpt: Sequence[SourceKey],
    spec: ModelSpec | Iterable[Entry],
    source: str = "runs/vit.ckpt",
    applied: bool = False,
    **rules: object,
) -> LoadReport:
    model = spec if isinstance(spec, ModelSpec) else spec_of(spec)
    plan = reconcile(ckpt, model, Rules.make(**rules), source=source)  # type: ignore[arg-type]
    report = LoadReport(plan, applied=applied, seconds=0.0)
    if applied:
        report.bytes_read = sum(4 * _numel(a.src_shape) for a in report.loaded)
    else:  # what load_into's dry run fills in: the bytes the load would read
        report.bytes_read = sum(_numel(a.src_shape) * itemsize(a.src_dtype or "float32") for a in report.loaded)
    return report


def _numel(shape: tuple[int, ...] | None) -> int:
    n = 1
    for d in shape or ():
        n *= d
    return n


# ------------------------------------------------------------------------------------------------ scenarios


def clean() -> LoadReport:
    return report_for(keys(vit()), vit(), source="vit_tiny.safetensors", applied=True)


def prefix_stripped() -> LoadReport:
    return report_for(keys(vit(), "state_dict", "_orig_mod.module."), vit(), source="runs/epoch=9.ckpt")


def head_mismatch() -> LoadReport:
    return report_for(keys(vit(classes=1000)), vit(classes=10), source="vit_b16.safetensors")


def missing_keys() -> LoadReport:
    return report_for(keys(vit(depth=12)), vit(depth=12, layer_scale=True), source="deit_tiny.pth")


def unexpected_model_strict() -> LoadReport:
    extra: list[Entry] = [("fc_norm.weight", (8,), "float32"), ("fc_norm.bias", (8,), "float32")]
    extra += [(f"aux_heads.{i}.weight", (10, 8), "float32") for i in range(3)]
    return report_for(keys(vit() + extra), vit(), source="vit_aux.pt", strict="model")


def legacy_renames() -> LoadReport:
    old = []
    for name, shape, dtype in vit():
        if ".norm" in name or name.startswith("norm."):
            name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
        old.append((name.replace("patch_embed.proj.", "patch_embed.projection."), shape, dtype))
    rename = {r"\.projection\.": ".proj."}
    return report_for(keys(old, "model"), vit(), source="old_vit.pth", rename=rename)


def skips() -> LoadReport:
    return report_for(keys(vit(classes=1000)), vit(classes=10), source="vit_b16.safetensors", skip=["head.*"])


def casts() -> LoadReport:
    ckpt = keys(vit()[:-4], dtype="bfloat16") + keys(vit()[-4:], dtype="float16")
    return report_for(ckpt, vit(), source="vit_half.safetensors")


def tied() -> LoadReport:
    entries = {
        "embed.weight": ModelEntry("embed.weight", (50, 8), "float32", module="embed"),
        "norm.weight": ModelEntry("norm.weight", (8,), "float32", module="norm"),
        "bn.weight": ModelEntry("bn.weight", (8,), "float32", module="bn"),
        "bn.running_mean": ModelEntry("bn.running_mean", (8,), "float32", kind="buffer", module="bn"),
        "bn.num_batches_tracked": ModelEntry("bn.num_batches_tracked", (), "int64", kind="buffer", module="bn"),
        "lm_head.weight": ModelEntry("lm_head.weight", (50, 8), "float32", tied_to="embed.weight", module="lm_head"),
    }
    spec = ModelSpec(entries=entries, class_name="TinyLM")
    saved = [n for n in entries if n not in ("lm_head.weight", "bn.num_batches_tracked")]
    ckpt = keys([(n, entries[n].shape, entries[n].dtype) for n in saved])
    return report_for(ckpt, spec, source="tiny_lm.safetensors")


def ignored_optimizer() -> LoadReport:
    return report_for(keys(vit(), "model") + optimizer_keys(60), vit(), source="lightning/epoch=3.ckpt")


def folded_layers() -> LoadReport:
    return report_for(keys(vit(depth=12), "state_dict", "module."), vit(depth=12), source="vit_12.ckpt", applied=True)


def everything_wrong() -> LoadReport:
    model = vit(depth=12, layer_scale=True)
    ckpt = keys([*vit(depth=12, classes=1000), ("fc_norm.weight", (8,), "float32")], "state_dict")
    return report_for(ckpt, model, source="vit_b16.ckpt")


SCENARIOS: dict[str, Callable[[], LoadReport]] = {
    "clean": clean,
    "prefix_stripped": prefix_stripped,
    "head_mismatch": head_mismatch,
    "missing_keys": missing_keys,
    "unexpected_model_strict": unexpected_model_strict,
    "legacy_renames": legacy_renames,
    "skips": skips,
    "casts": casts,
    "tied": tied,
    "ignored_optimizer": ignored_optimizer,
    "folded_layers": folded_layers,
    "everything_wrong": everything_wrong,
}


# ------------------------------------------------------------------------------------------------ snapshots


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_render_snapshot(name: str) -> None:
    report = SCENARIOS[name]()
    text = render(report)
    assert text == str(report)
    assert all(len(line) <= 100 for line in text.splitlines()), text
    check_snapshot(f"report_{name}", text)


@pytest.mark.parametrize("name", [n for n in sorted(SCENARIOS) if not SCENARIOS[n]().ok])
def test_problem_summary_snapshot(name: str) -> None:
    check_snapshot(f"summary_{name}", problem_summary(SCENARIOS[name]()) + "\n")


# ------------------------------------------------------------------------------------------------ the advice works


def test_head_mismatch_message_is_the_designed_one() -> None:
    report = head_mismatch()
    assert problem_summary(report) == (
        "2 of 32 tensors in 'vit_b16.safetensors' do not fit VisionTransformer:\n"
        "  head.weight   checkpoint (1000, 8)   model (10, 8)\n"
        "  head.bias     checkpoint (1000,)     model (10,)\n"
        "  The other 30 fit. To load them and keep 'head.*' as initialised: "
        'tw.load_into(..., skip=["head.*"])'
    )
    with pytest.raises(LoadError) as info:
        report.raise_if_problems()
    assert info.value.code == "shape-mismatch" and info.value.report is report
    assert info.value.message == problem_summary(report)


def test_one_mismatched_key_still_keeps_its_module() -> None:
    model = vit()
    ckpt = keys([(n, (1000, 8) if n == "head.weight" else s, d) for n, s, d in model])
    summary = problem_summary(report_for(ckpt, model, source="vit_b16.safetensors"))
    assert summary.startswith("1 of 32 tensors in 'vit_b16.safetensors' does not fit VisionTransformer:\n")
    assert summary.endswith(
        "The other 31 fit. To load them and keep 'head.*' as initialised: " 'tw.load_into(..., skip=["head.*"])'
    )


def _suggested(summary: str) -> dict[str, object]:
    """The keyword arguments of the ``tw.load_into(..., ...)`` suggestion, evaluated."""
    call = summary.rsplit("tw.load_into(..., ", 1)[1].rsplit(")", 1)[0]
    return dict(eval(f"dict({call})"))  # test oracle on text we generated


@pytest.mark.parametrize("name", [n for n in sorted(SCENARIOS) if not SCENARIOS[n]().ok])
def test_the_suggestion_makes_the_load_succeed(name: str) -> None:
    report = SCENARIOS[name]()
    plan = report.plan
    options = _suggested(problem_summary(report))
    rules = Rules.make(
        strict=options.get("strict", plan.rules.strict),  # type: ignore[arg-type]
        container=str(options.get("container", plan.rules.container)),
        prefix=plan.rules.prefix,
        rename=plan.rules.rename,
        skip=options.get("skip", plan.rules.skip),  # type: ignore[arg-type]
        on_mismatch=str(options.get("on_mismatch", plan.rules.on_mismatch)),
        dtype=plan.rules.dtype,
    )
    spec = ModelSpec.from_tuples(
        [(a.target, a.dst_shape or (), a.dst_dtype or "float32") for a in plan.actions if a.target],
        class_name=plan.model,
    )
    ckpt = [
        SourceKey(a.source, tuple(a.source.split(".")), a.src_shape or (), a.src_dtype or "float32")
        for a in plan.actions
        if a.source
    ]
    again = reconcile(ckpt, spec, rules, source=plan.source)
    assert again.ok, again.problems
    loaded_before = {a.target for a in plan.by_kind("load")}
    assert loaded_before <= {a.target for a in again.by_kind("load")}, "the suggestion must not skip what loaded"


def test_skip_patterns_fold_layers_and_collapse_whole_subtrees() -> None:
    model = vit(depth=12, layer_scale=True) + [(f"decoder.layers.{i}.w", (8,), "float32") for i in range(4)]
    ckpt = keys(vit(depth=12))
    summary = problem_summary(report_for(ckpt, model, source="a.pt"))
    assert 'skip=["blocks.*.ls1.*", "decoder.*"]' in summary
    # only some layers: a glob over every layer would skip too much, so the layers are listed
    model = vit(depth=4, layer_scale=True)
    ckpt = keys([e for e in model if e[0] not in ("blocks.0.ls1.gamma", "blocks.2.ls1.gamma")])
    summary = problem_summary(report_for(ckpt, model, source="a.pt"))
    assert 'skip=["blocks.0.ls1.*", "blocks.2.ls1.*"]' in summary


def test_skip_patterns_name_keys_when_a_module_glob_would_catch_more() -> None:
    model = [("head.weight", (10, 8), "float32"), ("head.fc.weight", (10, 8), "float32")]
    ckpt = keys([("head.weight", (1000, 8), "float32"), ("head.fc.weight", (10, 8), "float32")])
    summary = problem_summary(report_for(ckpt, model, source="a.pt"))
    assert 'skip=["head.weight"]' in summary


def test_glob_characters_in_names_are_escaped() -> None:
    model = [("a[0].weight", (2,), "float32"), ("a0.weight", (2,), "float32"), ("b", (2,), "float32")]
    ckpt = keys([("a[0].weight", (3,), "float32"), ("a0.weight", (2,), "float32"), ("b", (2,), "float32")])
    summary = problem_summary(report_for(ckpt, model, source="a.pt"))
    assert 'skip=["a[[]0].*"]' in summary


def test_many_mismatches_suggest_on_mismatch_skip() -> None:
    model = [(f"m{i}.weight", (2,), "float32") for i in range(12)] + [("fits", (2,), "float32")]
    ckpt = keys([(f"m{i}.weight", (3,), "float32") for i in range(12)] + [("fits", (2,), "float32")])
    summary = problem_summary(report_for(ckpt, model, source="a.pt"))
    assert summary.endswith(
        "The other one fits. To load it and keep the 12 mismatched keys as initialised: "
        'tw.load_into(..., on_mismatch="skip")'
    )
    assert "... and 2 more" in summary


def test_missing_keys_hint_at_the_prefix_and_container_the_evidence_shows() -> None:
    # forced no prefix: the keys are there under 'net.'
    summary = problem_summary(report_for(keys(vit(), prefix="net."), vit(), source="a.pt", prefix=None))
    assert "32 missing keys are in the checkpoint as 'net.<key>': prefix=\"net.\" strips it." in summary
    # forced container: the keys are in 'ema'
    ckpt = keys(vit()[:4], "model") + keys(vit(), "ema")
    summary = problem_summary(report_for(ckpt, vit(), source="a.pt", container="model"))
    assert "in the file under 'ema', outside the chosen container 'model': container=\"ema\"" in summary


def test_unexpected_only_suggests_strict_model() -> None:
    report = report_for(keys([*vit(), ("fc_norm.weight", (8,), "float32")]), vit(), source="a.pt")
    summary = problem_summary(report)
    assert summary == (
        "1 tensor in 'a.pt' matches no key of VisionTransformer:\n"
        "  fc_norm.weight   checkpoint (8,)\n"
        "  Every key of VisionTransformer has a tensor.\n"
        '  To load it and leave out the unexpected tensor: tw.load_into(..., strict="model")'
    )
    assert report.error_code() == "unexpected-keys"


def test_file_text_is_escaped() -> None:
    model = [("w", (2,), "float32")]
    ckpt = keys([("w", (2,), "float32"), ("evil\x1b[2J.x", (3,), "float32")])
    report = report_for(ckpt, model, source="bad\x07name.pt")
    text = render(report) + problem_summary(report)
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J.x" in text and "bad\\x07name.pt" in text


def test_ok_report_has_no_fix_section_and_summary_says_so() -> None:
    report = clean()
    text = render(report)
    assert "to fix" not in text
    assert text.splitlines()[2] == "result     OK: loaded 32 of 32"
    assert problem_summary(report) == "'vit_tiny.safetensors' fits VisionTransformer: nothing to report."


# ------------------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_json_round_trips_with_the_documented_keys(name: str) -> None:
    report = SCENARIOS[name]()
    data = json.loads(report.to_json())
    assert set(data) == {
        "source",
        "model",
        "ok",
        "applied",
        "strict",
        "result",
        "container",
        "prefix",
        "rules_applied",
        "renames",
        "skips",
        "left_on_meta",
        "initialised",
        "suggested_rename",
        "alignment",
        "adapter_hints",
        "load_error",
        "totals",
        "seconds",
        "fallback_modules",
        "notes",
        "checked_values",
        "value_findings",
        "actions",
    }
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is report.ok and data["source"] == report.plan.source
    assert data["result"] == report.headline() and data["result"] in str(report).replace("\n           ", " ")
    assert set(data["container"]) == {"name", "reason", "runner_up"}
    assert set(data["prefix"]) == {"strip", "add", "evidence"}
    assert {"tensors", "parameters", "bytes", "load", "mismatch", "missing", "unexpected"} <= set(data["totals"])
    assert len(data["actions"]) == len(report.plan.actions)
    assert all(
        a["kind"] in {"load", "tied", "skip", "default", "mismatch", "missing", "unexpected", "ignored"}
        for a in data["actions"]
    )


def test_layers_pair_up_by_index_into_one_rename() -> None:
    model = vit(depth=3)
    ckpt = keys([(n.replace(".mlp.fc1.", ".ffn.lin1."), s, d) for n, s, d in model])
    report = report_for(ckpt, model, source="a.pt", prefix=None)
    summary = problem_summary(report)
    assert 'rename={"^blocks\\\\.(\\\\d+)\\\\.ffn\\\\.lin1\\\\.": "blocks.\\\\g<1>.mlp.fc1."}' in summary
    assert report.plan.suggestion is not None and report.plan.suggestion.ok
    assert summary.index("rename ") < summary.index("tw.load_into")  # the hint names it before the call


def test_no_rename_when_two_modules_could_pair_with_the_same_one() -> None:
    model = [("a.weight", (4, 4), "float32"), ("b.weight", (4, 4), "float32"), ("c.weight", (2,), "float32")]
    ckpt = keys([("x.weight", (4, 4), "float32"), ("c.weight", (2,), "float32")])
    report = report_for(ckpt, model, source="a.pt", prefix=None)
    assert report.plan.suggestion is None and "rename=" not in problem_summary(report)


def test_rename_comes_before_skips_and_the_rest_is_still_advised() -> None:
    model = vit(classes=10)
    ckpt = keys([(n.replace("head.", "fc."), (1000, *s[1:]) if n.startswith("head") else s, d) for n, s, d in vit()])
    # head <-> fc differ in shape: no pair, the skip stays the advice
    report = report_for(ckpt, model, source="a.pt", prefix=None)
    assert report.plan.suggestion is None
    ckpt = keys([(n.replace("head.", "fc."), s, d) for n, s, d in vit()] + [("extra.w", (3,), "float32")])
    report = report_for(ckpt, model, source="a.pt", prefix=None)
    summary = problem_summary(report)
    call = summary.rsplit("tw.load_into(..., ", 1)[1]
    assert call.startswith('rename={"^fc\\\\.": "head."}, strict="model"'), summary


# ------------------------------------------------------------------------------ one shape: summary, repr, keys


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_summary_is_the_one_line_headline_and_repr_stays_short(name: str) -> None:
    report = SCENARIOS[name]()
    assert isinstance(report.summary, str) and "\n" not in report.summary
    assert report.summary == report.headline() == report.to_dict()["result"]
    text = repr(report)
    assert text == f"<LoadReport '{report.plan.source}' into {report.plan.model}: {report.summary}>"
    assert len(text) < 300 and "Plan(" not in text  # the dataclass repr dumped the whole plan (kilobytes)


def test_missing_and_unexpected_keys_name_what_torch_would() -> None:
    report = everything_wrong()  # 1000-class head (mismatch), no layer-scale gammas (missing), fc_norm (unexpected)
    missing = {f"blocks.{i}.ls1.gamma" for i in range(12)} | {"head.weight", "head.bias"}
    assert set(report.missing_keys) == missing and len(report.missing_keys) == len(missing)
    assert report.unexpected_keys == ("fc_norm.weight",)
    assert isinstance(report.missing_keys, tuple) and isinstance(report.unexpected_keys, tuple)


def test_unexpected_keys_are_named_inside_the_container_and_skip_the_rest_of_the_file() -> None:
    report = ignored_optimizer()  # weights under 'model', optimizer state beside it
    assert report.missing_keys == () and report.unexpected_keys == ()
    report = report_for(keys([*vit(), ("aux.weight", (4,), "float32")], "state_dict", "module."), vit(), strict=False)
    assert report.unexpected_keys == ("module.aux.weight",) and report.missing_keys == ()


def test_skipped_and_defaulted_keys() -> None:
    assert skips().missing_keys == ("head.weight", "head.bias")
    assert tied().missing_keys == ()  # tied to a loaded key; num_batches_tracked kept at its default as torch does


def test_problem_text_is_the_load_error_message() -> None:
    report = head_mismatch()
    with pytest.raises(LoadError) as info:
        report.raise_if_problems()
    assert info.value.message == report.problem_text() == problem_summary(report)
    assert info.value.report is report


def test_the_summary_counts_names_not_folded_patterns() -> None:
    """The logged line's "and N more" counts the keys it leaves out, not the folded patterns standing for them."""
    import torch

    import torchweights as tw

    net = torch.nn.Module()
    for name in ("a", "b", "c", "kept"):
        net.add_module(name, torch.nn.Linear(2, 2, bias=False))
    net.layers = torch.nn.ModuleList(torch.nn.Linear(2, 2, bias=False) for _ in range(4))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    report = tw.load_into(net, state, skip=["a.*", "b.*", "c.*", "layers.*"], strict=False)
    assert "skipped: a.weight, b.weight, c.weight and 4 more." in report.log_line()
