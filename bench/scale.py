"""``make bench`` scale case (``TW_BENCH_SCALE=1``; not part of CI): a checkpoint of about 60% of RAM.

Generates (or reuses, from ``TW_BENCH_DIR``) a bf16 transformer-like checkpoint of ``0.6 x MemTotal`` as a sharded
safetensors set and the same tensors as torch zip shards (HF layouts, ``bench/model.py``'s ``generate_sharded``,
written one shard at a time), then loads it into a model the size of the checkpoint, each case in a child process
under a memory limit, so that a case that needs the model plus a full copy of the checkpoint is killed, not the
machine. Every case starts cold: the shards are evicted (``posix_fadvise(DONTNEED)``) first; a warm cache is not
possible when the checkpoint and the model together fill most of the memory.

Cases (the model is built and its memory written before the clock; imports are done before the clock):
    tw-copy          ``tw.load_into(model, folder)`` into an allocated model
    tw-meta          the same into a meta model (fresh allocations)
    st-per-shard     safetensors ``load_file`` + ``load_state_dict`` shard by shard (as transformers does)
    st-merged        every shard's ``load_file`` merged into one dict, then ``load_state_dict``
    torch-per-shard  ``torch.load(weights_only=True)`` + ``load_state_dict`` per ``.bin`` shard
    torch-merged     ``torch.load`` of every shard into one dict, then ``load_state_dict``

Reported per case: seconds, GB/s, peak RSS (VmHWM), extra RSS (the peak above the memory the process held once
the model existed, less the model's own new memory, over the checkpoint size; VmHWM reset through
``/proc/self/clear_refs``), the memory group's peak (page cache included, where a cgroup is used), or "killed".
Also the read bound: a 4-thread ``O_DIRECT`` read of the shards (``bench/fresh.py``'s ``read_bound``), before the
first case and after the last.

Memory limit: a cgroup v1 memory group below this process's own (``memory.limit_in_bytes``, and
``memory.memsw.limit_in_bytes`` where present), else a cgroup v2 group (``memory.max``), else a watchdog that polls
the child's VmRSS every 10 ms and kills it above the limit (stricter: VmRSS counts mapped file pages, such as
the mmap-backed tensors of safetensors' ``load_file``, which a cgroup reclaims under its limit instead). The child
joins the group before it runs Python (so everything it allocates counts) and asks to be the first one a
machine-wide OOM kill picks (oom_score_adj 1000).
The limit is MemTotal less 2 GiB, lowered to MemAvailable less 1 GiB when the machine holds less at the time of a
case (the machine may be shared): each row says which limit it ran under.

Environment:
    TW_BENCH_SCALE_GB        checkpoint size in GiB (default 0.6 x MemTotal)
    TW_BENCH_SCALE_LIMIT_GB  memory limit per case in GiB (default MemTotal - 2 GiB, see above)
    TW_BENCH_SCALE_SHARDS    number of shards (default: the larger of 4 and one per 4 GiB)
    TW_BENCH_SCALE_CASES     comma-separated subset of the cases above (default: all, on both formats)
    TW_BENCH_SCALE_LIMITER   ``cgroup1``, ``cgroup2`` or ``watchdog`` to force a mechanism
    TW_BENCH_DIR             where the checkpoint goes; one already there (same size) is reused
    TW_BENCH_KEEP            ``1`` keeps the checkpoint this run generated (otherwise it is deleted)
    TW_BENCH_INTRA           torch intra-op threads in every process (default 1, as bench/fresh.py)
    TW_BENCH_JSON            write the results as JSON to this path (default: bench/measured/ is not written)

Run: ``TW_BENCH_SCALE=1 make bench`` or ``.venv/bin/python bench/scale.py``. A measurement, not a test.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GIB = 1 << 30
FORMATS = {"safetensors": ["tw-copy", "tw-meta", "st-per-shard", "st-merged"]}
FORMATS["torch-zip"] = ["tw-copy", "tw-meta", "torch-per-shard", "torch-merged"]
LABELS = {
    "tw-copy": "tw.load_into(model, folder), allocated model",
    "tw-meta": "tw.load_into(model, folder), meta model",
    "st-per-shard": "load_file + load_state_dict per shard",
    "st-merged": "load_file of all shards into one dict + load_state_dict",
    "torch-per-shard": "torch.load + load_state_dict per shard",
    "torch-merged": "torch.load of all shards into one dict + load_state_dict",
}
META = {"tw-meta"}


# --------------------------------------------------------------------------------------------------------------
# Child: one case
# --------------------------------------------------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(int(spec["intra"]))
    from model import build_model, memory_status, reset_peak

    case, path, files = spec["case"], spec["path"], spec["files"]
    if case.startswith("tw-"):
        import torchweights as tw

        tw.load_into  # noqa: B018 - the lazy package's first attribute, before the clock
    elif case.startswith("st-"):
        import safetensors.torch  # noqa: F401

    model = build_model(spec["width"], spec["dtype"], "meta" if case in META else "cpu")
    gc.collect()
    peak_ok = reset_peak()
    before = memory_status()
    t0 = time.perf_counter()
    run_case(case, model, path, files)
    seconds = time.perf_counter() - t0
    gc.collect()
    after = memory_status()
    # The model's own memory that the load adds: all of it for a meta model, none for an allocated one. Taken from
    # the model, not from RSS after the load: freed memory that the allocator keeps would count as the model's.
    nbytes = spec["nbytes"]
    own = nbytes if case in META else 0
    with torch.no_grad():  # the same few values in every case: a check that each one loaded the same tensors
        check = float(model.embed.weight[:8].float().sum() + model.lm_head.weight[-8:].float().sum())
    return {
        "seconds": seconds,
        "peak_rss": after["VmHWM"],
        "model_rss": before["VmRSS"] + own,
        "rss_after": after["VmRSS"],
        "extra": (after["VmHWM"] - before["VmRSS"] - own) / nbytes if peak_ok else None,
        "check": check,
    }


def run_case(case: str, model: Any, path: str, files: list[str]) -> None:
    """One load, the way the case does it."""
    import torch

    if case in ("tw-copy", "tw-meta"):
        import torchweights as tw

        tw.load_into(model, path)
    elif case == "st-per-shard":
        from safetensors.torch import load_file

        for f in files:
            sd = load_file(f)
            model.load_state_dict(sd, strict=False)
            del sd
    elif case == "st-merged":
        from safetensors.torch import load_file

        merged: dict[str, Any] = {}
        for f in files:
            merged.update(load_file(f))
        model.load_state_dict(merged)
        del merged
    elif case == "torch-per-shard":
        for f in files:
            sd = torch.load(f, weights_only=True)
            model.load_state_dict(sd, strict=False)
            del sd
    elif case == "torch-merged":
        merged = {}
        for f in files:
            merged.update(torch.load(f, weights_only=True))
        model.load_state_dict(merged)
        del merged
    else:
        raise SystemExit(f"unknown case {case}")


# --------------------------------------------------------------------------------------------------------------
# Parent: memory limits
# --------------------------------------------------------------------------------------------------------------


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = int(value.split()[0]) * 1024
    return out


def _own_cgroup(match: str) -> str | None:
    """This process's cgroup path in the hierarchy whose controller list is ``match`` (``""`` for v2)."""
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if (match == "" and controllers == "") or (match and match in controllers.split(",")):
                return path
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _counter(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except OSError:
        pass
    return 0


class Limiter:
    """Runs a command with a memory limit: a cgroup (v1, else v2) made for the run, else a VmRSS watchdog."""

    def __init__(self, force: str | None) -> None:
        self.kind = "watchdog"
        self.base = ""
        self._n = 0
        for kind in ("cgroup1", "cgroup2"):
            if force and force != kind:
                continue
            base = self._probe(kind)
            if base:
                self.kind, self.base = kind, base
                break

    def _probe(self, kind: str) -> str | None:
        """The folder under which a memory group can be made and limited, or None."""
        if kind == "cgroup1":
            own = _own_cgroup("memory")
            root = "/sys/fs/cgroup/memory"
            limit_file = "memory.limit_in_bytes"
        else:
            own = _own_cgroup("")
            root = next((r for r in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified") if _is_v2(r)), "")
            limit_file = "memory.max"
        if own is None or not root:
            return None
        base = os.path.join(root, own.lstrip("/"))
        test = os.path.join(base, f"tw-bench-{os.getpid()}-probe")
        try:
            os.mkdir(test)
        except OSError:
            return None
        try:
            ok = os.path.exists(os.path.join(test, limit_file))
            if ok:
                _write(os.path.join(test, limit_file), str(1 << 40))
            return base if ok else None
        except OSError:
            return None
        finally:
            os.rmdir(test)

    def run(self, argv: list[str], env: dict[str, str], limit: int) -> dict[str, Any]:
        """Run ``argv``; returns its stdout, exit status, whether it was killed at the limit, and the group's
        peak (page cache included) where a cgroup was used."""
        self._n += 1
        group = os.path.join(self.base, f"tw-bench-{os.getpid()}-{self._n}") if self.base else ""
        if group:
            os.mkdir(group)
            if self.kind == "cgroup1":
                _write(os.path.join(group, "memory.limit_in_bytes"), str(limit))
                memsw = os.path.join(group, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    _write(memsw, str(limit))
            else:
                _write(os.path.join(group, "memory.max"), str(limit))
                if os.path.exists(os.path.join(group, "memory.swap.max")):
                    _write(os.path.join(group, "memory.swap.max"), "0")
        procs = os.path.join(group, "cgroup.procs") if group else ""

        def enter() -> None:  # in the child, after fork, before exec: all it allocates counts
            if procs:
                _write(procs, str(os.getpid()))
            _write(f"/proc/{os.getpid()}/oom_score_adj", "1000")

        out: dict[str, Any] = {}
        try:
            with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
                proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, preexec_fn=enter, text=True)
                killed = self._watch(proc, limit) if not group else False
                proc.wait()
                stdout.seek(0)
                stderr.seek(0)
                out.update(rc=proc.returncode, stdout=stdout.read(), stderr=stderr.read())
            if group and self.kind == "cgroup1":
                out["group_peak"] = _read_int(os.path.join(group, "memory.max_usage_in_bytes"))
                killed = _counter(os.path.join(group, "memory.oom_control"), "oom_kill") > 0
            elif group:
                out["group_peak"] = _read_int(os.path.join(group, "memory.peak"))
                killed = _counter(os.path.join(group, "memory.events"), "oom_kill") > 0
            out["killed"] = killed or proc.returncode == -signal.SIGKILL
        finally:
            if group:
                for _ in range(50):
                    try:
                        os.rmdir(group)
                        break
                    except OSError:
                        time.sleep(0.1)
        return out

    @staticmethod
    def _watch(proc: subprocess.Popen[str], limit: int) -> bool:
        """Poll the child's VmRSS every 10 ms; SIGKILL above ``limit``. True if it had to."""
        hit = threading.Event()

        def poll() -> None:
            status = f"/proc/{proc.pid}/status"
            while proc.poll() is None:
                try:
                    with open(status) as fh:
                        rss = next((int(x.split()[1]) * 1024 for x in fh if x.startswith("VmRSS:")), 0)
                except OSError:
                    return
                if rss > limit:
                    hit.set()
                    proc.kill()
                    return
                time.sleep(0.01)

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        proc.wait()
        t.join()
        return hit.is_set()


def _is_v2(root: str) -> bool:
    try:
        with open(os.path.join(root, "cgroup.controllers")) as fh:
            return "memory" in fh.read().split()
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# Parent: the cases
# --------------------------------------------------------------------------------------------------------------


def case_limit(requested: int | None) -> int:
    mem = meminfo()
    if requested:
        return requested
    return min(mem["MemTotal"] - 2 * GIB, mem["MemAvailable"] - GIB)


def bound(files: list[str]) -> float:
    from fresh import read_bound
    from model import evict

    evict(files)
    seconds = read_bound(files, direct=True)
    gc.collect()
    return seconds


def bench(
    info: dict[str, Any], cases: list[tuple[str, str]], limiter: Limiter, limit_req: int | None, intra: int
) -> list[dict[str, Any]]:
    from model import evict

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["OMP_NUM_THREADS"] = str(intra)
    rows: list[dict[str, Any]] = []
    for fmt, case in cases:
        files = info["files"][fmt]
        spec = {
            "case": case,
            "path": info["paths"][fmt],
            "files": files,
            "width": info["width"],
            "dtype": info["dtype"],
            "nbytes": info["nbytes"],
            "intra": intra,
        }
        evict(files)
        limit = case_limit(limit_req)
        t0 = time.perf_counter()
        res = limiter.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], env, limit)
        wall = time.perf_counter() - t0
        row: dict[str, Any] = {"format": fmt, "case": case, "limit": limit, "group_peak": res.get("group_peak")}
        row.update(wall=wall, by=limiter.kind)
        if res["rc"] == 0:
            row.update(json.loads(res["stdout"].strip().splitlines()[-1]))
            row["gbps"] = info["nbytes"] / row["seconds"] / 1e9
        elif res["killed"]:
            row["killed"] = True
        else:
            row["error"] = (res["stderr"] or res["stdout"]).strip().splitlines()[-1:]
        rows.append(row)
        print(f"  {fmt:11} {case:15} {_cell(row)} ({wall:.0f} s wall)", flush=True)
    return rows


def _cell(r: dict[str, Any]) -> str:
    if r.get("killed"):
        how = "OOM" if r.get("by", "").startswith("cgroup") else "by the VmRSS watchdog"
        return f"killed ({how} at limit {r['limit'] / GIB:.1f} GiB)"
    if "error" in r:
        return f"error: {r['error']}"
    extra = "-" if r.get("extra") is None else f"{r['extra']:.3f}x"
    return f"{r['seconds']:.1f} s, {r['gbps']:.2f} GB/s, peak RSS {r['peak_rss'] / GIB:.1f} GiB, extra {extra}"


def table(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "| format | case | s | GB/s | peak RSS GiB | extra RSS / ckpt | limit GiB | group peak GiB (incl. cache) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gp = "-" if r.get("group_peak") is None else f"{r['group_peak'] / GIB:.1f}"
        head = f"| {r['format']} | {LABELS[r['case']]} | "
        tail = f" | {r['limit'] / GIB:.1f} | {gp} |"
        if r.get("killed") or "error" in r:
            lines.append(head + f"{_cell(r)} | - | - | -" + tail)
            continue
        extra = "-" if r.get("extra") is None else f"{r['extra']:.3f}"
        lines.append(head + f"{r['seconds']:.1f} | {r['gbps']:.2f} | {r['peak_rss'] / GIB:.1f} | {extra}" + tail)
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Target: tw.load_into extra RSS <= 0.1x the checkpoint"]
    for r in rows:
        if r["case"].startswith("tw-"):
            e = r.get("extra")
            verdict = "NOT met" if e is None or e > 0.1 else "met"
            shown = _cell(r) if e is None else f"{e:.3f}x"
            out.append(f"  {r['format']} {r['case']}: {shown} ({verdict})")
    checks = {round(r["check"], 3) for r in rows if "check" in r}
    if len(checks) > 1:
        out.append(f"  WARNING: the cases loaded different values (checksums {sorted(checks)})")
    return out


def main() -> int:
    from model import generate_sharded

    mem = meminfo()
    size = float(os.environ.get("TW_BENCH_SCALE_GB") or 0.6 * mem["MemTotal"] / GIB)
    limit_env = os.environ.get("TW_BENCH_SCALE_LIMIT_GB")
    limit_req = int(float(limit_env) * GIB) if limit_env else None
    shards = int(os.environ.get("TW_BENCH_SCALE_SHARDS", "0"))
    intra = int(os.environ.get("TW_BENCH_INTRA", "1"))
    wanted = [c.strip() for c in os.environ.get("TW_BENCH_SCALE_CASES", "").split(",") if c.strip()]
    cases = [(fmt, c) for fmt, cs in FORMATS.items() for c in cs if not wanted or c in wanted]
    keep = os.environ.get("TW_BENCH_KEEP") == "1"
    given = os.environ.get("TW_BENCH_DIR")
    root = Path(given) if given else Path(tempfile.mkdtemp(prefix="tw-bench-scale-"))
    folder = root / f"scale-{size:g}g-bfloat16"
    info_file = folder / "info.json"
    limiter = Limiter(os.environ.get("TW_BENCH_SCALE_LIMITER"))
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem['MemTotal'] / GIB:.1f} GiB RAM, "
        f"Linux {platform.release()}"
    )
    print(f"torchweights scale bench: {size:g} GiB bf16 checkpoint in {folder}")
    print(f"machine: {machine}; memory limit by {limiter.kind}; torch intra-op threads {intra}")
    generated = False
    t0 = time.perf_counter()
    if info_file.exists():
        info = json.loads(info_file.read_text())
        print("reusing the checkpoint there")
    else:
        info = generate_sharded(folder, int(size * GIB), "bfloat16", shards)
        info_file.write_text(json.dumps(info))
        generated = True
        print(f"generated in {time.perf_counter() - t0:.0f} s")
    gen_s = time.perf_counter() - t0
    nbytes = info["nbytes"]
    print(
        f"{nbytes / 1e9:.2f} GB ({nbytes / GIB:.2f} GiB), {info['tensors']} tensors, width {info['width']}, "
        f"{info['shards']} shards per format"
    )
    try:
        b0 = {fmt: bound(info["files"][fmt]) for fmt in FORMATS}
        rows = bench(info, cases, limiter, limit_req, intra)
        b1 = {fmt: bound(info["files"][fmt]) for fmt in FORMATS}
    finally:
        if generated and not keep:
            shutil.rmtree(folder, ignore_errors=True)
            if not given:
                shutil.rmtree(root, ignore_errors=True)
    bounds = {fmt: [nbytes / b0[fmt] / 1e9, nbytes / b1[fmt] / 1e9] for fmt in FORMATS}
    lines = [
        "",
        f"Checkpoint {nbytes / 1e9:.2f} GB bf16, {info['shards']} shards; every case cold (shards evicted first);",
        f"memory limit by {limiter.kind}; machine: {machine} (shared: timings move)",
        "",
        table(info, rows),
        "",
        "Read bound, 4-thread O_DIRECT read of the shards (before the first case / after the last): "
        + "; ".join(f"{fmt} {a:.2f} / {b:.2f} GB/s" for fmt, (a, b) in bounds.items()),
        "",
        *targets(rows),
    ]
    print("\n".join(lines))
    json_path = os.environ.get("TW_BENCH_JSON")
    if json_path:
        doc = {
            "machine": machine,
            "limiter": limiter.kind,
            "intra": intra,
            "checkpoint": {k: v for k, v in info.items() if k not in ("paths", "files")},
            "generate_seconds": gen_s if generated else None,
            "read_bound_gbps": bounds,
            "rows": rows,
            "targets": targets(rows),
        }
        Path(json_path).write_text(json.dumps(doc, indent=1))
        print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    from model import script_entry

    script_entry(__doc__, main, child, "--child")
