"""Property distributions: Wasserstein distances of density and number of elements (CDVAE's wdist metrics).

CDVAE draws 1,000 valid generated crystals at random and compares them with every reference
crystal (no validity gate on the reference) using ``scipy.stats.wasserstein_distance``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_N_SAMPLES = 1000


def density(structure) -> float:
    """Mass density in g/cm^3."""
    return float(structure.density)


def n_elements(structure) -> int:
    """Number of distinct elements."""
    return len(structure.composition.elements)


def choose_subset(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Indices of ``min(n, k)`` items drawn without replacement with ``numpy.random.default_rng(seed)``."""
    if k < 1:
        raise ValueError(f"subset size must be >= 1, got {k}")
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def wasserstein(values, reference) -> float | None:
    """1-D Wasserstein distance of two samples (None when either is empty)."""
    from scipy.stats import wasserstein_distance

    values, reference = list(values), list(reference)
    if not values or not reference:
        return None
    return float(wasserstein_distance(values, reference))


def property_wdist(sample_densities, sample_nelems, ref_densities, ref_nelems,
                   n_samples: int = DEFAULT_N_SAMPLES, seed: int = 0) -> dict:
    """``wdist_density`` and ``wdist_num_elems`` of (at most) ``n_samples`` valid samples against the reference.

    The inputs are per-valid-sample values (aligned lists); the same random subset is used for both
    properties. CDVAE refuses to run with fewer than 1,000 valid samples; here all are used and
    ``n_wdist_samples`` says how many.
    """
    if len(sample_densities) != len(sample_nelems):
        raise ValueError(f"{len(sample_densities)=} != {len(sample_nelems)=}")
    idx = choose_subset(len(sample_densities), n_samples, seed) if sample_densities else np.arange(0)
    d = [sample_densities[i] for i in idx]
    e = [sample_nelems[i] for i in idx]
    return {"wdist_density": wasserstein(d, ref_densities), "wdist_num_elems": wasserstein(e, ref_nelems),
            "n_wdist_samples": len(idx)}
