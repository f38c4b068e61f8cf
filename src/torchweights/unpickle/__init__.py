"""torchweights.unpickle."""
