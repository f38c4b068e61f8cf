"""tw.stats / tensor_stats: statistics per tensor against torch's own reductions, streaming in bounded chunks, and
``torchweights inspect --stats`` (text and JSON)."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchweights as tw
from torchweights.cli import main
from torchweights.values.stats import StatsReport, TensorStats, tensor_stats


def reference(t: torch.Tensor) -> dict[str, float]:
    """What the statistics must be: torch's reductions of the finite values, in float64."""
    flat = t.reshape(-1).to(torch.float64)
    finite = flat[torch.isfinite(flat)]
    return {
        "min": float(torch.amin(finite)),
        "max": float(torch.amax(finite)),
        "mean": float(torch.mean(finite)),
        "std": float(torch.std(finite)),  # correction=1, torch's default
        "abs_max": float(finite.abs().max()),
        "zero_fraction": float((flat == 0).sum()) / flat.numel(),
    }


def assert_matches(stats: TensorStats, t: torch.Tensor) -> None:
    want = reference(t)
    for key, value in want.items():
        assert getattr(stats, key) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert stats.numel == t.numel() and stats.shape == tuple(t.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_floats_match_torch_over_many_chunks(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    t = (torch.randn(1000, 257) * 3 + 0.5).to(dtype)
    t[::97, 3] = 0
    stats = tensor_stats("w", t, chunk_bytes=32 * 1000)  # 1,000 elements a chunk: 257 chunks
    assert_matches(stats, t)
    assert stats.dtype == str(dtype).removeprefix("torch.")
    assert (stats.nan_count, stats.inf_count) == (0, 0)


def test_nan_and_inf_are_counted_and_left_out() -> None:
    torch.manual_seed(2)
    t = torch.randn(300, 40)
    t[0, :5] = float("nan")
    t[7, 1] = float("inf")
    t[9, 2] = float("-inf")
    stats = tensor_stats("w", t, chunk_bytes=32 * 512)
    assert (stats.nan_count, stats.inf_count) == (5, 2)
    assert_matches(stats, t)
    assert stats.finite_count == t.numel() - 7
    nothing = tensor_stats("n", torch.full((3, 3), float("nan")))
    assert (nothing.min, nothing.mean, nothing.std, nothing.abs_max) == (None, None, None, None)
    assert nothing.nan_count == 9 and nothing.zero_fraction == 0.0


def test_non_contiguous_views_are_cut_along_the_first_dimension() -> None:
    t = torch.randn(64, 300).t()  # a transposed view
    assert not t.is_contiguous()
    assert_matches(tensor_stats("t", t, chunk_bytes=32 * 100), t)


def test_integers_bool_empty_scalar_complex() -> None:
    ints = torch.randint(-(2**40), 2**40, (5000,), dtype=torch.int64)
    s = tensor_stats("i", ints, chunk_bytes=32 * 300)
    assert (s.min, s.max) == (int(ints.min()), int(ints.max())) and isinstance(s.min, int)
    assert s.mean == pytest.approx(float(ints.double().mean()), rel=1e-9)
    assert s.std == pytest.approx(float(ints.double().std()), rel=1e-9)
    assert s.abs_max == int(ints.abs().max())
    u8 = torch.tensor([0, 255, 3], dtype=torch.uint8)
    assert (tensor_stats("u", u8).min, tensor_stats("u", u8).max) == (0, 255)
    flags = torch.tensor([True, False, False, True, False])
    b = tensor_stats("b", flags)
    assert (b.min, b.max, b.zero_fraction, b.mean) == (0, 1, 0.6, 0.4)
    empty = tensor_stats("e", torch.empty(0, 4))
    assert empty.numel == 0 and empty.zero_fraction is None and empty.min is None and empty.shape == (0, 4)
    scalar = tensor_stats("s", torch.tensor(-2.5))
    assert (scalar.min, scalar.max, scalar.mean, scalar.std, scalar.abs_max) == (-2.5, -2.5, -2.5, None, 2.5)
    ranges = tensor_stats("r", torch.tensor([[1.0, float("nan")], [-3.0, 0.0]]), moments=False)
    assert (ranges.min, ranges.max, ranges.abs_max, ranges.mean, ranges.std) == (-3.0, 1.0, 3.0, None, None)
    z = torch.tensor([3 + 4j, 0j, complex("nan")], dtype=torch.complex64)
    c = tensor_stats("c", z)
    assert (c.abs_max, c.nan_count, c.min) == (5.0, 1, None)
    assert c.zero_fraction == pytest.approx(1 / 3)


def test_chunks_bound_the_scratch_memory() -> None:
    """A tensor far larger than a chunk: every float64 copy the reduction makes is one chunk, never the whole
    tensor (torch's CPU allocations are not seen by tracemalloc, so they are counted at ``Tensor.to``, where each
    chunk's scratch starts), and the Python-side memory (tracemalloc) stays below one chunk."""
    t = torch.randn(4_000_000)  # 16 MB float32; 32 MB as float64
    chunk = 1 << 20  # 1 MiB of scratch a chunk
    seen: list[int] = []
    original = torch.Tensor.to

    def spy(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        out = original(self, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(out.numel() * out.element_size())
        return out

    torch.Tensor.to = spy  # type: ignore[method-assign]
    try:
        tracemalloc.start()
        stats = tensor_stats("big", t, chunk_bytes=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        torch.Tensor.to = original  # type: ignore[method-assign]
    assert_matches(stats, t)
    assert seen and max(seen) <= chunk  # every float64 copy is one chunk's worth, never the whole tensor
    assert len(seen) >= t.numel() * 32 // chunk
    assert peak < chunk  # Python-side bookkeeping stays small too


def write_planted(folder: Path) -> dict[str, Path]:
    torch.manual_seed(3)
    state = {
        "enc.weight": torch.randn(64, 32),
        "enc.bias": torch.zeros(64),
        "bad.weight": torch.randn(16, 16),
        "steps": torch.tensor(7),
        "half": torch.randn(10, 10).half(),
    }
    state["bad.weight"][2, 3] = float("nan")
    state["bad.weight"][4, 4] = float("inf")
    pt, st = folder / "m.pt", folder / "m.safetensors"
    torch.save(state, pt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    return {"pt": pt, "safetensors": st, "state": state}  # type: ignore[dict-item]


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_stats_of_a_file(fmt: str, tmp_path: Path) -> None:
    files = write_planted(tmp_path)
    state: dict[str, torch.Tensor] = files["state"]  # type: ignore[assignment]
    report = tw.stats(files[fmt])
    assert isinstance(report, StatsReport)
    assert [s.name for s in report.tensors] == list(tw.open(files[fmt]).records)  # file order
    assert sorted(s.name for s in report.tensors) == sorted(state)
    for s in report.tensors:
        if s.name != "steps":
            assert_matches(s, state[s.name])
    assert (report["bad.weight"].nan_count, report["bad.weight"].inf_count) == (1, 1)
    assert report["steps"].min == 7 and report["enc.bias"].zero_fraction == 1.0
    assert [s.name for s in report.nonfinite] == ["bad.weight"]
    # a mapping of name -> TensorStats, as the state dict it describes
    assert "bad.weight" in report and "nope" not in report and 0 not in report
    assert list(report) == [s.name for s in report.tensors] and len(report) == 5
    assert dict(report.items())["steps"] is report["steps"]
    with pytest.raises(KeyError):
        report["nope"]
    assert repr(report) == f"<StatsReport {str(files[fmt])!r}: 5 tensors, 2.5K values; 1 with NaN or Inf>"
    text = str(report)
    assert "bad.weight" in text and "abs_max" in text
    data = json.loads(report.to_json())
    bad = next(t for t in data["tensors"] if t["name"] == "bad.weight")
    assert bad["nan_count"] == 1 and bad["shape"] == [16, 16]
    only = tw.stats(files[fmt], select="enc.*")
    assert sorted(s.name for s in only.tensors) == ["enc.bias", "enc.weight"]


def test_stats_reads_one_tensor_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_planted(tmp_path)
    import torchweights.storage.read as read

    calls: list[list[str]] = []
    real = read.materialize

    def one(records: list[object], **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append([r.name for r in records])  # type: ignore[attr-defined]
        return real(records, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(read, "materialize", one)
    report = tw.stats(files["pt"])
    assert report["bad.weight"].nan_count == 1
    assert calls == [[name] for name in ["enc.weight", "enc.bias", "bad.weight", "steps", "half"]]


def test_inspect_stats_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_planted(tmp_path)
    assert main(["inspect", str(files["pt"]), "--stats"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("statistics (5 tensors, 2.5K values; 1 with NaN or Inf)") :].splitlines()
    header = ["name", "dtype", "shape", "min", "max", "mean", "std", "abs_max", "zeros", "nan", "inf"]
    assert section[1].split() == header
    bad = next(line for line in section if line.strip().startswith("bad.weight"))
    assert bad.split()[-2:] == ["1", "1"]
    assert next(line for line in section if line.strip().startswith("enc.bias")).split()[-3] == "100%"
    assert main(["inspect", str(files["safetensors"]), "--stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {t["name"]: t["stats"] for t in data["tensors"]}
    assert by_name["bad.weight"]["nan_count"] == 1 and by_name["steps"]["max"] == 7
    assert math.isclose(by_name["enc.weight"]["std"], float(files["state"]["enc.weight"].std()), rel_tol=1e-6)  # type: ignore[index]
    assert main(["inspect", str(files["pt"]), "--json"]) == 0
    assert all("stats" not in t for t in json.loads(capsys.readouterr().out)["tensors"])


@pytest.mark.parametrize("columns", [50, 70])
def test_inspect_stats_fits_the_width(
    columns: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Narrower than the table: columns leave (the least telling first) and a last line names them; nothing is cut
    inside a number, and std, abs_max, nan and inf always stay."""
    files = write_planted(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["inspect", str(files["pt"]), "--stats"]) == 0
    section = capsys.readouterr().out.split("statistics (")[1].splitlines()[1:]
    assert all(len(line) <= columns for line in section)
    header = section[0].split()
    assert header[0] == "name" and header[-4:] == ["std", "abs_max", "nan", "inf"] and "mean" not in header
    text = " ".join(line.strip() for line in section)
    assert "(mean, zeros" in text and f"left out to fit {columns} columns; --json has every value)" in text
    bad = next(line for line in section if line.strip().startswith("bad.weight"))
    assert bad.split()[-2:] == ["1", "1"]
