"""GPU load speed, for a machine with CUDA: torchweights against ``torch.load(map_location="cuda")`` and
safetensors ``load_file(device="cuda")``. One prepared script, a few minutes; not run by ``make bench``.

    .venv/bin/python bench/gpu.py            # TW_BENCH_SIZES=1 (GB), TW_BENCH_DIR as in bench/run.py

Cases (each in a fresh process, warm page cache): ``tw.load_into`` into a CUDA model (pinned staging buffers,
reads overlapped with host-to-device copies), ``tw.load(map_location="cuda")``, ``torch.load(map_location="cuda")``
+ ``load_state_dict``, and safetensors ``load_file(device="cuda")`` + ``load_state_dict``. Prints one table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import model as bench_model  # the generator and model of the bench (bench/model.py)

CASES = {
    "torch-zip": ["tw-copy-cuda", "tw-load-cuda", "torch-load-cuda"],
    "safetensors": ["tw-copy-cuda", "tw-load-cuda", "st-load-file-cuda"],
}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import torchweights as tw

    case, info, fmt = spec["case"], spec["info"], spec["format"]
    path = info["paths"][fmt]

    def once(model: Any, target: str) -> None:
        if case == "tw-copy-cuda":
            tw.load_into(model, target)
        elif case == "tw-load-cuda":
            tw.load(target, map_location="cuda")
        elif case == "torch-load-cuda":
            model.load_state_dict(torch.load(target, map_location="cuda", weights_only=True))
        elif case == "st-load-file-cuda":
            from safetensors.torch import load_file

            model.load_state_dict(load_file(target, device="cuda"))

    with tempfile.TemporaryDirectory() as tmp:  # one-time costs first, on a small model
        small = bench_model.build_model(64, info["dtype"], "cpu")
        paths, _ = bench_model.write_all(Path(tmp), "warmup", small.state_dict())
        once(small.cuda(), paths[fmt])
    model = bench_model.build_model(info["width"], info["dtype"], "cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    once(model, path)
    torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("CUDA is not available here: nothing to measure (the GPU path is tested on CPU logic only).")
        return 0
    sizes = [int(s) for s in os.environ.get("TW_BENCH_SIZES", "1").split(",") if s.strip()]
    given = os.environ.get("TW_BENCH_DIR")
    root = Path(given) if given else Path(tempfile.mkdtemp(prefix="tw-gpu-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in sizes:
            for dtype in ("float32", "bfloat16"):
                info = bench_model.generate(root, size, dtype)
                for fmt, cases in CASES.items():
                    for case in cases:
                        bench_model.warm(info["files"][fmt])
                        proc = subprocess.run(
                            [
                                sys.executable,
                                __file__,
                                "--worker",
                                json.dumps({"case": case, "info": info, "format": fmt}),
                            ],
                            capture_output=True,
                            text=True,
                            check=False,
                        )
                        if proc.returncode:
                            row = {
                                "size_gb": size,
                                "dtype": dtype,
                                "format": fmt,
                                "case": case,
                                "error": proc.stderr[-300:],
                            }
                        else:
                            out = json.loads(proc.stdout.strip().splitlines()[-1])
                            row = {
                                "size_gb": size,
                                "dtype": dtype,
                                "format": fmt,
                                "case": case,
                                "seconds": out["seconds"],
                                "gbps": info["nbytes"] / out["seconds"] / 1e9,
                            }
                        rows.append(row)
                        print(row)
                bench_model.remove(info)
    finally:
        if not given:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n| size | dtype | format | case | s | GB/s |\n|---|---|---|---|---:|---:|  ({torch.cuda.get_device_name()})"
    )
    for r in rows:
        print(
            f"| {r['size_gb']} GB | {r['dtype']} | {r['format']} | {r['case']} | {r.get('seconds', float('nan')):.2f} "
            f"| {r.get('gbps', float('nan')):.2f} |"
        )
    return 0


if __name__ == "__main__":
    bench_model.script_entry(__doc__, main, worker, "--worker")
