"""Uniqueness and novelty of generated crystals with pymatgen's StructureMatcher (default tolerances).

- uniqueness: number of distinct structures (classes of mutually matching samples) / number of samples;
- novelty: fraction of samples that match no reference structure.

Only structures with the same reduced formula can match, so both compare within formula groups.
"""

from __future__ import annotations

from collections import defaultdict


def _matcher(matcher=None):
    if matcher is not None:
        return matcher
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()


def unique_classes(structures, matcher=None) -> list[int]:
    """Class label per structure: equal labels = matching structures (first member's index)."""
    matcher = _matcher(matcher)
    labels = list(range(len(structures)))
    by_formula = defaultdict(list)
    for i, s in enumerate(structures):
        by_formula[s.composition.reduced_formula].append(i)
    for members in by_formula.values():
        reps: list[int] = []
        for i in members:
            for r in reps:
                if matcher.fit(structures[r], structures[i]):
                    labels[i] = r
                    break
            else:
                reps.append(i)
    return labels


def uniqueness(structures, matcher=None) -> float | None:
    """Distinct structures / structures (None for an empty list)."""
    if not structures:
        return None
    return len(set(unique_classes(structures, matcher))) / len(structures)


def reference_index(reference) -> dict[str, list]:
    """Reference structures grouped by reduced formula (build once, reuse for every sample)."""
    index = defaultdict(list)
    for s in reference:
        index[s.composition.reduced_formula].append(s)
    return dict(index)


def is_novel(structure, index: dict, matcher=None) -> bool:
    """True when no reference structure of the same reduced formula matches ``structure``."""
    matcher = _matcher(matcher)
    return not any(matcher.fit(structure, r) for r in index.get(structure.composition.reduced_formula, ()))


def novelty(structures, reference, matcher=None) -> float | None:
    """Fraction of ``structures`` that match no ``reference`` structure (None for an empty list)."""
    if not structures:
        return None
    index = reference_index(reference)
    matcher = _matcher(matcher)
    return sum(is_novel(s, index, matcher) for s in structures) / len(structures)
