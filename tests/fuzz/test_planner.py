"""Fuzzing ``tw.load_into`` end to end: random small models, checkpoints derived from them, every option.

A model is a random set of layers (``Linear`` with or without bias, ``LayerNorm``, ``BatchNorm1d``, ``Embedding``,
a raw parameter, integer and float buffers) at random dotted paths, sometimes built on the meta device. A
checkpoint is the state dict of another instance (other values), transformed: keys dropped, shapes changed, dtypes
changed, extra keys added, one path component renamed (passed back as a ``rename`` rule, or not), a wrapper prefix
(``module.``, ``_orig_mod.``...), nested under ``state_dict`` / ``model`` / ``ema`` next to other entries; saved as
a torch zip, a legacy torch file, safetensors (flat ones), or passed as the dict itself. Options: ``strict`` (True,
``"model"``, False), ``on_mismatch``, ``dtype``, ``skip`` patterns (matching or not), ``mmap``.

Checked for every example:

* a dry run and the real load agree: the real one raises ``LoadError`` exactly when the dry run's report has
  problems (or a ``RuleError`` both times), and a dry run never changes the model;
* every model key is the target of exactly one action and every tensor of the checkpoint the source of exactly
  one (loaded, tied, skipped, mismatched, missing, unexpected, ignored...), in the dry run, the real report and the
  report a ``LoadError`` carries;
* when ``LoadError`` (or ``RuleError``) is raised the model is bit for bit what it was;
* when the load succeeds, the model equals a copy of it loaded by torch's own ``load_state_dict`` with the
  report's ``{target: source tensor}`` pairs (``assign=True`` for ``dtype="checkpoint"``): loaded tensors
  bit-identical and of the same dtype, everything else untouched; and the strictness held.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from safetensors.torch import save_file

import torchweights as tw
from torchweights.errors import LoadError, RuleError

from ._common import bits, coverage_settings, fuzz_settings

_FUZZ = fuzz_settings(30, deadline_factor=5)

_GROUPS = ["enc", "dec", "blocks", "body.stem"]
_LEAVES = ["fc", "norm", "head", "emb", "proj", "0", "1", "gate"]
_KINDS = ["linear", "linear_nobias", "layernorm", "batchnorm", "embedding", "param", "buffers"]
_PREFIXES = ["", "", "module.", "_orig_mod.", "_orig_mod.module.", "model."]
_NESTS = ["", "", "state_dict", "model", "ema", "module"]
_FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float64]


class Net(torch.nn.Module):
    """A container of whatever layers the recipe puts in it."""


@dataclass(frozen=True)
class Layer:
    path: str
    kind: str
    a: int
    b: int


def _make(layer: Layer) -> torch.nn.Module:
    a, b = layer.a, layer.b
    if layer.kind == "linear":
        return torch.nn.Linear(a, b)
    if layer.kind == "linear_nobias":
        return torch.nn.Linear(a, b, bias=False)
    if layer.kind == "layernorm":
        return torch.nn.LayerNorm(a)
    if layer.kind == "batchnorm":
        return torch.nn.BatchNorm1d(a)
    if layer.kind == "embedding":
        return torch.nn.Embedding(a, b)
    module = Net()
    if layer.kind == "param":
        module.scale = torch.nn.Parameter(torch.randn(a, b))
    else:
        module.register_buffer("steps", torch.arange(a, dtype=torch.int64))
        module.register_buffer("table", torch.randn(b))
        module.register_buffer("cache", torch.ones(a), persistent=False)  # in no state dict
    return module


def build(layers: tuple[Layer, ...], seed: int, meta: bool = False) -> Net:
    """The model of a recipe; parameters from ``seed`` (or on the meta device)."""
    torch.manual_seed(seed)
    root = Net()
    with torch.device("meta") if meta else torch.device("cpu"):
        for layer in layers:
            parent: torch.nn.Module = root
            *groups, leaf = layer.path.split(".")
            for name in groups:
                if not hasattr(parent, name):
                    parent.add_module(name, Net())
                parent = getattr(parent, name)
            parent.add_module(leaf, _make(layer))
    return root


@st.composite
def recipes(draw: st.DrawFn) -> tuple[Layer, ...]:
    paths = draw(
        st.lists(
            st.builds(
                lambda g, leaf: f"{g}.{leaf}" if g else leaf, st.sampled_from(["", *_GROUPS]), st.sampled_from(_LEAVES)
            ),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    return tuple(
        Layer(p, draw(st.sampled_from(_KINDS)), draw(st.integers(1, 4)), draw(st.integers(1, 4))) for p in paths
    )


@dataclass
class Case:
    layers: tuple[Layer, ...]
    flat: dict[str, torch.Tensor]  # record name -> tensor, as the checkpoint holds it
    tree: dict[str, Any]
    fmt: str
    meta: bool
    options: dict[str, Any] = field(default_factory=dict)


def _snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """Every persistent tensor's dtype, shape and bits (meta tensors: dtype and shape)."""
    return {
        k: (str(v.dtype), tuple(v.shape), "meta") if v.is_meta else bits(v)
        for k, v in model.state_dict(keep_vars=True).items()
    }


@st.composite
def cases(draw: st.DrawFn) -> Case:
    layers = draw(recipes())
    sd = build(layers, seed=1).state_dict()
    out: dict[str, torch.Tensor] = {}
    words = sorted({part for key in sd for part in key.split(".")[:-1]})  # module names, not leaves
    rename_word = draw(st.sampled_from([None, *words]))
    for key, value in sd.items():
        fate = draw(st.sampled_from(["keep"] * 5 + ["drop", "reshape", "dtype", "dtype"]))
        if fate == "drop":
            continue
        if fate == "reshape" and value.is_floating_point():
            value = torch.randn(*value.shape, 2)
        elif fate == "dtype" and value.is_floating_point():
            value = value.to(draw(st.sampled_from(_FLOAT_DTYPES)))
        parts = key.split(".")
        if rename_word is not None:
            parts = [f"{p}_v1" if p == rename_word else p for p in parts]
        out[".".join(parts)] = value
    for i in range(draw(st.integers(0, 2))):
        out[f"zz_extra{i}.weight"] = torch.randn(2)
    prefix = draw(st.sampled_from(_PREFIXES))
    out = {prefix + k: v for k, v in out.items()}
    nest = draw(st.sampled_from(_NESTS))
    fmt = draw(st.sampled_from(["zip", "zip", "legacy", "dict", "safetensors"]))
    tree: dict[str, Any] = dict(out)
    if nest:
        tree = {nest: tree, "epoch": 3}
        if draw(st.booleans()):  # an optimizer's state: more tensors than the model, none of them weights
            tree["optimizer"] = {"state": {i: {"exp_avg": torch.zeros(2)} for i in range(len(out) + 1)}}
        fmt = "zip" if fmt == "safetensors" else fmt
    flat = _flatten(tree)
    options: dict[str, Any] = {"strict": draw(st.sampled_from([True, False, "model"]))}
    if draw(st.booleans()):
        options["on_mismatch"] = "skip"
    if draw(st.integers(0, 3)) == 0:
        options["dtype"] = "checkpoint"
    if rename_word is not None and draw(st.integers(0, 3)):
        options["rename"] = {rf"(^|\.){rename_word}_v1(\.|$)": rf"\g<1>{rename_word}\g<2>"}
    elif draw(st.integers(0, 5)) == 0:
        options["rename"] = {r"no_such_word": "x"}
    if draw(st.integers(0, 3)) == 0:
        options["skip"] = [draw(st.sampled_from([f"{layers[0].path}.*", "head*", "*.bias", "nothing_matches.*"]))]
    if fmt != "dict" and draw(st.integers(0, 4)) == 0:
        options["mmap"] = True
    meta = draw(st.integers(0, 4)) == 0
    return Case(layers, flat, tree, fmt, meta, options)


def _flatten(tree: Any, path: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {path: tree}
    out: dict[str, torch.Tensor] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{path}.{k}" if path else str(k)))
    return out


def _source(case: Case, folder: Path) -> Any:
    if case.fmt == "dict":
        return case.tree
    if case.fmt == "safetensors":
        path = folder / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in case.tree.items()}, str(path))
        return path
    path = folder / "ckpt.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(case.tree, path, _use_new_zipfile_serialization=case.fmt == "zip")
    return path


def _check_accounted(report: tw.LoadReport, model_keys: list[str], records: list[str], what: str) -> None:
    actions = report.to_dict()["actions"]
    targets = Counter(a["target"] for a in actions if a.get("target"))
    assert targets == Counter(model_keys), f"{what}: model keys not accounted for once: {targets}"
    sources = Counter(a["source"] for a in actions if a.get("source"))
    assert sources == Counter(records), f"{what}: checkpoint tensors not accounted for once: {sources}"


def _expected(case: Case, before: torch.nn.Module, report: tw.LoadReport) -> dict[str, Any]:
    """``before`` loaded by torch with the report's pairs."""
    pairs: dict[str, torch.Tensor] = {}
    for action in report.to_dict()["actions"]:
        if action["kind"] in ("load", "tied") and action.get("target") and action.get("source"):
            tensor = case.flat[action["source"]]
            shape = tuple(action.get("dst_shape", tensor.shape))
            pairs[action["target"]] = tensor.reshape(shape) if tuple(tensor.shape) != shape else tensor
    expected = copy.deepcopy(before)
    if case.meta:
        expected = expected.to_empty(device="cpu")  # values of unloaded tensors are not compared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected.load_state_dict(pairs, strict=False, assign=case.options.get("dtype") == "checkpoint")
    return {k: bits(v) for k, v in expected.state_dict().items() if k in pairs or not case.meta}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("planner")


@_FUZZ
@given(case=cases())
def test_load_into_random_models_and_checkpoints(workdir: Path, case: Case) -> None:
    source = _source(case, workdir)
    model = build(case.layers, seed=0, meta=case.meta)
    model_keys = list(model.state_dict())
    records = list(case.flat)
    before = copy.deepcopy(model)
    snapshot = _snapshot(model)
    options = dict(case.options)
    mmap = options.pop("mmap", False)

    try:
        dry = tw.load_into(model, source, dry_run=True, **options)
    except RuleError as e:
        event(f"RuleError [{e.code}]")
        with pytest.raises(RuleError):
            tw.load_into(model, source, mmap=mmap, **options)
        assert _snapshot(model) == snapshot, "a refused load changed the model"
        return
    assert _snapshot(model) == snapshot, "a dry run changed the model"
    assert not dry.applied
    _check_accounted(dry, model_keys, records, "dry run")

    try:
        report = tw.load_into(model, source, mmap=mmap, **options)
    except LoadError as e:
        assert dry.problems, f"the dry run saw no problem, the load raised {e.code}: {e}"
        assert _snapshot(model) == snapshot, "LoadError raised, but the model changed"
        _check_accounted(e.report, model_keys, records, "LoadError report")
        event(f"LoadError [{e.code}]")
        return
    assert not dry.problems, f"the dry run saw problems, the load went ahead: {dry.problem_text()}"
    assert report.applied
    _check_accounted(report, model_keys, records, "load")
    kinds = Counter(a["kind"] for a in report.to_dict()["actions"])
    if options["strict"] is True:
        assert kinds["missing"] + kinds["unexpected"] + kinds["mismatch"] == 0, kinds
    elif options["strict"] == "model":
        assert kinds["missing"] + kinds["mismatch"] == 0, kinds
    expected = _expected(case, before, report)
    after = _snapshot(model)
    for key, want in expected.items():
        assert after[key] == want, f"{key}: torchweights {after[key][:2]}, torch {want[:2]} (or other values)"
    event(f"loaded {kinds['load']} of {len(model_keys)}" if kinds["load"] == len(model_keys) else "partial load")


def test_the_cases_cover_every_outcome(workdir: Path) -> None:
    """The generator reaches complete loads, partial loads, LoadErrors, renames that load keys and meta models."""
    seen: Counter[str] = Counter()

    @coverage_settings(40)
    @given(case=cases())
    def run(case: Case) -> None:
        model = build(case.layers, seed=0, meta=case.meta)
        try:
            report = tw.load_into(model, _source(case, workdir), **case.options)
        except LoadError:
            seen["LoadError"] += 1
            return
        except RuleError:
            seen["RuleError"] += 1
            return
        actions = report.to_dict()["actions"]
        seen["loaded"] += 1
        seen["partial"] += any(a["kind"] != "load" for a in actions if a.get("target"))
        seen["renamed"] += any("rename" in " ".join(a.get("via", ())) for a in actions)
        seen["meta"] += case.meta
        seen["cast"] += any(a.get("src_dtype") != a.get("dst_dtype") for a in actions if a["kind"] == "load")

    run()
    assert all(seen[k] for k in ("LoadError", "loaded", "partial", "renamed", "meta", "cast")), seen
