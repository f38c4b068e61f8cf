"""torchweights.report."""
