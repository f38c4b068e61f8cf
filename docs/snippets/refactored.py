from mynets import RefactoredNet

import torchweights as tw
from torchweights.plan.align import rename_mapping

# model.pt was saved from Net; RefactoredNet is the same network with every module renamed
report = tw.load_into(RefactoredNet(), "model.pt", align="auto")
assert report.ok, report
alignment = report.plan.alignment
for pair in alignment.pairs:  # backbone.0 -> layers.0.proj (0.80: the only modules of their shapes) ...
    print(f"{pair.source} -> {pair.target} ({pair.confidence:.2f}: {pair.evidence})")

# Reviewed? Keep the mapping in code and load without aligning every time
rename = rename_mapping(alignment)
assert tw.load_into(RefactoredNet(), "model.pt", rename=rename).ok
