"""``qkv``: fused attention projections split and fused, planned from names and shapes and applied to real layers
(an ``nn.MultiheadAttention`` against its own separate-projection math, grouped-query row ranges, biases)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchweights.adapt.base import GroupFit
from torchweights.adapt.qkv import ADAPTER, fit_groups, model_path
from torchweights.adapt.registry import ADAPTERS

D = 8


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _one(fits: list[GroupFit]) -> GroupFit:
    assert len(fits) == 1, fits
    return fits[0]


def _load(group: GroupFit, checkpoint: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> None:
    for target, step in group.steps.items():
        out = ADAPTER.apply(step, [checkpoint[s] for s in step.sources], tuple(model[target].shape))
        assert tuple(out.shape) == tuple(model[target].shape)
        model[target] = out


def test_registered() -> None:
    assert ADAPTERS["qkv"] is ADAPTER and ADAPTER.kind == "group" and ADAPTER.fit is None
    assert list(ADAPTERS) == ["input_conv", "pos_embed", "patch_embed", "qkv"]


def test_split_timm_qkv_with_bias() -> None:
    checkpoint = {"blocks.0.attn.qkv.weight": torch.randn(3 * D, D), "blocks.0.attn.qkv.bias": torch.randn(3 * D)}
    model = {
        f"blocks.0.attn.{p}.{leaf}": torch.zeros(s) for p in "qkv" for leaf, s in (("weight", (D, D)), ("bias", (D,)))
    }
    group = _one(fit_groups(_shapes(model), _shapes(checkpoint), {}))
    assert set(group.consumed) == set(checkpoint) and set(group.steps) == set(model)
    _load(group, checkpoint, model)
    for i, p in enumerate("qkv"):
        assert torch.equal(
            model[f"blocks.0.attn.{p}.weight"], checkpoint["blocks.0.attn.qkv.weight"][i * D : (i + 1) * D]
        )
        assert torch.equal(model[f"blocks.0.attn.{p}.bias"], checkpoint["blocks.0.attn.qkv.bias"][i * D : (i + 1) * D])
    step = group.steps["blocks.0.attn.k.weight"]
    assert step.sources == ("blocks.0.attn.qkv.weight",) and step.param("rows") == (D, 2 * D)
    assert step.detail == f"split along dim 0: rows 0:{D} -> q, {D}:{2 * D} -> k, {2 * D}:{3 * D} -> v"


def test_grouped_query_rows() -> None:
    """Llama-style GQA: 32 query heads, 8 key/value heads of 128: q 4096 rows, k and v 1024 each (shapes only)."""
    checkpoint = {"layers.3.attn.Wqkv.weight": (6144, 4096)}
    model = {
        "layers.3.attn.q_proj.weight": (4096, 4096),
        "layers.3.attn.k_proj.weight": (1024, 4096),
        "layers.3.attn.v_proj.weight": (1024, 4096),
    }
    group = _one(fit_groups(model, checkpoint, {}))
    assert group.steps["layers.3.attn.q_proj.weight"].param("rows") == (0, 4096)
    assert group.steps["layers.3.attn.k_proj.weight"].param("rows") == (4096, 5120)
    assert group.steps["layers.3.attn.v_proj.weight"].param("rows") == (5120, 6144)
    assert group.steps["layers.3.attn.v_proj.weight"].detail == (
        "split along dim 0: rows 0:4096 -> q, 4096:5120 -> k, 5120:6144 -> v"
    )


def test_grouped_query_values_small() -> None:
    fused = torch.arange(12 * 4, dtype=torch.float32).reshape(12, 4)
    model = {"a.wq.weight": torch.zeros(6, 4), "a.wk.weight": torch.zeros(3, 4), "a.wv.weight": torch.zeros(3, 4)}
    group = _one(fit_groups(_shapes(model), {"a.qkv_proj.weight": (12, 4)}, {}))
    _load(group, {"a.qkv_proj.weight": fused}, model)
    assert torch.equal(model["a.wq.weight"], fused[:6])
    assert torch.equal(model["a.wk.weight"], fused[6:9])
    assert torch.equal(model["a.wv.weight"], fused[9:])


def test_fuse_with_bias_and_gqa() -> None:
    checkpoint = {
        f"h.0.attn.{n}.{leaf}": torch.randn(rows, *rest)
        for n, rows in (("query", 4), ("key", 2), ("value", 2))
        for leaf, rest in (("weight", (D,)), ("bias", ()))
    }
    model = {"h.0.attn.to_qkv.weight": torch.zeros(8, D), "h.0.attn.to_qkv.bias": torch.zeros(8)}
    group = _one(fit_groups(_shapes(model), _shapes(checkpoint), {}))
    assert set(group.consumed) == set(checkpoint)
    step = group.steps["h.0.attn.to_qkv.weight"]
    assert step.sources == ("h.0.attn.query.weight", "h.0.attn.key.weight", "h.0.attn.value.weight")
    assert step.detail == "concatenated along dim 0: q -> rows 0:4, k -> rows 4:6, v -> rows 6:8"
    _load(group, checkpoint, model)
    for leaf in ("weight", "bias"):
        expected = torch.cat([checkpoint[f"h.0.attn.{n}.{leaf}"] for n in ("query", "key", "value")])
        assert torch.equal(model[f"h.0.attn.to_qkv.{leaf}"], expected)


def test_mha_in_proj_split_computes_the_same_attention() -> None:
    """A real nn.MultiheadAttention's in_proj into q_proj/k_proj/v_proj Linears: same projections of the inputs."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(D, 2)
    checkpoint = {f"enc.attn.{k}": v for k, v in mha.state_dict().items()}
    model = {
        f"enc.attn.{p}_proj.{leaf}": torch.zeros((D, D) if leaf == "weight" else (D,))
        for p in "qkv"
        for leaf in ("weight", "bias")
    }
    group = _one(fit_groups(_shapes(model), _shapes(checkpoint), {}))
    assert set(group.consumed) == {"enc.attn.in_proj_weight", "enc.attn.in_proj_bias"}
    _load(group, checkpoint, model)
    x = torch.randn(5, D)
    expected = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    for p, want in zip("qkv", expected):
        got = F.linear(x, model[f"enc.attn.{p}_proj.weight"], model[f"enc.attn.{p}_proj.bias"])
        torch.testing.assert_close(got, want)


def test_mha_separate_weights_and_fuse_back() -> None:
    """nn.MultiheadAttention with kdim/vdim stores q_proj_weight...; in_proj_weight maps to and from them."""
    separate = {f"m.{p}_proj_weight": (D, D) for p in "qkv"}
    group = _one(fit_groups(separate, {"m.in_proj_weight": (3 * D, D)}, {}))
    assert set(group.steps) == set(separate)
    back = _one(fit_groups({"m.in_proj_weight": (3 * D, D)}, separate, {}))
    assert back.steps["m.in_proj_weight"].sources == ("m.q_proj_weight", "m.k_proj_weight", "m.v_proj_weight")


def test_gpt2_style_fuse_through_module_map() -> None:
    """Separate projections under h.0.attn fused into the model's layers.0.self_attention.c_attn (renamed modules)."""
    checkpoint = {f"h.0.attn.{p}.weight": (D, D) for p in ("q_lin", "k_lin", "v_lin")}
    model = {"layers.0.self_attention.c_attn.weight": (3 * D, D)}
    assert fit_groups(model, checkpoint, {}) == []
    group = _one(fit_groups(model, checkpoint, {"h": "layers", "h.0.attn": "layers.0.self_attention"}))
    assert set(group.consumed) == set(checkpoint)
    split = _one(fit_groups(checkpoint, model, {"layers.0.self_attention": "h.0.attn"}))
    assert set(split.steps) == set(checkpoint)


def test_model_path() -> None:
    mapping = {"h": "layers", "h.0.attn": "layers.0.self_attention", "enc": ""}
    assert model_path("h.0.attn", mapping) == "layers.0.self_attention"
    assert model_path("h.1.attn", mapping) == "layers.1.attn"
    assert model_path("enc.attn", mapping) == "attn"
    assert model_path("other.attn", mapping) == "other.attn"
    assert model_path("", mapping) == ""


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_round_trip(dtype: torch.dtype) -> None:
    checkpoint = {"a.qkv.weight": torch.randn(3 * D, D).to(dtype)}
    model = {f"a.{p}.weight": torch.zeros(D, D) for p in "qkv"}
    group = _one(fit_groups(_shapes(model), _shapes(checkpoint), {}))
    step = group.steps["a.v.weight"]
    out = ADAPTER.apply(step, [checkpoint["a.qkv.weight"]], (D, D))
    assert out.dtype == dtype and torch.equal(out, checkpoint["a.qkv.weight"][2 * D :])
    parts = [torch.randn(D, D).to(dtype) for _ in range(3)]
    fused = _one(fit_groups({"a.qkv.weight": (3 * D, D)}, {f"a.{p}.weight": (D, D) for p in "qkv"}, {}))
    out = ADAPTER.apply(fused.steps["a.qkv.weight"], parts, (3 * D, D))
    assert out.dtype == dtype and torch.equal(out, torch.cat(parts))


# ------------------------------------------------------------------------------------------------------ refusals


def test_gpt2_conv1d_refused() -> None:
    """Conv1D stores c_attn as (in, 3 * out): the sizes add up along dim 1 only; the bias alone does not go."""
    checkpoint = {"h.0.attn.c_attn.weight": (D, 3 * D), "h.0.attn.c_attn.bias": (3 * D,)}
    model = {f"h.0.attn.{p}.{leaf}": s for p in ("q", "k", "v") for leaf, s in (("weight", (D, D)), ("bias", (D,)))}
    assert fit_groups(model, checkpoint, {}) == []


def test_query_key_value_refused() -> None:
    checkpoint = {"gpt_neox.layers.0.attention.query_key_value.weight": (3 * D, D)}
    model = {f"gpt_neox.layers.0.attention.{p}.weight": (D, D) for p in ("query", "key", "value")}
    assert fit_groups(model, checkpoint, {}) == []


@pytest.mark.parametrize(
    ("model", "checkpoint"),
    [
        ({"a.q.weight": (D, D), "a.k.weight": (D, D)}, {"a.qkv.weight": (3 * D, D)}),  # no v
        ({f"a.{p}.weight": (D, D) for p in "qkv"}, {"a.qkv.weight": (3 * D + 1, D)}),  # rows do not add up
        ({f"a.{p}.weight": (D, D + 1) for p in "qkv"}, {"a.qkv.weight": (3 * D, D)}),  # other in-features
        ({f"a.{p}.weight": (D, D) for p in "qkv"}, {"b.qkv.weight": (3 * D, D)}),  # another module
        ({f"a.{p}.weight": (D, D) for p in "qkv"}, {"a.qkv.bias": (3 * D,)}),  # a bias for weights
        (
            {f"a.{p}.weight": (D, D) for p in "qkv"} | {f"a.{p}_proj.weight": (D, D) for p in "qkv"},
            {"a.qkv.weight": (3 * D, D)},
        ),  # two complete triples: which one is a guess
        ({f"a.{p}.weight": (D, D) for p in "qkv"}, {"a.qkv.weight": (3 * D, D), "a.to_qkv.weight": (3 * D, D)}),
        ({f"a.{p}.weight": (D, D) for p in "qkv"}, {"a.mlp.weight": (3 * D, D)}),  # not a fused name
        ({"a.qkv.weight": (3 * D, D)}, {"a.q.weight": (D, D), "a.k.weight": (D, D)}),  # fuse: v missing
        ({"a.qkv.weight": (3 * D, D)}, {f"a.{p}.weight": (D, D - 1) for p in "qkv"}),  # fuse: other in-features
    ],
)
def test_no_fit(model: dict[str, tuple[int, ...]], checkpoint: dict[str, tuple[int, ...]]) -> None:
    assert fit_groups(model, checkpoint, {}) == []


def test_all_or_nothing_per_fused_module() -> None:
    """The weight splits but the bias does not (the model's biases are 2-wide): neither is planned."""
    checkpoint = {"a.qkv.weight": (3 * D, D), "a.qkv.bias": (3 * D,)}
    model = {f"a.{p}.weight": (D, D) for p in "qkv"} | {f"a.{p}.bias": (2,) for p in "qkv"}
    assert fit_groups(model, checkpoint, {}) == []


def test_model_biases_without_fused_bias_stay_missing() -> None:
    checkpoint = {"a.qkv.weight": (3 * D, D)}
    model = {f"a.{p}.weight": (D, D) for p in "qkv"} | {f"a.{p}.bias": (D,) for p in "qkv"}
    group = _one(fit_groups(model, checkpoint, {}))
    assert set(group.steps) == {f"a.{p}.weight" for p in "qkv"} and group.consumed == ("a.qkv.weight",)


def test_several_blocks_are_separate_groups() -> None:
    checkpoint = {f"blocks.{i}.attn.qkv.weight": (3 * D, D) for i in range(3)}
    model = {f"blocks.{i}.attn.{p}.weight": (D, D) for i in range(3) for p in "qkv"}
    fits = fit_groups(model, checkpoint, {})
    assert sorted(g.consumed for g in fits) == [(f"blocks.{i}.attn.qkv.weight",) for i in range(3)]
