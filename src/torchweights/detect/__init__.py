"""What a path holds, from its content alone, before any reader runs.

:mod:`.content` is the entry point (:func:`~torchweights.detect.content.detect`, folders, the format ids);
:mod:`.sniff` recognises files from their first bytes (magic numbers, pickles, safetensors, and the diagnosis of
LFS pointers, web pages, JSON and other text, gzip, GGUF, HDF5, ONNX); :mod:`.archive` classifies zip and tar
archives from the readers' own parse (:mod:`torchweights.formats._zip`, :mod:`torchweights.formats._tar`);
:mod:`.sample` holds what every sniffer sees and the file reads they share.
"""
