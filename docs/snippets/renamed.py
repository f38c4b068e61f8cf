from mynets import Net

import torchweights as tw

# The checkpoint calls the head "fc"; the model now calls it "head"
try:
    tw.load_into(Net(), "old_names.pt")
except tw.LoadError as e:
    print(e)  # suggests the rename={...} that loads them, checked by planning again with it

report = tw.load_into(Net(), "old_names.pt", rename={r"^fc\.": "head."})
assert report.ok, report
