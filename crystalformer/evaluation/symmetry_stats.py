"""Space-group statistics of a set of crystals: fraction in P1 and the chi-square distance to a reference histogram."""

from __future__ import annotations

import numpy as np

N_SPACE_GROUPS = 230
DEFAULT_SYMPREC = 0.1  # Å; the Materials Project tolerance, lenient enough for generated (noisy) positions


def space_group_number(structure, symprec: float = DEFAULT_SYMPREC, angle_tolerance: float = 5.0) -> int:
    """International space-group number found by spglib (pymatgen's SpacegroupAnalyzer)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return int(SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance).get_space_group_number())


def space_group_histogram(numbers) -> np.ndarray:
    """Normalized histogram over space groups 1..230 (index 0 is group 1); zeros for an empty list."""
    numbers = [int(n) for n in numbers]
    bad = [n for n in numbers if not 1 <= n <= N_SPACE_GROUPS]
    if bad:
        raise ValueError(f"space-group numbers must be in 1..230, got {bad[:5]}")
    hist = np.bincount(np.asarray(numbers, dtype=int) - 1, minlength=N_SPACE_GROUPS).astype(float)
    return hist / hist.sum() if hist.sum() else hist


def chi2_distance(p, q) -> float:
    """Symmetric chi-square distance 1/2 sum (p-q)^2/(p+q) of two normalized histograms, in [0, 1].

    0 for identical histograms, 1 for disjoint ones (e.g. all P1 against all Fm-3m).
    """
    p, q = np.asarray(p, float), np.asarray(q, float)
    s = p + q
    m = s > 0
    return float(0.5 * np.sum((p[m] - q[m]) ** 2 / s[m]))


def space_group_stats(sample_numbers, reference_numbers) -> dict:
    """Fraction in P1 (samples and reference) and the chi-square distance of the two histograms."""
    sample_numbers, reference_numbers = list(sample_numbers), list(reference_numbers)
    if not sample_numbers or not reference_numbers:
        return {"frac_p1": None, "ref_frac_p1": None, "sg_chi2": None, "n_sg_samples": len(sample_numbers)}
    p, q = space_group_histogram(sample_numbers), space_group_histogram(reference_numbers)
    return {"frac_p1": float(p[0]), "ref_frac_p1": float(q[0]), "sg_chi2": chi2_distance(p, q),
            "n_sg_samples": len(sample_numbers), "n_sg_distinct": int(np.count_nonzero(p))}
