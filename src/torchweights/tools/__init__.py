"""torchweights.tools."""
