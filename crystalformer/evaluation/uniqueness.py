"""Uniqueness and novelty of generated crystals with pymatgen's StructureMatcher (default tolerances).

- uniqueness: number of distinct structures (classes of mutually matching samples) / number of samples;
- novelty: fraction of samples that match no reference structure.

Speed: the default matcher reduces both structures (Niggli, then primitive cell) on every
``fit``; here each structure is reduced once and compared with ``skip_structure_reduction``.
Two structures can only match when their reduced cells have the same formula and number of
sites (the default matcher builds no supercells), so comparisons stay within those groups. On
Carbon-24 (one formula) this turns 500 x 1,000 full fits per novelty run into a few percent of it.
"""

from __future__ import annotations

from collections import defaultdict

from ..sampling.dedup import default_matcher


def reduce_for_matching(structure):
    """The cell StructureMatcher compares: Niggli-reduced, then primitive (its default preprocessing)."""
    from pymatgen.core import Structure

    s = Structure.from_sites(structure)
    return s.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()


def match_key(reduced) -> tuple[str, int]:
    """(reduced formula, sites in the reduced cell): structures with different keys never match."""
    return reduced.composition.reduced_formula, len(reduced)


def _fits(a, b, matcher) -> bool:
    return matcher.fit(a, b, skip_structure_reduction=True)


def unique_classes(structures, reduced: list | None = None) -> list[int]:
    """Class label per structure: equal labels = matching structures (the first member's index).

    ``reduced``: the structures already passed through :func:`reduce_for_matching` (computed when None).
    """
    matcher = default_matcher()
    reduced = reduced if reduced is not None else [reduce_for_matching(s) for s in structures]
    labels = list(range(len(structures)))
    groups = defaultdict(list)
    for i, r in enumerate(reduced):
        groups[match_key(r)].append(i)
    for members in groups.values():
        reps: list[int] = []
        for i in members:
            for j in reps:
                if _fits(reduced[j], reduced[i], matcher):
                    labels[i] = j
                    break
            else:
                reps.append(i)
    return labels


def uniqueness(structures, reduced: list | None = None) -> float | None:
    """Distinct structures / structures (None for an empty list)."""
    if not structures:
        return None
    return len(set(unique_classes(structures, reduced))) / len(structures)


def reference_index(reduced_reference) -> dict[tuple[str, int], list]:
    """Reduced reference structures grouped by :func:`match_key` (build once, reuse for every sample)."""
    index = defaultdict(list)
    for r in reduced_reference:
        index[match_key(r)].append(r)
    return dict(index)


def is_novel_reduced(reduced, candidates, matcher=None) -> bool:
    """True when no candidate (reduced, same key) matches the reduced structure."""
    matcher = matcher or default_matcher()
    return not any(_fits(reduced, c, matcher) for c in candidates)


def novelty(structures, reference) -> float | None:
    """Fraction of ``structures`` that match no ``reference`` structure (None for an empty list)."""
    if not structures:
        return None
    index = reference_index([reduce_for_matching(r) for r in reference])
    matcher = default_matcher()
    novel = 0
    for s in structures:
        r = reduce_for_matching(s)
        novel += is_novel_reduced(r, index.get(match_key(r), ()), matcher)
    return novel / len(structures)
