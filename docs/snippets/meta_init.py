import torch
from mynets import Net

import torchweights as tw

# Build without allocating or initialising (a large model), then fill from the file: one allocation per tensor
with torch.device("meta"):
    model = Net()
report = tw.load_into(model, "model.safetensors")
assert report.ok
assert all(p.device.type == "cpu" for p in model.parameters())

# Tensors the file does not have stay on meta, and the report says so (never "OK"):
with torch.device("meta"):
    model = Net(classes=3)
report = tw.load_into(model, "model.safetensors", skip=["head.*"], init_missing=True)
assert report.ok  # init_missing=True ran the head's reset_parameters()
