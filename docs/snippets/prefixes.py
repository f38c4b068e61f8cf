from mynets import Net

import torchweights as tw

# Saved from nn.DataParallel / DistributedDataParallel: every key starts with "module."
# Saved from torch.compile(model): every key starts with "_orig_mod."
for path in ["dp_model.pt", "compiled_model.pt"]:
    model = Net()
    report = tw.load_into(model, path)  # prefix="auto": the wrapper prefix is found from the names
    assert report.ok, report
    print(path, report.summary)

# Force one when you know it: strip ("module."), add ("+module.") or swap ("a.->b.")
report = tw.load_into(Net(), "dp_model.pt", prefix="module.")
assert report.ok
