"""``make bench``: how fast torchweights loads real-sized checkpoints, against the usual ways and the hardware.

Generates transformer-like checkpoints (32 blocks: ~290 tensors from 3 KiB norms to ~100 MiB embeddings) of 1 GB
and 4 GB, fp32 and bf16, as a torch zip file, a safetensors file and a 3-shard safetensors set, then times each
case in a fresh process, with a warm page cache and (for the main cases) a cold one (every file evicted with
``posix_fadvise(POSIX_FADV_DONTNEED)`` first). Reported per case: seconds, GB/s, the ratio to the read bound
(``preadv`` of the same files into an already-written buffer, best of 1, 2 and 4 threads; cold: 4 threads, after
eviction), measured in the same process just before the case so that both see the same machine, and the peak
resident memory above the model's own memory (VmHWM, reset through ``/proc/self/clear_refs`` once the model
exists), divided by the checkpoint size. Each worker first runs its method once on a small model of the same kind,
so that one-time costs (imports, first-call set-up) are not timed, for torchweights and the anchors alike. The
``inspect`` row is the wall time of the ``torchweights inspect`` command, interpreter start included.

Environment:
    TW_BENCH_DIR      where to write the checkpoints (default: a new temporary folder, removed afterwards)
    TW_BENCH_SIZES    comma-separated sizes in GB (default ``1,4``; ``1`` finishes in a few minutes)
    TW_BENCH_DTYPES   default ``float32,bfloat16``
    TW_BENCH_REPEAT   runs per case, best kept (default 1)
    TW_BENCH_COLD     ``0`` skips the cold-cache runs
    TW_BENCH_KEEP     ``1`` keeps the generated checkpoints
    TW_BENCH_JSON     where to write the JSON results (default ``bench/results.json``)

Run: ``make bench`` or ``.venv/bin/python bench/run.py``. This is a measurement, not a test.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model import build_model, evict, generate, memory_status, remove, reset_peak, script_entry, warm, write_all

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------------------------------
# Worker: one case in a fresh process
# --------------------------------------------------------------------------------------------------------------


def _read_files(files: list[str], buf: Any, threads: int, piece: int = 16 << 20) -> int:
    """preadv every file into ``buf`` (reused from the start for each file), ``threads`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    mem = memoryview(buf.numpy())
    jobs = []
    total = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        jobs += [(fd, o, min(piece, size - o)) for o in range(0, size, piece)]
        total += size

    def job(j: tuple[int, int, int]) -> None:
        fd, o, n = j
        view = mem[o : o + n]
        done = 0
        while done < n:
            done += os.preadv(fd, [view[done:]], o + done)

    if threads == 1:
        for j in jobs:
            job(j)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(job, jobs))
    for fd in {j[0] for j in jobs}:
        os.close(fd)
    return total


def _bound_params(info: dict[str, Any], fmt: str, piece: int = 16 << 20) -> dict[str, Any]:
    """``preadv`` of every tensor's bytes into its own parameter of an allocated model (16 MiB pieces, 1, 2 and 4
    threads, best kept): the copy path's destination and the file's own alignment, with no planning, no checks."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    import torchweights as tw

    model = build_model(info["width"], info["dtype"], "cpu")
    params = model.state_dict()
    ckpt = tw.open(info["paths"][fmt])  # not timed: only where each tensor's bytes are
    jobs: list[tuple[int, memoryview, int]] = []
    fds: dict[str, int] = {}
    for name, record in ckpt.records.items():
        ref = record.storage
        fd = fds.setdefault(ref.file, os.open(ref.file, os.O_RDONLY))
        mem = memoryview(params[name].view(-1).view(torch.uint8).numpy())
        start = ref.offset + record.storage_offset * params[name].element_size()
        jobs += [(fd, mem[o : o + piece], start + o) for o in range(0, len(mem), piece)]

    def job(j: tuple[int, memoryview, int]) -> None:
        fd, view, offset = j
        done = 0
        while done < len(view):
            done += os.preadv(fd, [view[done:]], offset + done)

    best = math.inf
    for threads in (1, 2, 4):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(job, jobs))
        best = min(best, time.perf_counter() - t0)
    for fd in fds.values():
        os.close(fd)
    return {"seconds": best, "extra": None}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    case, info, fmt = spec["case"], spec["info"], spec["format"]
    path = info["paths"][fmt]
    files = info["files"][fmt]
    nbytes = info["nbytes"]
    result: dict[str, Any] = {}
    if not case.startswith("bound-"):
        # The read bound of the same files, measured in the same process just before the case, so that the ratio
        # holds under whatever else the machine is doing (a shared 2-core machine drifts by 2x within a minute).
        bound = worker({**spec, "case": "bound-read", **({"threads": 4} if spec.get("cold") else {})})
        result["bound_seconds"] = bound["seconds"]
        gc.collect()
    if spec.get("cold"):
        evict(files)

    if case == "bound-params":
        return _bound_params(info, fmt)
    if case.startswith("bound-"):
        biggest = max(os.path.getsize(f) for f in files)
        buf = torch.empty(biggest, dtype=torch.uint8)
        buf.fill_(1)
        if case == "bound-memcpy":
            src = torch.empty(biggest, dtype=torch.uint8)
            src.fill_(2)
            best = math.inf
            for threads in (1, torch.get_num_threads()):
                torch.set_num_threads(threads)
                for _ in range(2):
                    t0 = time.perf_counter()
                    buf.copy_(src)
                    best = min(best, time.perf_counter() - t0)
            return {"seconds": best * sum(os.path.getsize(f) for f in files) / biggest, "extra": None}
        threads_list = [spec["threads"]] if "threads" in spec else [1, 2, 4]
        best = math.inf
        per: dict[str, float] = {}
        for threads in threads_list:
            if spec.get("cold"):
                evict(files)
            t0 = time.perf_counter()
            total = _read_files(files, buf, threads)
            dt = time.perf_counter() - t0
            per[str(threads)] = total / dt / 1e9
            best = min(best, dt)
        return {"seconds": best, "extra": None, "per_threads_gbps": per}

    import torchweights.apply
    import torchweights.formats.safetensors
    import torchweights.formats.sharded
    import torchweights.formats.torch_zip  # noqa: F401 - imported before the clock starts
    from torchweights.storage import io_settings

    settings = spec.get("settings", {})
    meta = case in ("tw-meta", "tw-mmap", "tw-mmap-nocrc", "torch-mmap-assign")
    with io_settings(**settings):
        # One-time costs (lazy imports, first-call set-up) are paid on a small model of the same kind first,
        # with the same method, so that the clock measures loading, as in a process that loads more than once.
        with tempfile.TemporaryDirectory() as tmp:
            small = build_model(64, info["dtype"], "cpu")
            paths, small_files = write_all(Path(tmp), "warmup", small.state_dict())
            model = build_model(64, info["dtype"], "meta" if meta else "cpu")
            _run(case, model, paths[fmt], small_files[fmt])
            del model, small
        model = None if case == "tw-load" else build_model(info["width"], info["dtype"], "meta" if meta else "cpu")
        gc.collect()
        peak_ok = reset_peak()
        before = memory_status()
        t0 = time.perf_counter()
        keep = _run(case, model, path, files)
        seconds = time.perf_counter() - t0
    gc.collect()
    after = memory_status()
    # The model's own memory added by the load: new anonymous pages (meta path, tw.load's result) plus file pages
    # it keeps mapped (mmap paths); whatever else the peak held was extra.
    own = max(0, after["RssAnon"] - before["RssAnon"]) + max(0, after["RssFile"] - before["RssFile"])
    extra = (after["VmHWM"] - before["VmRSS"] - own) / nbytes if peak_ok else None
    del keep
    result.update(seconds=seconds, extra=extra, own=own / nbytes)
    return result


def _run(case: str, model: Any, path: str, files: list[str]) -> Any:
    """One load, the way each case does it; returns what must stay alive until memory is measured."""
    import torch

    import torchweights as tw

    if case in ("tw-copy", "tw-meta"):
        tw.load_into(model, path)
    elif case == "tw-copy-nocrc":
        tw.load_into(model, path, check_crc=False)
    elif case == "tw-mmap":
        tw.load_into(model, path, mmap=True)
    elif case == "tw-mmap-nocrc":
        tw.load_into(model, path, mmap=True, check_crc=False)
    elif case == "tw-load":
        return tw.load(path)
    elif case == "torch-load":
        sd = torch.load(path, weights_only=True)
        model.load_state_dict(sd)
        del sd
    elif case == "torch-mmap-assign":
        sd = torch.load(path, weights_only=True, mmap=True)
        model.load_state_dict(sd, assign=True)
        del sd
    elif case == "st-load-file":
        from safetensors.torch import load_file

        for f in files:
            sd = load_file(f)
            model.load_state_dict(sd, strict=len(files) == 1)
            del sd
    else:
        raise SystemExit(f"unknown case {case}")
    return None


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------

CASES = {
    "torch-zip": [
        "tw-copy",
        "tw-copy-nocrc",
        "tw-meta",
        "tw-mmap",
        "tw-mmap-nocrc",
        "tw-load",
        "torch-load",
        "torch-mmap-assign",
    ],
    "safetensors": ["tw-copy", "tw-meta", "tw-mmap", "tw-load", "st-load-file"],
    "sharded-3": ["tw-copy", "tw-meta", "tw-mmap", "tw-load", "st-load-file"],
}
COLD = {"tw-copy", "tw-copy-nocrc", "tw-meta", "tw-load", "torch-load", "st-load-file"}
LABELS = {
    "tw-copy": "tw.load_into, copy path",
    "tw-copy-nocrc": "tw.load_into, copy path, check_crc=False",
    "tw-meta": "tw.load_into, meta model",
    "tw-mmap": "tw.load_into, meta model, mmap=True",
    "tw-mmap-nocrc": "tw.load_into, meta, mmap=True, check_crc=False",
    "tw-load": "tw.load (state dict)",
    "torch-load": "torch.load + load_state_dict",
    "torch-mmap-assign": "torch.load(mmap=True) + load_state_dict(assign=True)",
    "st-load-file": "safetensors load_file + load_state_dict",
    "bound-read": "bound: preadv into written memory (best of 1/2/4 threads)",
    "bound-read4": "bound: 4-thread preadv into written memory",
    "bound-memcpy": "bound: memcpy between written buffers",
    "bound-params": "bound: preadv of each tensor into its parameter",
    "inspect": "torchweights inspect (wall, incl. interpreter start)",
}


def run_case(spec: dict[str, Any], repeat: int) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    bound = math.inf
    for _ in range(repeat):
        if not spec.get("cold") and spec["case"] != "bound-memcpy":
            warm(spec["info"]["files"][spec["format"]])
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        bound = min(bound, out.get("bound_seconds", math.inf))
        if best is None or out["seconds"] < best["seconds"]:
            best = out
    assert best is not None
    if bound < math.inf:
        best["bound_seconds"] = bound  # best case time against best bound time, over the repeats
    return best


def time_inspect(path: str) -> float:
    """Best of 3 wall times of ``torchweights inspect``, after one untimed run that writes the bytecode caches (as
    an installed package has them: ``PYTHONDONTWRITEBYTECODE`` is dropped for these runs)."""
    exe = Path(sys.executable).with_name("torchweights")
    cmd = [str(exe), "inspect", path] if exe.exists() else [sys.executable, "-m", "torchweights.cli", "inspect", path]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(cmd, capture_output=True, check=True, env=env)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        best = min(best, time.perf_counter() - t0)
    return best


def optional_loaders() -> list[str]:
    found = []
    for name in ("runai_model_streamer", "fastsafetensors"):
        try:
            __import__(name)
            found.append(name)
        except ImportError:
            pass
    return found


def main() -> int:
    sizes = [int(s) for s in os.environ.get("TW_BENCH_SIZES", "1,4").split(",") if s.strip()]
    dtype_list = [d.strip() for d in os.environ.get("TW_BENCH_DTYPES", "float32,bfloat16").split(",") if d.strip()]
    repeat = int(os.environ.get("TW_BENCH_REPEAT", "1"))
    cold = os.environ.get("TW_BENCH_COLD", "1") != "0"
    keep = os.environ.get("TW_BENCH_KEEP", "0") == "1"
    given = os.environ.get("TW_BENCH_DIR")
    root = Path(given) if given else Path(tempfile.mkdtemp(prefix="tw-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    json_path = Path(os.environ.get("TW_BENCH_JSON", str(HERE / "results.json")))
    extra_loaders = optional_loaders()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {_mem_gb():.0f} GB RAM, Linux {platform.release()}"
    print(f"torchweights bench: sizes {sizes} GB, dtypes {dtype_list}, in {root}\nmachine: {machine}")
    if not extra_loaders:
        print(
            "runai-model-streamer and fastsafetensors are not installed: skipped (nothing is installed at bench time)"
        )
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:
            for dtype in dtype_list:
                t0 = time.perf_counter()
                info = generate(root, size, dtype)
                print(
                    f"\n{size} GB {dtype}: {info['tensors']} tensors, width {info['width']}, "
                    f"{info['nbytes'] / 1e9:.2f} GB, generated in {time.perf_counter() - t0:.0f} s"
                )
                for fmt, cases in CASES.items():
                    bound = run_case({"case": "bound-read", "info": info, "format": fmt}, repeat)
                    rows.append(_row(info, fmt, "bound-read", "warm", bound, None))
                    read_s = bound.get("seconds")
                    if fmt == "torch-zip":
                        mc = run_case({"case": "bound-memcpy", "info": info, "format": fmt}, repeat)
                        rows.append(_row(info, fmt, "bound-memcpy", "warm", mc, read_s))
                    bp = run_case({"case": "bound-params", "info": info, "format": fmt}, repeat)
                    rows.append(_row(info, fmt, "bound-params", "warm", bp, read_s))
                    cold_s = None
                    if cold:
                        cb = run_case(
                            {"case": "bound-read", "info": info, "format": fmt, "threads": 4, "cold": True}, repeat
                        )
                        rows.append(_row(info, fmt, "bound-read4", "cold", cb, None))
                        cold_s = cb.get("seconds")
                    for case in cases:
                        out = run_case({"case": case, "info": info, "format": fmt}, repeat)
                        rows.append(_row(info, fmt, case, "warm", out, read_s))
                        _print_row(rows[-1])
                        if cold and case in COLD:
                            out = run_case({"case": case, "info": info, "format": fmt, "cold": True}, repeat)
                            rows.append(_row(info, fmt, case, "cold", out, cold_s))
                            _print_row(rows[-1])
                    t_inspect = time_inspect(info["paths"][fmt])
                    rows.append(_row(info, fmt, "inspect", "warm", {"seconds": t_inspect, "extra": None}, None))
                if not keep:
                    remove(info)
    finally:
        if not given and not keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + table(rows))
    print("\n" + "\n".join(targets(rows)))
    json_path.write_text(json.dumps({"machine": machine, "rows": rows, "targets": targets(rows)}, indent=1))
    print(f"\nJSON: {json_path}")
    return 0


def _mem_gb() -> float:
    with open("/proc/meminfo") as fh:
        return int(fh.readline().split()[1]) / (1 << 20)


def _row(
    info: dict[str, Any], fmt: str, case: str, cache: str, out: dict[str, Any], bound_s: float | None
) -> dict[str, Any]:
    seconds = out.get("seconds")
    row: dict[str, Any] = {
        "size_gb": info["size_gb"],
        "dtype": info["dtype"],
        "format": fmt,
        "case": case,
        "cache": cache,
        "seconds": seconds,
        "gbps": info["nbytes"] / seconds / 1e9 if seconds else None,
        "x_bound": (out.get("bound_seconds") or bound_s) / seconds
        if seconds and (out.get("bound_seconds") or bound_s)
        else None,
        "extra_rss": out.get("extra"),
    }
    if "error" in out:
        row["error"] = out["error"]
    if "per_threads_gbps" in out:
        row["per_threads_gbps"] = out["per_threads_gbps"]
    return row


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_row(row: dict[str, Any]) -> None:
    err = f"  ERROR {row['error']}" if "error" in row else ""
    print(
        f"  {row['format']:<11} {row['cache']:<4} {LABELS[row['case']]:<52} {_fmt(row['seconds'], '6.2f')} s "
        f"{_fmt(row['gbps'], '6.2f')} GB/s  x{_fmt(row['x_bound'], '.2f')} bound  extra RSS "
        f"{_fmt(row['extra_rss'], '.2f')}{err}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    head = "| size | dtype | format | case | cache | s | GB/s | x read bound | extra RSS / ckpt |"
    lines = [head, "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['size_gb']} GB | {r['dtype']} | {r['format']} | {LABELS[r['case']]} | {r['cache']} | "
            f"{_fmt(r['seconds'], '.2f')} | {_fmt(r['gbps'], '.2f')} | {_fmt(r['x_bound'], '.2f')} | "
            f"{_fmt(r['extra_rss'], '.2f')} |" + (f" error: {r['error']}" if "error" in r else "")
        )
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with the figures it was judged on."""

    def get(size: int, dtype: str, fmt: str, case: str, cache: str = "warm") -> dict[str, Any] | None:
        for r in rows:
            key = (r["size_gb"], r["dtype"], r["format"], r["case"], r["cache"])
            if key == (size, dtype, fmt, case, cache) and r.get("seconds"):
                return r
        return None

    out = ["Targets:"]
    for size, dtype in sorted({(r["size_gb"], r["dtype"]) for r in rows}):
        for fmt in ("torch-zip", "safetensors", "sharded-3"):
            for case in ("tw-copy", "tw-copy-nocrc"):
                copy = get(size, dtype, fmt, case)
                if copy is None:
                    continue
                tag = f"{size} GB {dtype} {fmt} {LABELS[case]}:"
                x = copy["x_bound"] or 0
                out.append(f"  {tag} {x:.2f}x read bound (>= 0.8: {'met' if x >= 0.8 else 'NOT met'})")
                own = get(size, dtype, fmt, "bound-params")
                if own:
                    r = own["seconds"] / copy["seconds"]
                    out.append(f"  {tag} {r:.2f}x the preadv of each tensor into its parameter")
                anchor = get(size, dtype, fmt, "torch-load")
                if anchor:
                    r = anchor["seconds"] / copy["seconds"]
                    out.append(
                        f"  {tag} {r:.1f}x torch.load + load_state_dict (>= 4: {'met' if r >= 4 else 'NOT met'})"
                    )
                st = get(size, dtype, "sharded-3" if fmt == "sharded-3" else "safetensors", "st-load-file")
                if st:
                    r = st["seconds"] / copy["seconds"]
                    out.append(
                        f"  {tag} {r:.2f}x safetensors load_file + load_state_dict (>= 1: "
                        f"{'met' if r >= 1 else 'NOT met'})"
                    )
                if copy["extra_rss"] is not None:
                    e = copy["extra_rss"]
                    out.append(f"  {tag} extra RSS {e:.3f}x checkpoint (<= 0.1: {'met' if e <= 0.1 else 'NOT met'})")
                c = get(size, dtype, fmt, case, "cold")
                if c and c["x_bound"]:
                    out.append(
                        f"  {tag} cold {c['x_bound']:.2f}x 4-thread cold read (>= 0.8: "
                        f"{'met' if c['x_bound'] >= 0.8 else 'NOT met'})"
                    )
            ins = get(size, dtype, fmt, "inspect")
            if ins:
                out.append(
                    f"  {size} GB {dtype} {fmt} inspect: {ins['seconds']:.3f} s (< 0.2: "
                    f"{'met' if ins['seconds'] < 0.2 else 'NOT met'})"
                )
    return out


if __name__ == "__main__":
    script_entry(__doc__, main, worker, "--worker")
