"""Evaluation of generated crystals: the CDVAE / DiffCSP metrics as plain functions.

- :mod:`.validity`: ``structure_validity``, ``smact_validity``;
- :mod:`.coverage`: CrystalNN / Magpie fingerprints, ``coverage`` (COV-R, COV-P) and its cutoffs;
- :mod:`.distributions`: density and number-of-elements Wasserstein distances;
- :mod:`.uniqueness`: ``uniqueness``, ``novelty`` (StructureMatcher);
- :mod:`.symmetry_stats`: fraction in P1, chi-square distance of space-group histograms;
- :mod:`.csp`: match rate and RMSE, best-of-k;
- :mod:`.runner`: ``evaluate_generation``, ``evaluate_csp`` over files, in parallel;
- :mod:`.report`: PNG plots; :mod:`.cli`: ``crystalformer evaluate``; energies and stability live in
  :mod:`crystalformer.physics.stability` (optional extra).

Import from the module that holds a name (``from crystalformer.evaluation.runner import
evaluate_generation``): this package imports nothing, so ``crystalformer --help`` stays fast, and
matminer, smact and matplotlib load inside the functions that use them.
"""
