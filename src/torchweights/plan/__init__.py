"""Reconciliation, pure data and no I/O: :func:`~torchweights.plan.reconcile.reconcile` decides, from names, shapes
and dtypes alone, what happens to every key of a checkpoint and a model (container, prefix, renames, pairs,
verdicts), and returns a frozen :class:`~torchweights.plan.model.Plan` that :mod:`torchweights.apply` executes."""
