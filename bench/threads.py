"""torch's intra-op threads during a load that casts: the default (leave torch's setting alone) against the opt-in
``io_settings(intra_op_threads=1)``. A 1 GB bf16 torch zip into an fp32 model (every tensor cast); the first load
of each process touches the model's pages and is not counted. Not run by ``make bench``.

    .venv/bin/python bench/threads.py        # TW_BENCH_DIR (default: a temporary folder), READERS=0 (reader threads)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

import torchweights as tw
from torchweights.storage import io_settings

SHAPES = [(4096, 4096)] * 30 + [(4096,)] * 30 + [(1024, 1024)] * 32  # about 1.07 GB of bf16


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ps = torch.nn.ParameterList(torch.nn.Parameter(torch.empty(s)) for s in SHAPES)


def main() -> None:
    folder = Path(os.environ.get("TW_BENCH_DIR") or tempfile.mkdtemp())
    path = folder / "bf16_1g.pt"
    model = Model()
    if not path.exists():
        torch.manual_seed(0)
        torch.save({k: torch.randn(v.shape, dtype=torch.bfloat16) for k, v in model.state_dict().items()}, path)
    readers = int(os.environ.get("READERS", "0"))
    tw.load_into(model, path)  # first touch of the model's memory, page cache warm
    best: dict[int, float] = {}
    for _ in range(3):
        for intra in (0, 1):
            start = time.perf_counter()
            with io_settings(intra_op_threads=intra, threads=readers):
                tw.load_into(model, path)
            elapsed = time.perf_counter() - start
            best[intra] = min(best.get(intra, elapsed), elapsed)
    print(f"torch threads {torch.get_num_threads()}, reader threads {readers or 'default'}, best of 3:")
    print(f"  default (torch's threads left alone): {best[0]:.3f} s")
    print(f"  intra_op_threads=1 (opt-in):          {best[1]:.3f} s")


if __name__ == "__main__":
    main()
