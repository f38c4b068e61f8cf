"""``tw.convert``: the weights of any readable checkpoint into safetensors, a plain torch file or a
torch.distributed.checkpoint folder, streamed, atomic and verified bit for bit.

:mod:`.run` is the verb (:func:`~torchweights.tools.convert.run.convert`, the algorithm step by step);
:mod:`.plan` decides what is written where (tensors, tied aliases, dtypes, shards, output names, extras);
:mod:`.stream` streams the bytes and checks what was written against the source; :mod:`.write` writes the
safetensors, torch or DCP outputs; :mod:`.report` holds the :class:`~torchweights.tools.convert.report.ConvertReport`.
"""
