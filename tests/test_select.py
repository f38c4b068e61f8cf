"""``tw.load(path, select=[...])`` and ``Checkpoint.get_tensor``: some tensors, reading only their own bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

import torchweights as tw
from torchweights.errors import CorruptCheckpointError, RuleError


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "encoder.layer.0.weight": torch.randn(64, 64, generator=g),
        "encoder.layer.0.bias": torch.randn(64, generator=g),
        "decoder.weight": torch.randn(32, 64, generator=g).to(torch.bfloat16),
        "head[0].weight": torch.randn(3, generator=g),
    }


def _save(path: Path, fmt: str, state: dict[str, torch.Tensor]) -> Path:
    if fmt == "safetensors":
        safetensors_torch.save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_select_reads_the_matching_tensors_bit_for_bit(tmp_path: Path, fmt: str) -> None:
    state = _state()
    path = _save(tmp_path / f"m.{fmt}", fmt, state)
    got = tw.load(path, select=["encoder.*"])
    assert set(got) == {"encoder.layer.0.weight", "encoder.layer.0.bias"}  # in file order (safetensors sorts)
    for name, tensor in got.items():
        assert torch.equal(tensor, state[name]) and tensor.dtype == state[name].dtype
    # a pattern without wildcards selects the subtree; a string is one pattern; special characters in names
    assert set(tw.load(path, select="encoder.layer")) == {"encoder.layer.0.weight", "encoder.layer.0.bias"}
    assert torch.equal(tw.open(path).get_tensor("head[0].weight"), state["head[0].weight"])


def test_get_tensor_reads_only_its_own_storage(tmp_path: Path) -> None:
    """Damage the bytes of one tensor in a torch zip: the other still comes back, the damaged one is bad-crc."""
    state = {"big": torch.randn(256, 256), "small": torch.arange(10, dtype=torch.int64)}
    path = _save(tmp_path / "m.pt", "zip", state)
    ckpt = tw.open(path)
    ref = ckpt.records["big"].storage
    assert ref is not None
    data = bytearray(path.read_bytes())
    data[ref.offset + 1000] ^= 0xFF
    path.write_bytes(bytes(data))
    ckpt = tw.open(path)
    assert torch.equal(ckpt.get_tensor("small"), state["small"])
    assert torch.equal(tw.load(path, select=["small"])["small"], state["small"])
    with pytest.raises(CorruptCheckpointError) as err:
        ckpt.get_tensor("big")
    assert err.value.code == "bad-crc"


def test_shared_storages_stay_shared_within_a_selection(tmp_path: Path) -> None:
    base = torch.randn(8, 8)
    path = _save(tmp_path / "tied.pt", "zip", {"a": base, "b": base[2:4], "c": torch.ones(2)})
    got = tw.load(path, select=["a", "b"])
    assert got["a"].untyped_storage().data_ptr() == got["b"].untyped_storage().data_ptr()
    assert torch.equal(got["b"], base[2:4])


def test_selection_errors_name_the_pattern_and_close_names(tmp_path: Path) -> None:
    path = _save(tmp_path / "m.pt", "zip", _state())
    with pytest.raises(RuleError) as err:
        tw.load(path, select=["encoder.*", "decodr.weight"])
    assert err.value.code == "nothing-selected" and "'decodr.weight'" in str(err.value)
    assert "'decoder.weight'" in str(err.value)  # the close name is suggested
    for bad in ([3], [""], [None]):
        with pytest.raises(RuleError) as err:
            tw.load(path, select=bad)  # type: ignore[arg-type]
        assert err.value.code == "bad-select"
    with pytest.raises(RuleError) as err:
        tw.open(path).get_tensor("decoder.weights")
    assert err.value.code == "no-such-tensor" and "'decoder.weight'" in str(err.value)


def test_select_skips_unreadable_tensors_it_does_not_select(tmp_path: Path) -> None:
    """A nested tensor tw.load cannot rebuild blocks a full load, not a selection that leaves it out."""
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    path = tmp_path / "n.pt"
    torch.save({"nested": nested, "plain": torch.full((2,), 5.0)}, path)
    with pytest.raises(tw.UnsupportedCheckpointError):
        tw.load(path)
    assert torch.equal(tw.load(path, select=["plain"])["plain"], torch.full((2,), 5.0))


def test_a_pattern_below_a_container_prefix_gets_the_full_pattern(tmp_path: Path) -> None:
    path = _save(tmp_path / "nested.pt", "zip", {"a": torch.ones(1)})
    torch.save({"state_dict": _state(), "epoch": 3}, path)
    with pytest.raises(RuleError) as err:
        tw.load(path, select=["encoder.*"])
    assert "select 'state_dict.encoder.*'" in str(err.value)
    assert set(tw.load(path, select=["state_dict.encoder.*"])) == {
        "state_dict.encoder.layer.0.weight",
        "state_dict.encoder.layer.0.bias",
    }
