"""Remove duplicate crystals from a ranked list (pymatgen ``StructureMatcher`` at its defaults).

CSP by log p often returns the same structure several times (spinel: ranks 0-6 identical), which
wastes the user's top k. :func:`distinct_samples` keeps the first (best-ranked) member of every
group of matching structures, in order.
"""

from __future__ import annotations

MAX_PAIRWISE = 400  # candidates compared pairwise at most (the cost grows with the square)


def distinct_samples(samples, limit: int | None = None) -> tuple[list, int]:
    """(the distinct samples in order, at most ``limit``; how many duplicates were skipped).

    Samples without a buildable crystal are kept in place (they are reported as failures
    elsewhere). Two crystals are the same when their reduced compositions agree and
    ``StructureMatcher()`` (ltol 0.2, stol 0.3, angle_tol 5) fits them.
    """
    matcher = default_matcher()
    kept, structures, removed = [], [], 0
    for s in samples:
        if limit is not None and len(kept) >= limit:
            break
        try:
            structure = None if s.crystal is None else s.crystal.to_structure()
        except (ValueError, ArithmeticError):
            structure = None
        if structure is not None:
            if any(same_structure(matcher, other, structure) for other in structures):
                removed += 1
                continue
            structures.append(structure)
        kept.append(s)
    return kept, removed


def default_matcher():
    """pymatgen's ``StructureMatcher()`` at its defaults (ltol 0.2, stol 0.3, angle_tol 5): "the same", not "close"."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


def same_structure(matcher, a, b) -> bool:
    """Same reduced composition and ``matcher.fit``; a matcher failure means "not shown to be the same"."""
    if a.composition.reduced_composition != b.composition.reduced_composition:
        return False
    try:
        return bool(matcher.fit(a, b))
    except Exception:  # noqa: BLE001
        return False
