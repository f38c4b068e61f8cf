"""``load_into(..., align="auto")``: keys of refactored code paired by structure (plan/align.py), every pair and its
confidence reported, ambiguity refused with the rename that settles it, and the model untouched on every raise."""

from __future__ import annotations

import json
import random
import re
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torchweights as tw
from _refactors import NewGPT, NewResNet, OldGPT, OldResNet, randomised, snapshot, truth, unchanged
from torchweights.errors import LoadError, RuleError
from torchweights.plan.align import rename_mapping


def _resnet_truth(layers: tuple[int, ...] = (2, 2, 2, 2)) -> dict[str, str]:
    """New module path -> old module path for the ResNet pair, written out by hand."""
    table = {"stem.conv": "conv1", "stem.bn": "bn1", "head.fc": "fc"}
    for s, n in enumerate(layers):
        for b in range(n):
            new, old = f"stages.{s}.blocks.{b}", f"layer{s + 1}.{b}"
            table.update({f"{new}.conv_a": f"{old}.conv1", f"{new}.bn_a": f"{old}.bn1"})
            table.update({f"{new}.conv_b": f"{old}.conv2", f"{new}.bn_b": f"{old}.bn2"})
            table.update({f"{new}.shortcut.conv": f"{old}.downsample.0", f"{new}.shortcut.bn": f"{old}.downsample.1"})
    return table


def _gpt_truth(n: int) -> dict[str, str]:
    table = {"embed": "wte", "pos_embed": "wpe", "norm": "ln_f"}
    for i in range(n):
        new, old = f"layers.{i}", f"h.{i}"
        table.update({f"{new}.norm1": f"{old}.ln_1", f"{new}.norm2": f"{old}.ln_2"})
        table[f"{new}.self_attention.qkv"] = f"{old}.attn.c_attn"
        table[f"{new}.self_attention.out"] = f"{old}.attn.c_proj"
        table.update({f"{new}.ffn.fc1": f"{old}.mlp.c_fc", f"{new}.ffn.fc2": f"{old}.mlp.c_proj"})
    return table


def _assert_loaded_as(new: nn.Module, old: nn.Module, expected: dict[str, str]) -> None:
    """Every key of ``new`` holds the values of the old key ``expected`` names (dtype aside)."""
    old_state = old.state_dict()
    new_state = new.state_dict()
    assert set(expected) == set(new_state), sorted(set(new_state) - set(expected))
    for key, source in expected.items():
        assert torch.equal(new_state[key], old_state[source].to(new_state[key].dtype)), (key, source)


def test_resnet_names_to_stages_and_blocks() -> None:
    old = randomised(OldResNet())
    new = NewResNet()
    report = tw.load_into(new, old.state_dict(), align="auto")
    assert report.ok and report.applied
    expected = truth(old, list(new.state_dict()), _resnet_truth())
    _assert_loaded_as(new, old, expected)
    alignment = report.plan.alignment
    assert alignment is not None and alignment.aligned == len(expected)
    assert not alignment.ambiguous
    assert all("align" in a.via for a in report.loaded)
    # a deeper ResNet (3 blocks in a stage; block counts differ between stages) aligns the same way
    old3 = randomised(OldResNet(layers=(3, 4, 2, 2)), seed=1)
    new3 = NewResNet(layers=(3, 4, 2, 2))
    assert tw.load_into(new3, old3.state_dict(), align="auto").ok
    _assert_loaded_as(new3, old3, truth(old3, list(new3.state_dict()), _resnet_truth((3, 4, 2, 2))))


def test_gpt_blocks_renamed_and_non_persistent_buffers_ignored(tmp_path: Path) -> None:
    """h.{i}.attn.c_attn -> layers.{i}.self_attention.qkv; the new model's causal mask is not persistent (not a
    key to fill), and the old checkpoint's persistent mask buffers have no target: they stay unexpected, and are
    never paired with a parameter."""
    old = randomised(OldGPT(n=6, mask=True))
    new = NewGPT(n=6)
    with pytest.raises(LoadError) as error:  # strict=True: the old mask buffers are unexpected
        tw.load_into(new, old.state_dict(), align="auto")
    assert error.value.code == "unexpected-keys"
    report = tw.load_into(new, old.state_dict(), align="auto", strict="model")
    assert report.ok
    unexpected = {a.key for a in report.plan.by_kind("unexpected")}
    assert unexpected == {f"h.{i}.attn.{b}" for i in range(6) for b in ("bias", "masked_bias")}
    _assert_loaded_as(new, old, truth(old, list(new.state_dict()), _gpt_truth(6)))


def test_keys_stored_sorted_alphabetically(tmp_path: Path) -> None:
    """A safetensors file sorts its keys (h.10 before h.2): the layer index, not the file order, pairs them."""
    old = randomised(OldGPT(n=12))
    path = tmp_path / "gpt.safetensors"
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path))
    stored = list(tw.open(path).records)
    assert stored == sorted(stored) and stored.index("h.10.attn.c_attn.bias") < stored.index("h.2.attn.c_attn.bias")
    new = NewGPT(n=12)
    assert tw.load_into(new, path, align="auto").ok
    _assert_loaded_as(new, old, truth(old, list(new.state_dict()), _gpt_truth(12)))


def test_shuffled_state_dict_order() -> None:
    old = randomised(OldGPT(n=5), seed=3)
    items = list(old.state_dict().items())
    random.Random(0).shuffle(items)
    new = NewGPT(n=5)
    assert tw.load_into(new, dict(items), align="auto").ok
    _assert_loaded_as(new, old, truth(old, list(new.state_dict()), _gpt_truth(5)))


def test_prefix_plus_renames_plus_dtype_cast(tmp_path: Path) -> None:
    """A DataParallel checkpoint ('module.'), in float16, of refactored code, with one rename given by the user."""
    old = randomised(OldGPT(n=4), seed=4).half()
    state = {f"module.{k}": v for k, v in old.state_dict().items()}
    path = tmp_path / "dp.pt"
    torch.save(state, path)
    new = NewGPT(n=4)
    report = tw.load_into(new, path, align="auto", rename={r"^module\.ln_f\.": "module.norm."})
    assert report.ok
    assert report.plan.prefix.strip == "module."
    assert all(p.dtype == torch.float32 for p in new.parameters())
    _assert_loaded_as(new, old, truth(old, list(new.state_dict()), _gpt_truth(4)))
    norm = next(a for a in report.loaded if a.target == "norm.weight")
    assert "rename" in norm.via and "align" not in norm.via  # the user's rename did it, not alignment
    assert {a.cast for a in report.loaded} == {True}


class _QKVOld(nn.Module):
    def __init__(self, n: int = 3, d: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for _ in range(n):
            block = nn.Module()
            block.attn = nn.Module()
            for name in ("q", "k", "v", "o"):
                setattr(block.attn, name, nn.Linear(d, d))
            self.blocks.append(block)


class _QKVNew(nn.Module):
    def __init__(self, n: int = 3, d: int = 8, names: tuple[str, ...] = ("query", "key", "value", "output")) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(n):
            block = nn.Module()
            block.self_attention = nn.Module()
            for name in names:
                setattr(block.self_attention, name, nn.Linear(d, d))
            self.layers.append(block)


def test_identical_siblings_told_apart_by_their_names() -> None:
    """Four projections of identical shapes in every layer: q -> query, k -> key, v -> value by name, o -> output
    by name (a prefix)."""
    old = randomised(_QKVOld())
    new = _QKVNew()
    report = tw.load_into(new, old.state_dict(), align="auto")
    assert report.ok
    table = {}
    for i in range(3):
        for a, b in zip(("q", "k", "v", "o"), ("query", "key", "value", "output"), strict=True):
            table[f"layers.{i}.self_attention.{b}"] = f"blocks.{i}.attn.{a}"
    _assert_loaded_as(new, old, truth(old, list(new.state_dict()), table))
    assert all(0 < p.confidence <= 1 for p in report.plan.alignment.pairs)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "names",
    [
        ("left", "right", "up", "down"),  # nothing ties q/k/v/o to these
        ("proj_a", "proj_b", "proj_c", "proj_d"),  # indices by letter, but the old names have none
    ],
)
def test_identical_siblings_with_nothing_to_tie_them_refuse(names: tuple[str, ...]) -> None:
    old = randomised(_QKVOld())
    new = randomised(_QKVNew(names=names), seed=9)
    before = snapshot(new)
    for strict in (True, False, "model"):
        with pytest.raises(LoadError) as error:
            tw.load_into(new, old.state_dict(), align="auto", strict=strict)
        assert error.value.code == "ambiguous-alignment"
        assert unchanged(new, before)
    text = str(error.value)
    assert "rename=" in text and "declaration order" in text
    report = error.value.report
    assert report is not None and not report.ok
    groups = report.plan.ambiguous
    assert groups and all(g.rename for g in groups)
    assert not report.plan.alignment.pairs  # type: ignore[union-attr]  # nothing of an ambiguous group is paired
    # the rename the error gives settles it: the same load with it goes through
    rename = {}
    for group in groups:
        rename.update(dict(group.rename))
    assert tw.load_into(new, old.state_dict(), align="auto", rename=rename).ok


def test_two_identical_branches_refuse() -> None:
    """Two branches of identical shapes renamed without an index or a name in common: only order would decide."""
    old = nn.Module()
    old.encoder_left = nn.Linear(4, 4)
    old.encoder_right = nn.Linear(4, 4)
    old.head = nn.Linear(4, 2)
    new = nn.Module()
    new.tower_one = nn.Linear(4, 4)
    new.tower_two = nn.Linear(4, 4)
    new.head = nn.Linear(4, 2)
    before = snapshot(new)
    with pytest.raises(LoadError) as error:
        tw.load_into(new, randomised(old).state_dict(), align="auto")
    assert error.value.code == "ambiguous-alignment"
    assert unchanged(new, before)
    assert "'encoder_left', 'encoder_right'" in str(error.value)


def test_a_changed_head_is_a_mismatch_and_the_rest_aligns() -> None:
    old = randomised(OldResNet(classes=10))
    new = NewResNet(classes=7)
    before = snapshot(new)
    with pytest.raises(LoadError) as error:
        tw.load_into(new, old.state_dict(), align="auto")
    assert error.value.code == "shape-mismatch"
    assert unchanged(new, before)
    report = tw.load_into(new, old.state_dict(), align="auto", strict=False)
    mismatched = {(a.key, a.target) for a in report.plan.by_kind("mismatch")}
    assert mismatched == {("fc.weight", "head.fc.weight"), ("fc.bias", "head.fc.bias")}
    expected = truth(old, list(new.state_dict()), _resnet_truth())
    del expected["head.fc.weight"], expected["head.fc.bias"]
    loaded = {a.target: a.key for a in report.loaded}
    assert loaded == expected
    head = next(p for p in report.plan.alignment.pairs if p.target == "head.fc")  # type: ignore[union-attr]
    assert head.confidence < min(p.confidence for p in report.plan.alignment.pairs if p.target != "head.fc")  # type: ignore[union-attr]


def test_a_different_architecture_is_refused() -> None:
    old = randomised(OldResNet())
    new = NewGPT()
    report = tw.load_into(new, old.state_dict(), align="auto", dry_run=True)
    alignment = report.plan.alignment
    assert alignment is not None and not alignment.pairs and not alignment.ambiguous
    assert "not the same architecture" in alignment.note
    assert not report.loaded


def test_random_unrelated_models_never_align() -> None:
    """Models built from disjoint random word lists and random layer sizes: alignment pairs nothing or refuses,
    and never loads a tensor into a key of another role (their roles differ by construction: no shape in common
    except by chance, which the coverage rule catches)."""
    rng = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    for trial in range(40):
        sizes_a = [rng.choice((4, 6, 8, 12)) for _ in range(6)]
        sizes_b = [rng.choice((5, 7, 9, 11)) for _ in range(6)]
        a = nn.Sequential(*(nn.Linear(x, y) for x, y in pairwise(sizes_a)))
        b = nn.Module()
        for i, (x, y) in enumerate(pairwise(sizes_b)):
            setattr(b, rng.choice(words) + str(i), nn.Linear(x, y))
        report = tw.load_into(b, a.state_dict(), align="auto", dry_run=True, strict=False)
        assert not report.loaded, trial


def test_align_off_by_default_changes_nothing() -> None:
    old = randomised(OldGPT())
    with pytest.raises(LoadError) as error:
        tw.load_into(NewGPT(), old.state_dict())
    assert error.value.code in ("missing-keys", "unexpected-keys")
    assert error.value.report is not None and error.value.report.plan.alignment is None
    with pytest.raises(RuleError) as bad:
        tw.load_into(NewGPT(), old.state_dict(), align="yes")  # type: ignore[arg-type]
    assert bad.value.code == "bad-align"


def test_report_json_carries_pairs_and_confidence() -> None:
    old = randomised(OldGPT(n=3))
    report = tw.load_into(NewGPT(n=3), old.state_dict(), align="auto", dry_run=True)
    data = report.plan.alignment.to_dict()  # type: ignore[union-attr]
    json.dumps(data)
    assert 0 < data["confidence"] <= 1
    pairs = {(p["source"], p["target"]) for p in data["pairs"]}
    assert ("h.2.attn.c_attn", "layers.2.self_attention.qkv") in pairs and ("wte", "embed") in pairs
    assert all(0 < p["confidence"] <= 1 and p["evidence"] for p in data["pairs"])


def test_rename_mapping_reproduces_the_alignment() -> None:
    """The aligned pairs written as a rename (to keep in code) load the same keys without align."""
    old = randomised(OldResNet(layers=(2, 3, 2, 2)))
    new = NewResNet(layers=(2, 3, 2, 2))
    report = tw.load_into(new, old.state_dict(), align="auto", dry_run=True)
    mapping = rename_mapping(report.plan.alignment)  # type: ignore[arg-type]
    assert mapping and all(p.startswith("^") for p in mapping)
    for pattern in mapping:
        re.compile(pattern)
    again = tw.load_into(new, old.state_dict(), rename=mapping, dry_run=True)
    assert again.ok
    assert {(a.key, a.target) for a in again.loaded} == {(a.key, a.target) for a in report.loaded}


def test_single_tensors_align_by_shape() -> None:
    """Tensors that are not a module's weight/bias (a ViT's cls_token, pos_embed) are units of their own."""
    old = nn.Module()
    old.cls_token = nn.Parameter(torch.randn(1, 1, 8))
    old.pos_embed = nn.Parameter(torch.randn(1, 5, 8))
    old.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
    new = nn.Module()
    new.class_embedding = nn.Parameter(torch.zeros(1, 1, 8))
    new.position_embedding = nn.Parameter(torch.zeros(1, 5, 8))
    new.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
    report = tw.load_into(new, old.state_dict(), align="auto")
    assert report.ok
    assert torch.equal(new.class_embedding, old.cls_token) and torch.equal(new.position_embedding, old.pos_embed)
    assert torch.equal(new.layers[2].weight, old.blocks[2].weight)


def test_camel_case_snake_case_and_typos_tie_names() -> None:
    """Identical projections told apart by names written another way: CamelCase against snake_case, a typo."""
    old = nn.Module()
    old.blocks = nn.ModuleList()
    for _ in range(2):
        block = nn.Module()
        for name in ("QueryProj", "KeyProj", "ValueProj", "OutProj"):
            setattr(block, name, nn.Linear(6, 6))
        old.blocks.append(block)
    randomised(old)
    new = _QKVNew(n=2, d=6, names=("querry_proj", "key_proj", "valeu_proj", "out_proj"))
    assert tw.load_into(new, old.state_dict(), align="auto").ok
    for i in range(2):
        attention = new.layers[i].self_attention
        for a, b in (("QueryProj", "querry_proj"), ("KeyProj", "key_proj"), ("ValueProj", "valeu_proj")):
            assert torch.equal(getattr(attention, b).weight, getattr(old.blocks[i], a).weight)
        assert torch.equal(attention.out_proj.bias, old.blocks[i].OutProj.bias)


def test_identifiers_are_not_layer_indices() -> None:
    """Numbers that are identifiers (``unit_83125``), not a run of layer indices, do not order anything: the
    modules are ambiguous, not paired by the numbers' order."""
    rng = random.Random(2)
    old = nn.Module()
    for _ in range(4):
        setattr(old, f"unit_{rng.randrange(10**6)}", nn.Linear(4, 4))
    new = nn.Module()
    for _ in range(4):
        setattr(new, f"cell_{rng.randrange(10**6)}", nn.Linear(4, 4))
    with pytest.raises(LoadError) as error:
        tw.load_into(new, randomised(old).state_dict(), align="auto")
    assert error.value.code == "ambiguous-alignment"
    # layer numbers with a gap or an offset still count layers: 1..4 against 0..3, 0, 1, 3 against 0, 2, 4
    old = nn.Module()
    for i in (1, 2, 3, 4):
        setattr(old, f"layer{i}", nn.Linear(4, 4))
    new = nn.Module()
    new.stages = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
    randomised(old)
    assert tw.load_into(new, old.state_dict(), align="auto").ok
    assert all(torch.equal(new.stages[i].weight, getattr(old, f"layer{i + 1}").weight) for i in range(4))


class _HFLayer(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.self_attn, name, nn.Linear(d, d, bias=False))
        self.input_layernorm = nn.LayerNorm(d)
        self.post_attention_layernorm = nn.LayerNorm(d)


class _MetaLayer(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.attention = nn.Module()
        for name in ("wq", "wk", "wv", "wo"):
            setattr(self.attention, name, nn.Linear(d, d, bias=False))
        self.attention_norm = nn.LayerNorm(d)
        self.ffn_norm = nn.LayerNorm(d)


def test_related_words_are_not_a_match_when_the_telling_word_differs(tmp_path: Path) -> None:
    """LLaMA: HF's post_attention_layernorm is Meta's ffn_norm, not its attention_norm, though it shares the word
    'attention' with it: a word in common that leaves the other side's telling word ('post') unmatched ties
    nothing, so the norms refuse (never a swap reported as OK). Meta's wq/wk/wv/wo do tie to q_proj/k_proj...; and
    the file's keys are stored sorted, so no rename in declaration order is offered."""
    old = nn.ModuleList(_HFLayer() for _ in range(3))
    randomised(old)
    new = randomised(nn.ModuleList(_MetaLayer() for _ in range(3)), seed=1)
    before = snapshot(new)
    path = tmp_path / "hf.safetensors"
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path))
    with pytest.raises(LoadError) as error:
        tw.load_into(new, path, align="auto")
    assert error.value.code == "ambiguous-alignment" and unchanged(new, before)
    (group,) = error.value.report.plan.ambiguous  # type: ignore[union-attr]
    assert {s.rpartition(".")[2] for s in group.sources} == {"input_layernorm", "post_attention_layernorm"}
    assert group.rename == () and "sorted" in group.reason
    assert "rename={'" not in str(error.value)
    pairs = {(p.source, p.target) for p in error.value.report.plan.alignment.pairs}  # type: ignore[union-attr]
    for i in range(3):
        for a, b in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"), ("o_proj", "wo")):
            assert (f"{i}.self_attn.{a}", f"{i}.attention.{b}") in pairs
    # the same from a torch file (declaration order kept): the suggested rename pairs them in that order
    torch.save(old.state_dict(), tmp_path / "hf.pt")
    with pytest.raises(LoadError) as error:
        tw.load_into(new, tmp_path / "hf.pt", align="auto")
    (group,) = error.value.report.plan.ambiguous  # type: ignore[union-attr]
    assert dict(group.rename)[r"^(0|1|2)\.input_layernorm\."] == r"\g<1>.attention_norm."
    assert tw.load_into(new, tmp_path / "hf.pt", align="auto", rename=dict(group.rename)).ok
    assert torch.equal(new[2].ffn_norm.weight, old[2].post_attention_layernorm.weight)


def test_the_aligned_section_never_hides_which_is_which() -> None:
    """Long names that differ only at the end are printed whole, however narrow the report."""
    old = nn.Module()
    old.model = nn.Module()
    old.model.decoder_layers_with_a_long_name = nn.ModuleList(_HFLayer() for _ in range(2))
    new = nn.Module()
    new.transformer_blocks_with_a_long_name = nn.ModuleList(nn.Module() for _ in range(2))
    for layer in new.transformer_blocks_with_a_long_name:
        layer.attention_module = nn.Module()
        for name in ("query", "key", "value", "output"):
            setattr(layer.attention_module, name, nn.Linear(8, 8, bias=False))
        layer.pre_norm = nn.LayerNorm(8)
        layer.post_norm = nn.LayerNorm(8)
    report = tw.load_into(new, old.state_dict(), align="auto", dry_run=True, strict=False, skip=["*norm*"])
    from torchweights.report.text import render
    from torchweights.style import Style, using

    with using(Style(width=60)):
        text = render(report)
    section = text[text.index("aligned (") :]
    assert "model.decoder_layers_with_a_long_name.{0..1}.self_attn.q_proj" in section
    assert "transformer_blocks_with_a_long_name.{0..1}.attention_module.query" in section


def test_an_added_block_is_explained_not_guessed() -> None:
    """A stage with one block more than the checkpoint's: which three of the four blocks correspond cannot be told,
    so none of that stage is paired, and the error says why; the other stages align."""
    old = randomised(OldResNet(layers=(2, 2, 2, 2)))
    new = NewResNet(layers=(3, 2, 2, 2))
    before = snapshot(new)
    with pytest.raises(LoadError) as error:
        tw.load_into(new, old.state_dict(), align="auto")
    assert unchanged(new, before)
    text = " ".join(str(error.value).split())
    assert "not paired:" in text and "not the same number" in text
    report = error.value.report
    assert report is not None and report.plan.alignment is not None and report.plan.alignment.unequal
    loaded = {a.target for a in report.loaded}
    assert "stages.1.blocks.1.conv_b.weight" in loaded and not any(t.startswith("stages.0.") for t in loaded)


def test_renames_fold_families_whose_indices_stay() -> None:
    """A family whose layer indices are kept is one regex naming exactly those indices; indices that change or do
    not form a full grid stay one rename per module; either way the renames load what alignment did."""
    from torchweights.plan.renames import module_renames

    folded = module_renames([(f"h.{i}.attn", f"layers.{i}.mix", False) for i in range(3)])
    assert [(p, r) for p, r, _ in folded] == [(r"^h\.(0|1|2)\.attn\.", r"layers.\g<1>.mix.")]
    ragged = [("s.0.b.0", "t.0.c.0"), ("s.0.b.1", "t.0.c.1"), ("s.1.b.0", "t.1.c.0")]  # no s.1.b.1: not a grid
    assert len(module_renames([(a, b, False) for a, b in ragged])) == 3
    renumbered = module_renames([(f"layer{i + 1}.0", f"stages.{i}.blocks.0", False) for i in range(2)])
    assert len(renumbered) == 2
    old = randomised(OldGPT(n=4))
    report = tw.load_into(NewGPT(n=4), old.state_dict(), align="auto", dry_run=True)
    mapping = rename_mapping(report.plan.alignment)  # type: ignore[arg-type]
    assert len(mapping) == 9  # 6 block families + wte, wpe, ln_f
    again = tw.load_into(NewGPT(n=4), old.state_dict(), rename=mapping, dry_run=True)
    assert again.ok and {(a.key, a.target) for a in again.loaded} == {(a.key, a.target) for a in report.loaded}
