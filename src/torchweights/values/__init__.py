"""Tensor values: statistics per tensor (:mod:`.stats`, :mod:`.file`) and the sanity checks of a load
(:mod:`.checks`, :mod:`.findings`).

Everything here reads values one tensor at a time, and reduces a large tensor in bounded chunks, so no module of
this package ever holds more than one tensor of a checkpoint plus a chunk of scratch memory. Importing the package
does not import torch; the functions that compute import it.
"""
