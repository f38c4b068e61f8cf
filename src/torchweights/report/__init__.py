"""The account of a load: :class:`~torchweights.report.load.LoadReport` (data, JSON),
:mod:`~torchweights.report.advice` (what to do about the problems, decided from the plan) and the text that renders
both (:mod:`~torchweights.report.text`, :mod:`~torchweights.report.sections`, :mod:`~torchweights.report.cells`)."""
