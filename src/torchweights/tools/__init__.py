"""The verbs beyond loading, one module or package each: :mod:`~torchweights.tools.scan` (is it safe?),
:mod:`~torchweights.tools.convert`, :mod:`~torchweights.tools.diff` and :mod:`~torchweights.tools.verify`. They live
here so that no verb of ``torchweights`` shares its name with a module of the package."""
