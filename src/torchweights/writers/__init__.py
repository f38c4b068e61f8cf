"""Writers for ``convert``: each streams tensors from callables that yield their bytes, never holding a checkpoint.

* :mod:`.safetensors`: one ``.safetensors`` file (header JSON with ``__metadata__``, padded to 8 bytes).
* :mod:`.torch_zip`: a plain state-dict ``torch.save`` zip file, readable with ``torch.load(weights_only=True)``.
* :mod:`.atomic`: the transaction every output goes through: temporary files in the destination folder, fsync,
  atomic rename, and removal of everything written when anything fails.
"""

from __future__ import annotations

__all__: list[str] = []
