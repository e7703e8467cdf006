"""Inverse design: property models p(y | X) and posterior sampling p(X | y) ∝ p(X) p(y | X).

- :mod:`.property`: property models (``PropertyModel``, ``load_property_model``), :mod:`.train`
  (``train_property``), :mod:`.targets` (``Target``, ``parse_targets``);
- :mod:`.mcmc`: Metropolis-Hastings over token streams, :mod:`.proposals` its proposals;
- :mod:`.api`: ``design`` (also ``crystalformer.design``), :mod:`.finetune`: ``finetune``.

Importing this package does no work; import from the modules.
"""
