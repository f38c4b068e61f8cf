"""The only code in torchweights that reads pickle: a restricted machine that never runs what a file names.

Modules, from the entry points down:

* :mod:`.stream`: :func:`~.stream.unpickle` (loading: dangerous globals refused) and :func:`~.stream.scan_stream`
  (scan: everything reported), one stream each, every failure a torchweights error;
* :mod:`.machine`: the opcode machine; :mod:`.record`: what it records of the globals and calls a stream makes;
* :mod:`.calls`: how it applies ``REDUCE``/``NEWOBJ``/``BUILD`` (table entries, allowed globals, inert stubs);
* :mod:`.table`: :data:`~.table.SAFE_GLOBALS`, joined from :mod:`.table_torch`, :mod:`.table_stdlib`,
  :mod:`.table_numpy` and :mod:`.table_jit`; :mod:`.policy`: ``classify_global`` and the vetted-call decision that
  scan and load share (with the generated :mod:`.torch_classes` and :mod:`.known_enums`);
* :mod:`.guards`: the work budget and the bounds on hashing and nesting; :mod:`.values`: the inert values it makes.

Importing this package imports none of them.
"""
