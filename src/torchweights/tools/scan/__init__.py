"""``tw.scan``: every pickle and structure of a file, statically (:mod:`~torchweights.tools.scan.scanner`); its
report (:mod:`~torchweights.tools.scan.report`, rendered by :mod:`~torchweights.tools.scan.text`); the walk over
files, archives and pickles (``walk``, ``archives``, ``files``, ``probe``, ``messages``); TorchScript source analysis
(``tscode``, ``tsrules``)."""
