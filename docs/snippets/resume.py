import torch
from mynets import Net

import torchweights as tw

model = Net()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)

# Before: ckpt = torch.load("last.pt")
# After: the same nested object torch.load(weights_only=True) returns; nothing executed
ckpt = tw.load("last.pt", nested=True)
model.load_state_dict(ckpt["model"])
optimizer.load_state_dict(ckpt["optimizer"])
scheduler.load_state_dict(ckpt["scheduler"])
start_epoch = ckpt["epoch"] + 1
print(f"resuming at epoch {start_epoch}")
assert start_epoch == 10
