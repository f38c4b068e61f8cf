"""The only reader of tensor bytes.

- :mod:`~torchweights.storage.read`: the entry points, :func:`~torchweights.storage.read.fill` (records into existing
  tensors) and :func:`~torchweights.storage.read.materialize` (new tensors, ``tw.load``);
- :mod:`~torchweights.storage.engine`: plans each storage's reads and runs them over a thread pool, vectored, with
  CRC-32 checks; :mod:`~torchweights.storage.targets` (where the bytes go) and :mod:`~torchweights.storage.scratch`
  (bounded scratch buffers) serve it;
- :mod:`~torchweights.storage.mapping`: zero-copy views of private mappings (``mmap=True``);
- :mod:`~torchweights.storage.tensors`: tensors from records (views, flags, quantized and sparse tensors);
- :mod:`~torchweights.storage.raw`: a storage's bytes without torch (whole, byte ranges, CRC), and
  :mod:`~torchweights.storage.contents`: a tensor's logical bytes from them (``convert``, ``diff``, ``verify``);
- :mod:`~torchweights.storage.files` (positioned reads), :mod:`~torchweights.storage.compression` (inflating zip
  members), :mod:`~torchweights.storage.crc` (CRC-32), :mod:`~torchweights.storage.settings` (:func:`io_settings`),
  :mod:`~torchweights.storage.results` (what a read reports) and :mod:`~torchweights.storage.stamps` (the file
  identity taken at open).

``torchweights.storage.io_settings`` is public: how many threads, how much scratch memory a read uses.
"""

from .settings import IOSettings, io_settings

__all__ = ["IOSettings", "io_settings"]
