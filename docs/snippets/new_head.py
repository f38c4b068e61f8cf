from mynets import Net

import torchweights as tw

# A backbone trained for 10 classes, fine-tuned for 3: the head does not fit
model = Net(classes=3)
try:
    tw.load_into(model, "model.pt")
except tw.LoadError as e:
    assert e.code == "shape-mismatch"
    print(e)  # every key, and the skip=[...] that loads the rest; the model was not changed

# Keep the new head as initialised, load everything else
report = tw.load_into(model, "model.pt", skip=["head.*"])
print(report.summary)  # OK: loaded 9 of 11; 2 left as initialised (skipped)
assert report.ok

# Or: load every tensor that fits, leave the mismatched ones as they are (and listed)
report = tw.load_into(Net(classes=3), "model.pt", on_mismatch="skip")
assert len(report.missing_keys) == 2
