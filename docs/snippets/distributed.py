import torch.distributed.checkpoint as dcp
from mynets import Net

import torchweights as tw

# A torch.distributed.checkpoint folder from any checkpoint (written without torch, verified bit for bit)
tw.convert("model.safetensors", "ckpt_dcp", to="dcp")
state = Net().state_dict()
dcp.load(state, checkpoint_id="ckpt_dcp")  # torch's own loader reads it, on any number of ranks

# Any DCP folder (saved on any number of ranks) is read without unpickling code from it: .metadata and the
# non-tensor items go through the restricted unpickler, which plain dcp.load does not use
assert tw.scan("ckpt_dcp").verdict == "clean"
assert tw.load_into(Net(), "ckpt_dcp").ok
tw.convert("ckpt_dcp", "back.safetensors")  # and back to one file (or a sharded set)
assert tw.diff("model.safetensors", "back.safetensors").identical

# FSDP2: on every rank (torchrun --standalone --nproc-per-node 2 examples/distributed_load.py)
#     with torch.device("meta"):
#         model = Net()
#     fully_shard(model)
#     model.to_empty(device="cuda")
#     tw.load_into(model, "model.safetensors")  # each rank reads only its own shards; one outcome on every rank
