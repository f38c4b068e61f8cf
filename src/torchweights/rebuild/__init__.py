"""Whole pickled models (``tw.load_model``): load.py (the two passes, tensors by the read engine) and unpickler.py
(pass 2: the pure-Python unpickler that imports and calls only what :mod:`~torchweights.unpickle.trust` approved).
"""
