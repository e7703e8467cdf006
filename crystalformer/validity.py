"""Validity, defined once: the CDVAE/DiffCSP benchmark rules every output and evaluation uses.

Structural (:func:`structure_validity`) and compositional (:func:`smact_validity`: SMACT finds
charge-neutral oxidation states passing the Pauling electronegativity test; a single element and
an all-metal composition pass without the test), as CDVAE (Xie et al., ICLR 2022) and DiffCSP
(Jiao et al., NeurIPS 2023) define them. A crystal is *valid* when both hold.

A structure is valid when its volume is at least :data:`MIN_VOLUME` Å^3 and every two distinct
sites are at least :data:`MIN_DISTANCE` Å apart (pymatgen's minimum-image distance matrix, the
diagonal ignored, as CDVAE computes it: a one-atom cell passes whatever its lattice vectors).
What a person is shown in addition (atoms too close for their covalent radii, an atom too
close to its own image) is :func:`crystalformer.sampling.output.contact_stats`.
"""

from __future__ import annotations

import itertools
from math import gcd

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

# DiffCSP gives up (invalid) when the oxidation-state combinations exceed 1e7: e.g. 8 elements
# with 8 states each (8^8 = 1.7e7); CDVAE has no such limit but never meets such compositions.
MAX_OXIDATION_COMBINATIONS = 10_000_000


def reduced_counts(structure_or_composition) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(element symbols sorted by atomic number, counts divided by their gcd), as CDVAE's ``get_composition``.

    Na4Cl4 -> (('Na', 'Cl'), (1, 1)).
    """
    comp = getattr(structure_or_composition, "composition", structure_or_composition)
    amounts = {}
    for el, amt in comp.element_composition.items():
        if abs(amt - round(amt)) > 1e-6:
            raise ValueError(f"composition {comp.formula!r} has non-integer amounts; expected a whole cell")
        amounts[el] = int(round(amt))
    elements = sorted(amounts, key=lambda e: e.Z)
    counts = [amounts[e] for e in elements]
    g = 0
    for c in counts:
        g = gcd(g, c)
    return tuple(e.symbol for e in elements), tuple(c // g for c in counts)


def smact_validity(structure_or_composition, use_pauling_test: bool = True, include_alloys: bool = True) -> bool:
    """SMACT charge neutrality + electronegativity test of a structure's (or composition's) reduced formula.

    Follows DiffCSP's ``smact_validity``: the oxidation states are SMACT's default set per element;
    stoichiometries are the gcd-reduced counts; the charge-neutrality search allows coefficients up
    to the largest count; a combination passes when it is neutral and ``pauling_test`` agrees
    (elements without Pauling electronegativity pass that test).
    """
    import smact
    from smact.screening import pauling_test

    symbols, counts = reduced_counts(structure_or_composition)
    if len(symbols) == 1:
        return True
    if include_alloys and all(s in smact.metals for s in symbols):
        return True
    space = smact.element_dictionary(symbols)
    elements = [space[s] for s in symbols]
    electronegs = [e.pauling_eneg for e in elements]
    # an element without oxidation-state data in this smact version (e.g. Pm in smact 4.0) cannot be
    # balanced: no combination, so the composition is invalid
    ox_combos = [e.oxidation_states or [] for e in elements]
    if int(np.prod([len(o) for o in ox_combos], dtype=float)) > MAX_OXIDATION_COMBINATIONS:
        return False
    threshold = max(counts)
    stoichs = [(c,) for c in counts]
    for ox_states in itertools.product(*ox_combos):
        if not _is_neutral(smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)):
            continue
        if not use_pauling_test:
            return True
        try:
            if pauling_test(ox_states, electronegs):
                return True
        except TypeError:  # an element without Pauling electronegativity: the test cannot fail it
            return True
    return False


def _is_neutral(result) -> bool:
    """smact < 3 returns (found, ratios); smact >= 3 returns the list of ratios (empty when none)."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        return result[0]
    return bool(result)
