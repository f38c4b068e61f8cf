"""``load_into`` on FSDP2 (``fully_shard``) and DTensor models, on 2 and 4 forked gloo ranks: the same planning as for
a plain model on every rank, agreed before any byte is read; each rank reads only its own shards; failures raise
the same error everywhere and change nothing; the result is bit-identical to loading an unsharded copy and
sharding it."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torchweights as tw
from _ranks import run_ranks


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Net(nn.Module):
    """Uneven sizes on purpose: 7 rows over 4 ranks is 2+2+2+1, 3 rows is 1+1+1+0."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.fc1 = nn.Linear(6, 7)
        self.norm = nn.BatchNorm1d(7)
        self.fc2 = nn.Linear(7, 3)
        self.scale = nn.Parameter(torch.ones(1))


#: Buffers stay plain tensors under FSDP2: every rank reads them whole.
BUFFERS = ("norm.running_mean", "norm.running_var", "norm.num_batches_tracked")


def _reference(seed: int = 1) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        net.norm.running_mean.normal_()
        net.norm.num_batches_tracked.fill_(5)
    return net


def _sharded(world: int, seed: int) -> Net:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)  # other values than the file on every rank
    net = Net()
    mesh = init_device_mesh("cpu", (world,))
    for sub in (net.fc1, net.fc2, net.embed):
        fully_shard(sub, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return net


def _locals(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.to_local() if hasattr(v, "to_local") else v).clone() for k, v in net.state_dict().items()}


def _full(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in net.state_dict().items()}


def _load(rank: int, world: int, path: str, options: dict[str, Any]) -> dict[str, Any]:
    """On each rank: load into a sharded model; also load the same file into an unsharded copy and shard that."""
    net = _sharded(world, seed=100 + rank)
    report = tw.load_into(net, path, **options)
    twin = Net()
    tw.load_into(twin, path, **options)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    for sub in (twin.fc1, twin.fc2, twin.embed):
        fully_shard(sub, mesh=mesh)
    fully_shard(twin, mesh=mesh)
    return {
        "ok": report.ok,
        "bytes": report.bytes_read,
        "locals": _locals(net),
        "twin": _locals(twin),
        "full": _full(net),
    }


def _check(results: list[dict[str, Any]], reference: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> None:
    for result in results:
        assert result["ok"]
        assert result["full"].keys() == reference.keys()
        for key, value in reference.items():
            got = result["full"][key]
            assert got.dtype == value.dtype and torch.equal(got, value), key
            assert torch.equal(result["locals"][key], result["twin"][key]), key  # bit-identical shard by shard
    # Each rank reads its own rows of the sharded tensors (and every replicated buffer): together, the file once.
    replicated = sum(t.nbytes for k, t in stored.items() if k in BUFFERS)
    sharded_bytes = sum(t.nbytes for k, t in stored.items() if k not in BUFFERS)
    assert sum(r["bytes"] - replicated for r in results) == sharded_bytes
    assert all(r["bytes"] < sharded_bytes for r in results)


@pytest.mark.parametrize("world", [2, 4])
def test_from_a_safetensors_file_with_a_module_prefix(tmp_path: Path, world: int) -> None:
    reference = _reference().state_dict()
    path = tmp_path / "model.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in reference.items()}, str(path))
    results = run_ranks(_load, world, str(path), {})
    _check(results, reference, reference)


def test_from_a_sharded_hugging_face_set(tmp_path: Path) -> None:
    reference = _reference().state_dict()
    keys = list(reference)
    shards = [keys[0:3], keys[3:6], keys[6:]]
    weight_map = {}
    for i, part in enumerate(shards):
        name = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: reference[k].contiguous() for k in part}, str(tmp_path / name))
        weight_map.update(dict.fromkeys(part, name))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    results = run_ranks(_load, 4, str(index), {})
    _check(results, reference, reference)


def test_from_a_torch_file_with_a_cast(tmp_path: Path) -> None:
    """A ``.pt`` checkpoint in bfloat16 (nested under ``state_dict``) into a float32 sharded model: each rank casts
    its own rows."""
    reference = _reference().state_dict()
    stored = {k: v.bfloat16() if v.is_floating_point() else v for k, v in reference.items()}
    path = tmp_path / "model.pt"
    torch.save({"state_dict": stored, "epoch": 3}, path)
    results = run_ranks(_load, 2, str(path), {})
    expected = {k: v.to(reference[k].dtype) for k, v in stored.items()}
    _check(results, expected, stored)


def _mismatch(rank: int, world: int, path: str) -> dict[str, Any]:
    net = _sharded(world, seed=100 + rank)
    before = _locals(net)
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        error = (type(exc).__name__, exc.code, exc.message)
    else:
        error = None
    after = _locals(net)
    return {"error": error, "unchanged": all(torch.equal(before[k], after[k]) for k in before)}


def test_a_shape_mismatch_raises_the_same_error_on_every_rank_and_changes_nothing(tmp_path: Path) -> None:
    state = _reference().state_dict()
    state["fc2.weight"] = torch.zeros(4, 7)  # the model has (3, 7)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    results = run_ranks(_mismatch, 4, str(path))
    errors = {r["error"] for r in results}
    assert len(errors) == 1
    (error,) = errors
    assert error is not None and error[0] == "LoadError" and error[1] == "shape-mismatch"
    assert "fc2.weight" in error[2] and "no rank's parameters were changed" in error[2]
    assert all(r["unchanged"] for r in results)


def _one_rank_missing(rank: int, world: int, good: str, missing: str) -> dict[str, Any]:
    return _mismatch(rank, world, missing if rank == 1 else good)


def test_a_file_missing_on_one_rank_raises_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_reference().state_dict(), str(path))
    results = run_ranks(_one_rank_missing, 2, str(path), str(tmp_path / "absent.safetensors"))
    errors = {r["error"] for r in results}
    assert len(errors) == 1
    (error,) = errors
    assert error is not None and error[0] == "CheckpointNotFoundError"
    assert error[2].startswith("rank 1 of 2 (every rank raised this error; nothing was read")
    assert all(r["unchanged"] for r in results)


def _other_plans(rank: int, world: int, good: str, other: str) -> dict[str, Any]:
    net = _sharded(world, seed=100 + rank)
    before = _locals(net)
    try:
        tw.load_into(net, other if rank == 1 else good, strict=False)
    except tw.TorchWeightsError as exc:
        return {"code": exc.code, "unchanged": all(torch.equal(before[k], v) for k, v in _locals(net).items())}
    return {"code": None, "unchanged": False}


def test_ranks_that_plan_different_loads_refuse_together(tmp_path: Path) -> None:
    state = _reference().state_dict()
    good, other = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(state, str(good))
    save_file({k: v for k, v in state.items() if k != "fc1.bias"}, str(other))
    results = run_ranks(_other_plans, 2, str(good), str(other))
    assert [r["code"] for r in results] == ["ranks-disagree", "ranks-disagree"]
    assert all(r["unchanged"] for r in results)


def _columns(rank: int, world: int, path: str) -> dict[str, Any]:
    """A tensor-parallel style DTensor sharded along dim 1 (not rows)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    net = nn.Linear(10, 6)
    net.weight = nn.Parameter(distribute_tensor(torch.zeros(6, 10), mesh, [Shard(1)]))
    net.bias = nn.Parameter(distribute_tensor(torch.zeros(6), mesh, [Shard(0)]))
    report = tw.load_into(net, path)
    return {"ok": report.ok, "weight": net.weight.full_tensor(), "bias": net.bias.full_tensor()}


def test_a_dtensor_sharded_along_columns(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = {"weight": torch.randn(6, 10), "bias": torch.randn(6)}
    path = tmp_path / "linear.pt"
    torch.save(state, path)
    for result in run_ranks(_columns, 4, str(path)):
        assert result["ok"]
        assert torch.equal(result["weight"], state["weight"]) and torch.equal(result["bias"], state["bias"])


def _meta(rank: int, world: int, path: str) -> str | None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        net = Net()
    fully_shard(net, mesh=init_device_mesh("cpu", (world,)))
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        return f"{exc.code}: {exc}"
    return None


def test_a_sharded_model_on_meta_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_reference().state_dict(), str(path))
    for message in run_ranks(_meta, 2, str(path)):
        assert message is not None and message.startswith("bad-model") and "to_empty" in message


def _crc(rank: int, world: int, path: str) -> tuple[str, str, bool] | None:
    net = _sharded(world, seed=100 + rank)
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        return (exc.code, exc.message, "fc1.weight" in exc.message)
    return None


def test_a_damaged_zip_member_read_in_pieces_fails_its_crc_on_every_rank(tmp_path: Path) -> None:
    """No rank reads the whole storage of ``fc1.weight``, yet the CRC-32 its zip member records is checked: each
    rank's piece is checksummed and the pieces are joined."""
    path = tmp_path / "model.pt"
    torch.save(_reference().state_dict(), path)
    ref = tw.open(path)["fc1.weight"].storage
    assert ref is not None and ref.crc32 is not None
    data = bytearray(path.read_bytes())
    data[ref.offset + ref.nbytes // 2] ^= 0x40  # one bit, in the rows of rank 0 or 1
    path.write_bytes(bytes(data))
    for world in (2, 4):
        results = run_ranks(_crc, world, str(path))
        assert len(set(results)) == 1
        (result,) = set(results)
        assert result is not None and result[0] == "bad-crc" and result[2]
        assert "reload it from a good file" in result[1]


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


def _io(rank: int, world: int, path: str) -> int:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    net = nn.Linear(1024, 1024, bias=False)
    fully_shard(net, mesh=init_device_mesh("cpu", (world,)))
    tw.load_into(net, path)  # first: the lazy imports read their .pyc files too
    before = _rchar()
    tw.load_into(net, path)
    return _rchar() - before


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io (Linux)")
@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_each_rank_reads_only_its_own_bytes(tmp_path: Path, kind: str) -> None:
    """Counted by the kernel (``rchar``: every byte read by a system call, the CRC-32 check included)."""
    weight = torch.randn(1024, 1024)
    path = tmp_path / f"model.{kind}"
    if kind == "pt":
        torch.save({"weight": weight}, path)
    else:
        save_file({"weight": weight}, str(path))
    for world in (2, 4):
        read = run_ranks(_io, world, str(path))
        # its share, the sample of the file the ranks compare (distributed.SAMPLE_BLOCKS x SAMPLE_BYTES), headers
        assert all(n < weight.nbytes / world + 512 * 1024 for n in read), (world, read, weight.nbytes)


def test_the_readme_example_runs_under_torchrun(tmp_path: Path) -> None:
    """``torchrun --standalone --nproc-per-node 2 examples/distributed_load.py`` on CPU, as the README says."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(root / "examples" / "distributed_load.py"),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert [line.split(":")[0] for line in lines] == ["rank 0/2", "rank 1/2"]
    assert all(": OK: loaded 4 of 4 (" in line for line in lines), lines


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))


def _memory(rank: int, world: int, path: str, layers: int, dim: int) -> tuple[int, int]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        net = nn.Sequential(*(nn.Linear(dim, dim, bias=False) for _ in range(layers)))
    mesh = init_device_mesh("cpu", (world,))
    for layer in net:
        fully_shard(layer, mesh=mesh)
    fully_shard(net, mesh=mesh)
    net.to_empty(device="cpu")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before, read = _status("VmRSS"), _rchar()
    tw.load_into(net, path)
    return _status("VmHWM") - before, _rchar() - read


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs /proc/self/clear_refs (Linux)")
def test_per_rank_memory_on_a_few_hundred_mb_model(tmp_path: Path) -> None:
    """A 256 MiB model on 2 ranks: each rank's resident memory grows by its own shard (128 MiB, faulted in as it is
    written) plus bounded scratch, never by the model; each rank reads its own half."""
    layers, dim = 4, 4096
    path = tmp_path / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({f"{i}.weight": torch.randn(dim, dim, generator=g) for i in range(layers)}, str(path))
    model = layers * dim * dim * 4
    for peak, read in run_ranks(_memory, 2, str(path), layers, dim):
        assert peak < model / 2 + (48 << 20), peak
        assert read < model / 2 + (4 << 20), read


def _copies(rank: int, world: int, paths: list[str], options: list[dict[str, Any]]) -> dict[str, Any]:
    """Each rank loads its own path with its own options; what it raised, and whether its shards changed."""
    net = _sharded(world, seed=100 + rank)
    before = _locals(net)
    try:
        tw.load_into(net, paths[rank], **options[rank])
    except tw.TorchWeightsError as exc:
        error: tuple[str, str, str] | None = (type(exc).__name__, exc.code, exc.message)
    else:
        error = None
    return {"error": error, "unchanged": all(torch.equal(before[k], v) for k, v in _locals(net).items())}


def test_another_copy_with_other_values_on_one_node_is_told_apart(tmp_path: Path) -> None:
    """Same names, shapes and dtypes, other values (another version of the file): the plans are equal, the sampled
    bytes are not."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(_reference(seed=1).state_dict(), str(a))
    save_file(_reference(seed=2).state_dict(), str(b))
    results = run_ranks(_copies, 2, [str(a), str(b)], [{}, {}])
    assert [r["error"][1] for r in results] == ["ranks-disagree", "ranks-disagree"]
    assert all(r["unchanged"] for r in results)


def test_identical_copies_at_other_paths_load(tmp_path: Path) -> None:
    a, b = tmp_path / "node0" / "m.safetensors", tmp_path / "node1" / "m.safetensors"
    a.parent.mkdir()
    b.parent.mkdir()
    save_file(_reference().state_dict(), str(a))
    b.write_bytes(a.read_bytes())
    results = run_ranks(_copies, 2, [str(a), str(b)], [{}, {}])
    assert [r["error"] for r in results] == [None, None]


def test_an_option_refused_on_one_rank_raises_everywhere_without_waiting(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_reference().state_dict(), str(path))
    results = run_ranks(_copies, 2, [str(path)] * 2, [{}, {"rename": {"(": "x"}}], deadline=60)
    assert {r["error"][:2] for r in results} == {("RuleError", "bad-rename")}
    assert results[0]["error"] == results[1]["error"]
    assert all(r["unchanged"] for r in results)


def test_pieces_of_copies_at_other_paths_are_joined_for_the_crc(tmp_path: Path) -> None:
    """Two identical damaged copies at other paths: each rank's piece is keyed by the file's place, not its path."""
    a, b = tmp_path / "node0" / "m.pt", tmp_path / "node1" / "m.pt"
    a.parent.mkdir()
    b.parent.mkdir()
    torch.save(_reference().state_dict(), a)
    ref = tw.open(a)["fc1.weight"].storage
    assert ref is not None
    data = bytearray(a.read_bytes())
    data[ref.offset + ref.nbytes // 2] ^= 0x40
    a.write_bytes(bytes(data))
    b.write_bytes(bytes(data))
    results = run_ranks(_copies, 2, [str(a), str(b)], [{}, {}])
    assert [r["error"][1] for r in results] == ["bad-crc", "bad-crc"]


def _after_forward(rank: int, world: int, path: str) -> str | None:
    net = _sharded(world, seed=100 + rank)
    net.fc2(net.fc1(net.embed(torch.tensor([[1, 2]])).mean(1)))  # the root's parameters are unsharded now
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        return f"{exc.code}: {exc.message}"
    return None


def test_a_load_between_forward_and_backward_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_reference().state_dict(), str(path))
    for message in run_ranks(_after_forward, 2, str(path)):
        assert message is not None and message.startswith("bad-model") and "reshard()" in message


def _wide(rank: int, world: int, path: str, shapes: list[tuple[tuple[int, ...], int]]) -> dict[str, Any]:
    """DTensors sharded along other dimensions than rows: ``(shape, dim)`` each, loaded twice (the second read is
    counted)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    net = nn.Module()
    for i, (shape, dim) in enumerate(shapes):
        net.register_parameter(f"p{i}", nn.Parameter(distribute_tensor(torch.zeros(shape), mesh, [Shard(dim)])))
    tw.load_into(net, path)
    before = _rchar()
    tw.load_into(net, path)
    return {"read": _rchar() - before, "full": {k: v.full_tensor() for k, v in net.state_dict().items()}}


@pytest.mark.parametrize(
    ("shapes", "fraction"),
    [
        ([((8, 131072), 1)], 0.5),  # rows of 512 KiB: each rank reads one byte range per row, only its columns
        ([((6, 10, 12), 2), ((5, 7, 9), 1)], 1.0),  # short rows: bands of whole rows, its columns copied out
    ],
)
def test_shards_along_columns_read_runs_or_bands(tmp_path: Path, shapes: list[Any], fraction: float) -> None:
    torch.manual_seed(5)
    state = {f"p{i}": torch.randn(shape) for i, (shape, _) in enumerate(shapes)}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    total = sum(t.nbytes for t in state.values())
    for result in run_ranks(_wide, 2, str(path), shapes):
        assert all(torch.equal(result["full"][k], v) for k, v in state.items())
        assert result["read"] <= total * fraction + 300 * 1024, (result["read"], total)


def _partial(rank: int, world: int, path: str) -> tuple[str, str] | None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial

    net = nn.Linear(3, 2, bias=False)
    net.weight = nn.Parameter(DTensor.from_local(torch.zeros(2, 3), init_device_mesh("cpu", (world,)), [Partial()]))
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        return exc.code, exc.message
    return None


def test_a_partial_placement_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    path = tmp_path / "linear.safetensors"
    save_file({"weight": torch.ones(2, 3)}, str(path))
    for result in run_ranks(_partial, 2, str(path)):
        assert result is not None and result[0] == "bad-model" and "Partial" in result[1]
        assert "nothing was read" in result[1]


def _transposed(rank: int, world: int, path: str, dim: int, band: int) -> dict[str, Any]:
    """A ``.pt`` tensor stored transposed, sharded along ``dim``; bands of ``band`` bytes at most."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from torchweights import distributed

    distributed.BAND_BYTES = band
    shape = tuple(tw.open(path)["w"].shape)
    net = nn.Module()
    net.w = nn.Parameter(distribute_tensor(torch.zeros(shape), init_device_mesh("cpu", (world,)), [Shard(dim)]))
    try:
        tw.load_into(net, path)  # first: the lazy imports
    except tw.TorchWeightsError as exc:
        return {"error": exc.code}
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status("VmRSS")
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        return {"error": exc.code}
    return {"error": None, "peak": _status("VmHWM") - before, "w": net.w.full_tensor()}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs /proc/self/clear_refs (Linux)")
@pytest.mark.parametrize("dim", [0, 1])
def test_a_transposed_tensor_is_read_in_bounded_bands_and_its_crc_checked(tmp_path: Path, dim: int) -> None:
    """Stored column-major: a rank's part is spread over the whole storage. Bands stay within their bound (not one
    band of the whole storage), a good file passes its CRC-32 (the band's bytes are not the shard's order), and a
    flipped byte in rows every rank reads in part fails it on every rank."""
    torch.manual_seed(7)
    w = torch.randn(1024, 512)
    path = tmp_path / "t.pt"
    torch.save({"w": w.t()}, path)  # shape (512, 1024), strides (1, 512)
    for result in run_ranks(_transposed, 2, str(path), dim, 256 * 1024):
        assert result["error"] is None and torch.equal(result["w"], w.t())
        assert result["peak"] < (1 << 20) + (256 << 10) * 4, result["peak"]  # the shard is allocated already
    ref = tw.open(path)["w"].storage
    assert ref is not None
    data = bytearray(path.read_bytes())
    data[ref.offset + ref.nbytes // 3] ^= 0x10
    path.write_bytes(bytes(data))
    assert [r["error"] for r in run_ranks(_transposed, 2, str(path), dim, 256 * 1024)] == ["bad-crc", "bad-crc"]


def test_a_flipped_byte_under_column_shards_with_short_rows_fails_everywhere(tmp_path: Path) -> None:
    """Short rows: every rank reads bands of whole rows, so the ranks' pieces overlap and do not join; the member is
    then checked whole, by one rank, and every rank raises."""
    torch.manual_seed(8)
    path = tmp_path / "m.pt"
    torch.save({"weight": torch.randn(64, 96)}, path)
    ref = tw.open(path)["weight"].storage
    assert ref is not None
    data = bytearray(path.read_bytes())
    data[ref.offset + 1000] ^= 0x01
    path.write_bytes(bytes(data))
    for world in (2, 3):
        assert run_ranks(_column_code, world, str(path)) == ["bad-crc"] * world


def _column_code(rank: int, world: int, path: str) -> str | None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    net = nn.Linear(96, 64, bias=False)
    net.weight = nn.Parameter(distribute_tensor(torch.zeros(64, 96), init_device_mesh("cpu", (world,)), [Shard(1)]))
    try:
        tw.load_into(net, path)
    except tw.TorchWeightsError as exc:
        return exc.code
    return None
