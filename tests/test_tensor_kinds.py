"""Tensor kinds and flags, each compared with ``torch.load(weights_only=True)`` on the same file: conjugate and
negative bits, saved Python attributes, sparse layouts (COO, CSR, CSC, BSR, BSC) with torch's index validation,
kinds that cannot be rebuilt (refused by name, never a silently shorter dict), an empty storage seen under two
dtypes, and tensors pickled with plain ``pickle`` (storages as ``torch.storage._load_from_bytes``)."""

from __future__ import annotations

import collections
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import torchweights as tw
from torchweights.errors import CorruptCheckpointError, UnsupportedCheckpointError
from torchweights.formats._pickled import read_embedded
from torchweights.unpickle.stream import scan_stream, unpickle
from torchweights.unpickle.values import EmbeddedStorage, PickledTensor

warnings.filterwarnings("ignore", message=".*(TypedStorage|Sparse|sparse).*")

FORMATS = ["zip", "legacy"]


def _save(obj: Any, path: Path, fmt: str) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


def _torch(path: Path) -> dict[str, Any]:
    with torch.sparse.check_sparse_tensor_invariants():
        return torch.load(path, weights_only=True)  # type: ignore[no-any-return]


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.layout == want.layout and got.dtype == want.dtype and got.shape == want.shape
    if want.layout == torch.sparse_coo:
        assert got.is_coalesced() == want.is_coalesced()
        _same(got._indices(), want._indices())
        _same(got._values(), want._values())
    elif want.layout != torch.strided:
        assert torch.equal(got.to_dense(), want.to_dense())
        for part in ("values", "crow_indices", "col_indices", "ccol_indices", "row_indices"):
            try:
                _same(getattr(got, part)(), getattr(want, part)())
            except RuntimeError:
                continue  # not a part of this layout
    else:
        assert got.stride() == want.stride() and got.is_conj() == want.is_conj() and got.is_neg() == want.is_neg()
        assert torch.equal(got.resolve_conj().resolve_neg(), want.resolve_conj().resolve_neg())


def _flagged() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.complex(torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g))
    return {
        "conj": torch.conj(z),
        "conj128": torch.conj(z.to(torch.complex128))[1:, ::2],
        "neg": torch._neg_view(torch.randn(5, generator=g)),
        "neg_int": torch._neg_view(torch.arange(-3, 3)),
        "conj_neg": torch.conj(torch._neg_view(z)),
        "plain": z,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_conjugate_and_negative_bits_match_torch_load(tmp_path: Path, fmt: str) -> None:
    path = _save(_flagged(), tmp_path / "flags.pt", fmt)
    records = tw.open(path).records
    assert records["conj"].conj and not records["conj"].neg and records["neg"].neg and not records["plain"].conj
    assert records["conj_neg"].conj and records["conj_neg"].neg
    want = _torch(path)
    for mmap in (False, True):
        got = tw.load(path, mmap=mmap)
        for name in want:
            _same(got[name], want[name])
    assert complex(tw.load(path)["conj"][0, 0]) == complex(want["conj"][0, 0])  # the value, not the stored one


def test_flags_are_applied_by_load_into_and_never_mapped_raw(tmp_path: Path) -> None:
    model = torch.nn.Module()
    model.register_buffer("conj", torch.zeros(4, 3, dtype=torch.complex64))
    model.register_buffer("neg", torch.zeros(5))
    model.register_buffer("neg_int", torch.zeros(6, dtype=torch.int64))
    model.register_buffer("conj_neg", torch.zeros(4, 3, dtype=torch.complex64))
    flagged = _flagged()
    sd = {k: flagged[k] for k in ("conj", "neg", "neg_int", "conj_neg")}
    path = _save(sd, tmp_path / "flags.pt", "zip")
    tw.load_into(model, path)
    for name, value in sd.items():
        assert torch.equal(getattr(model, name), value.resolve_conj().resolve_neg()), name
    meta = torch.nn.Module()
    with torch.device("meta"):
        meta.register_buffer("conj", torch.zeros(4, 3, dtype=torch.complex64))
        meta.register_buffer("neg", torch.zeros(5))
        meta.register_buffer("neg_int", torch.zeros(6, dtype=torch.int64))
        meta.register_buffer("conj_neg", torch.zeros(4, 3, dtype=torch.complex64))
    tw.load_into(meta, path, mmap=True, check_crc=False)
    for name, value in sd.items():
        got = getattr(meta, name)
        assert not got.is_conj() and not got.is_neg(), name
        assert torch.equal(got, value.resolve_conj().resolve_neg()), name


def test_flags_of_strided_views_and_into_parameters_are_applied_once(tmp_path: Path) -> None:
    """Views that are not contiguous are rebuilt from a copy of their storage; their bits are applied once (they
    were applied twice: the stored values landed), and parameters that require grad take flagged values too (the
    in-place conjugate or negation raised torch's leaf-variable error)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, dtype=torch.complex64, generator=g)
    sd = {
        "conj_t": torch.conj(z).t(),
        "neg_t": torch._neg_view(torch.randn(3, 5, generator=g)).t(),
        "conj_neg_t": torch.conj(torch._neg_view(z)).t(),
        "conj": torch.conj(z),
        "neg": torch._neg_view(torch.randn(5, generator=g)),
    }
    path = _save(sd, tmp_path / "flags.pt", "zip")
    records = tw.open(path).records
    assert not records["conj_t"].is_contiguous and records["conj_t"].conj and records["neg_t"].neg
    for as_parameter in (False, True):
        model = torch.nn.Module()
        for name, value in sd.items():
            empty = torch.zeros(value.shape, dtype=value.dtype)
            if as_parameter:
                model.register_parameter(name, torch.nn.Parameter(empty))
            else:
                model.register_buffer(name, empty)
        assert tw.load_into(model, path).ok
        for name, value in sd.items():
            got = getattr(model, name)
            assert not got.is_conj() and not got.is_neg(), name
            assert torch.equal(got.detach(), value.resolve_conj().resolve_neg()), (name, as_parameter)
            assert got.requires_grad == as_parameter


def test_cast_of_a_negative_view_keeps_its_sign(tmp_path: Path) -> None:
    model = torch.nn.Module()
    model.register_buffer("neg", torch.zeros(5, dtype=torch.float64))
    value = torch._neg_view(torch.arange(1.0, 6.0))
    path = _save({"neg": value}, tmp_path / "n.pt", "zip")
    tw.load_into(model, path)
    assert torch.equal(model.neg, -torch.arange(1.0, 6.0, dtype=torch.float64))


def _metadata_pickle(metadata: Any, extra: tuple[Any, ...] = (), hooks: Any = None) -> bytes:
    """A torch.save zip whose one tensor is rebuilt with ``metadata`` (and ``extra`` trailing arguments)."""

    class Hand:
        def __reduce__(self) -> Any:
            t = torch.tensor([1.0, 2.0])
            storage = torch.storage.TypedStorage(wrap_storage=t.untyped_storage(), dtype=torch.float32, _internal=True)
            args = (storage, 0, (2,), (1,), False, hooks or collections.OrderedDict(), metadata, *extra)
            return (torch._utils._rebuild_tensor_v2, args)

    buf = io.BytesIO()
    torch.save({"t": Hand()}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("metadata", "extra", "code"),
    [
        ({"neg": True, "sparkle": True}, (), "unsupported-tensor-flag"),
        ({"neg": 1}, (), "unsupported-tensor-flag"),
        ("conj", (), "unsupported-tensor-flag"),
        ({"neg": True}, ("more",), "unsupported-tensor-flag"),
        ({"conj": True}, (), "bad-pickle"),  # the conjugate bit on a float tensor: torch fails an internal assert
    ],
    ids=["unknown-key", "not-bool", "not-dict", "extra-argument", "conj-on-real"],
)
def test_unknown_flags_are_errors_never_ignored(
    tmp_path: Path, metadata: Any, extra: tuple[Any, ...], code: str
) -> None:
    path = tmp_path / "t.pt"
    path.write_bytes(_metadata_pickle(metadata, extra))
    with pytest.raises((UnsupportedCheckpointError, CorruptCheckpointError)) as info:
        tw.open(path)
    assert info.value.code == code, str(info.value)


def test_known_metadata_is_applied_on_a_hand_built_file(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    path.write_bytes(_metadata_pickle({"neg": True}))
    want = torch.load(path, weights_only=True)["t"]
    _same(tw.load(path)["t"], want)
    assert torch.equal(tw.load(path)["t"], torch.tensor([-1.0, -2.0]))


def test_backward_hooks_that_are_not_empty_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    path.write_bytes(_metadata_pickle(None, hooks=collections.OrderedDict(h=1)))
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "unsupported-tensor-flag" and "backward hooks" in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameter_attributes_are_set_as_torch_sets_them(tmp_path: Path, fmt: str) -> None:
    p = torch.nn.Parameter(torch.randn(3))
    p.tag = "encoder"  # type: ignore[attr-defined]
    t = torch.randn(2)
    t.scale = 0.5  # type: ignore[attr-defined]
    path = _save({"p": p, "t": t}, tmp_path / "attrs.pt", fmt)
    want = torch.load(path, weights_only=True)
    ckpt = tw.open(path)
    assert ckpt.records["p"].attributes == {"tag": "encoder"} and ckpt.records["t"].attributes == {"scale": 0.5}
    got = tw.load(path)
    assert got["p"].tag == want["p"].tag and got["t"].scale == want["t"].scale  # type: ignore[attr-defined]
    assert torch.equal(got["p"], want["p"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_and_grad_flags_come_back_as_state_dict_tensors(tmp_path: Path, fmt: str) -> None:
    """tw.load returns what ``state_dict()`` holds: plain tensors not requiring grad; the file's flags stay in the
    records (torch.load would give a Parameter and a tensor requiring grad)."""
    path = _save(
        {"p": torch.nn.Parameter(torch.randn(3)), "g": torch.randn(2, requires_grad=True)}, tmp_path / "p.pt", fmt
    )
    ckpt = tw.open(path)
    assert (ckpt.records["p"].is_parameter, ckpt.records["p"].requires_grad) == (True, True)
    assert (ckpt.records["g"].is_parameter, ckpt.records["g"].requires_grad) == (False, True)
    want = torch.load(path, weights_only=True)
    for name, got in tw.load(path).items():
        assert type(got) is torch.Tensor and not got.requires_grad, name
        assert torch.equal(got, want[name].detach()), name


def test_an_attribute_shadowing_torch_is_refused(tmp_path: Path) -> None:
    t = torch.randn(2)
    t.__dict__["shape"] = "not a shape"
    path = _save({"t": t}, tmp_path / "shadow.pt", "zip")
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "unsupported-tensor-state" and "'shape'" in str(info.value)


def _sparse() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    dense = torch.randn(6, 8, generator=g)
    dense[dense.abs() < 0.8] = 0
    coo = dense.to_sparse()
    uncoalesced = torch.sparse_coo_tensor(torch.tensor([[0, 0, 1], [2, 2, 0]]), torch.tensor([1.0, 2.0, 3.0]), (2, 3))
    return {
        "coo": coo,
        "coo_uncoalesced": uncoalesced,
        "coo_hybrid": torch.randn(4, 3, generator=g).to_sparse(1),
        "csr": dense.to_sparse_csr(),
        "csc": dense.to_sparse_csc(),
        "bsr": dense.to_sparse_bsr((2, 2)),
        "bsc": dense.to_sparse_bsc((3, 4)),
        "csr_int": (dense * 10).to(torch.int32).to_sparse_csr(),
        "dense": dense,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_tensors_rebuilt_as_torch_rebuilds_them(tmp_path: Path, fmt: str) -> None:
    path = _save(_sparse(), tmp_path / "sparse.pt", fmt)
    ckpt = tw.open(path)
    assert not ckpt.warnings
    assert ckpt.records["coo"].layout == "sparse_coo" and ckpt.records["bsc"].layout == "sparse_bsc"
    coo = ckpt.records["coo"]
    assert coo.shape == (6, 8) and coo.dtype == "float32" and coo.storage is None
    assert [p.name for p in coo.parts] == ["coo.indices", "coo.values"]
    assert coo.nbytes == sum(p.nbytes for p in coo.parts) and coo.to_dict()["layout"] == "sparse_coo"
    assert "coo.indices" not in ckpt.records
    want = _torch(path)
    got = tw.load(path)
    assert list(got) == list(want)
    for name in want:
        _same(got[name], want[name])


def _bad_sparse(kind: str) -> torch.Tensor:
    if kind == "coo-index-out-of-range":
        return torch.sparse_coo_tensor(torch.tensor([[0, 5]]), torch.tensor([1.0, 2.0]), (3,), check_invariants=False)
    if kind == "coo-negative-index":
        return torch.sparse_coo_tensor(torch.tensor([[0, -1]]), torch.tensor([1.0, 2.0]), (3,), check_invariants=False)
    if kind == "coo-false-coalesced":
        return torch.sparse_coo_tensor(
            torch.tensor([[1, 0]]), torch.tensor([1.0, 2.0]), (3,), check_invariants=False, is_coalesced=True
        )
    if kind == "csr-plain-index-out-of-range":
        return torch.sparse_csr_tensor(
            torch.tensor([0, 1, 2]), torch.tensor([0, 9]), torch.tensor([1.0, 2.0]), (2, 3), check_invariants=False
        )
    return torch.sparse_csr_tensor(  # compressed indices that do not end at nnz
        torch.tensor([0, 1, 5]), torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), (2, 3), check_invariants=False
    )


@pytest.mark.parametrize(
    "kind",
    [
        "coo-index-out-of-range",
        "coo-negative-index",
        "coo-false-coalesced",
        "csr-plain-index-out-of-range",
        "csr-bad-compressed",
    ],
)
def test_invalid_sparse_indices_are_refused(tmp_path: Path, kind: str) -> None:
    path = _save({"w": _bad_sparse(kind)}, tmp_path / "bad.pt", "zip")
    with pytest.raises(RuntimeError), torch.sparse.check_sparse_tensor_invariants():
        torch.load(path, weights_only=True)  # torch refuses it too (when checking)
    tw.open(path)  # listed
    with pytest.raises(CorruptCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "bad-sparse" and "'w'" in str(info.value)


def test_sparse_cannot_be_read_into_a_dense_parameter(tmp_path: Path) -> None:
    from torchweights.storage.read import fill

    path = _save({"w": _sparse()["coo"]}, tmp_path / "s.pt", "zip")
    record = tw.open(path).records["w"]
    with pytest.raises(UnsupportedCheckpointError) as info:
        fill([(record, torch.empty(6, 8))])
    assert info.value.code == "unsupported-sparse"


def test_kinds_that_cannot_be_rebuilt_are_refused_by_name(tmp_path: Path) -> None:
    nested = torch.nested.nested_tensor([torch.randn(2), torch.randn(3)])
    path = _save({"w": torch.ones(2), "nested": nested}, tmp_path / "nested.pt", "zip")
    ckpt = tw.open(path)
    assert list(ckpt.records) == ["w"] and any("nested" in w for w in ckpt.warnings)
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.load(path)
    assert info.value.code == "unsupported-tensor" and "'nested' (nested tensor)" in str(info.value)
    assert list(tw.load(path, unsupported="skip")) == ["w"]  # only on the user's explicit opt-out
    with pytest.raises(tw.RuleError):
        tw.load(path, unsupported="ignore")


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_storage_seen_under_two_dtypes(tmp_path: Path, fmt: str) -> None:
    t = torch.empty(0)
    typed = torch.storage.TypedStorage(wrap_storage=t.untyped_storage(), dtype=torch.int64, _internal=True)
    other = torch.empty(0, dtype=torch.int64).set_(t.untyped_storage())
    path = _save({"t": t, "s": typed, "u": other}, tmp_path / "empty.pt", fmt)
    want = torch.load(path, weights_only=True)
    got = tw.load(path)
    assert set(got) == {"t", "u"}
    for name in got:
        _same(got[name], want[name])


# ---------------------------------------------------------------------------------------------- plain pickle


def _plain_objects() -> dict[str, Any]:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 5, generator=g)
    return {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "view": base[1:, 2:],
        "t": base.t(),
        "ints": torch.arange(-5, 5, dtype=torch.int16),
        "half": torch.randn(4, generator=g).half(),
        "bf16": torch.randn(4, generator=g).bfloat16(),
        "bool": torch.tensor([True, False]),
        "c": torch.randn(3, dtype=torch.complex64, generator=g),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
        "epoch": 3,
        "nested": {"a": [torch.ones(2)]},
    }


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_tensors_pickled_with_plain_pickle(tmp_path: Path, protocol: int) -> None:
    objects = _plain_objects()
    data = pickle.dumps(objects, protocol=protocol)
    path = tmp_path / "plain.pkl"
    path.write_bytes(data)
    want = pickle.loads(data)  # our own file: unpickling it here is the reference
    ckpt = tw.open(path)
    assert ckpt.format == "pickle" and ckpt.extras == {"epoch": 3}
    assert "torch.storage._load_from_bytes" in ckpt.globals
    got = tw.load(path)
    assert set(got) == {k for k, v in objects.items() if isinstance(v, torch.Tensor)} | {"nested.a.0"}
    for name, tensor in got.items():
        ref = want["nested"]["a"][0] if name == "nested.a.0" else want[name]
        _same(tensor, ref)
    for record in ckpt.records.values():  # each storage is read in place from its stream in the file
        assert record.storage is not None and record.storage.file == str(path)


def test_plain_pickle_protocol_2_storages_are_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "p2.pkl"
    path.write_bytes(pickle.dumps({"w": torch.ones(3)}, protocol=2))  # bytes spelled as latin-1 text
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "unsupported-embedded-storage" and "protocol 3" in str(info.value)


@pytest.mark.parametrize("protocol", [0, 1])
def test_plain_pickle_text_protocol_storages_are_detected_and_refused_clearly(tmp_path: Path, protocol: int) -> None:
    """A protocol 0/1 pickle has no PROTO opcode: the detector reads its head with the machine, storages included
    (through the reader's hook), so it is a pickle whose storages are refused clearly, not an unknown format."""
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps({"w": torch.ones(3)}, protocol=protocol))
    with pytest.raises(UnsupportedCheckpointError) as info:
        tw.open(path)
    assert info.value.code == "unsupported-embedded-storage"


def test_load_from_bytes_of_a_zip_payload_is_a_dangerous_call() -> None:
    buf = io.BytesIO()
    torch.save({"x": 1}, buf)  # a zip: torch never puts one there; torch.load(weights_only=False) would run it
    data = pickle.dumps({"s": _Call(torch.storage._load_from_bytes, (buf.getvalue(),))}, protocol=2)
    with pytest.raises(tw.UnsafeCheckpointError) as info:
        unpickle(data)
    assert "torch.storage._load_from_bytes" in info.value.names


def test_a_storage_pickled_on_its_own_is_read_through_the_readers_hook() -> None:
    """The unpickler sits below the format readers, so a reader hands it the hook that reads the legacy stream
    ``torch.storage._load_from_bytes`` holds (``formats._pickled.read_embedded``). Without the hook nothing vets
    the bytes, so the call is refused (load) and reported dangerous (scan), never passed over as harmless."""
    data = pickle.dumps(torch.arange(3, dtype=torch.float32), protocol=4)
    with pytest.raises(tw.UnsafeCheckpointError) as info:
        unpickle(data)
    assert info.value.names == ("torch.storage._load_from_bytes",)
    assert scan_stream(data).dangerous == ["torch.storage._load_from_bytes"]
    tensor = unpickle(data, read_embedded=read_embedded).value
    assert isinstance(tensor, PickledTensor) and isinstance(tensor.storage, EmbeddedStorage)
    assert (tensor.dtype, tensor.shape, tensor.stride) == ("float32", (3,), (1,))
    assert tensor.storage.blob in data
    seen = scan_stream(data, read_embedded=read_embedded)
    assert seen.error is None and seen.dangerous == [] and seen.calls == []


class _Call:
    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> Any:
        return (self.fn, self.args)
