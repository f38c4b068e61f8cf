"""Per-rank bytes read and peak memory of ``load_into`` on an FSDP2 model, 2 and 4 CPU ranks (`make bench`).

A model of eight 4096x4096 float32 linears (512 MiB) is built on the meta device, ``fully_shard``-ed and
``to_empty``-ed on every rank, so each rank holds only its own rows. Each rank then loads, in turn:

- ``tw``: ``tw.load_into(model, file)`` from one safetensors file (each rank reads its own rows);
- ``tw-dcp``: ``tw.load_into(model, folder)`` from a DCP folder saved on 2 ranks (resharded when 4 load it);
- anchor ``full``: what a rank does without us, ``safetensors.torch.load_file`` (the whole model in memory) and
  a copy of its rows (what loading a plain checkpoint into a sharded model costs with ``set_model_state_dict``);
- anchor ``dcp``: torch's own ``dcp.load`` of the same folder into the sharded state dict.

Reported per rank: bytes read from the files (``/proc/self/io`` ``rchar``), the peak resident memory during the load
above what the rank held before it (``VmHWM`` after ``clear_refs``), and seconds. Target: ``tw`` reads about
1/world of the model per rank and adds bounded scratch, never the model.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from typing import Any

LAYERS, DIM = 8, 4096


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


def _model(world: int) -> Any:
    import torch
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        net = nn.Sequential(*(nn.Linear(DIM, DIM, bias=False) for _ in range(LAYERS)))
    mesh = init_device_mesh("cpu", (world,))
    for layer in net:
        fully_shard(layer, mesh=mesh)
    fully_shard(net, mesh=mesh)
    net.to_empty(device="cpu")
    return net


def _measure(kind: str, world: int, file: str, folder: str) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    net = _model(world)
    dist.barrier()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before, read0, t0 = _status("VmRSS"), _rchar(), time.perf_counter()
    if kind == "tw":
        import torchweights as tw

        tw.load_into(net, file)
    elif kind == "tw-dcp":
        import torchweights as tw

        tw.load_into(net, folder)
    elif kind == "full":
        from safetensors.torch import load_file

        full = load_file(file)
        with torch.no_grad():
            for name, param in net.state_dict().items():
                local = param.to_local()
                rows = param.shape[0] // world + (param.shape[0] % world > 0)
                start = min(dist.get_rank() * rows, param.shape[0])
                local.copy_(full[name][start : start + local.shape[0]])
        del full
    else:
        import torch.distributed.checkpoint as dcp

        state = net.state_dict()
        dcp.load(state, checkpoint_id=folder)
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    dist.barrier()
    return {"read": _rchar() - read0, "peak_extra": peak - before, "seconds": seconds}


def _rank(rank: int, world: int, store: str, file: str, folder: str, out: Any, kind: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    warnings.simplefilter("ignore")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    result = _measure(kind, world, file, folder)
    dist.destroy_process_group()
    out.put((rank, result))


def _save_rank(rank: int, world: int, store: str, file: str, folder: str, out: Any, kind: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    warnings.simplefilter("ignore")
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    import torchweights as tw

    net = _model(world)
    tw.load_into(net, file)
    dcp.save(net.state_dict(), checkpoint_id=folder)
    dist.destroy_process_group()
    out.put((rank, {}))


def _run(target: Any, world: int, file: str, folder: str, kind: str = "") -> dict[int, Any]:
    """``target`` on ``world`` fresh ranks (each loader in processes of its own: no memory reused from another)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            ctx.Process(target=target, args=(r, world, os.path.join(tmp, "store"), file, folder, out, kind))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        results = dict(out.get(timeout=600) for _ in procs)
        for p in procs:
            p.join(60)
    return results


def main() -> None:
    import torch
    from safetensors.torch import save_file

    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "model.safetensors")
        g = torch.Generator().manual_seed(0)
        save_file({f"{i}.weight": torch.randn(DIM, DIM, generator=g) for i in range(LAYERS)}, file)
        total = os.path.getsize(file)
        folder = os.path.join(tmp, "dcp")
        _run(_save_rank, 2, file, folder)
        print(f"model: {LAYERS} x {DIM}x{DIM} float32 = {total / mib:.0f} MiB; DCP folder saved on 2 ranks")
        print("peak extra: resident memory added during the load, the rank's own shard (faulted in as it is")
        print("written) included; largest rank; seconds: slowest rank")
        print(
            f"{'ranks':>5}  {'loader':<7} {'shard MiB':>10} {'MiB read/rank':>14} {'peak extra MiB':>15} {'seconds':>8}"
        )
        summary = []
        for world in (2, 4):
            for kind in ("tw", "tw-dcp", "full", "dcp"):
                results = _run(_rank, world, file, folder, kind)
                rows = [results[r] for r in range(world)]
                read = max(r["read"] for r in rows) / mib
                peak = max(r["peak_extra"] for r in rows) / mib
                secs = max(r["seconds"] for r in rows)
                share = total / world / mib
                print(f"{world:>5}  {kind:<7} {share:>10.0f} {read:>14.0f} {peak:>15.0f} {secs:>8.2f}")
                summary.append({"ranks": world, "loader": kind, "read_mib": read, "peak_extra_mib": peak, "s": secs})
        print(json.dumps({"model_mib": total / mib, "rows": summary}), file=sys.stderr)


if __name__ == "__main__":
    main()
