"""Adapters: declared transforms that load a checkpoint tensor into a model tensor of another layout (an input
convolution with other channels, resampled position embeddings, fused and split attention projections). Each is
opt-in (``load_into(..., adapt=["input_conv"])``), planned from names and shapes, and one line of the report.
"""
