from mynets import Net

import torchweights as tw

# Before: torch.load("whole_model.pt", weights_only=False) imports and runs whatever the file names

# After (1): rebuild the module, importing only classes of the packages you trust
model = tw.load_model("whole_model.pt", trust=["mynets"])
assert type(model).__name__ == "Net"

# After (2): build the model in code and take only the weights from the file (no trust needed)
model = Net()
report = tw.load_into(model, "whole_model.pt")
assert report.ok
