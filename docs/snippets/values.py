import torch
from mynets import Net

import torchweights as tw

# A training run diverged: one weight matrix holds a NaN, and torch loads it without a word
state = torch.load("model.pt", weights_only=True)
state["backbone.2.weight"][0, 0] = float("nan")
torch.save(state, "diverged.pt")
print(Net().load_state_dict(torch.load("diverged.pt", weights_only=True)))  # <All keys matched successfully>

# check_values=True checks every loaded tensor after the copy (nothing is read twice)
report = tw.load_into(Net(), "diverged.pt", check_values=True)
print(report.headline())  # WARN: loaded 8 of 8; values: 1 NaN tensor
assert report.ok  # every key is accounted for: value findings are warnings
assert [(f.name, f.kind.value) for f in report.value_findings] == [("backbone.2.weight", "nan")]

# Statistics per tensor, one tensor at a time (never the whole checkpoint in memory)
stats = tw.stats("diverged.pt")
row = {t.name: t for t in stats.tensors}["backbone.2.weight"]
assert row.nan_count == 1 and row.abs_max is not None
print(stats)  # the table `torchweights inspect --stats diverged.pt` prints
