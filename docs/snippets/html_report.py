from pathlib import Path

from mynets import Net

import torchweights as tw

# One self-contained page (no network): the load report, the value findings, per-layer statistics,
# dtype and size breakdown, and what changed against a reference. Needs `pip install 'torchweights[report]'`.
page = tw.html_report("last.pt", "report.html", model=Net(), against="model.pt")
print(page.summary)
assert page.load is not None and page.load.ok
assert Path("report.html").read_text().startswith("<!DOCTYPE html>")
# The same from the command line:
#   torchweights report last.pt --model mynets.py:Net --against model.pt --html report.html
