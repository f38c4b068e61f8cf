"""Load one checkpoint into an FSDP2 model on every rank, each rank reading only its own shards (CPU, gloo).

    torchrun --nproc-per-node 2 examples/distributed_load.py [CHECKPOINT]

Without CHECKPOINT, rank 0 writes a small one (``module.``-prefixed safetensors, as a DDP run saves it) to a
temporary folder first. Any file or folder ``tw.open`` reads works: a ``.pt``, a sharded Hugging Face set (its
``index.json`` or folder), a torch.distributed.checkpoint folder saved on any number of ranks.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import torchweights as tw


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 10))


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "tw-example-ddp.safetensors")
    if len(sys.argv) == 1 and rank == 0:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        save_file({f"module.{k}": v for k, v in build().state_dict().items()}, path)
    dist.barrier()

    with torch.device("meta"):  # no rank ever holds the whole model
        model = build()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")

    # Every rank plans the same load and agrees before reading; on any failure every rank raises the same error
    # and no rank's parameters change.
    report = tw.load_into(model, path)
    print(f"rank {rank}/{world}: {report.summary} ({report.bytes_read} bytes read by this rank)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
