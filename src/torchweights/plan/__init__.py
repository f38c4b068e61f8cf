"""torchweights.plan."""
