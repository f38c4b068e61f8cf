"""Tests of torchweights.fold: folded name patterns, the prefix tree and human-readable units."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchweights.fold import TreeRow, fold_names, format_indices, human_bytes, human_count, is_index, prefix_tree


def expand(pattern: str) -> set[str]:
    """Every name a folded pattern stands for (test oracle; names without empty components)."""
    choices: list[list[str]] = []
    for part in re.findall(r"\{[^}]*\}|[^.]+", pattern):  # dotted components; ".." only occurs inside braces
        m = re.fullmatch(r"\{(.*)\}", part)
        if not m:
            choices.append([part])
            continue
        values: list[str] = []
        for item in m.group(1).split(","):
            lo, _, hi = item.partition("..")
            values += [str(i) for i in range(int(lo), int(hi or lo) + 1)]
        choices.append(values)
    return {".".join(combo) for combo in itertools.product(*choices)}


def patterns(names: list[str]) -> list[str]:
    return [p for p, _ in fold_names(names)]


# ------------------------------------------------------------------------------------------------ is_index / format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", True),
        ("7", True),
        ("123", True),
        ("01", False),
        ("-1", False),
        ("", False),
        ("a1", False),
        ("1a", False),
        ("\u0661", False),
    ],
)
def test_is_index(text: str, expected: bool) -> None:
    assert is_index(text) is expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5], "5"),
        ([0, 1], "{0..1}"),
        (range(12), "{0..11}"),
        ([0, 2, 5], "{0,2,5}"),
        ([7, 0, 1, 2, 3], "{0..3,7}"),
        ([3, 3, 4], "{3..4}"),
        ([0, 1, 3, 4, 9], "{0..1,3..4,9}"),
    ],
)
def test_format_indices(values: list[int], expected: str) -> None:
    assert format_indices(values) == expected


def test_format_indices_empty() -> None:
    with pytest.raises(ValueError):
        format_indices([])


# ------------------------------------------------------------------------------------------------ fold_names


def test_fold_contiguous() -> None:
    names = [f"layers.{i}.attn.q.weight" for i in range(12)]
    assert fold_names(names) == [("layers.{0..11}.attn.q.weight", names)]


def test_fold_gaps() -> None:
    assert patterns(["a.0.w", "a.2.w", "a.5.w"]) == ["a.{0,2,5}.w"]
    assert patterns([f"b.{i}.w" for i in (0, 1, 2, 3, 7)]) == ["b.{0..3,7}.w"]


def test_fold_single_member_stays_literal() -> None:
    assert fold_names(["layers.5.weight"]) == [("layers.5.weight", ["layers.5.weight"])]


def test_fold_names_without_indices_untouched() -> None:
    names = ["encoder.weight", "decoder.bias", "layer0.w", "x.01.w", "x.-1.w"]
    assert fold_names(names) == [(n, [n]) for n in names]


def test_fold_leading_zero_not_an_index() -> None:
    # "01" is not folded with "1": the pattern must expand back to the exact names.
    assert patterns(["x.01", "x.1", "x.2"]) == ["x.01", "x.{1..2}"]


def test_fold_full_product_of_two_positions() -> None:
    names = [f"blocks.{b}.experts.{e}.w" for b in range(2) for e in range(8)]
    assert fold_names(names) == [("blocks.{0..1}.experts.{0..7}.w", names)]


def test_fold_product_in_any_order() -> None:
    names = [f"blocks.{b}.experts.{e}.w" for e in range(3) for b in range(2)]
    assert fold_names(names) == [("blocks.{0..1}.experts.{0..2}.w", names)]


def test_fold_not_a_product_splits_exactly() -> None:
    names = [f"moe.{layer}.experts.{e}.w" for layer in range(6) for e in range(4 if layer == 0 else 8)]
    result = fold_names(names)
    assert [p for p, _ in result] == ["moe.0.experts.{0..3}.w", "moe.{1..5}.experts.{0..7}.w"]
    assert [len(m) for _, m in result] == [4, 40]


def test_fold_not_a_product_generic() -> None:
    names = ["a.0.b.0", "a.0.b.1", "a.1.b.0"]
    result = fold_names(names)
    assert [p for p, _ in result] == ["a.0.b.{0..1}", "a.1.b.0"]


def test_fold_first_appearance_order() -> None:
    names = ["emb.weight"]
    for i in range(3):
        names += [f"layers.{i}.q", f"layers.{i}.k"]
    names += ["head.weight", "layers.3.q"]
    assert patterns(names) == ["emb.weight", "layers.{0..3}.q", "layers.{0..2}.k", "head.weight"]


def test_fold_members_keep_input_order_and_duplicates_drop() -> None:
    names = ["a.3.w", "a.1.w", "a.2.w", "a.1.w"]
    assert fold_names(names) == [("a.{1..3}.w", ["a.3.w", "a.1.w", "a.2.w"])]


def test_fold_different_depths_never_mix() -> None:
    assert patterns(["a.0", "a.1", "a.0.b", "a.1.b"]) == ["a.{0..1}", "a.{0..1}.b"]


def test_fold_leading_and_trailing_indices() -> None:
    assert patterns(["0.w", "1.w", "w.0", "w.1", "0", "1", "2"]) == ["{0..1}.w", "w.{0..1}", "{0..2}"]


def test_fold_accepts_generators_and_empty() -> None:
    assert fold_names(iter([])) == []
    assert patterns(f"h.{i}" for i in range(3)) == ["h.{0..2}"]


name_part = st.one_of(st.sampled_from(["a", "b", "w", "layers", "01"]), st.integers(0, 6).map(str))
names_strategy = st.lists(st.lists(name_part, min_size=1, max_size=4).map(".".join), max_size=40)


@given(names_strategy)
def test_fold_is_an_exact_partition(names: list[str]) -> None:
    result = fold_names(names)
    unique = list(dict.fromkeys(names))
    members = [m for _, ms in result for m in ms]
    assert sorted(members) == sorted(unique)  # every name exactly once
    for pattern, ms in result:
        assert expand(pattern) == set(ms)  # the pattern stands for exactly its members
        assert ms == [n for n in unique if n in set(ms)]  # members in input order
    firsts = [unique.index(ms[0]) for _, ms in result]
    assert firsts == sorted(firsts)  # patterns in first-appearance order


@given(st.sets(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1))
def test_fold_product_detection(pairs: set[tuple[int, int]]) -> None:
    names = [f"x.{a}.y.{b}" for a, b in sorted(pairs)]
    result = fold_names(names)
    heads, tails = {a for a, _ in pairs}, {b for _, b in pairs}
    if len(pairs) == len(heads) * len(tails):
        assert len(result) == 1
    else:
        assert len(result) > 1


# ------------------------------------------------------------------------------------------------ prefix_tree


def rows(tree: list[TreeRow]) -> list[tuple[int, str, int, int, int]]:
    return [(r.depth, r.label, r.tensors, r.numel, r.nbytes) for r in tree]


def llama_items(layers: int = 12) -> list[tuple[str, int, int]]:
    items = [("model.embed_tokens.weight", 1000, 4000)]
    for i in range(layers):
        items += [(f"model.layers.{i}.self_attn.{p}_proj.weight", 100, 200) for p in "qkvo"]
        items += [(f"model.layers.{i}.mlp.up_proj.weight", 300, 600)]
    items += [("model.norm.weight", 10, 40), ("lm_head.weight", 1000, 4000)]
    return items


def test_prefix_tree_folds_layers() -> None:
    tree = prefix_tree(llama_items(), max_depth=3)
    assert rows(tree) == [
        (0, "model", 62, 9410, 20840),
        (1, "embed_tokens.weight", 1, 1000, 4000),
        (1, "layers.{0..11}", 60, 8400, 16800),
        (2, "self_attn", 48, 4800, 9600),
        (2, "mlp.up_proj.weight", 12, 3600, 7200),
        (1, "norm.weight", 1, 10, 40),
        (0, "lm_head.weight", 1, 1000, 4000),
    ]
    assert tree[2].path == "model.layers.{0..11}"
    assert tree[3].path == "model.layers.{0..11}.self_attn"


def test_prefix_tree_collapses_single_child_chain_to_root() -> None:
    items = [(f"model.layers.{i}.{p}", 1, 2) for i in range(4) for p in ("a", "b")]
    assert rows(prefix_tree(items)) == [(0, "model.layers.{0..3}", 8, 8, 16), (1, "a", 4, 4, 8), (1, "b", 4, 4, 8)]


def test_prefix_tree_depth_limits() -> None:
    items = llama_items()
    assert rows(prefix_tree(items, max_depth=1)) == [
        (0, "model", 62, 9410, 20840),
        (0, "lm_head.weight", 1, 1000, 4000),
    ]
    assert prefix_tree(items, max_depth=0) == []
    deep = prefix_tree(items, max_depth=10)
    assert (3, "q_proj.weight", 12, 1200, 2400) in rows(deep)


def test_prefix_tree_totals_are_sums() -> None:
    items = llama_items(5)
    tree = prefix_tree(items, max_depth=10)
    top = [r for r in tree if r.depth == 0]
    assert sum(r.tensors for r in top) == len(items)
    assert sum(r.numel for r in top) == sum(n for _, n, _ in items)
    assert sum(r.nbytes for r in top) == sum(b for _, _, b in items)


def test_prefix_tree_keeps_different_layer_structures_apart() -> None:
    items = []
    for i in range(6):
        if i < 2:
            items.append((f"layers.{i}.mlp.w", 1, 2))
        else:
            items += [(f"layers.{i}.mlp.experts.{e}.w", 1, 2) for e in range(4)]
    assert rows(prefix_tree(items, max_depth=2)) == [
        (0, "layers", 18, 18, 36),
        (1, "{0..1}.mlp.w", 2, 2, 4),
        (1, "{2..5}.mlp.experts.{0..3}.w", 16, 16, 32),
    ]


def test_prefix_tree_node_with_own_tensor_is_not_collapsed() -> None:
    items = [("a", 1, 1), ("a.b", 2, 2)]
    assert rows(prefix_tree(items)) == [(0, "a", 2, 3, 3), (1, "b", 1, 2, 2)]


def test_prefix_tree_top_level_indices_and_empty() -> None:
    assert rows(prefix_tree([("0.w", 1, 1), ("1.w", 1, 1), ("2", 5, 5)])) == [
        (0, "{0..1}.w", 2, 2, 2),
        (0, "2", 1, 5, 5),
    ]
    assert prefix_tree([]) == []


def test_tree_row_is_frozen() -> None:
    row = TreeRow(0, "a", 1, 2, 3)
    with pytest.raises(AttributeError):
        row.depth = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (134, "134 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1500, "1.5 kB"),
        (999_949, "999.9 kB"),
        (999_950, "1.0 MB"),
        (1_500_000, "1.5 MB"),
        (2_100_000_000, "2.1 GB"),
        (3_000_000_000_000, "3.0 TB"),
        (-1_500_000, "-1.5 MB"),
        (10**27, "1000.0 YB"),
    ],
)
def test_human_bytes(n: int, expected: str) -> None:
    assert human_bytes(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (532, "532"),
        (999, "999"),
        (1000, "1.0K"),
        (1234, "1.2K"),
        (1_234_567, "1.2M"),
        (124_439_808, "124.4M"),
        (999_999_999, "1.0B"),
        (7_000_000_000, "7.0B"),
        (1_500_000_000_000, "1.5T"),
        (-2_000, "-2.0K"),
    ],
)
def test_human_count(n: int, expected: str) -> None:
    assert human_count(n) == expected


def test_human_precision() -> None:
    assert human_bytes(1_234_567, precision=2) == "1.23 MB"
    assert human_count(1_234_567, precision=0) == "1M"


@given(st.integers(min_value=0, max_value=10**20))
def test_human_units_are_short_and_monotone_in_unit(n: int) -> None:
    for text in (human_bytes(n), human_count(n)):
        number = re.match(r"-?[\d.]+", text)
        assert number is not None
        assert float(number.group()) < 1000
