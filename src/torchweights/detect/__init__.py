"""torchweights.detect."""
