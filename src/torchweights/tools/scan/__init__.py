"""torchweights.tools.scan."""
