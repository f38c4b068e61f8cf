"""Seeded fuzz tests of the whole pipeline through the public API only (``import torchweights as tw``): the pickle
machine (``test_pickle_vm.py``), the planner and loader (``test_planner.py``), ``convert``/``diff``/``verify`` on
damaged inputs (``test_tools.py``), the command line (``test_cli.py``) and the writers (``test_writers.py``).

The readers' own structured-damage fuzzing is ``tests/test_fuzz_formats.py``; the valid samples, byte mutations
and per-call bounds are shared from ``tests/_samples.py``. Every test here is deterministic by default (Hypothesis
``derandomize=True``, a few seconds each); ``TW_FUZZ_EXAMPLES=N`` runs N examples per test with a random seed
(``make fuzz``), ``TW_FUZZ_DEADLINE_MS=0`` turns the wall-clock deadline off on a busy machine.
"""
