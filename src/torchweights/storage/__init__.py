"""The only reader of tensor bytes: :mod:`~torchweights.storage.read` (fill, materialize, byte ranges: the entry
points), :mod:`~torchweights.storage.engine` (threaded vectored reads into the destination tensors),
:mod:`~torchweights.storage.files` (positioned reads, bounded inflation, CRC-32, :func:`io_settings`),
:mod:`~torchweights.storage.mapping` (``mmap=True``), :mod:`~torchweights.storage.tensors` (views, quantized and
sparse tensors from records), :mod:`~torchweights.storage.contents` (logical bytes without torch),
:mod:`~torchweights.storage.results` and :mod:`~torchweights.storage.stamps` (the file identity taken at open).

``torchweights.storage.io_settings`` is public: how many threads, how much scratch memory a read uses.
"""

from .settings import IOSettings, io_settings

__all__ = ["IOSettings", "io_settings"]
