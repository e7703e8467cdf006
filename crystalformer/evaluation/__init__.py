"""Evaluation of generated crystals (DESIGN.md section 9): the CDVAE / DiffCSP metrics as plain functions.

- :mod:`.validity`: ``structure_validity``, ``smact_validity``;
- :mod:`.coverage`: CrystalNN / Magpie fingerprints, ``coverage`` (COV-R, COV-P) and its cutoffs;
- :mod:`.distributions`: density and number-of-elements Wasserstein distances;
- :mod:`.uniqueness`: ``uniqueness``, ``novelty`` (StructureMatcher);
- :mod:`.symmetry_stats`: fraction in P1, chi-square distance of space-group histograms;
- :mod:`.csp`: match rate and RMSE, best-of-k;
- :mod:`.runner`: ``evaluate_generation``, ``evaluate_csp`` over files, in parallel;
- :mod:`.report`: PNG plots; :mod:`.energy`: CHGNet (optional extra); :mod:`.cli`: ``crystalformer evaluate``.

Nothing heavy is imported here: matminer, smact and matplotlib load inside the functions that use them.
"""

from __future__ import annotations

from .coverage import COV_CUTOFFS, coverage
from .csp import match_rate_and_rmse, rms_distance
from .distributions import property_wdist
from .runner import evaluate_csp, evaluate_generation
from .symmetry_stats import space_group_stats
from .uniqueness import novelty, uniqueness
from .validity import smact_validity, structure_validity

__all__ = ["COV_CUTOFFS", "coverage", "evaluate_csp", "evaluate_generation", "match_rate_and_rmse", "novelty",
           "property_wdist", "rms_distance", "smact_validity", "space_group_stats", "structure_validity",
           "uniqueness"]
