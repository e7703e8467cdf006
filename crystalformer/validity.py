"""Structural validity, defined once: the CDVAE/DiffCSP benchmark rule every output and evaluation uses.

A structure is valid when its volume is at least :data:`MIN_VOLUME` Å^3 and every two distinct
sites are at least :data:`MIN_DISTANCE` Å apart (pymatgen's minimum-image distance matrix, the
diagonal ignored, as CDVAE computes it: a one-atom cell passes whatever its lattice vectors).
What a person is shown in addition (atoms too close for their covalent radii, an atom too
close to its own image) is :func:`crystalformer.sampling.output.contact_stats`.
"""

from __future__ import annotations

import numpy as np

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å^3


def structure_validity(structure, cutoff: float = MIN_DISTANCE, min_volume: float = MIN_VOLUME) -> bool:
    """True when all distinct-site distances are >= ``cutoff`` Å and the volume is >= ``min_volume`` Å^3."""
    if not np.isfinite(structure.volume) or structure.volume < min_volume:
        return False
    distance = min_distance(structure)
    return distance is None or distance >= cutoff


def min_distance(structure) -> float | None:
    """Smallest distance between two distinct sites in Å (None for a one-atom cell)."""
    if len(structure) < 2:
        return None
    return float(structure.distance_matrix[np.triu_indices(len(structure), 1)].min())
