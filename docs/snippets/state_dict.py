import torch
from mynets import Net

import torchweights as tw

# Before: torch.load, then load_state_dict
model = Net()
model.load_state_dict(torch.load("model.pt", weights_only=True))

# After: the same tensors, bit for bit; nothing from the file is executed
state_dict = tw.load("model.pt")
model.load_state_dict(state_dict)

# Or in one step: bytes go straight into the parameters, every key accounted for
model = Net()
report = tw.load_into(model, "model.pt")
print(report.summary)  # OK: loaded 11 of 11
assert report.ok
